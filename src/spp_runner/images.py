"""VM disk images through qemu-img: the template, its ring/vhost templates, per-VM instances.

Each derived image is a qcow2 overlay backed by its parent, created the first time a launch
needs it; nothing here ever rewrites an image that exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from spp_runner.errors import LaunchError, MissingError
from spp_runner.plan import ImageLink, Plan, Role

QEMU_IMG = "qemu-img"


def create_argv(child: str, parent: str, parent_format: str, qemu_img: str = QEMU_IMG) -> list[str]:
    """qemu-img's command line for a qcow2 ``child`` backed by ``parent``."""
    return [qemu_img, "create", "-q", "-f", "qcow2", "-b", parent, "-F", parent_format, child]


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise MissingError(
            f"{argv[0]} not found; install qemu-utils (it provides qemu-img)"
        ) from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise LaunchError(
            f"{' '.join(argv[:2])} {argv[-1]} failed: {detail[-1] if detail else done.returncode}"
        )
    return done.stdout


def info(path: str, qemu_img: str = QEMU_IMG) -> dict[str, object]:
    """``qemu-img info --output=json`` of ``path``."""
    data = json.loads(_run([qemu_img, "info", "--output=json", path]))
    if not isinstance(data, dict):
        raise LaunchError(f"qemu-img info {path}: unexpected output")
    return data


def image_format(path: str, qemu_img: str = QEMU_IMG) -> str:
    fmt = info(path, qemu_img).get("format")
    if not isinstance(fmt, str):
        raise LaunchError(f"qemu-img info {path}: no format reported")
    return fmt


def missing(plan: Plan) -> list[str]:
    """What a launch needs for its VMs that is not there: qemu-img and the base template."""
    problems: list[str] = []
    if plan.images and shutil.which(QEMU_IMG) is None:
        problems.append(f"{QEMU_IMG} not found on PATH; install qemu-utils")
    roots = {link.parent for link in plan.images} - {link.path for link in plan.images}
    roots |= {w.image for w in plan.windows if w.image and w.role is Role.TEMPLATE_VM}
    for root in sorted(roots):
        if not os.path.isfile(root):
            problems.append(
                f"VM template image {root} does not exist; create it (see 'Prepare the "
                "template') or set paths.hda"
            )
    return problems


def derived_present(plan: Plan) -> list[str]:
    """Overlays that exist in the image directory; booting the template would corrupt them."""
    template_vms = [w for w in plan.windows if w.role is Role.TEMPLATE_VM]
    if not template_vms:
        return []
    img_dir = template_vms[0].cwd
    try:
        names = sorted(os.listdir(img_dir))
    except OSError:
        return []
    return [
        os.path.join(img_dir, n)
        for n in names
        if n.endswith(".qcow2") and os.path.join(img_dir, n) != template_vms[0].image
    ]


def ensure(links: tuple[ImageLink, ...], qemu_img: str = QEMU_IMG) -> list[str]:
    """Create every image of ``links`` that does not exist, parents first; the ones made.

    Each is written under a temporary name and renamed, so an interrupted run never leaves a
    half-made image that a later run would take for a good one.
    """
    created: list[str] = []
    for link in links:
        if os.path.exists(link.path):
            continue
        if not os.path.exists(link.parent):
            raise MissingError(f"cannot create {link.path}: its parent {link.parent} is missing")
        os.makedirs(os.path.dirname(link.path), exist_ok=True)
        parent = os.path.abspath(link.parent)
        tmp = f"{link.path}.tmp-{os.getpid()}"
        try:
            _run(create_argv(tmp, parent, image_format(parent, qemu_img), qemu_img))
            os.rename(tmp, link.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        created.append(link.path)
    return created
