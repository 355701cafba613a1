"""The shield's state machine on an in-memory kernel killed at every instant: whatever step a
``kill -9`` interrupts, the next shield brings the host to the shielded state a clean shield
reaches, and the next unshield to the host as it was, byte for byte; both are idempotent, and
nothing is changed before the record names it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcm import cpulist
from kcm.fence import record as rec
from kcm.fence.protocol import Outcome, keep, shield, unshield
from tests.fixtures.fakekernel import (
    Clock,
    Crash,
    FakeKernel,
    KCpuset,
    KIrq,
    KTask,
    MemoryStore,
    copy_kernel,
)

Lists = dict[str, frozenset[int]]


def subsets(cpus: list[int]) -> st.SearchStrategy[frozenset[int]]:
    return st.frozensets(st.sampled_from(cpus), min_size=1)


@st.composite
def hosts(draw: st.DrawFn) -> tuple[FakeKernel, Lists]:
    """A host of 2 to 6 CPUs in one of the four kinds, with foreign cpusets, pinned and
    unpinned tasks, kernel threads of every sort, IRQs (some managed) and masks."""
    n = draw(st.integers(2, 6))
    cpus = list(range(n))
    online = frozenset(cpus)
    dataplane = draw(subsets(cpus).filter(lambda s: s != online))
    lists = {str(c): frozenset({c}) for c in dataplane}
    version = draw(st.sampled_from(["v1", "v2", "systemd", "none"]))
    clock = Clock()
    store = MemoryStore(clock)
    k = FakeKernel(clock, store, online, version)
    v1 = version == "v1"
    lb = True if v1 else None
    if version != "none":
        k.cpusets["/"] = KCpuset("/", cpulist.format(online) if v1 else "", load_balance=lb)
        k.exclusive_supported = version != "v1" and draw(st.booleans())
        excl = "" if k.exclusive_supported else None
        top = "/kcm.slice" if version == "systemd" else "/kcm"
        k.kcm_subtree = top
        for path, these in (
            (top, online),
            (f"{top}/s", online),
            (f"{top}/s/dataplane", dataplane),
        ):
            k.cpusets[path] = KCpuset(path, cpulist.format(these), load_balance=lb, exclusive=excl)
        for name in lists:
            path = f"{top}/s/dataplane/{name}"
            k.cpusets[path] = KCpuset(
                path, name, load_balance=lb, exclusive=excl, partition=None if v1 else "member"
            )
            k.list_cgroups[name] = path
        if version == "v2":
            k.subtree_control = draw(st.sampled_from(["", "cpu memory", "cpuset cpu"]))
        foreign = []
        if version == "systemd":
            k.units = {}
            for unit in ("init.scope", "system.slice", "user.slice"):
                allowed = draw(st.one_of(st.just(""), subsets(cpus).map(cpulist.format)))
                k.units[unit] = allowed
                k.cpusets["/" + unit] = KCpuset("/" + unit, allowed)
                foreign.append("/" + unit)
        else:
            for i in range(draw(st.integers(0, 2))):
                mine = draw(subsets(cpus))
                path = f"/f{i}"
                text = "" if not v1 and draw(st.booleans()) else cpulist.format(mine)
                k.cpusets[path] = KCpuset(
                    path, text, load_balance=lb, exclusive=excl, partition=None if v1 else "member"
                )
                foreign.append(path)
                if draw(st.booleans()):
                    inner = draw(subsets(sorted(mine)))
                    k.cpusets[f"{path}/c"] = KCpuset(
                        f"{path}/c", cpulist.format(inner), load_balance=lb
                    )
                    foreign.append(f"{path}/c")
        places = ["/", *foreign]
    else:
        places = ["/"]
    tid = 100
    for _ in range(draw(st.integers(0, 6))):
        place = draw(st.sampled_from(places))
        mask = k.requested(place)
        if draw(st.booleans()):
            mask = draw(subsets(sorted(mask)))  # pinned with taskset
        k.tasks[tid] = KTask(tid, tid, f"p{tid}", mask, place, start_time=tid)
        tid += 1
    root_cpus = k.requested("/")
    k.tasks[2] = KTask(2, 2, "kthreadd", root_cpus, kernel=True)
    k.tasks[3] = KTask(3, 3, "kworker/u8:0", root_cpus, kernel=True, no_setaffinity=True)
    k.tasks[4] = KTask(4, 4, "kcompactd0", root_cpus, kernel=True)
    for c in cpus:
        k.tasks[10 + c] = KTask(
            10 + c, 10 + c, f"ksoftirqd/{c}", frozenset({c}), kernel=True, no_setaffinity=True
        )
    if version != "none":
        booked = f"{k.kcm_subtree}/s/dataplane/{min(dataplane)}"
        k.tasks[90] = KTask(90, 90, "l2fwd", frozenset({min(dataplane)}), booked)
        k.bookings = frozenset({90})
    for irq in range(draw(st.integers(0, 3))):
        irq_cpus = draw(subsets(cpus))
        k.irqs[30 + irq] = KIrq(30 + irq, cpulist.format(irq_cpus), draw(st.booleans()), f"d{irq}")
    if draw(st.booleans()):
        k.default_smp_affinity = cpulist.format_mask(draw(subsets(cpus)))
    if draw(st.booleans()):
        k.workqueue_cpumask = cpulist.format_mask(draw(subsets(cpus)))
    return k, lists


def fresh(kernel: FakeKernel, crash_after: int | None = None) -> FakeKernel:
    clock = Clock(crash_after)
    return copy_kernel(kernel, clock, MemoryStore(clock))


def resume(kernel: FakeKernel, crash_after: int | None = None) -> FakeKernel:
    """The same host and record, after a restart: a new clock, the store's text kept."""
    clock = Clock(crash_after)
    store = MemoryStore(clock, kernel.store.text)
    out = copy_kernel(kernel, clock, store)
    return out


def killed(run: Callable[[], object]) -> bool:
    try:
        run()
    except Crash:
        return True
    return False


def shielded(kernel: FakeKernel, lists: Lists) -> FakeKernel:
    """The host after one clean shield."""
    k = fresh(kernel)
    shield(k.store, k, lists)
    return k


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(hosts(), st.integers(0, 200))
def test_shield_killed_anywhere_then_shield_again_converges(
    host: tuple[FakeKernel, Lists], kill_at: int
) -> None:
    kernel, lists = host
    target = shielded(kernel, lists)
    k = fresh(kernel, kill_at)
    killed(lambda: shield(k.store, k, lists))
    k = resume(k)
    shield(k.store, k, lists)
    assert k.observable() == target.observable()
    stored = k.store.load()
    assert stored is not None and stored.phase == rec.SHIELDED
    assert stored == target.store.load()


@SETTINGS
@given(hosts(), st.integers(0, 200), st.integers(0, 200))
def test_shield_then_unshield_killed_anywhere_restores_the_host_exactly(
    host: tuple[FakeKernel, Lists], kill_shield: int, kill_unshield: int
) -> None:
    kernel, lists = host
    k = fresh(kernel, kill_shield)
    killed(lambda: shield(k.store, k, lists))
    k = resume(k, kill_unshield)
    killed(lambda: unshield(k.store, k))
    k = resume(k)
    report = unshield(k.store, k)
    assert report.failed == ()
    assert k.store.text is None
    assert k.observable() == kernel.observable()


@SETTINGS
@given(hosts(), st.integers(0, 200))
def test_unshield_killed_anywhere_then_shield_converges_to_shielded(
    host: tuple[FakeKernel, Lists], kill_at: int
) -> None:
    kernel, lists = host
    k = shielded(kernel, lists)
    target = k.observable()
    k = resume(k, kill_at)
    killed(lambda: unshield(k.store, k))
    k = resume(k)
    shield(k.store, k, lists)
    assert k.observable() == target


@SETTINGS
@given(hosts())
def test_shield_and_unshield_are_idempotent(host: tuple[FakeKernel, Lists]) -> None:
    kernel, lists = host
    k = shielded(kernel, lists)
    once = k.observable()
    again = shield(k.store, k, lists)
    assert all(r.outcome is not Outcome.DONE for r in again.results), [
        r for r in again.results if r.outcome is Outcome.DONE
    ]
    assert k.observable() == once
    unshield(k.store, k)
    assert k.observable() == kernel.observable()
    assert unshield(k.store, k).results == ()
    assert k.observable() == kernel.observable()


@SETTINGS
@given(hosts())
def test_a_shielded_host_keeps_everything_movable_off_the_dataplane(
    host: tuple[FakeKernel, Lists],
) -> None:
    kernel, lists = host
    dataplane = frozenset().union(*lists.values())
    k = fresh(kernel)
    report = shield(k.store, k, lists)
    # What the plan says it cannot fence: cpusets or units that hold only dataplane CPUs.
    refused = [r.what.split(" ", 1)[1] for r in report.refusals if r.what.startswith("cpuset ")]
    refused += [
        "/" + r.what.split(" ", 1)[1] for r in report.refusals if r.what.startswith("unit ")
    ]
    for t in k.tasks.values():
        if t.pid in k.bookings or t.no_setaffinity or t.kthreadd:
            continue
        if any(t.cgroup == p or t.cgroup.startswith(p + "/") for p in refused):
            continue
        if k.version == "v1" or t.kernel or k.version == "none" or t.cgroup == "/":
            assert t.allowed.isdisjoint(dataplane), t
    for irq in k.irqs.values():
        if irq.settable:
            assert cpulist.parse(irq.allowed).isdisjoint(dataplane)
    for mask in (k.default_smp_affinity, k.workqueue_cpumask):
        if mask is not None:
            assert cpulist.parse_mask(mask).isdisjoint(dataplane)


@SETTINGS
@given(hosts(), st.integers(0, 200))
def test_a_record_from_an_earlier_boot_is_dropped(
    host: tuple[FakeKernel, Lists], kill_at: int
) -> None:
    kernel, lists = host
    k = fresh(kernel, kill_at)
    killed(lambda: shield(k.store, k, lists))
    # Reboot: the kernel's state is as it boots (the original), the record is on disk.
    rebooted = fresh(kernel)
    rebooted.boot = "boot-2"
    rebooted.store.text = k.store.text
    report = unshield(rebooted.store, rebooted)
    assert rebooted.store.text is None and report.results == ()
    assert rebooted.observable() == kernel.observable()


def test_crashing_at_every_instant_of_one_v1_host() -> None:
    """The same, exhaustively, on one host: every kill point of shield, then of unshield."""
    kernel, lists = v1_host()
    target = shielded(kernel, lists)
    total = target.clock.ops
    assert total > 10  # the record, the cgroup, the moves, the writes
    for kill_at in range(total + 1):
        k = fresh(kernel, kill_at)
        assert killed(partial(shield, k.store, k, lists)) == (kill_at < total)
        k = resume(k)
        shield(k.store, k, lists)
        assert k.observable() == target.observable(), kill_at
        k = resume(k)
        unshield(k.store, k)
        assert k.observable() == kernel.observable(), kill_at


def v1_host() -> tuple[FakeKernel, Lists]:
    clock = Clock()
    k = FakeKernel(clock, MemoryStore(clock), frozenset(range(4)), "v1")
    for path, cpus in (
        ("/", "0-3"),
        ("/kcm", "0-3"),
        ("/kcm/s", "0-3"),
        ("/kcm/s/dataplane", "3"),
        ("/kcm/s/dataplane/3", "3"),
        ("/docker", "0-3"),
        ("/docker/c1", "2-3"),
    ):
        k.cpusets[path] = KCpuset(path, cpus, load_balance=True)
    k.tasks = {
        1: KTask(1, 1, "init", frozenset(range(4))),
        2: KTask(2, 2, "kthreadd", frozenset(range(4)), kernel=True),
        5: KTask(5, 5, "pinned", frozenset({3}), start_time=5),
        6: KTask(6, 6, "app", frozenset({2, 3}), "/docker/c1", start_time=6),
        7: KTask(7, 7, "app", frozenset({2}), "/docker/c1", start_time=7),
        90: KTask(90, 90, "l2fwd", frozenset({3}), "/kcm/s/dataplane/3"),
    }
    k.bookings = frozenset({90})
    k.irqs = {36: KIrq(36, "0-3"), 37: KIrq(37, "3", settable=False, name="nvme0q3")}
    k.default_smp_affinity = "f"
    k.workqueue_cpumask = "f"
    return k, {"3": frozenset({3})}


@pytest.mark.parametrize("kill_at", [0, 1])
def test_nothing_changes_before_the_record_is_saved(kill_at: int) -> None:
    kernel, lists = v1_host()
    k = fresh(kernel, kill_at)
    assert killed(lambda: shield(k.store, k, lists))
    assert k.observable() == kernel.observable()
    assert (k.store.text is None) == (kill_at == 0)


# -- reconcile keeps the fence -------------------------------------------------------------


def test_keep_moves_only_what_appeared_since_and_the_record_first() -> None:
    kernel, lists = v1_host()
    k = shielded(kernel, lists)
    record = k.store.text
    # A process started in the root (a daemon kthreadd's child, say) and an IRQ steered back.
    k.tasks[200] = KTask(200, 200, "late", frozenset(range(4)), start_time=200)
    k.irqs[36].allowed = "3"
    report = keep(k.store, k, lists)
    assert report is not None
    done = sorted(
        tuple(map(str, r.step.change.key)) for r in report.results if r.outcome is Outcome.DONE
    )
    assert done == [
        ("move-tasks", "cpuset", "cpuset/kcm-system"),
        ("write", "proc", "irq/36/smp_affinity_list"),
    ]
    assert (k.tasks[200].cgroup, k.tasks[200].allowed) == ("/kcm-system", frozenset({0, 1, 2}))
    assert k.irqs[36].allowed == "0-2"
    assert k.store.text == record  # nothing new to record: the same plan, done again
    ops = k.clock.ops
    again = keep(k.store, k, lists)
    assert again is not None and not [r for r in again.results if r.outcome is Outcome.DONE]
    assert k.clock.ops == ops  # a pass with nothing to move changes nothing, writes nothing


def test_keep_records_a_new_change_before_making_it() -> None:
    kernel, lists = v1_host()
    k = shielded(kernel, lists)
    k.irqs[40] = KIrq(40, "2-3", name="eth1")  # a device that appeared since
    report = keep(k.store, k, lists)  # FakeKernel asserts each change is recorded first
    assert report is not None
    stored = k.store.load()
    assert stored is not None and stored.phase == rec.SHIELDED
    assert any(c.key == ("write", "proc", "irq/40/smp_affinity_list") for c in stored.changes)
    assert k.irqs[40].allowed == "2"
    unshield(k.store, k)
    kernel.irqs[40] = KIrq(40, "2-3", name="eth1")
    assert k.observable() == kernel.observable()


def test_keep_leaves_a_host_that_is_not_shielded_alone() -> None:
    kernel, lists = v1_host()
    k = fresh(kernel)
    assert keep(k.store, k, lists) is None  # no record
    shield(k.store, k, lists)
    k = resume(k, 0)
    assert killed(lambda: unshield(k.store, k))  # killed before the record said unshielding
    k = resume(k)
    stored = k.store.load()
    assert stored is not None
    k.store.text = rec.to_text(replace(stored, phase=rec.UNSHIELDING))
    before = k.observable()
    assert keep(k.store, k, lists) is None
    assert k.observable() == before


@SETTINGS
@given(hosts(), st.integers(0, 200))
def test_keep_killed_anywhere_then_unshield_restores_the_host(
    host: tuple[FakeKernel, Lists], kill_at: int
) -> None:
    kernel, lists = host
    k = shielded(kernel, lists)
    k = resume(k, kill_at)
    k.tasks[300] = KTask(300, 300, "late", k.requested("/"), start_time=300)
    with_late = copy_kernel(kernel, Clock(), MemoryStore(Clock()))
    with_late.tasks[300] = KTask(300, 300, "late", with_late.requested("/"), start_time=300)
    killed(lambda: keep(k.store, k, lists))
    k = resume(k)
    unshield(k.store, k)
    assert k.store.text is None
    assert k.observable() == with_late.observable()
