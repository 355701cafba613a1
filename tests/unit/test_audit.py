"""The audit's judgement, a pure function: who intrudes on a dataplane CPU, and what is off."""

from __future__ import annotations

import pytest

from kcm.fence.audit import (
    AuditInput,
    CpuAudit,
    DataplaneList,
    Ran,
    Sample,
    ThreadSample,
    audit,
    bookings_by_tree,
    load_balancing,
    ran_on,
)
from kcm.host.cpusets import Cpuset, CpusetTree
from kcm.host.interrupts import CounterTable, IrqAffinity
from kcm.host.isolation import Isolation, parse_cmdline

CPU = 3


def thread(
    processor: int,
    runtime: int | None = 0,
    migrations: int | None = 0,
    allowed: str = "0-3",
    *,
    ticks: int = 0,
    pid: int = 500,
    tid: int | None = None,
    kernel: bool = False,
    fixed: bool = False,
    comm: str = "x",
    ppid: int = 1,
) -> ThreadSample:
    cpus = frozenset(c for part in allowed.split(",") for c in _range(part))
    return ThreadSample(
        pid=pid,
        tid=pid if tid is None else tid,
        comm=comm,
        ppid=ppid,
        kernel=kernel,
        no_setaffinity=fixed,
        processor=processor,
        start_time=100,
        ticks=ticks,
        runtime_ns=runtime,
        migrations=migrations,
        allowed=cpus,
    )


def _range(part: str) -> range:
    lo, _, hi = part.partition("-")
    return range(int(lo), int(hi or lo) + 1)


@pytest.mark.parametrize(
    ("name", "start", "end", "expected"),
    [
        ("did not run", thread(3, 10), thread(3, 10), Ran.NO),
        ("ran, never migrated, on the CPU", thread(3, 10, 5), thread(3, 90, 5), Ran.YES),
        ("ran, never migrated, elsewhere", thread(1, 10, 5), thread(1, 90, 5), Ran.NO),
        ("ran, migrated, ended on the CPU", thread(1, 10, 5), thread(3, 90, 6), Ran.YES),
        ("ran, migrated away from the CPU", thread(3, 10, 5), thread(1, 90, 6), Ran.MAYBE),
        ("ran, migrated, never seen there", thread(1, 10, 5), thread(2, 90, 7), Ran.NOT_SEEN),
        ("pinned to the CPU, ran", thread(1, 10, 5, "3"), thread(1, 90, 9, "3"), Ran.YES),
        ("no migration counts, ended there", thread(1, 10, None), thread(3, 90, None), Ran.YES),
        ("no migration counts, left", thread(3, 10, None), thread(1, 90, None), Ran.MAYBE),
        ("no migration counts, elsewhere", thread(1, 10, None), thread(1, 90, None), Ran.NOT_SEEN),
        (
            "ticks only, ran",
            thread(3, None, None, ticks=4),
            thread(3, None, None, ticks=6),
            Ran.YES,
        ),
        (
            "ticks only, idle",
            thread(3, None, None, ticks=4),
            thread(3, None, None, ticks=4),
            Ran.NO,
        ),
        ("born during the interval, there", None, thread(3, 90, 0), Ran.YES),
        # not sampled at the start (it did not matter then): ticks only, and it moved here
        ("moved onto the CPU, ticks still", thread(1, None, None), thread(3, 90, 1), Ran.YES),
        ("moved away, ticks still", thread(3, None, None), thread(1, 90, 1), Ran.MAYBE),
        ("born during the interval, idle", None, thread(3, 0, 0), Ran.NO),
    ],
)
def test_ran_on(name: str, start: ThreadSample | None, end: ThreadSample, expected: Ran) -> None:
    assert ran_on(CPU, start, end)[0] is expected, name


def test_ran_on_counts_cpu_time() -> None:
    assert ran_on(CPU, thread(3, 1_000), thread(3, 2_501_000))[1] == 2_500_000
    # utime + stime are in USER_HZ ticks of 10 ms
    assert ran_on(CPU, thread(3, None, None, ticks=4), thread(3, None, None, ticks=6))[1] == (
        20_000_000
    )


def test_ran_on_a_thread_that_exited() -> None:
    assert ran_on(CPU, thread(3), None)[0] is Ran.MAYBE
    assert ran_on(CPU, thread(1), None)[0] is Ran.NOT_SEEN


def test_bookings_follow_the_process_tree_from_the_tasks_file() -> None:
    lists = (DataplaneList("3", frozenset({3}), (100,)), DataplaneList("2", frozenset({2}), ()))
    parents = {100: 1, 101: 100, 102: 101, 200: 1, 1: 0}
    assert bookings_by_tree(lists, parents) == {100: "3", 101: "3", 102: "3"}


def test_bookings_survive_a_loop_in_parents() -> None:
    lists = (DataplaneList("3", frozenset({3}), (100,)),)
    assert bookings_by_tree(lists, {5: 6, 6: 5, 100: 5}) == {100: "3"}


# -- load balancing ------------------------------------------------------------------------


def v1(*cpusets: tuple[str, str, bool]) -> CpusetTree:
    return CpusetTree(
        "v1",
        "/sys/fs/cgroup/cpuset",
        tuple(
            Cpuset(path, cpus, frozenset(_range_list(cpus)), load_balance=lb)
            for path, cpus, lb in cpusets
        ),
    )


def _range_list(text: str) -> set[int]:
    return {c for part in text.split(",") if part for c in _range(part)}


def test_v1_load_balancing_is_on_while_the_root_balances() -> None:
    lb = load_balancing(3, frozenset({3}), v1(("/", "0-3", True)), frozenset())
    assert (lb.off, lb.why) == (False, "sched_load_balance=1 in /")


def test_v1_load_balancing_is_off_when_every_spanning_cpuset_has_it_off() -> None:
    tree = v1(
        ("/", "0-3", False),
        ("/kcm-system", "0-1", True),
        ("/kcm", "0-3", False),
        ("/kcm/s/dataplane/2-3", "2-3", True),  # the list's own: balances only the booking
    )
    assert load_balancing(3, frozenset({2, 3}), tree, frozenset()).off
    # ...but the same cpuset spans another list's CPU when the lists are 2 and 3
    lb = load_balancing(3, frozenset({3}), tree, frozenset())
    assert not lb.off and "/kcm/s/dataplane/2-3" in lb.why


def test_load_balancing_off_by_boot_isolation_or_v2_partition() -> None:
    assert load_balancing(3, frozenset({3}), v1(("/", "0-3", True)), frozenset({3})).off
    v2 = CpusetTree(
        "v2",
        "/sys/fs/cgroup",
        (
            Cpuset("/", "", frozenset({0, 1, 2})),
            Cpuset("/kcm/dp/3", "3", frozenset({3}), partition="isolated"),
        ),
    )
    assert load_balancing(3, frozenset({3}), v2, frozenset()).why == (
        "in the isolated partition /kcm/dp/3"
    )
    invalid = CpusetTree(
        "v2", "/x", (Cpuset("/kcm/dp/3", "3", frozenset({3}), partition="isolated invalid"),)
    )
    assert not load_balancing(3, frozenset({3}), invalid, frozenset()).off
    listed = CpusetTree("v2", "/x", (), isolated=frozenset({3}))
    assert load_balancing(3, frozenset({3}), listed, frozenset()).off
    assert not load_balancing(3, frozenset({3}), None, frozenset()).off


# -- the whole judgement -------------------------------------------------------------------


def sample(at: float, threads: list[ThreadSample], irq_counts: dict[str, int]) -> Sample:
    rows = {label: (0, 0, 0, count) for label, count in irq_counts.items()}
    table = CounterTable((0, 1, 2, 3), {**rows, "LOC": (0, 0, 0, int(at * 250))}, {})
    soft = CounterTable((0, 1, 2, 3), {"TIMER": (0, 0, 0, int(at * 100))}, {})
    return Sample(at, {t.tid: t for t in threads}, table, soft, {})


ISOLATION = Isolation(parse_cmdline(""), frozenset(), None, frozenset({0, 1, 2, 3}), None)


def test_audit_sorts_threads_into_intruders_bookings_and_per_cpu_kernel_threads() -> None:
    booked = thread(3, 10, 0, "3", pid=100)
    child = thread(3, 10, 0, "3", pid=101, ppid=100)
    intruder = thread(3, 10, 0, "3", pid=200)
    unbound_kthread = thread(0, 10, 0, "0-3", pid=30, kernel=True, comm="kcompactd0")
    per_cpu = thread(3, 10, 0, "3", pid=22, kernel=True, fixed=True, comm="ksoftirqd/3")
    elsewhere = thread(1, 10, 0, "0-2", pid=300)
    start = [booked, child, intruder, unbound_kthread, per_cpu, elsewhere]
    end = [
        booked,
        child,
        thread(3, 5_000_010, 0, "3", pid=200),
        unbound_kthread,
        per_cpu,
        elsewhere,
    ]
    lists = (DataplaneList("3", frozenset({3}), (100,)),)
    inp = AuditInput(
        conf_dir="/etc/kcm",
        lists=lists,
        bookings=bookings_by_tree(lists, {100: 1, 101: 100}),
        start=sample(0.0, start, {"36": 10, "37": 0}),
        end=sample(2.0, end, {"36": 50, "37": 0}),
        irqs=(
            IrqAffinity(36, frozenset({0, 1, 2, 3}), frozenset({3}), True, "eth0-rx-0"),
            IrqAffinity(37, frozenset({0, 1, 2, 3}), frozenset({1}), True, "eth0-rx-1"),
        ),
        isolation=ISOLATION,
        cpusets=None,
    )
    report = audit(inp)
    (cpu,) = report.cpus
    assert [(t.pid, t.ran) for t in cpu.threads] == [(200, Ran.YES), (30, Ran.NO)]
    assert cpu.threads[0].cpu_time_ns == 5_000_000
    assert [t.command for t in cpu.per_cpu_threads] == ["ksoftirqd/3"]
    assert [(i.irq, i.count, i.name) for i in cpu.irqs] == [(36, 40, "eth0-rx-0")]
    assert cpu.interrupts_per_s == pytest.approx((40 + 500) / 2)
    assert cpu.softirqs_per_s == pytest.approx(100)
    assert cpu.workqueue is True and cpu.default_irq_affinity is None
    assert not report.clean


def test_audit_of_a_fenced_cpu_is_clean() -> None:
    booked = thread(3, 10, 0, "3", pid=100)
    other = thread(1, 10, 0, "0-2", pid=300)
    lists = (DataplaneList("3", frozenset({3}), (100,)),)
    inp = AuditInput(
        conf_dir="/etc/kcm",
        lists=lists,
        bookings={100: "3"},
        start=sample(0.0, [booked, other], {"36": 10}),
        end=sample(1.0, [booked, other], {"36": 10}),
        irqs=(IrqAffinity(36, frozenset({0, 1}), frozenset({1}), True, "eth0"),),
        isolation=ISOLATION,
        cpusets=None,
    )
    report = audit(inp)
    assert report.clean and report.cpus[0].clean


def test_an_irq_that_fired_there_intrudes_even_if_its_affinity_moved_away() -> None:
    lists = (DataplaneList("3", frozenset({3}), ()),)
    inp = AuditInput(
        conf_dir="/etc/kcm",
        lists=lists,
        bookings={},
        start=sample(0.0, [], {"36": 10}),
        end=sample(1.0, [], {"36": 12}),
        irqs=(IrqAffinity(36, frozenset({0}), None, True, "eth0"),),
        isolation=ISOLATION,
        cpusets=None,
    )
    (cpu,) = audit(inp).cpus
    assert [(i.irq, i.count, i.effective) for i in cpu.irqs] == [(36, 2, False)]


def test_a_thread_moved_off_while_asleep_is_no_intruder_until_it_runs_there() -> None:
    # The kernel leaves a sleeping thread's last CPU (stat field 39) as it was when the shield
    # narrows its affinity: it is placed within the new one when it wakes. Not allowed there and
    # not run: no intrusion. Run there (moved there again, say): an intrusion.
    moved = thread(3, 10, 0, "0-2", pid=400)
    lists = (DataplaneList("3", frozenset({3}), ()),)

    def judge(end: ThreadSample) -> list[tuple[int, Ran]]:
        inp = AuditInput(
            conf_dir="/etc/kcm",
            lists=lists,
            bookings={},
            start=sample(0.0, [moved], {}),
            end=sample(1.0, [end], {}),
            irqs=(),
            isolation=ISOLATION,
            cpusets=None,
        )
        (cpu,) = audit(inp).cpus
        return [(t.pid, t.ran) for t in cpu.threads]

    assert judge(moved) == []
    assert judge(thread(3, 90, 0, "0-2", pid=400)) == [(400, Ran.YES)]
    # Woken meanwhile, it ran within its affinity, elsewhere (khugepaged in the guest, right
    # after a shield): no intrusion while the affinity read at the end still excludes the CPU.
    assert judge(thread(2, 90, 1, "0-2", pid=400)) == []
    # Read again at the end with the CPU allowed once more: it may have run here.
    assert judge(thread(2, 90, 1, "0-3", pid=400)) == [(400, Ran.MAYBE)]


def judge_one(start: list[ThreadSample], end: list[ThreadSample], **kw: object) -> CpuAudit:
    lists = (DataplaneList("3", frozenset({3}), ()),)
    fields: dict[str, object] = {
        "conf_dir": "/etc/kcm",
        "lists": lists,
        "bookings": {},
        "start": sample(0.0, start, {}),
        "end": sample(1.0, end, {}),
        "irqs": (),
        "isolation": ISOLATION,
        "cpusets": None,
    }
    fields.update(kw)
    (cpu,) = audit(AuditInput(**fields)).cpus  # type: ignore[arg-type]
    return cpu


def test_a_kernel_thread_the_kernel_will_not_move_intrudes_only_once_it_runs_there() -> None:
    # A per-CPU workqueue's rescuer (6.1: "kblockd"; 6.12: "kworker/R-kblockd") is allowed on
    # every CPU and PF_NO_SETAFFINITY: no fence moves it. Asleep, it is listed apart.
    rescuer = thread(1, 10, 0, "0-3", pid=56, kernel=True, fixed=True, comm="kworker/R-kblockd")
    cpu = judge_one([rescuer], [rescuer])
    assert cpu.threads == () and cpu.clean
    assert [(t.pid, t.command) for t in cpu.unmovable_threads] == [(56, "kworker/R-kblockd")]
    woke = thread(3, 90, 1, "0-3", pid=56, kernel=True, fixed=True, comm="kworker/R-kblockd")
    cpu = judge_one([rescuer], [woke])
    assert [(t.pid, t.ran, t.movable) for t in cpu.threads] == [(56, Ran.YES, False)]
    assert cpu.unmovable_threads == ()


def test_an_irq_steered_off_but_not_yet_moved_is_moving_until_it_fires_there() -> None:
    # x86 moves an IRQ when it next fires: its effective affinity names the old CPU until then.
    steered = IrqAffinity(1, frozenset({0, 1, 2}), frozenset({3}), True, "i8042")
    cpu = judge_one([], [], irqs=(steered,))
    assert cpu.irqs == () and cpu.clean
    assert [i.irq for i in cpu.moving_irqs] == [1]
    lists = (DataplaneList("3", frozenset({3}), ()),)
    fired = AuditInput(
        conf_dir="/etc/kcm",
        lists=lists,
        bookings={},
        start=sample(0.0, [], {"1": 5}),
        end=sample(1.0, [], {"1": 6}),
        irqs=(steered,),
        isolation=ISOLATION,
        cpusets=None,
    )
    (cpu,) = audit(fired).cpus
    assert [(i.irq, i.count) for i in cpu.irqs] == [(1, 1)] and cpu.moving_irqs == ()
    # still allowed there: an intruder whether or not it fired
    allowed = IrqAffinity(1, frozenset({0, 1, 2, 3}), frozenset({3}), True, "i8042")
    cpu = judge_one([], [], irqs=(allowed,))
    assert [i.irq for i in cpu.irqs] == [1]
