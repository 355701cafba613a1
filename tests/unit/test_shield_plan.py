"""The shield's plan over named host situations: the exact changes, each with its prior, what
the fence cannot do and what the operator must set; and the undo from the record alone."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kcm.errors import StateError
from kcm.fence import record as rec
from kcm.fence.changes import from_json, to_json
from kcm.fence.plan import (
    CgroupView,
    HostView,
    IrqBalanceView,
    IrqView,
    Plan,
    TaskView,
    apply_steps,
    next_record,
    original_view,
    plan_shield,
    undo_steps,
)
from kcm.fence.protocol import Outcome, ShieldRefused, shield
from kcm.host.cpusets import Cpuset
from tests.fixtures.fakekernel import Clock, FakeKernel, KCpuset, KIrq, KTask, MemoryStore
from tests.unit.test_shield_protocol import fresh, v1_host

ALL = frozenset(range(4))
DP = {"3": frozenset({3})}


def cpuset(path: str, cpus: str, **kw: object) -> Cpuset:
    from kcm import cpulist

    return Cpuset(path, cpus, cpulist.parse(cpus) if cpus else ALL, **kw)  # type: ignore[arg-type]


def task(pid: int, comm: str, allowed: str, cgroup: str = "/", **kw: object) -> TaskView:
    return TaskView(
        pid,
        pid,
        comm,
        allowed=allowed,
        start_time=pid,
        cgroup=cgroup,
        kernel=bool(kw.get("kernel")),
        no_setaffinity=bool(kw.get("fixed")),
    )


def ops(plan: Plan) -> list[dict[str, object]]:
    return [to_json(c) for c in plan.changes]


def host(cg: CgroupView | None, *tasks: TaskView, **kw: object) -> HostView:
    fields: dict[str, object] = {
        "boot_id": "b",
        "online": ALL,
        "cgroup": cg,
        "tasks": tasks,
        "irqs": (),
        "default_smp_affinity": None,
        "workqueue_cpumask": None,
    }
    fields.update(kw)
    return HostView(**fields)  # type: ignore[arg-type]


KTHREADS = (
    task(2, "kthreadd", "0-3", kernel=True),
    task(22, "ksoftirqd/3", "3", kernel=True, fixed=True),
    task(40, "kworker/u8:0", "0-3", kernel=True, fixed=True),
    task(60, "kcompactd0", "0-3", kernel=True),
)


# -- cgroup v1 -------------------------------------------------------------------------------


def test_v1_host() -> None:
    kernel, lists = v1_host()
    plan = plan_shield(kernel.read(), lists)
    assert plan.backend == "cgroup-v1"
    assert ops(plan) == [
        # the threads whose own affinity a cpuset move would reset, restored last on undo
        {"op": "pin", "pid": 5, "tid": 5, "start_time": 5, "prior": "3"},
        {"op": "pin", "pid": 7, "tid": 7, "start_time": 7, "prior": "2"},
        {
            "op": "mkdir",
            "path": "cpuset/kcm-system",
            "files": [["cpuset.cpus", "0-2"], ["cpuset.mems", "0"]],
            "evacuate": True,
        },
        # children first: v1 wants a child's CPUs within its parent's
        {
            "op": "write",
            "root": "cgroup",
            "path": "cpuset/docker/c1/cpuset.cpus",
            "compare": "cpus",
            "prior": "2-3",
            "new": "2",
            "what": "cpuset /docker/c1",
        },
        {
            "op": "write",
            "root": "cgroup",
            "path": "cpuset/docker/cpuset.cpus",
            "compare": "cpus",
            "prior": "0-3",
            "new": "0-2",
            "what": "cpuset /docker",
        },
        {
            "op": "move-tasks",
            "source": "cpuset",
            "target": "cpuset/kcm-system",
            "file": "tasks",
            "kernel_threads": True,
            "keep": [],
        },
        # every cpuset spanning CPU 3 and another, the root included
        {
            "op": "write",
            "root": "cgroup",
            "path": "cpuset/cpuset.sched_load_balance",
            "compare": "text",
            "prior": "1",
            "new": "0",
            "what": "cpuset /",
        },
        {
            "op": "write",
            "root": "cgroup",
            "path": "cpuset/kcm/cpuset.sched_load_balance",
            "compare": "text",
            "prior": "1",
            "new": "0",
            "what": "cpuset /kcm",
        },
        {
            "op": "write",
            "root": "cgroup",
            "path": "cpuset/kcm/s/cpuset.sched_load_balance",
            "compare": "text",
            "prior": "1",
            "new": "0",
            "what": "cpuset /kcm/s",
        },
        # kthreadd stays in the root cpuset; its affinity is set instead
        {
            "op": "affinity",
            "pid": 2,
            "tid": 2,
            "start_time": 100,
            "prior": "0-3",
            "new": "0-2",
            "what": "kernel thread kthreadd (2)",
        },
        {
            "op": "write",
            "root": "proc",
            "path": "irq/36/smp_affinity_list",
            "compare": "cpus",
            "prior": "0-3",
            "new": "0-2",
            "what": "IRQ 36 (dev)",
            "identity": "dev",
        },
        {
            "op": "write",
            "root": "proc",
            "path": "irq/default_smp_affinity",
            "compare": "mask",
            "prior": "f",
            "new": "7",
            "what": "new IRQs' affinity",
        },
        {
            "op": "write",
            "root": "sys",
            "path": "devices/virtual/workqueue/cpumask",
            "compare": "mask",
            "prior": "f",
            "new": "7",
            "what": "unbound workqueues",
        },
    ]
    assert [r.what for r in plan.refusals] == ["kernel thread kthreadd (2)", "IRQ 37 (nvme0q3)"]
    assert plan.notices == (
        "boot-only, and not set by kcm: for the rest of the isolation (the scheduler tick,"
        " RCU callbacks, managed IRQs) boot with isolcpus=managed_irq,domain,3 nohz_full=3"
        " rcu_nocbs=3",
    )


def test_v1_a_cpuset_of_dataplane_cpus_only_is_refused_with_its_parents() -> None:
    cg = CgroupView(
        "v1",
        "cpuset",
        (
            cpuset("/", "0-3", load_balance=False),
            cpuset("/dpdk", "2-3", load_balance=False),
            cpuset("/dpdk/app", "3", load_balance=False),
        ),
        "/kcm",
    )
    plan = plan_shield(host(cg), DP)
    assert [(r.what, r.why) for r in plan.refusals] == [
        (
            "cpuset /dpdk/app",
            "it holds only dataplane CPUs (3): its tasks keep running there; run them through"
            " kcm isolate, or remove it",
        ),
        (
            "cpuset /dpdk",
            "its child /dpdk/app keeps dataplane CPUs, and cgroup v1 wants a child's CPUs"
            " within its parent's",
        ),
    ]
    assert not any("dpdk" in str(c) for c in ops(plan))


def test_v1_a_leftover_system_cpuset_blocks_the_shield() -> None:
    kernel, lists = v1_host()
    kernel.cpusets["/kcm-system"] = KCpuset("/kcm-system", "0-2", load_balance=True)
    plan = plan_shield(kernel.read(), lists)
    assert [r.what for r in plan.refusals if r.blocking] == ["cpuset /kcm-system"]
    with pytest.raises(ShieldRefused, match="cpuset /kcm-system: it exists and no shield record"):
        shield(kernel.store, kernel, lists)
    assert kernel.store.text is None  # nothing written, nothing changed


def test_v1_the_levels_above_the_states_subtree_are_not_narrowed() -> None:
    # kcm.host.cgroups nests a state's bookings as /<parent>/<state id>/<pool>/<list>/...:
    # narrowing /kcm would narrow every booking below it.
    cg = CgroupView(
        "v1",
        "cpuset",
        (
            cpuset("/", "0-3", load_balance=True),
            cpuset("/kcm", "0-3", load_balance=True),
            cpuset("/kcm/etc-kcm", "0-3", load_balance=True),
            cpuset("/kcm/etc-kcm/dataplane", "0-3", load_balance=True),
            cpuset("/kcm/etc-kcm/dataplane/3", "3", load_balance=True),
        ),
        "/kcm/etc-kcm",
    )
    plan = plan_shield(host(cg, task(1, "init", "0-3")), DP)
    narrowed = [c["path"] for c in ops(plan) if str(c.get("path")).endswith("/cpuset.cpus")]
    assert narrowed == []
    balancing = [c["what"] for c in ops(plan) if str(c.get("path")).endswith("_load_balance")]
    assert balancing == [
        "cpuset /",
        "cpuset /kcm",
        "cpuset /kcm/etc-kcm",
        "cpuset /kcm/etc-kcm/dataplane",
    ]  # the list's own cpuset balances its CPU alone


def test_v1_a_thread_pinned_to_housekeeping_cpus_keeps_them_through_the_move() -> None:
    # Before 6.2 the kernel sets a moved task's affinity to its new cpuset's CPUs: a daemon
    # taskset to 0-1 would come out on 0-2. The shield sets 0-1 again after the move (and
    # unshield, undoing last first, gets back to where it was).
    cg = CgroupView("v1", "cpuset", (cpuset("/", "0-3", load_balance=True),), "/kcm")
    view = host(cg, task(1, "init", "0-3"), task(80, "daemon", "0-1"), task(81, "spans", "2-3"))
    changes = ops(plan_shield(view, DP))
    assert [c for c in changes if c["op"] in ("pin", "affinity")] == [
        {"op": "pin", "pid": 80, "tid": 80, "start_time": 80, "prior": "0-1"},
        {"op": "pin", "pid": 81, "tid": 81, "start_time": 81, "prior": "2-3"},
        {
            "op": "affinity",
            "pid": 80,
            "tid": 80,
            "start_time": 80,
            "prior": "0-2",
            "new": "0-1",
            "what": "thread daemon (80)",
        },
        {
            "op": "affinity",
            "pid": 81,
            "tid": 81,
            "start_time": 81,
            "prior": "0-2",
            "new": "2",
            "what": "thread spans (81)",
        },
    ]
    kinds = [c["op"] for c in changes]
    assert kinds.index("move-tasks") < kinds.index("affinity")  # after the move


def test_v1_booked_processes_in_the_root_stay() -> None:
    cg = CgroupView("v1", "cpuset", (cpuset("/", "0-3", load_balance=True),), "/kcm")
    view = host(cg, task(1, "init", "0-3"), task(90, "l2fwd", "3"), bookings=frozenset({90}))
    plan = plan_shield(view, DP)
    moves = [c for c in ops(plan) if c["op"] == "move-tasks"]
    assert moves == [
        {
            "op": "move-tasks",
            "source": "cpuset",
            "target": "cpuset/kcm-system",
            "file": "tasks",
            "kernel_threads": True,
            "keep": [90],
        }
    ]
    assert not any(c["op"] == "pin" for c in ops(plan))  # init is not pinned; 90 stays put


# -- cgroup v2 -------------------------------------------------------------------------------


def v2_view(exclusive: bool = True, control: str = "cpu memory") -> HostView:
    excl = "" if exclusive else None
    cg = CgroupView(
        "v2",
        "",
        (
            cpuset("/", ""),
            cpuset("/docker", "", partition="member", exclusive=excl),
            cpuset("/kcm", "0-3", partition="member", exclusive=excl),
            cpuset("/kcm/s", "0-3", partition="member", exclusive=excl),
            cpuset("/kcm/s/dataplane", "3", partition="member", exclusive=excl),
            cpuset("/kcm/s/dataplane/3", "3", partition="member", exclusive=excl),
        ),
        "/kcm",
        list_cgroups=(("3", "/kcm/s/dataplane/3"),),
        subtree_control=control,
        exclusive_supported=exclusive,
    )
    return host(cg, task(1, "init", "0-3"), task(300, "dockerd", "0-3", "/docker"), *KTHREADS)


def test_v2_host_with_isolated_partitions() -> None:
    plan = plan_shield(v2_view(), DP)
    assert plan.backend == "cgroup-v2"
    assert ops(plan) == [
        {
            "op": "write",
            "root": "cgroup",
            "path": "cgroup.subtree_control",
            "compare": "controllers",
            "prior": "cpu memory",
            "new": "cpu memory cpuset",
            "what": "the root cgroup's controllers",
        },
        {"op": "mkdir", "path": "kcm-system", "files": [["cpuset.cpus", "0-2"]], "evacuate": True},
        # a v2 child never has CPUs its parent lacks: the top level is enough
        {
            "op": "write",
            "root": "cgroup",
            "path": "docker/cpuset.cpus",
            "compare": "cpus",
            "prior": "",
            "new": "0-2",
            "what": "cpuset /docker",
        },
        {
            "op": "move-tasks",
            "source": "",
            "target": "kcm-system",
            "file": "cgroup.procs",
            "kernel_threads": False,
            "keep": [],
        },
        # cpuset.cpus.exclusive down kcm's subtree, then the list's isolated partition
        {
            "op": "write",
            "root": "cgroup",
            "path": "kcm/cpuset.cpus.exclusive",
            "compare": "cpus",
            "prior": "",
            "new": "3",
            "what": "cgroup /kcm",
        },
        {
            "op": "write",
            "root": "cgroup",
            "path": "kcm/s/cpuset.cpus.exclusive",
            "compare": "cpus",
            "prior": "",
            "new": "3",
            "what": "cgroup /kcm/s",
        },
        {
            "op": "write",
            "root": "cgroup",
            "path": "kcm/s/dataplane/cpuset.cpus.exclusive",
            "compare": "cpus",
            "prior": "",
            "new": "3",
            "what": "cgroup /kcm/s/dataplane",
        },
        {
            "op": "write",
            "root": "cgroup",
            "path": "kcm/s/dataplane/3/cpuset.cpus.exclusive",
            "compare": "cpus",
            "prior": "",
            "new": "3",
            "what": "cgroup /kcm/s/dataplane/3",
        },
        {
            "op": "write",
            "root": "cgroup",
            "path": "kcm/s/dataplane/3/cpuset.cpus.partition",
            "compare": "text",
            "prior": "member",
            "new": "isolated",
            "what": "cgroup /kcm/s/dataplane/3",
        },
        # kernel threads stay in the v2 root: their affinity is set directly
        {
            "op": "affinity",
            "pid": 2,
            "tid": 2,
            "start_time": 2,
            "prior": "0-3",
            "new": "0-2",
            "what": "kernel thread kthreadd (2)",
        },
        {
            "op": "affinity",
            "pid": 60,
            "tid": 60,
            "start_time": 60,
            "prior": "0-3",
            "new": "0-2",
            "what": "kernel thread kcompactd0 (60)",
        },
    ]
    assert [r.what for r in plan.refusals] == ["kernel thread kworker/u8:0 (40)"]


def test_v2_kernel_without_exclusive_cpus_keeps_load_balancing_and_says_so() -> None:
    plan = plan_shield(v2_view(exclusive=False), DP)
    assert not any("partition" in str(c) or "exclusive" in str(c) for c in ops(plan))
    (lb,) = [r for r in plan.refusals if r.what == "scheduler load balancing"]
    assert lb.why == (
        "this kernel has no cpuset.cpus.exclusive (Linux 6.7): no isolated partition can be"
        " made below kcm's subtree, so load balancing stays on for CPUs 3; boot with"
        " isolcpus=domain,3 to turn it off"
    )


def test_v2_a_list_cgroup_not_made_yet_is_said() -> None:
    view = v2_view()
    assert view.cgroup is not None
    cg = replace(
        view.cgroup, list_cgroups=(("3", "/kcm/s/dataplane/3"), ("2", "/kcm/s/dataplane/2"))
    )
    plan = plan_shield(replace(view, cgroup=cg), {"3": frozenset({3}), "2": frozenset({2})})
    assert any(
        r.why.startswith("the cgroups of dataplane lists 2 do not exist yet") for r in plan.refusals
    )
    assert "kcm/s/dataplane/3/cpuset.cpus.partition" in [c.get("path") for c in ops(plan)]


def test_systemd_owned_v2_tree_uses_allowed_cpus_on_its_slices() -> None:
    cg = CgroupView(
        "v2",
        "",
        (
            cpuset("/", ""),
            cpuset("/init.scope", ""),
            cpuset("/system.slice", ""),
            cpuset("/user.slice", "1-3"),
            cpuset("/machine.slice", "0-1"),
            cpuset("/kcm.slice", "0-3"),
        ),
        "/kcm.slice/kcm-s.scope",
        systemd_units=(
            ("init.scope", ""),
            ("kcm.slice", ""),
            ("machine.slice", "0-1"),
            ("system.slice", ""),
            ("user.slice", "1-3"),
        ),
    )
    view = host(cg, task(1, "systemd", "0-3", "/init.scope"), *KTHREADS)
    plan = plan_shield(view, DP)
    assert plan.backend == "systemd"
    units = [c for c in ops(plan) if c["op"] == "systemd"]
    assert units == [
        {
            "op": "systemd",
            "unit": "init.scope",
            "property": "AllowedCPUs",
            "prior": "",
            "new": "0-2",
        },
        {
            "op": "systemd",
            "unit": "system.slice",
            "property": "AllowedCPUs",
            "prior": "",
            "new": "0-2",
        },
        {
            "op": "systemd",
            "unit": "user.slice",
            "property": "AllowedCPUs",
            "prior": "1-3",
            "new": "1-2",
        },
    ]  # kcm's own slice, and machine.slice (no dataplane CPU), untouched
    assert not any(c["op"] in ("mkdir", "move-tasks") for c in ops(plan))  # systemd's tree


def test_systemd_with_kcm_inside_system_slice_narrows_its_other_units() -> None:
    # KCM_CGROUP_PARENT=system.slice/kcm-bookings.service: narrowing system.slice would narrow
    # the bookings, so its other units are narrowed one by one, and the operator is told.
    subtree = "/system.slice/kcm-bookings.service/etc-kcm"
    cg = CgroupView(
        "v2",
        "",
        (
            cpuset("/", ""),
            cpuset("/init.scope", ""),
            cpuset("/system.slice", ""),
            cpuset("/system.slice/sshd.service", ""),
            cpuset("/system.slice/kcm-bookings.service", ""),
            cpuset("/user.slice", ""),
        ),
        subtree,
        systemd_units=(
            ("init.scope", ""),
            ("system.slice", ""),
            ("system.slice/kcm-bookings.service", ""),
            ("system.slice/sshd.service", ""),
            ("user.slice", "2-3"),
        ),
    )
    plan = plan_shield(host(cg, task(1, "systemd", "0-3", "/init.scope")), DP)
    assert [(c["unit"], c["prior"], c["new"]) for c in ops(plan) if c["op"] == "systemd"] == [
        ("init.scope", "", "0-2"),
        ("sshd.service", "", "0-2"),
        ("user.slice", "2-3", "2"),
    ]
    (notice,) = [n for n in plan.notices if n.startswith("kcm's cgroups")]
    assert "lie inside system.slice" in notice and "Slice=kcm.slice" in notice
    # a rerun puts the priors back by the unit's path
    k = original_view(
        replace(
            host(cg, task(1, "systemd", "0-2", "/init.scope")),
            cgroup=replace(
                cg,
                systemd_units=(
                    ("init.scope", "0-2"),
                    ("system.slice", ""),
                    ("system.slice/kcm-bookings.service", ""),
                    ("system.slice/sshd.service", "0-2"),
                    ("user.slice", "2"),
                ),
            ),
        ),
        next_record(plan, None, "b"),
    )
    assert plan_shield(k, DP).changes == plan.changes


def test_v2_bookings_held_by_pid_alone_keep_their_cpus_from_a_partition() -> None:
    # An isolated partition takes its CPUs from every cgroup outside it, the root included: a
    # booking held by PID in the root would lose its list.
    view = replace(v2_view(), bookings=frozenset({90}))
    view = replace(view, tasks=(*view.tasks, task(90, "l2fwd", "3")))
    plan = plan_shield(view, DP)
    assert not any("partition" in str(c.get("path")) for c in ops(plan))
    (refusal,) = [r for r in plan.refusals if r.what == "scheduler load balancing"]
    assert refusal.why.startswith("dataplane bookings held by PID alone, outside kcm's cgroups")
    assert "(PIDs 90)" in refusal.why and not refusal.blocking
    moves = [c for c in ops(plan) if c["op"] == "move-tasks"]
    assert [m["keep"] for m in moves] == [[90]]


# -- interrupts and irqbalance -----------------------------------------------------------------


def test_managed_irqs_are_refused_not_hidden() -> None:
    view = host(
        None,
        irqs=(
            IrqView(36, "0-3", True, "eth0-rx-0"),
            IrqView(37, "3", True, "eth0-rx-1"),
            IrqView(38, "2-3", False, "nvme0q3"),
            IrqView(39, "0-1", True, "ttyS0"),
        ),
    )
    plan = plan_shield(view, DP)
    irq_writes = [(c["path"], c["prior"], c["new"]) for c in ops(plan) if c["root"] == "proc"]
    assert irq_writes == [
        ("irq/36/smp_affinity_list", "0-3", "0-2"),
        ("irq/37/smp_affinity_list", "3", "0-2"),  # only dataplane CPUs: all housekeeping ones
    ]
    (managed,) = [r for r in plan.refusals if r.what.startswith("IRQ")]
    assert (managed.what, managed.blocking) == ("IRQ 38 (nvme0q3)", False)


def test_irqbalance_gets_its_banned_list_spelled_out() -> None:
    view = host(None, irqbalance=IrqBalanceView(812, frozenset({1}), "/etc/default/irqbalance"))
    (notice,) = [n for n in plan_shield(view, DP).notices if "irqbalance" in n]
    assert notice == (
        "irqbalance (pid 812) moves IRQs back onto dataplane CPUs 3: set"
        " IRQBALANCE_BANNED_CPULIST=1,3 in /etc/default/irqbalance and restart it"
        " (systemctl restart irqbalance); until then each kcm reconcile pass moves them off again"
    )


def test_irqbalance_already_leaving_the_cpus_alone_needs_nothing() -> None:
    banned = host(None, irqbalance=IrqBalanceView(812, frozenset({2, 3}), None))
    assert not [n for n in plan_shield(banned, DP).notices if "irqbalance" in n]
    # unconfigured, irqbalance itself leaves isolcpus and nohz_full CPUs alone
    isolated = host(None, irqbalance=IrqBalanceView(812, None, None), isolated=frozenset({3}))
    assert not [n for n in plan_shield(isolated, DP).notices if "irqbalance" in n]


def test_a_host_without_cpusets_is_fenced_by_affinity() -> None:
    view = host(None, task(1, "init", "0-3"), task(7, "pinned", "1"), *KTHREADS)
    plan = plan_shield(view, DP)
    assert plan.backend == "affinity"
    assert [(c["tid"], c["prior"], c["new"]) for c in ops(plan)] == [
        (1, "0-3", "0-2"),
        (2, "0-3", "0-2"),
        (60, "0-3", "0-2"),
    ]
    assert plan.refusals[0].what == "cpusets"


# -- what cannot be shielded at all ------------------------------------------------------------


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        ({}, "the dataplane pool has no CPU lists"),
        ({"0-3": ALL}, "the dataplane pool holds every online CPU (0-3)"),
        ({"7": frozenset({7})}, "dataplane CPUs 7 are not online (online: 0-3)"),
    ],
)
def test_impossible_shields_are_errors(lists: dict[str, frozenset[int]], message: str) -> None:
    with pytest.raises(StateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_shield(host(None), lists)


# -- the record: already shielded, half applied, undone from the record alone ------------------


def test_already_shielded_plans_the_same_changes_with_the_first_priors() -> None:
    kernel, lists = v1_host()
    first = plan_shield(kernel.read(), lists)
    k = fresh(kernel)
    shield(k.store, k, lists)
    stored = k.store.load()
    assert stored is not None and stored.phase == rec.SHIELDED
    # What is read now is shielded; with the record's priors put back it is the original.
    again = plan_shield(original_view(k.read(), stored), lists)
    assert again.changes == first.changes
    assert next_record(again, stored, "boot-1").stale == ()
    assert [k.run(step).outcome for step in apply_steps(stored)] == [Outcome.ALREADY] * len(
        stored.changes
    )


def test_a_half_applied_shield_after_a_crash_is_finished_from_its_record() -> None:
    kernel, lists = v1_host()
    k = fresh(kernel)
    plan = plan_shield(k.read(), lists)
    record = next_record(plan, None, "boot-1")
    k.store.save(record)
    steps = apply_steps(record)
    for step in steps[:5]:  # then kill -9
        k.run(step)
    assert k.observable() != kernel.observable()
    stored = k.store.load()
    assert stored is not None and stored.phase == rec.SHIELDING
    replanned = plan_shield(original_view(k.read(), stored), lists)
    assert replanned.changes == plan.changes  # the first run's priors, not today's values
    outcomes = [k.run(step).outcome for step in apply_steps(stored)]
    assert outcomes[:3] == [Outcome.ALREADY] * 3  # pins and the cgroup were done
    assert Outcome.DONE in outcomes[5:]


def test_undo_is_the_record_backwards() -> None:
    kernel, lists = v1_host()
    record = next_record(plan_shield(kernel.read(), lists), None, "b")
    undo = undo_steps(record)
    assert [s.action for s in undo] == ["restore"] * len(record.changes)
    assert [s.change for s in undo] == list(reversed(record.changes))
    # parents widened before children, the system cpuset removed after its tasks left,
    # and the pins set last, after every cpuset change that resets them
    kinds = [to_json(s.change)["op"] for s in undo]
    assert kinds[-3:] == ["mkdir", "pin", "pin"]
    assert kinds.index("move-tasks") < kinds.index("mkdir")


def test_stale_changes_are_restored_when_the_dataplane_shrinks() -> None:
    clock = Clock()
    k = FakeKernel(clock, MemoryStore(clock), ALL, "none")
    k.irqs = {36: KIrq(36, "0-3")}
    k.tasks = {1: KTask(1, 1, "init", ALL)}
    shield(k.store, k, {"2": frozenset({2}), "3": frozenset({3})})
    assert (k.irqs[36].allowed, k.tasks[1].allowed) == ("0-1", frozenset({0, 1}))
    shield(k.store, k, DP)  # list 2 left the dataplane pool
    assert (k.irqs[36].allowed, k.tasks[1].allowed) == ("0-2", frozenset({0, 1, 2}))
    stored = k.store.load()
    assert stored is not None and stored.stale == ()
    assert [to_json(c)["prior"] for c in stored.changes] == ["0-3", "0-3"]  # still the first


def test_the_record_format_round_trips_and_refuses_garbage() -> None:
    kernel, lists = v1_host()
    record = next_record(plan_shield(kernel.read(), lists), None, "b")
    assert rec.parse(rec.to_text(record)) == record
    for c in record.changes:
        assert from_json(to_json(c)) == c
    text = rec.to_text(record)
    for bad, why in (
        ("{", "not JSON"),
        ('{"format": "other"}', "not a kcm-shield record"),
        (text.replace('"version": 1', '"version": 2'), "record version 2"),
        (text.replace('"shielding"', '"halfway"'), "unknown phase 'halfway'"),
        (text.replace('"op": "pin"', '"op": "rm -rf"'), "unknown change 'rm -rf'"),
        (text.replace('"cpuset/kcm-system"', '"../../etc"'), "is not relative to its root"),
        (text.replace('"tasks"', '"release_agent"'), "unknown file 'release_agent'"),
        # a record names only what a shield writes: no other file under any root
        (
            text.replace("cpuset/docker/cpuset.cpus", "cpuset/release_agent"),
            "a shield never writes cgroup/cpuset/release_agent",
        ),
        (
            text.replace("devices/virtual/workqueue/cpumask", "power/state"),
            "a shield never writes sys/power/state",
        ),
        (
            text.replace("irq/default_smp_affinity", "sys/kernel/core_pattern"),
            "a shield never writes proc/sys/kernel/core_pattern",
        ),
        (
            text.replace('"cpuset.mems"', '"notify_on_release"'),
            "a shield writes only cpuset.cpus and cpuset.mems",
        ),
    ):
        with pytest.raises(ValueError, match=why):
            rec.parse(bad)
