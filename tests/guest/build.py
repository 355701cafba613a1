"""Build the guest kernels: pinned Debian kernel packages and a busybox initramfs, cached.

``python -m tests.guest.build`` builds every series (``--kernel 6.12`` one of them);
``--repin`` first picks the newest package of each series from the registry and rewrites
``kernels.lock``. Everything lands in ``build/guest/`` (or ``$KCM_GUEST_CACHE``), keyed by
the inputs: a second run with the same pins, init script and busybox does nothing.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import gzip
import hashlib
import lzma
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
PINS_FILE = HERE / "kernels.lock"
INIT_SCRIPT = HERE / "init.sh"
BUSYBOX = Path("/bin/busybox")

# The package names of each kernel series in Debian bookworm (the generic amd64 flavour:
# the cloud flavour has no 9p, and rt/dbg/unsigned are not what a host runs).
SERIES: dict[str, re.Pattern[str]] = {
    "6.12": re.compile(r"linux-image-6\.12\.[0-9]+\+deb12-amd64"),
    "6.1": re.compile(r"linux-image-6\.1\.0-[0-9]+-amd64"),
}

# What /init needs to mount the host's root: the 9p filesystem over virtio-pci. On 6.12
# virtio_pci is built in; on 6.1 it is a module, and load_order() finds what each needs.
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p")


class GuestUnavailable(Exception):
    """The guest cannot be had here (no QEMU, busybox, registry or x86_64); tests skip."""


@dataclass(frozen=True)
class Pin:
    """One kernel series pinned to a Debian package and version."""

    series: str
    package: str
    version: str

    @property
    def key(self) -> str:
        return f"{self.package}={self.version}"


@dataclass(frozen=True)
class GuestKernel:
    """A built guest: the kernel image, its initramfs, and what they were built from."""

    pin: Pin
    release: str  # `uname -r` inside the guest
    vmlinuz: Path
    initrd: Path
    config: Path
    modules: tuple[str, ...]  # loaded by /init, in this order


# ----------------------------------------------------------------------------- pins


def parse_pins(text: str) -> dict[str, Pin]:
    """``series package version`` per line; ``#`` starts a comment."""
    pins: dict[str, Pin] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"kernels.lock line {number}: want 'series package version'")
        series, package, version = fields
        pattern = SERIES.get(series)
        if pattern is None:
            raise ValueError(f"kernels.lock line {number}: unknown series {series!r}")
        if not pattern.fullmatch(package):
            raise ValueError(f"kernels.lock line {number}: {package} is not of series {series}")
        pins[series] = Pin(series, package, version)
    return pins


def format_pins(pins: Mapping[str, Pin]) -> str:
    head = (
        "# The guest kernels (tests/guest), one Debian bookworm package per series.\n"
        "# `python -m tests.guest.build --repin` picks the newest of each and rewrites this.\n"
    )
    return head + "".join(f"{p.series} {p.package} {p.version}\n" for p in pins.values())


def read_pins(path: Path = PINS_FILE) -> dict[str, Pin]:
    return parse_pins(path.read_text())


def parse_madison(text: str) -> list[tuple[str, str]]:
    """(package, version) from ``apt-cache madison`` lines ``pkg | version | origin``."""
    found = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) == 3 and parts[2].endswith("Packages"):
            found.append((parts[0], parts[1]))
    return found


def newest(series: str, candidates: Iterable[tuple[str, str]]) -> Pin:
    """The highest Debian version among the packages of ``series``."""
    pattern = SERIES[series]
    matching = [(pkg, ver) for pkg, ver in candidates if pattern.fullmatch(pkg)]
    if not matching:
        raise GuestUnavailable(f"the registry has no package of kernel series {series}")

    def compare(a: tuple[str, str], b: tuple[str, str]) -> int:
        if a[1] == b[1]:
            return (a[0] > b[0]) - (a[0] < b[0])
        return 1 if dpkg_version_greater(a[1], b[1]) else -1

    package, version = max(matching, key=functools.cmp_to_key(compare))
    return Pin(series, package, version)


def dpkg_version_greater(a: str, b: str) -> bool:
    # dpkg is the reference for Debian's version order; only --repin needs it.
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b], check=False).returncode == 0


def repin(path: Path = PINS_FILE) -> dict[str, Pin]:
    """Pick the newest package of every series the registry offers and write them to ``path``."""
    pins = {}
    for series, pattern in SERIES.items():
        names = _apt(["apt-cache", "search", "--names-only", f"^{pattern.pattern}$"]).split("\n")
        packages = sorted({line.split(" ", 1)[0] for line in names if line.strip()})
        if not packages:
            raise GuestUnavailable(f"apt-cache finds no package of kernel series {series}")
        pins[series] = newest(series, parse_madison(_apt(["apt-cache", "madison", *packages])))
    path.write_text(format_pins(pins))
    return pins


# ----------------------------------------------------------------------------- modules


def module_name(filename: str) -> str:
    """``9pnet_virtio.ko.xz`` -> ``9pnet_virtio``; the kernel treats ``-`` and ``_`` alike."""
    return filename.split(".ko", 1)[0].replace("-", "_")


def modinfo(elf: bytes) -> dict[str, str]:
    """The ``key=value`` strings of a kernel module's ``.modinfo`` section (ELF64, little end)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 kernel module")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + index * shentsize
        )
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        end = elf.index(b"\0", names_at + name)
        if elf[names_at + name : end] == b".modinfo":
            info: dict[str, str] = {}
            for entry in elf[offset : offset + size].split(b"\0"):
                key, sep, value = entry.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    raise ValueError("kernel module without a .modinfo section")


def load_order(
    wanted: Sequence[str], depends: Mapping[str, Sequence[str]], builtin: Iterable[str]
) -> list[str]:
    """The modules to insmod, each after the ones it depends on; built-in ones are skipped."""
    builtin = set(builtin)
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in builtin or name in order:
            return
        if name not in depends:
            raise GuestUnavailable(f"the kernel has no module {name} and does not build it in")
        if name in visiting:
            raise ValueError(f"module dependency cycle through {name}")
        visiting.add(name)
        for dep in depends[name]:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def read_module(path: Path) -> bytes:
    """A module's ELF bytes: busybox insmod loads neither .ko.xz nor .ko.zst, so unpack here."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise GuestUnavailable(f"{path.name}: a module compression the builder does not unpack")


# ----------------------------------------------------------------------------- the build


def cache_dir() -> Path:
    return Path(os.environ.get("KCM_GUEST_CACHE") or CHECKOUT / "build" / "guest")


def is_static_elf(path: Path) -> bool:
    """True when ``path`` is an ELF executable with no program interpreter (no PT_INTERP)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def check_host() -> None:
    """Raise GuestUnavailable, with the reason, when this host cannot build or boot a guest."""
    if platform.machine() != "x86_64":
        raise GuestUnavailable(f"the guest kernels are amd64; this host is {platform.machine()}")
    for tool, package in (
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
    ):
        if shutil.which(tool) is None:
            raise GuestUnavailable(f"{tool} is not installed (Debian package {package})")
    if not BUSYBOX.exists() or not is_static_elf(BUSYBOX):
        raise GuestUnavailable(f"{BUSYBOX} is not a static busybox (Debian package busybox-static)")


def inputs(pin: Pin) -> str:
    """What a built guest depends on, one line each; a change to any of them rebuilds it."""
    return "".join(
        f"{name} {value}\n"
        for name, value in (
            ("package", pin.key),
            ("busybox", _sha256(BUSYBOX.read_bytes())),
            ("init", _sha256(INIT_SCRIPT.read_bytes())),
            ("builder", _sha256(Path(__file__).read_bytes())),
        )
    )


def ensure_kernel(series: str, *, cache: Path | None = None, log: bool = False) -> GuestKernel:
    """The guest of ``series``, built now unless the cache holds one of the same inputs."""
    check_host()
    pins = read_pins()
    if series not in pins:
        raise GuestUnavailable(f"kernels.lock pins no kernel of series {series}")
    pin = pins[series]
    root = cache or cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        built = _load(root / series, pin)
        if built is not None:
            return built
        return _build(root, pin, pins.values(), log=log)


def _load(out: Path, pin: Pin) -> GuestKernel | None:
    try:
        if (out / "inputs").read_text() != inputs(pin):
            return None
        release, *modules = (out / "modules").read_text().split()
    except (OSError, ValueError):
        return None
    return GuestKernel(
        pin, release, out / "vmlinuz", out / "initrd", out / "config", tuple(modules)
    )


def _build(root: Path, pin: Pin, all_pins: Iterable[Pin], *, log: bool) -> GuestKernel:
    times: dict[str, float] = {}
    started = time.monotonic()
    deb = _download(root / "debs", pin)
    times["download"] = time.monotonic() - started
    work = Path(tempfile.mkdtemp(prefix=f".build-{pin.series}-", dir=root))
    try:
        started = time.monotonic()
        unpacked = work / "deb"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        times["unpack"] = time.monotonic() - started
        started = time.monotonic()
        releases = sorted(p.name for p in (unpacked / "lib/modules").iterdir())
        if len(releases) != 1:
            raise GuestUnavailable(f"{deb.name}: expected one module tree, found {releases}")
        release = releases[0]
        out = work / "out"
        out.mkdir()
        shutil.copyfile(unpacked / f"boot/vmlinuz-{release}", out / "vmlinuz")
        shutil.copyfile(unpacked / f"boot/config-{release}", out / "config")
        modules = _initramfs(unpacked / "lib/modules" / release, out / "initrd", work / "rootfs")
        (out / "modules").write_text(" ".join([release, *modules]) + "\n")
        (out / "inputs").write_text(inputs(pin))
        times["initramfs"] = time.monotonic() - started
        final = root / pin.series
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keep = {_deb_name(p) for p in all_pins}
    for old in (root / "debs").glob("*.deb"):
        if old.name not in keep:
            old.unlink()
    if log:
        spent = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
        print(f"guest {pin.series}: built {pin.key} ({release}): {spent}", file=sys.stderr)
    built = _load(root / pin.series, pin)
    assert built is not None
    return built


def _deb_name(pin: Pin) -> str:
    return f"{pin.package}_{pin.version.replace(':', '%3a')}_amd64.deb"


def _download(debs: Path, pin: Pin) -> Path:
    """The pinned package's .deb, fetched with ``apt-get download`` unless already here."""
    target = debs / _deb_name(pin)
    if target.exists():
        return target
    debs.mkdir(parents=True, exist_ok=True)
    fetch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=debs))
    try:
        argv = ["apt-get", "download", "-q", pin.key]
        if os.geteuid() == 0:
            # apt's sandbox user cannot write into our build tree; root downloads it itself.
            argv[1:1] = ["-o", "APT::Sandbox::User=root"]
        done = _try(argv, cwd=fetch)
        if done.returncode != 0 and os.geteuid() == 0:
            # A fresh machine's package lists may be missing or older than the pin.
            _try(["apt-get", "update", "-qq"])
            done = _try(argv, cwd=fetch)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise GuestUnavailable(f"apt-get download {pin.key} failed: {reason}")
        got = list(fetch.glob("*.deb"))
        if len(got) != 1:
            raise GuestUnavailable(f"apt-get download {pin.key} left {len(got)} files")
        got[0].rename(target)
    finally:
        shutil.rmtree(fetch, ignore_errors=True)
    return target


def _initramfs(modules_dir: Path, initrd: Path, rootfs: Path) -> list[str]:
    """Lay out busybox, /init and the modules in ``rootfs`` and pack it as ``initrd``."""
    files = {
        module_name(p.name): p
        for p in (modules_dir / "kernel").rglob("*.ko*")
        if re.fullmatch(r".*\.ko(\.xz|\.zst|\.gz)?", p.name)
    }
    builtin = [
        module_name(Path(line).name)
        for line in (modules_dir / "modules.builtin").read_text().split()
    ]

    @functools.cache
    def elf(name: str) -> bytes:
        return read_module(files[name])

    depends = _LazyDepends(files, elf)
    order = load_order(WANTED_MODULES, depends, builtin)

    for sub in ("bin", "dev", "proc", "sys", "host", "modules", "tmp"):
        (rootfs / sub).mkdir(parents=True)
    shutil.copyfile(BUSYBOX, rootfs / "bin/busybox")
    (rootfs / "bin/busybox").chmod(0o755)
    shutil.copyfile(INIT_SCRIPT, rootfs / "init")
    (rootfs / "init").chmod(0o755)
    for index, name in enumerate(order, 1):
        # /init loads /modules/*.ko in glob order, so the number keeps dependencies first.
        (rootfs / f"modules/{index:02d}-{name}.ko").write_bytes(elf(name))
    _pack(rootfs, initrd)
    return order


class _LazyDepends(Mapping[str, Sequence[str]]):
    """Module name -> its ``depends=`` list, read from a module only when asked."""

    def __init__(self, files: Mapping[str, Path], elf: Callable[[str], bytes]) -> None:
        self._files = files
        self._elf = elf

    def __getitem__(self, name: str) -> Sequence[str]:
        if name not in self._files:
            raise KeyError(name)
        listed = modinfo(self._elf(name)).get("depends", "")
        return [module_name(dep) for dep in listed.split(",") if dep]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def _pack(rootfs: Path, initrd: Path) -> None:
    """A newc cpio of ``rootfs`` (busybox cpio: the host has no cpio binary), gzipped."""
    paths = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
    for path in [rootfs, *(rootfs / p for p in paths)]:
        os.utime(path, (0, 0), follow_symlinks=False)  # the same inputs make the same bytes
    listing = "".join(f"{p}\n" for p in [".", *paths])
    done = subprocess.run(
        [str(BUSYBOX), "cpio", "-o", "-H", "newc"],
        cwd=rootfs,
        input=listing.encode(),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"busybox cpio failed: {done.stderr.decode(errors='replace')}")
    initrd.write_bytes(gzip.compress(done.stdout, compresslevel=1, mtime=0))


# ----------------------------------------------------------------------------- plumbing


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _try(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )


def _run(argv: list[str]) -> None:
    done = _try(argv)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")


def _apt(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        raise GuestUnavailable(f"{argv[0]} is not installed")
    done = _try(argv)
    if done.returncode != 0:
        raise GuestUnavailable(f"{' '.join(argv[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.guest.build", description=__doc__)
    parser.add_argument(
        "--kernel", choices=sorted(SERIES), action="append", help="series to build (default: all)"
    )
    parser.add_argument(
        "--repin", action="store_true", help="pin the newest package of each series first"
    )
    args = parser.parse_args(argv)
    try:
        if args.repin:
            for pin in repin().values():
                print(f"pinned {pin.series}: {pin.key}", file=sys.stderr)
        for series in args.kernel or sorted(SERIES):
            started = time.monotonic()
            kernel = ensure_kernel(series, log=True)
            print(
                f"{series}: {kernel.pin.key} ({kernel.release}) in {kernel.vmlinuz.parent}, "
                f"{time.monotonic() - started:.1f} s"
            )
    except GuestUnavailable as e:
        print(f"guest: unavailable: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
