"""In the guest, both modes: the machine a fence test gets (vCPUs, steerable IRQs, workqueues)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kcm import cpulist
from tests.guest.kernel import guest_cpus

pytestmark = pytest.mark.guest("v1", "v2")


def interrupts() -> dict[int, str]:
    """IRQ number -> the name /proc/interrupts gives it (its last column)."""
    named = {}
    for line in Path("/proc/interrupts").read_text().splitlines()[1:]:
        number, _, rest = line.partition(":")
        if number.strip().isdigit():
            named[int(number)] = rest.split()[-1]
    return named


def test_the_guest_has_the_vcpus_it_was_given() -> None:
    cpus = guest_cpus()
    assert os.cpu_count() == cpus
    assert Path("/sys/devices/system/cpu/online").read_text().strip() == f"0-{cpus - 1}"
    assert os.sched_getaffinity(0) == set(range(cpus))


def test_the_root_share_is_read_only_and_scratch_is_writable(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="Read-only file system"):
        Path(__file__).with_name("written-by-the-guest").write_text("x")
    (tmp_path / "scratch").write_text("x")
    assert (tmp_path / "scratch").read_text() == "x"


def test_the_virtio_irqs_can_be_steered_off_a_cpu() -> None:
    # The 9p share's virtio queue interrupts on every file the guest reads: the interrupt
    # source a fence test can drive, and one the fence must be able to move.
    virtio = [irq for irq, name in interrupts().items() if name.startswith("virtio")]
    assert virtio, Path("/proc/interrupts").read_text()
    last = guest_cpus() - 1
    for irq in virtio:
        path = Path(f"/proc/irq/{irq}/smp_affinity_list")
        before = path.read_text().strip()
        try:
            path.write_text(f"0-{last - 1}")
            assert path.read_text().strip() == f"0-{last - 1}"
            # x86 moves an IRQ when it next fires: a lookup of a new name on the share is one.
            assert not Path(f"/usr/kcm-guest-{os.getpid()}-{irq}").exists()
            effective = Path(f"/proc/irq/{irq}/effective_affinity_list").read_text()
            assert last not in cpulist.parse(effective.strip())
        finally:
            path.write_text(before)
        assert path.read_text().strip() == before


def test_the_timer_irq_refuses_to_be_steered() -> None:
    # What a fence must report rather than hide: IRQ 0 (the timer) keeps its affinity, and
    # the kernels say so differently.
    refusal = {"6.1": errno.EIO, "6.12": errno.EPERM}[".".join(os.uname().release.split(".")[:2])]
    assert interrupts()[0] == "timer"
    path = Path("/proc/irq/0/smp_affinity_list")
    before = path.read_text()
    with pytest.raises(OSError, match=os.strerror(refusal)):
        path.write_text("0")
    assert path.read_text() == before


def test_the_unbound_workqueue_cpumask_names_every_cpu() -> None:
    mask = Path("/sys/devices/virtual/workqueue/cpumask")
    assert int(mask.read_text(), 16) == (1 << guest_cpus()) - 1
    assert os.access(mask, os.W_OK)
