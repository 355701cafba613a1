"""How ``kcm shield`` and ``kcm unshield`` use the record, whatever carries out the steps.

The host (read it, run one step) and the record's store (load, save atomically and durably,
remove) are passed in: phase 2 gives the real ones (cgroupfs, /proc/irq, sysfs, systemctl, the
state directory under its lock), the tests an in-memory kernel that can be killed at any step.

Why a ``kill -9`` at any instant leaves a host the next run brings to a known state:

1. Every change shield makes is in the record, with the prior value read before kcm touched
   it, before the change is made: the record is saved (atomically: it is the old one or the
   new one, never torn) before the first step, and every later save only adds to it.
2. Each step is idempotent and needs no memory of earlier steps: ``ensure`` makes a target
   hold its new value (whatever it holds now), ``restore`` puts the prior back where the
   target still holds the new value. So the host after a kill is the original with some steps
   done, and running all steps again finishes the job.
3. A rerun of shield never takes a prior from a target kcm may have changed:
   ``original_view`` puts the recorded priors back into what it reads, and the plan made from
   that is the first run's plan (plus what appeared since, whose priors kcm never touched).
4. unshield saves the record as ``unshielding``, restores every change, last first, and
   removes the record only when nothing failed. Killed before the removal, it leaves a record
   whose restores the next unshield runs again (each a no-op where done); the next shield
   instead re-ensures everything.
5. A record made before the last boot describes nothing that is still there (kcm's cgroups,
   IRQ affinities, masks and ``--runtime`` unit properties do not survive a reboot): both
   commands drop it.

Both are idempotent: a second shield finds every step done; an unshield without a record has
nothing to do.

6. While the record says shielded, ``keep`` (each reconcile pass) runs shield's re-plan again:
   the same plan, plus what appeared since (a process started in the root, a kernel thread
   kthreadd made, an IRQ steered back onto a dataplane CPU), and ensures it all. Only what is
   new moves, since every other step finds its target done. The record is saved, first, only
   when the plan has a change the record lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from kcm.errors import KcmError
from kcm.fence import record as rec
from kcm.fence.plan import (
    HostView,
    Plan,
    Refusal,
    Step,
    apply_steps,
    next_record,
    original_view,
    plan_shield,
    undo_steps,
)


class Outcome(StrEnum):
    """What one step did on the host."""

    DONE = "done"  # it changed the target
    ALREADY = "already"  # the target already held the value
    CONFLICT = "conflict"  # restore: someone else changed the target since; left as it is
    REFUSED = "refused"  # the kernel refuses (a managed IRQ, a thread it will not move)
    GONE = "gone"  # the target is gone (an IRQ freed, a thread exited): nothing to do
    FAILED = "failed"  # it could not be done now; a rerun tries again


@dataclass(frozen=True, slots=True)
class StepResult:
    step: Step
    outcome: Outcome
    detail: str = ""


class Host(Protocol):
    def boot_id(self) -> str: ...

    def read(self) -> HostView: ...

    def run(self, step: Step) -> StepResult: ...


class RecordStore(Protocol):
    def load(self) -> rec.Record | None: ...

    def save(self, record: rec.Record) -> None: ...

    def remove(self) -> None: ...


class ShieldRefused(KcmError):
    """The host has something that stops the shield before it starts; nothing was changed."""

    exit_code = 8


@dataclass(frozen=True, slots=True)
class Report:
    """What a shield or unshield run did: each step's outcome, and what the plan says the
    fence cannot do."""

    results: tuple[StepResult, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    notices: tuple[str, ...] = ()
    dropped_stale_record: bool = False
    record_removed: bool = False
    plan: Plan | None = field(default=None)

    @property
    def failed(self) -> tuple[StepResult, ...]:
        return tuple(r for r in self.results if r.outcome is Outcome.FAILED)


def _current(store: RecordStore, boot_id: str) -> tuple[rec.Record | None, bool]:
    """The stored record if it belongs to this boot; and whether an older one was found."""
    found = store.load()
    if found is not None and found.boot_id != boot_id:
        return None, True
    return found, False


def shield(store: RecordStore, host: Host, lists: Mapping[str, frozenset[int]]) -> Report:
    """Fence ``lists`` (dataplane list name -> CPUs): record, then apply, then mark done."""
    view = host.read()
    previous, stale_boot = _current(store, view.boot_id)
    plan = plan_shield(original_view(view, previous), lists)
    blocking = [r for r in plan.refusals if r.blocking]
    if blocking:
        raise ShieldRefused(
            "kcm shield cannot start: "
            + "; ".join(f"{r.what}: {r.why}" for r in blocking)
            + " (nothing was changed)"
        )
    record = next_record(plan, previous, view.boot_id)
    store.save(record)  # before any change
    results = tuple(host.run(step) for step in apply_steps(record))
    if not any(r.outcome is Outcome.FAILED for r in results):
        store.save(replace(record, phase=rec.SHIELDED, stale=()))
    return Report(results, plan.refusals, plan.notices, stale_boot, plan=plan)


def keep(store: RecordStore, host: Host, lists: Mapping[str, frozenset[int]]) -> Report | None:
    """Keep a shielded host shielded: fence what appeared since. ``None`` unless the record
    (of this boot) says shielded: a shield or unshield under way, or none, is left alone."""
    view = host.read()
    previous, _ = _current(store, view.boot_id)
    if previous is None or previous.phase != rec.SHIELDED:
        return None
    plan = plan_shield(original_view(view, previous), lists)
    if any(r.blocking for r in plan.refusals):
        return Report(refusals=plan.refusals, plan=plan)
    record = next_record(plan, previous, view.boot_id)
    grown = record.changes != previous.changes or bool(record.stale)
    if grown:
        store.save(record)  # before any change, as shield does
    results = tuple(host.run(step) for step in apply_steps(record))
    if grown and not any(r.outcome is Outcome.FAILED for r in results):
        store.save(replace(record, phase=rec.SHIELDED, stale=()))
    return Report(results, plan.refusals, plan.notices, plan=plan)


def unshield(store: RecordStore, host: Host) -> Report:
    """Undo what the record says shield changed; remove the record once all of it is undone."""
    record, stale_boot = _current(store, host.boot_id())
    if record is None:
        if stale_boot:
            store.remove()
        return Report(dropped_stale_record=stale_boot, record_removed=stale_boot)
    if record.phase != rec.UNSHIELDING:
        store.save(replace(record, phase=rec.UNSHIELDING))
    results = tuple(host.run(step) for step in undo_steps(record))
    done = not any(r.outcome is Outcome.FAILED for r in results)
    if done:
        store.remove()
    return Report(results, record_removed=done)
