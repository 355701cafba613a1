"""Parse and format Linux cpu-list strings ("0-2,8-10"); pure functions, no imports at run time."""

from __future__ import annotations

from kcm.errors import ParseError

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True

if TYPE_CHECKING:
    from collections.abc import Iterable

# A bound on CPU numbers that keeps a typo like "0-99999999" from building a huge set.
MAX_CPU = 1 << 16


def _parse_cpu(text: str, whole: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ParseError(f"invalid cpu list {whole!r}: {text!r} is not a CPU number")
    # Length first: int() refuses strings of over 4300 digits with a plain ValueError.
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(MAX_CPU)) or int(digits) >= MAX_CPU:
        shown = digits if len(digits) <= 20 else f"{digits[:10]}... ({len(digits)} digits)"
        raise ParseError(f"invalid cpu list {whole!r}: CPU {shown} is out of range")
    return int(digits)


def parse(text: str) -> frozenset[int]:
    """The CPUs of a cpu-list string such as ``"0-2,8-10"``; surrounding whitespace is allowed.

    An empty string is the empty set (sysfs writes ``offline`` that way).
    """
    whole = text
    text = text.strip()
    if not text:
        return frozenset()
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        lo = _parse_cpu(first, whole)
        if not dash:
            cpus.add(lo)
            continue
        hi = _parse_cpu(last, whole)
        if hi < lo:
            raise ParseError(f"invalid cpu list {whole!r}: range {part!r} runs backwards")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def parse_name(text: str) -> frozenset[int]:
    """The CPUs a CPU list directory's name gives, held to the strict form kcm and CMK write.

    Digits without leading zeros, ranges ``a-b`` with ``a < b``, no whitespace, no empty
    element, no CPU named twice: so two names of one pool can never spell the same CPUs
    differently (``1``, ``01``, ``1-1``, ``1,1``). Any order is fine: CMK wrote ``2,6,1,5``.
    """
    if not text:
        raise ParseError("an empty name names no CPUs")
    cpus: set[int] = set()
    named = 0
    for part in text.split(","):
        first, dash, last = part.partition("-")
        lo = _name_cpu(first, part)
        if not dash:
            cpus.add(lo)
            named += 1
            continue
        hi = _name_cpu(last, part)
        if hi <= lo:
            raise ParseError(f"range {part!r} does not run from a lower to a higher CPU")
        cpus.update(range(lo, hi + 1))
        named += hi - lo + 1
    if len(cpus) != named:
        raise ParseError(f"{text!r} names a CPU twice")
    return frozenset(cpus)


def _name_cpu(text: str, part: str) -> int:
    if not (text.isdigit() and text.isascii()):
        what = "an empty element" if not part else f"{part!r} is not a CPU or a range of CPUs"
        raise ParseError(what)
    if text[0] == "0" and len(text) > 1:
        raise ParseError(f"{text!r} has a leading zero")
    if len(text) > len(str(MAX_CPU)) or int(text) >= MAX_CPU:
        shown = text if len(text) <= 20 else f"{text[:10]}... ({len(text)} digits)"
        raise ParseError(f"CPU {shown} is out of range")
    return int(text)


def format(cpus: Iterable[int]) -> str:
    """The canonical cpu-list string of ``cpus``: ascending, runs of 3+ written as ranges.

    Runs of two are written as ``a-b`` too, which is what the kernel prints (``0-1``).
    """
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def is_canonical(text: str) -> bool:
    """Whether ``text`` is exactly the canonical form of the CPUs it names."""
    try:
        cpus = parse(text)
    except ParseError:
        return False
    return bool(cpus) and format(cpus) == text


def from_mask(mask: int) -> frozenset[int]:
    """The CPUs of a hexadecimal core mask's integer value (bit n is CPU n)."""
    if mask < 0:
        raise ParseError(f"invalid core mask {mask:#x}: negative")
    # One pass over the binary digits: shifting the mask bit by bit is quadratic in its width
    # (0.1 s for CPU 65535).
    digits = bin(mask)[:1:-1]  # least significant bit first
    return frozenset(cpu for cpu, bit in enumerate(digits) if bit == "1")


def to_mask(cpus: Iterable[int]) -> int:
    """The core mask whose bit n is set for each CPU n."""
    mask = 0
    for cpu in cpus:
        mask |= 1 << cpu
    return mask


def parse_mask(text: str) -> frozenset[int]:
    """The CPUs of a kernel bitmap in hex, as ``smp_affinity`` and the workqueue ``cpumask``
    print it: 32-bit groups separated by commas, most significant first (``ff,00000003``)."""
    digits = text.strip().replace(",", "")
    if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ParseError(f"invalid CPU mask {text.strip()[:40]!r}")
    if len(digits) * 4 > MAX_CPU:
        raise ParseError(f"invalid CPU mask {text.strip()[:40]!r}: wider than {MAX_CPU} CPUs")
    return from_mask(int(digits, 16))


def format_mask(cpus: Iterable[int]) -> str:
    """A kernel bitmap in hex for ``cpus``: 32-bit groups, commas between, as the kernel
    prints it (``3``, ``1,00000000``)."""
    mask = to_mask(cpus)
    groups = []
    while True:
        groups.append(mask & 0xFFFFFFFF)
        mask >>= 32
        if not mask:
            break
    head, *rest = reversed(groups)
    return ",".join([f"{head:x}", *(f"{g:08x}" for g in rest)])
