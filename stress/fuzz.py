"""Fuzz every parser of kcm and the SPP runner: cpu lists, state trees, conf.yml, lease files.

    .venv/bin/python -m stress.fuzz [--examples N] [--target cpulist|state|conf|leases|all]
                                    [--time-limit SECONDS] [--seed S] [--jobs J]
                                    [--cli-every K] [--workdir DIR]

Hypothesis generates the inputs (no example database, seeded, no shrinking); each input is
checked in-process and counted in the test body itself, so the figures are inputs really
tried. An input is *accepted* (the parser returned a value, and that value passed the target's
invariants), a *clean error* (the parser raised the one error type it may raise), or a *crash*
(any other exception, a broken invariant, or a hang past HANG_SECONDS). For state trees, the
whole tree (names, types, modes, sizes, mtimes, ctimes, contents, link targets) is compared
before and after the reads: any difference counts as *state modified*. One state tree in
``--cli-every`` is also read by the real ``kcm describe``.

Failures do not stop the run: each distinct one (exception type and the frame that raised it)
is kept with the smallest input that showed it, printed at the end, and the exit status is 1.
``--time-limit`` bounds the whole run: past it no more inputs are generated, and the figures
say how many of the requested inputs were tried. ``--jobs 2`` fuzzes two targets at once.
State trees are built under ``--workdir`` (default /dev/shm: a tmpfs keeps 10^5 trees cheap).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import reprlib
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, TypeAlias

import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from kcm import cpulist, describe, model
from kcm import state as kcm_state
from kcm.cli import one_line
from kcm.errors import ParseError, StateError
from kcm.state import MAX_FILE_SIZE
from spp_runner import config, sppsh
from spp_runner.errors import ConfigError, LeaseError

TARGETS = ("cpulist", "leases", "conf", "state")  # fastest first: a time limit cuts the last
DEFAULT_EXAMPLES = 100_000
BATCH = 5_000  # inputs per hypothesis run: bounds its memory; each batch has its own seed
HANG_SECONDS = 30  # one input taking longer than this is a hang
CLI_TIMEOUT = 30.0
REPO = Path(__file__).resolve().parent.parent
KCM = os.path.join(os.path.dirname(sys.executable), "kcm")


# -- figures --------------------------------------------------------------------------------


@dataclass
class Failure:
    """One distinct failure: how often it happened and the smallest input that showed it."""

    kind: str  # "crash" or "state modified"
    signature: str
    count: int
    example: str
    size: int
    detail: str


@dataclass
class Figures:
    """What one target's run tried and found."""

    target: str
    requested: int
    seed: int
    inputs: int = 0
    accepted: int = 0
    clean_errors: int = 0
    crashes: int = 0
    state_modified: int = 0
    cli_runs: int = 0
    seconds: float = 0.0
    complete: bool = True  # False: the time limit stopped generation before ``requested``
    failures: dict[str, Failure] = field(default_factory=dict)

    def record(self, kind: str, signature: str, example: object, detail: str) -> None:
        size = _size(example)
        key = f"{kind}: {signature}"
        found = self.failures.get(key)
        if found is None:
            self.failures[key] = Failure(kind, signature, 1, _show(example), size, detail)
            return
        found.count += 1
        if size < found.size:
            found.example, found.size, found.detail = _show(example), size, detail

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_json(self) -> dict[str, object]:
        return {
            "script": "fuzz",
            "target": self.target,
            "requested": self.requested,
            "inputs": self.inputs,
            "accepted": self.accepted,
            "clean_errors": self.clean_errors,
            "crashes": self.crashes,
            "state_modified": self.state_modified,
            "cli_runs": self.cli_runs,
            "seconds": round(self.seconds, 1),
            "complete": self.complete,
            "seed": self.seed,
            "date": time.strftime("%Y-%m-%d"),
        }


class _Repr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:  # and repr() refuses ints of over 4300 digits
            return f"<{'-' if x < 0 else ''}{x.bit_length()}-bit int>"
        return repr(x)


_REPR = _Repr()
_REPR.maxstring = 120
_REPR.maxother = 120
_REPR.maxlevel = 12
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = 24


def _show(value: object) -> str:
    """A readable, bounded repr of an input: long strings and bytes are cut in the middle."""
    return _REPR.repr(value)


def _size(value: object) -> int:
    """A rough size of an input, to keep the smallest example of each failure."""
    if isinstance(value, str | bytes):
        return len(value) + 1
    if isinstance(value, dict):
        return 1 + sum(_size(k) + _size(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return 1 + sum(_size(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return 1 + value.bit_length() // 8
    return 1


class Violation(Exception):
    """An invariant the code under test broke: a wrong value, or bad CLI output.

    The message is ``"<which invariant>: <details>"``; the part before the colon names the
    failure, so inputs breaking the same invariant count as one failure.
    """


class Hang(Exception):
    """One input ran past HANG_SECONDS."""


class _TimeUp(BaseException):
    """The run's time limit passed; a BaseException so hypothesis lets it through at once."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang(f"no answer within {HANG_SECONDS}s")


def _signature(e: BaseException) -> str:
    """The exception type and the innermost frame of kcm or the runner that raised it."""
    if isinstance(e, Violation):
        return f"Violation: {str(e).partition(':')[0]}"
    # A Hang points at the code the alarm interrupted, not at the alarm's handler.
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.name != "_on_alarm"]
    ours = [f for f in frames if "/kcm/" in f.filename or "/spp_runner/" in f.filename]
    if not frames:
        return type(e).__name__
    where = (ours or frames)[-1]
    return f"{type(e).__name__} at {Path(where.filename).name}:{where.lineno} ({where.name})"


class Checker:
    """Runs one input's check under the hang alarm and sorts its outcome into the figures.

    ``check`` returns True when the input was accepted and False for a clean error; anything
    it raises is a crash.
    """

    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def __call__(self, value: object, check: Callable[[], bool]) -> None:
        figures = self.figures
        figures.inputs += 1
        signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
        try:
            accepted = check()
        except Exception as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            figures.crashes += 1
            detail = "".join(traceback.format_exception(e, limit=-8)).rstrip()
            figures.record("crash", _signature(e), value, detail)
            return
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if accepted:
            figures.accepted += 1
        else:
            figures.clean_errors += 1


# -- text mutation, shared by the text targets ----------------------------------------------

# Characters that mean something to one of the formats, and a few that look like digits.
SPECIAL_CHARS = "0123456789,-:[]{}\"'\\ \t\n\r#&*!|>?%@`~.xX_+\x00\x7f\u0661\u00b2\uff11\u200b"
REPEATS = (2, 3, 10, 100, 1000, 5000)


@st.composite
def mutated(
    draw: st.DrawFn, base: st.SearchStrategy[str], repeats: tuple[int, ...] = REPEATS
) -> str:
    """A text from ``base`` with a few edits: inserts, deletes, replacements, repeated spans.

    Repeating a span thousands of times is what makes deep nesting ("[[[[") and long digit
    runs ("11111...") out of ordinary text.
    """
    text = draw(base)
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(text)))
        end = draw(st.integers(pos, min(len(text), pos + 8)))
        edit = draw(st.sampled_from(("insert", "delete", "replace", "repeat")))
        piece = draw(st.text(alphabet=SPECIAL_CHARS, min_size=1, max_size=4) | st.text(max_size=3))
        if edit == "insert":
            text = text[:pos] + piece + text[pos:]
        elif edit == "delete":
            text = text[:pos] + text[end:]
        elif edit == "replace":
            text = text[:pos] + piece + text[end:]
        else:
            span = text[pos:end] or piece
            text = text[:pos] + span * draw(st.sampled_from(repeats)) + text[end:]
    return text


LONG = (10, 999, 1001, 4300, 4301, 5000, 100_000)


def long_runs(unit: str, sizes: tuple[int, ...] = LONG) -> st.SearchStrategy[str]:
    """``unit`` repeated around the sizes where Python's limits bite (4300 digits, recursion)."""
    return st.sampled_from(sizes).map(lambda n: unit * n)


# -- cpulist ----------------------------------------------------------------------------------

CPU_SETS = st.frozensets(
    st.integers(0, 64) | st.integers(0, cpulist.MAX_CPU - 1) | st.just(cpulist.MAX_CPU - 1),
    max_size=40,
)
CPU_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=SPECIAL_CHARS[:14], max_size=40),
    mutated(CPU_SETS.map(cpulist.format)),
    st.tuples(st.integers(-3, 1 << 20), st.integers(-3, 1 << 20)).map(lambda r: f"{r[0]}-{r[1]}"),
    st.sampled_from(("0-65535", "65535", "65536", "0-65536", " 0-1\n", "1,,2", "\u0661", "")),
    long_runs("1"),
    long_runs("0-1,"),
)
MASKS = st.one_of(
    st.integers(),
    st.integers(-1, 1 << 4096),
    st.sampled_from((0, -1, 1 << 65_535, (1 << 65_536) - 1, -(1 << 20_000))),
)


def cpulist_inputs() -> st.SearchStrategy[object]:
    return st.one_of(CPU_TEXT, CPU_TEXT, MASKS)


def check_cpulist(value: object, parse: Callable[[str], frozenset[int]] = cpulist.parse) -> bool:
    """Text: only ParseError, and a parsed set survives every round trip. An int: a mask."""
    if isinstance(value, int):
        try:
            cpus = cpulist.from_mask(value)
        except ParseError:
            if value >= 0:
                raise
            return False
        if cpulist.to_mask(cpus) != value:
            raise Violation(f"mask round trip: to_mask(from_mask({value})) differs")
        return True
    assert isinstance(value, str)
    canonical = cpulist.is_canonical(value)  # must never raise
    try:
        cpus = parse(value)
    except ParseError:
        if canonical:
            raise Violation("canonical text refused: is_canonical() but not parse()") from None
        return False
    if not all(isinstance(c, int) and 0 <= c < cpulist.MAX_CPU for c in cpus):
        raise Violation(f"CPUs out of range: parse({value!r})")
    text = cpulist.format(cpus)
    if cpulist.parse(text) != cpus or cpulist.format(cpulist.parse(text)) != text:
        raise Violation(f"format/parse round trip: {text!r}")
    if cpulist.is_canonical(text) != bool(cpus):
        raise Violation(f"is_canonical wrong on formatted text: {text!r}")
    if canonical and text != value:
        raise Violation(f"is_canonical wrong on input: {value!r} formats as {text!r}")
    if cpulist.from_mask(cpulist.to_mask(cpus)) != cpus:
        raise Violation(f"mask round trip: {text!r}")
    return True


# -- lease files --------------------------------------------------------------------------------

LEASE_KEYS = ("ip-address", "mac-address", "hostname", "expiry-time", "client-id", "iaid")
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(("spp12", "spp", "12", "192.168.122.10", "", "spp" + "1" * 5000)),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(LEASE_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
LEASE_ENTRY = st.fixed_dictionaries(
    {"ip-address": st.text(max_size=16) | st.just("192.168.122.10")},
    optional={
        "mac-address": JSON_SCALARS,
        "hostname": JSON_SCALARS | st.integers(0, 99).map(lambda n: f"spp{n}"),
        "expiry-time": st.integers() | st.floats() | st.none() | st.booleans() | st.text(),
        "client-id": JSON_SCALARS,
    },
)
# The same lease as a dnsmasq leases line, which is not what libvirt's status file holds.
DNSMASQ_LINE = st.tuples(
    st.integers(0, 1 << 33), st.text(max_size=17), st.text(max_size=15), st.text(max_size=10)
).map(lambda t: f"{t[0]} {t[1]} {t[2]} {t[3]} *")


def _json_dump(value: object) -> str:
    return json.dumps(value, indent=2)


LEASE_TEXT = st.one_of(
    st.lists(LEASE_ENTRY, max_size=6).map(_json_dump),
    mutated(st.lists(LEASE_ENTRY, max_size=3).map(_json_dump)),
    JSON_VALUES.map(json.dumps),
    st.lists(DNSMASQ_LINE | st.text(max_size=40), max_size=5).map("\n".join),
    mutated(st.lists(DNSMASQ_LINE, max_size=3).map("\n".join)),
    st.text(max_size=60),
    long_runs("["),
    long_runs('{"a":'),
    long_runs("1").map(lambda digits: f"[{digits}]"),
    long_runs("1", (5000, 100_000)).map(
        lambda digits: json.dumps([{"ip-address": "10.0.0.1", "hostname": f"spp{digits}x"}])
    ),
)
NOW = st.one_of(st.just(1.7e9), st.floats(), st.integers(-(1 << 40), 1 << 40))


def leases_inputs() -> st.SearchStrategy[object]:
    return st.tuples(LEASE_TEXT, NOW)


def check_leases(value: object, workdir: str) -> bool:
    """Only LeaseError, from the text and from the file; the leases are unexpired and sorted."""
    assert isinstance(value, tuple)
    text, now = value
    try:
        leases = sppsh.parse_leases(text, "virbr0.status", now)
    except LeaseError:
        accepted = False
    else:
        accepted = True
        for lease in leases:
            if lease.expiry is not None and lease.expiry < now:
                raise Violation(f"expired lease kept: {lease}")
            lease.line()
            try:
                sppsh.find(leases, lease.ip)
            except LeaseError:
                pass
        keys = [(lease.vm_id is None, lease.vm_id or 0, lease.ip) for lease in leases]
        if keys != sorted(keys):
            raise Violation(f"leases out of order: {keys[:5]}")
    path = os.path.join(workdir, "virbr0.status")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8", "surrogatepass"))
    try:
        from_file = sppsh.read_leases(path, now)
    except LeaseError:
        from_file = None
    if accepted and from_file != leases and not _has_surrogates(text):
        raise Violation(f"read_leases() and parse_leases() disagree: {from_file} {leases}")
    return accepted


# -- conf.yml ---------------------------------------------------------------------------------

SECTIONS = config._SECTIONS  # the known sections and their keys, as the parser knows them
KNOWN_KEYS = sorted({*SECTIONS, "id", "coremask"} | {k for v in SECTIONS.values() for k in v or ()})
HUGE_INTS = st.sampled_from((4300, 4301, 5000)).map(lambda digits: 10**digits - 1)
YAML_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-2, 70_000),
    st.floats(),
    st.text(max_size=20),
    st.integers(0, 1 << 80).map(hex),
    HUGE_INTS,
    HUGE_INTS.map(hex),
    st.sampled_from(
        (
            "auto",
            "AUTO ",
            "0x",
            "0x0C",
            "0x_1",
            "0x-1",
            "-0x3",
            "12",
            "~",
            "~root/x",
            "~nobody\x00",
            "a\x00b",
            "/tmp",
            "../spp",
            "512,512",
            "always",
            "never",
            "127.0.0.1",
            "::1",
            "\ud800",
        )
    ),
)
YAML_VALUES = st.recursive(
    YAML_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | YAML_SCALARS, inner, max_size=5)
    ),
    max_leaves=25,
)


def _section(name: str) -> st.SearchStrategy[object]:
    keys = SECTIONS[name]
    if keys is None:  # the list sections, and sudo
        entry = st.fixed_dictionaries(
            {}, optional={"id": YAML_SCALARS | st.integers(0, 20), "coremask": YAML_SCALARS}
        )
        return st.lists(entry | YAML_VALUES, max_size=5) | YAML_VALUES
    return st.dictionaries(st.sampled_from(keys), YAML_SCALARS, max_size=len(keys)) | YAML_VALUES


CONF_DOCS = st.one_of(
    st.fixed_dictionaries({}, optional={name: _section(name) for name in SECTIONS}),
    YAML_VALUES,
)


def _example_conf() -> str:
    try:
        return (REPO / "examples" / "spp" / "conf.yml").read_text()
    except OSError:
        return "primary:\n  coremask: 0x03\nsecondaries:\n  - id: 1\n    coremask: '0x0C'\n"


EXAMPLE_CONF = _example_conf()
YAML_TOKENS = st.sampled_from(
    (
        "\n",
        "  ",
        "- ",
        ": ",
        "? ",
        "[",
        "]",
        "{",
        "}",
        ", ",
        "&a ",
        "*a",
        "<<: *a",
        "!!set ",
        "!!binary ",
        "!!timestamp ",
        "!!python/object:os.system ",
        "!!str ",
        "!!int ",
        "!!bool ",
        "!!float ",
        "2020-02-30",
        "2001-12-14t21:59:43.10-05:00",
        "0x" + "f" * 5000,
        "0b101",
        "0o17",
        "1_000",
        ".nan",
        "'",
        '"\\x00"',
        '"\\ud800"',
        '"\\U00110000"',
        '"\\UFFFFFFFF"',
        "|\n  ",
        "%YAML 1.1\n---\n",
        "primary",
        "coremask",
        "secondaries",
        "id",
        "paths",
        "spp_dir",
        "kcm",
    )
)
# PyYAML's scanner is quadratic in flow nesting ("[" * 5000 takes over a second, and fails
# the same way as "[" * 500): runs stop just past where the recursion limit is reached.
NESTING = (10, 300, 500, 600)
CONF_TEXT = st.one_of(
    mutated(st.just(EXAMPLE_CONF), REPEATS[:-1]),
    mutated(CONF_DOCS.map(lambda doc: _yaml_dump(doc) or ""), REPEATS[:-1]),
    st.lists(YAML_TOKENS | st.text(max_size=6), max_size=20).map("".join),
    st.text(max_size=80),
    long_runs("[", NESTING),
    long_runs("- ", NESTING),
    long_runs("{a: ", NESTING),
    long_runs("1", (4300, 4301)).map(lambda s: "a: " + s),
)


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _yaml_dump(doc: object) -> str | None:
    """``doc`` as YAML text, or None where PyYAML cannot write it (a 5000-digit integer)."""
    try:
        return yaml.safe_dump(doc, sort_keys=False)
    except (ValueError, yaml.YAMLError):
        return None


def conf_inputs() -> st.SearchStrategy[object]:
    return st.one_of(
        CONF_TEXT.map(lambda text: ("text", text)),
        st.binary(max_size=60).map(lambda data: ("bytes", data)),
        CONF_DOCS.map(lambda doc: ("document", doc)),
    )


def _check_config(cfg: config.Config) -> bool:
    """Accepted when there is no problem; a usable config has what spp-wakeup relies on."""
    if not isinstance(cfg, config.Config) or not all(isinstance(p, str) for p in cfg.problems):
        raise Violation(f"parse() returned no Config: {cfg!r}")
    if cfg.problems:
        return False
    cfg.primary.cores.describe()
    for sec in cfg.secondaries:
        sec.cores.describe()
    items: list[config.Secondary | config.VmEntry] = [*cfg.secondaries, *cfg.vms_ring]
    ids = [item.id for item in (*items, *cfg.vms_vhost)]
    if len(set(ids)) != len(ids) or not all(1 <= i <= config.MAX_ID for i in ids):
        raise Violation(f"bad ids in a config with no problem: {ids}")
    if not cfg.primary.cores.cpus:
        raise Violation(f"no primary CPUs in a config with no problem: {cfg.primary}")
    return True


def check_conf(value: object, workdir: str) -> bool:
    """Only ConfigError escapes, from a text, a file's bytes or a document; see _check_config."""
    assert isinstance(value, tuple)
    kind, data = value
    path = os.path.join(workdir, "conf.yml")
    if kind == "document":
        try:
            outcome = _check_config(config.parse(data, path))
        except ConfigError:
            outcome = False
        text = _yaml_dump(data)
        if text is None:
            return outcome
    elif kind == "bytes":
        assert isinstance(data, bytes)
        with open(path, "wb") as f:
            f.write(data)
        try:
            return _check_config(config.read(path))
        except ConfigError:
            return False
    else:
        text = data
    assert isinstance(text, str)
    # read() is load_yaml() then parse(): the text goes through all three.
    with open(path, "wb") as f:
        f.write(text.encode("utf-8", "surrogatepass"))
    try:
        from_file = _check_config(config.read(path))
    except ConfigError:
        from_file = False
    return from_file if kind != "document" else outcome


# -- state trees ------------------------------------------------------------------------------

# A tree spec: ("file", bytes) | ("dir", {name: spec}) | ("link", target) | ("fifo",)
# | ("dev", minor of /dev/null, /dev/zero, /dev/urandom) | ("sock",) | ("mode", mode, spec).
Spec: TypeAlias = tuple[Any, ...]

POOL_NAMES = ("infra", "controlplane", "dataplane")
ODD_NAMES = (
    ".hidden",
    "..x",
    "a b",
    " ",
    "p\u00e4l",
    "\u65e5\u672c",
    "x" * 255,
    "0-1",
    "not a list",
    "-",
    ",",
    "0,,1",
    "1-0",
    "\u0661",
    "0-65536",
    "a\nb",
    "\t",
    "\x7f",
    "\u200b",
    '"q"',
    "back\\slash",
    "\udcff",
    "exclusive",
    "tasks",
    "lock",
    ".owner-1000",
    ".tmp-1-1-tasks",
)


def _valid_name(name: str) -> bool:
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        return False
    try:
        return len(os.fsencode(name)) <= 255
    except UnicodeEncodeError:
        return False


NAMES = st.one_of(
    st.sampled_from(ODD_NAMES),
    st.text(max_size=12).filter(_valid_name),
    st.binary(min_size=1, max_size=12).map(os.fsdecode).filter(_valid_name),
)
# Mostly names kcm init could have written, so that the lists inside get read too.
POOL_NAME = st.one_of(
    st.sampled_from(POOL_NAMES),
    st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1),
    NAMES,
).filter(_valid_name)
LIST_NAMES = st.one_of(
    CPU_SETS.filter(bool).map(cpulist.format),
    CPU_SETS.filter(bool).map(cpulist.format),
    NAMES,
)
PIDS = st.lists(st.integers(1, 1 << 22), max_size=5).map(lambda p: ",".join(map(str, p)).encode())
# Both sides of the size limit, with content that parses: one PID and whitespace.
AT_LIMIT = b"1" + b" " * (MAX_FILE_SIZE - 1)
OVER_LIMIT = b"1" + b" " * MAX_FILE_SIZE
CONTENTS = st.one_of(
    PIDS,
    PIDS.map(lambda b: b + b"\n"),
    st.sampled_from((b"", b"0", b"1", b"1\n", b" 0 ", b"2", b"-1", b"1,,2", b"1, 2", b"true")),
    st.sampled_from(("\u0661".encode(), b"1\x00", b"\xff\xfe", b"9" * 5000, b"1," * 3000)),
    st.binary(max_size=24),
    mutated(PIDS.map(bytes.decode)).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
BIG = st.sampled_from((AT_LIMIT, OVER_LIMIT, b"\x00" * (2 << 20)))
LINK_TARGETS = ("nowhere", ".", "..", "../..", "/dev/zero", "/dev/null", "/nonexistent/x")


@st.composite
def state_trees(draw: st.DrawFn) -> tuple[str, Spec]:
    """A valid state tree, then a few mutations; and what the root itself is."""
    pools: dict[str, Spec] = {}
    for name in draw(st.lists(POOL_NAME, max_size=4, unique=True)):
        entries: dict[str, Spec] = {"exclusive": ("file", draw(st.sampled_from((b"0", b"1"))))}
        for cl in draw(st.lists(LIST_NAMES, max_size=4, unique=True)):
            if cl == "exclusive":
                continue
            children: dict[str, Spec] = {"tasks": ("file", draw(PIDS))}
            if draw(st.integers(0, 3)) == 0:
                owner = draw(st.sampled_from((".owner-1000", ".owner-", ".tmp-1-1-tasks")))
                children[owner] = ("file", draw(CONTENTS))
            entries[cl] = ("dir", children)
        pools[name] = ("dir", entries)
    tree: Spec = ("dir", {"lock": ("file", b""), "pools": ("dir", pools)})
    for _ in range(draw(st.integers(0, 4))):
        tree = _mutate(draw, tree)
    root = draw(st.sampled_from(("dir",) * 12 + ("missing", "file", "link", "dangling", "fifo")))
    return root, tree


def _paths(spec: Spec, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if spec[0] == "dir":
        for name in sorted(spec[1]):
            yield (*prefix, name)
            yield from _paths(spec[1][name], (*prefix, name))


def _replace(spec: Spec, path: tuple[str, ...], new: Spec | None) -> Spec:
    """``spec`` with the entry at ``path`` replaced by ``new`` (removed when None)."""
    children = dict(spec[1])
    if len(path) == 1:
        if new is None:
            children.pop(path[0], None)
        else:
            children[path[0]] = new
    else:
        children[path[0]] = _replace(children[path[0]], path[1:], new)
    return ("dir", children)


def _get(spec: Spec, path: tuple[str, ...]) -> Spec:
    for name in path:
        spec = spec[1][name]
    return spec


def _mutate(draw: st.DrawFn, tree: Spec) -> Spec:
    paths = list(_paths(tree))
    if not paths:
        return tree
    path = draw(st.sampled_from(paths))
    kind = draw(
        st.sampled_from(
            (
                "contents",
                "contents",
                "big",
                "link",
                "link-sibling",
                "fifo",
                "dev",
                "sock",
                "dir",
                "file",
                "remove",
                "add",
                "rename",
                "mode",
            )
        )
    )
    old = _get(tree, path)
    if kind == "contents":
        return _replace(tree, path, ("file", draw(CONTENTS)))
    if kind == "big":
        return _replace(tree, path, ("file", draw(BIG)))
    if kind == "link":
        return _replace(tree, path, ("link", draw(st.sampled_from((*LINK_TARGETS, path[-1])))))
    if kind == "link-sibling":
        other = draw(st.sampled_from(paths))
        target = os.path.relpath("/".join(("r", *other)), "/".join(("r", *path[:-1])))
        return _replace(tree, path, ("link", target))
    if kind in ("fifo", "sock"):
        return _replace(tree, path, (kind,))
    if kind == "dev":
        return _replace(tree, path, ("dev", draw(st.sampled_from((3, 5, 9)))))
    if kind == "dir":
        inside = {"tasks": ("file", b"1")} if draw(st.booleans()) else {}
        return _replace(tree, path, ("dir", inside))
    if kind == "file":
        return _replace(tree, path, ("file", b""))
    if kind == "remove":
        return _replace(tree, path, None)
    if kind == "add":
        if old[0] != "dir":
            path = path[:-1]
            if not path:
                return tree
        return _replace(tree, (*path, draw(NAMES)), ("file", draw(CONTENTS)))
    if kind == "rename":
        return _replace(_replace(tree, path, None), (*path[:-1], draw(NAMES)), old)
    mode = draw(st.sampled_from((0o000, 0o200, 0o4755, 0o1777, 0o444)))
    return _replace(tree, path, ("mode", mode, old))


def _build(path: str, spec: Spec) -> None:
    kind = spec[0]
    if kind == "file":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, spec[1])
        finally:
            os.close(fd)
    elif kind == "dir":
        os.mkdir(path)
        for name, child in spec[1].items():
            _build(os.path.join(path, name), child)
    elif kind == "link":
        os.symlink(spec[1], path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev":
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, spec[1]))
    elif kind == "sock":
        os.mknod(path, stat.S_IFSOCK | 0o666)
    else:
        _build(path, spec[2])
        inner = spec[2]
        while inner[0] == "mode":
            inner = inner[2]
        if inner[0] != "link":  # chmod would follow the link
            os.chmod(path, spec[1])


Snapshot: TypeAlias = dict[str, tuple[int, int, int, int, int, bytes | str | None]]


def snapshot(top: str) -> Snapshot:
    """Every entry under ``top`` (not following links): mode, inode, size, mtime, ctime, data."""
    out: Snapshot = {}

    def walk(path: str, rel: str) -> None:
        st_ = os.lstat(path)
        data: bytes | str | None = None
        if stat.S_ISREG(st_.st_mode):
            with open(path, "rb") as f:
                data = f.read()
        elif stat.S_ISLNK(st_.st_mode):
            data = os.readlink(path)
        out[rel] = (st_.st_mode, st_.st_ino, st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns, data)
        if stat.S_ISDIR(st_.st_mode):
            for name in sorted(os.listdir(path)):
                walk(os.path.join(path, name), f"{rel}/{name}")

    walk(top, ".")
    return out


def _diff(before: Snapshot, after: Snapshot) -> str:
    changed = sorted(set(before) ^ set(after))
    changed += sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return ", ".join(repr(k) for k in changed[:5])


def read_state(root: str) -> dict[str, model.Pool]:
    """Every other reader of the state directory: the shared lock, the pool list, each pool,
    and each CPU list's hidden entries (owner records and temp files), as reconcile reads them.
    """
    with kcm_state.StateReader(root) as state:
        state.lock(5.0)
        pools = {name: state.read_pool(name) for name in state.pool_names()}
        for pool in pools.values():
            for cl in pool.cpu_lists:
                state.hidden_entries(pool.name, cl)
    return pools


StateReader = Callable[[str], dict[str, model.Pool]]
Describe = Callable[[str], str]


class StateCheck:
    """Builds each tree for real in ``workdir``, reads it, and proves the read changed nothing.

    ``describe_state`` (kcm describe, in-process) and ``reader`` (every other reader) are
    parameters so that the tests can plant bugs in them.
    """

    def __init__(
        self,
        figures: Figures,
        workdir: str,
        cli_every: int,
        reader: StateReader = read_state,
        describe_state: Describe = describe.describe,
    ) -> None:
        self.figures = figures
        self.workdir = workdir
        self.cli_every = cli_every
        self.reader = reader
        self.describe_state = describe_state
        self.count = 0

    def __call__(self, value: object) -> bool:
        assert isinstance(value, tuple)
        root_kind, tree = value
        self.count += 1
        top = os.path.join(self.workdir, f"t{self.count}")
        os.mkdir(top)
        try:
            root = os.path.join(top, "state")
            if root_kind == "dir":
                _build(root, tree)
            elif root_kind == "link":
                _build(os.path.join(top, "real"), tree)
                os.symlink("real", root)
            elif root_kind == "dangling":
                os.symlink("real", root)
            elif root_kind == "file":
                _build(root, ("file", b"1"))
            elif root_kind == "fifo":
                os.mkfifo(root)
            before = snapshot(top)
            try:
                accepted = self._read(root)
            finally:
                after = snapshot(top)
                if after != before:
                    self.figures.state_modified += 1
                    changed = f"changed: {_diff(before, after)}"
                    self.figures.record(
                        "state modified", "the read changed the tree", value, changed
                    )
            return accepted
        finally:
            shutil.rmtree(top)

    def _read(self, root: str) -> bool:
        try:
            described: str | StateError = self.describe_state(root)
        except StateError as e:
            described = e
        try:
            pools: dict[str, model.Pool] | None = self.reader(root)
        except StateError:
            pools = None
        if isinstance(described, str) and pools is not None:
            path = os.path.normpath(root)
            same = json.dumps(model.describe(path, pools), sort_keys=True, indent=2) + "\n"
            if model.describe_json(path, pools) != same or described != same:
                raise Violation("describe JSON differs: from json.dumps of the same pools")
        if isinstance(described, StateError) and pools is not None:
            raise Violation(f"describe refused what the readers accepted: {described.message}")
        if self.cli_every and self.count % self.cli_every == 0:
            self._cli(root, described)
        return isinstance(described, str) and pools is not None

    def _cli(self, root: str, described: str | StateError) -> None:
        """The real ``kcm describe`` must say exactly what the in-process describe said."""
        self.figures.cli_runs += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KCM_", "CMK_"))}
        proc = subprocess.run(
            [KCM, "describe", f"--conf-dir={root}"],
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=CLI_TIMEOUT,
        )
        out = proc.stdout.decode("utf-8", "backslashreplace")
        err = proc.stderr.decode("utf-8", "backslashreplace")
        if "Traceback" in err:
            raise Violation(f"kcm describe traceback: {err.strip().splitlines()[-1]}")
        if isinstance(described, str):
            if proc.returncode != 0 or err or out != described:
                raise Violation(
                    f"kcm describe said otherwise in-process: exit {proc.returncode}"
                    f" ({err.strip()[:200]})"
                )
            json.loads(out)
            return
        error = described
        if proc.returncode != error.exit_code or out:
            raise Violation(
                f"kcm describe exit status is not the error's: {proc.returncode},"
                f" not {error.exit_code}"
            )
        lines = err.rstrip("\n").split("\n")  # "\n" alone ends a terminal line
        if len(lines) != 1 or not lines[0].startswith("kcm: error: "):
            raise Violation(
                f"kcm describe error is not one line: {len(lines)} lines, {err[:300]!r}"
            )
        # Python's stderr writes what UTF-8 cannot encode (names that are not UTF-8) escaped.
        message = one_line(error.message)  # as the CLI prints it: control characters escaped
        said = f"kcm: error: {message}".encode("utf-8", "backslashreplace").decode()
        if lines[0] != said:
            raise Violation(f"kcm describe error differs from in-process: {err[:300]!r}")


def state_inputs() -> st.SearchStrategy[object]:
    return state_trees()


# -- running ----------------------------------------------------------------------------------


def run_target(
    target: str,
    examples: int,
    seed_value: int,
    *,
    deadline: float = float("inf"),
    workdir: str | None = None,
    cli_every: int = 100,
    make_check: Callable[[Figures, str], Callable[[object], bool]] | None = None,
    progress: bool = False,
) -> Figures:
    """Try ``examples`` inputs of ``target`` (fewer if ``deadline`` passes) and count them.

    ``make_check(figures, scratch_dir)`` replaces the target's own check; the tests use it to
    plant a bug and see the harness catch it.
    """
    figures = Figures(target, examples, seed_value)
    started = time.monotonic()
    scratch = tempfile.mkdtemp(prefix=f"kcm-fuzz-{target}-", dir=workdir or _default_workdir())
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        if make_check is None:
            run_check = _target_check(target, figures, scratch, cli_every)
        else:
            run_check = make_check(figures, scratch)
        strategy = {
            "cpulist": cpulist_inputs,
            "leases": leases_inputs,
            "conf": conf_inputs,
            "state": state_inputs,
        }[target]()
        checker = Checker(figures)
        batch = 0
        while figures.inputs < examples:
            size = min(BATCH, examples - figures.inputs)
            before = figures.inputs

            @seed(seed_value * 1_000_003 + batch)
            @settings(
                max_examples=size,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )
            @given(strategy)
            def body(value: object) -> None:
                if time.monotonic() >= deadline:
                    raise _TimeUp
                checker(value, lambda: run_check(value))

            try:
                body()
            except _TimeUp:
                figures.complete = False
                break
            batch += 1
            if progress:
                print(
                    f"  {target}: {figures.inputs}/{examples} inputs,"
                    f" {time.monotonic() - started:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
            if figures.inputs == before:
                break  # hypothesis found no new input: the space is exhausted
    finally:
        signal.signal(signal.SIGALRM, previous)
        shutil.rmtree(scratch, ignore_errors=True)
        figures.seconds = time.monotonic() - started
    if figures.inputs < examples:
        figures.complete = False
    return figures


def _default_workdir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _target_check(
    target: str, figures: Figures, scratch: str, cli_every: int
) -> Callable[[object], bool]:
    if target == "cpulist":
        return check_cpulist
    if target == "leases":
        return lambda value: check_leases(value, scratch)
    if target == "conf":
        return lambda value: check_conf(value, scratch)
    return StateCheck(figures, scratch, cli_every)


def report(all_figures: list[Figures], out: TextIO | None = None) -> None:
    """The figures table, every failure with its smallest input, then one JSON line a target."""
    stream = sys.stdout if out is None else out
    columns = ("inputs", "accepted", "clean_errors", "crashes", "state_modified", "cli_runs")
    print(
        f"{'target':<8} {'requested':>9} "
        + " ".join(f"{c:>14}" for c in columns)
        + f" {'seconds':>8}  complete",
        file=stream,
    )
    for fig in all_figures:
        values = " ".join(f"{getattr(fig, c):>14}" for c in columns)
        print(
            f"{fig.target:<8} {fig.requested:>9} {values} {fig.seconds:>8.1f}  "
            + ("yes" if fig.complete else f"NO: stopped after {fig.inputs} inputs"),
            file=stream,
        )
    for fig in all_figures:
        for failure in fig.failures.values():
            print(
                f"\nFAILED {fig.target}: {failure.kind}: {failure.signature}"
                f" ({failure.count} inputs)\n  smallest input: {failure.example}",
                file=stream,
            )
            if failure.detail:
                print("  " + failure.detail.replace("\n", "\n  "), file=stream)
    print(file=stream)
    for fig in all_figures:
        print(json.dumps(fig.as_json()), file=stream)


def _run_one(job: tuple[str, int, int, float, str | None, int]) -> Figures:
    target, examples, seed_value, deadline, workdir, cli_every = job
    return run_target(
        target,
        examples,
        seed_value,
        deadline=deadline,
        workdir=workdir,
        cli_every=cli_every,
        progress=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stress.fuzz", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="inputs a target")
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--time-limit", type=float, default=float("inf"), help="seconds, total")
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed")
    parser.add_argument("--cli-every", type=int, default=100, help="state trees per kcm run")
    parser.add_argument("--workdir", default=None, help="where state trees are built")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    args = parser.parse_args(argv)
    seed_value = random.randrange(1 << 32) if args.seed is None else args.seed
    deadline = time.monotonic() + args.time_limit
    targets = TARGETS if args.target == "all" else (args.target,)
    print(
        f"fuzz: {args.examples} inputs per target ({', '.join(targets)}), seed {seed_value},"
        f" time limit {args.time_limit:g}s, {args.jobs} jobs on {os.cpu_count()} CPUs",
        flush=True,
    )
    jobs = [
        (target, args.examples, seed_value, deadline, args.workdir, args.cli_every)
        for target in targets
    ]
    if args.jobs > 1:
        # The slowest target first, so it does not start last and alone.
        jobs.sort(key=lambda job: TARGETS.index(job[0]), reverse=True)
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(_run_one, jobs, chunksize=1)
        results.sort(key=lambda fig: TARGETS.index(fig.target))
    else:
        results = [_run_one(job) for job in jobs]
    report(results)
    return 0 if all(fig.ok for fig in results) else 1


if __name__ == "__main__":
    sys.exit(main())
