"""VM images with the real qemu-img: template -> ring/vhost templates -> per-VM instances."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from spp_runner import config, images, plan
from spp_runner.errors import MissingError
from spp_runner.host import Host
from spp_runner.plan import Options

QEMU_IMG = shutil.which("qemu-img")
pytestmark = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img not installed (qemu-utils)")


def make_template(path: Path, fmt: str = "qcow2") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), "16M"], check=True)


def qemu_info(path: str) -> dict[str, object]:
    return images.info(path)


def vm_plan(tmp_path: Path, hda: str, options: Options) -> plan.Plan:
    data = {
        "primary": {"coremask": 1},
        "vms_ring": [{"id": 6}],
        "vms_vhost": [{"id": 11}, {"id": 12}],
        "paths": {"hda": hda, "img_dir": str(tmp_path / "img")},
    }
    conf = config.parse(data, str(tmp_path / "conf.yml"))
    return plan.build(conf, options, Host(frozenset({0, 1})))


def test_chain_is_created_on_first_use_with_backing_files(tmp_path: Path) -> None:
    hda = tmp_path / "hda/template.qcow2"
    make_template(hda)
    p = vm_plan(tmp_path, str(hda), Options(nof_sec=0, nof_ring=1, nof_vhost=2))
    img = tmp_path / "img"
    created = images.ensure(p.images)
    assert created == [
        str(img / n)
        for n in (
            "template-ring.qcow2",
            "ring6.qcow2",
            "template-vhost.qcow2",
            "vhost11.qcow2",
            "vhost12.qcow2",
        )
    ]
    backing = {
        name: (
            qemu_info(str(img / name))["format"],
            qemu_info(str(img / name)).get("backing-filename"),
            qemu_info(str(img / name)).get("backing-filename-format"),
        )
        for name in sorted(os.listdir(img))
    }
    assert backing == {
        "ring6.qcow2": ("qcow2", str(img / "template-ring.qcow2"), "qcow2"),
        "template-ring.qcow2": ("qcow2", str(hda), "qcow2"),
        "template-vhost.qcow2": ("qcow2", str(hda), "qcow2"),
        "vhost11.qcow2": ("qcow2", str(img / "template-vhost.qcow2"), "qcow2"),
        "vhost12.qcow2": ("qcow2", str(img / "template-vhost.qcow2"), "qcow2"),
    }
    # The VM boots the instance, and the instance's chain ends at the template.
    chain = subprocess.run(
        ["qemu-img", "info", "--backing-chain", "--output=json", str(img / "vhost12.qcow2")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(hda) in chain and "template-vhost.qcow2" in chain


def test_existing_images_are_never_rewritten(tmp_path: Path) -> None:
    hda = tmp_path / "hda/template.qcow2"
    make_template(hda)
    p = vm_plan(tmp_path, str(hda), Options(nof_sec=0, nof_vhost=1))
    assert len(images.ensure(p.images)) == 2
    instance = tmp_path / "img/vhost11.qcow2"
    before = instance.stat()
    assert images.ensure(p.images) == []
    assert instance.stat().st_mtime_ns == before.st_mtime_ns
    assert instance.stat().st_ino == before.st_ino


def test_a_raw_template_is_used_as_raw(tmp_path: Path) -> None:
    hda = tmp_path / "hda/template.img"
    make_template(hda, "raw")
    p = vm_plan(tmp_path, str(hda), Options(nof_sec=0, nof_vhost=1))
    images.ensure(p.images)
    info = qemu_info(str(tmp_path / "img/template-vhost.qcow2"))
    assert (info["backing-filename"], info["backing-filename-format"]) == (str(hda), "raw")


def test_missing_template_is_named_before_anything_starts(tmp_path: Path) -> None:
    p = vm_plan(tmp_path, str(tmp_path / "nothing.qcow2"), Options(nof_sec=0, nof_vhost=1))
    assert images.missing(p) == [
        f"VM template image {tmp_path}/nothing.qcow2 does not exist; create it (see 'Prepare "
        "the template') or set paths.hda"
    ]
    with pytest.raises(MissingError, match=r"its parent .*nothing\.qcow2 is missing"):
        images.ensure(p.images)
    assert not (tmp_path / "img/template-vhost.qcow2").exists()


def test_template_boot_warns_about_overlays_that_it_would_corrupt(tmp_path: Path) -> None:
    hda = tmp_path / "img/template.qcow2"
    make_template(hda)
    data = {"primary": {"coremask": 1}, "vms_vhost": [{"id": 11}], "paths": {"hda": str(hda)}}
    conf = config.parse(data, str(tmp_path / "conf.yml"))
    host = Host(frozenset({0, 1}))
    images.ensure(plan.build(conf, Options(nof_sec=0), host).images)
    template_plan = plan.build(conf, Options(nof_sec=0, template=True), host)
    assert images.derived_present(template_plan) == [
        str(tmp_path / "img/template-vhost.qcow2"),
        str(tmp_path / "img/vhost11.qcow2"),
    ]


def test_create_argv_is_qcow2_backed_by_parent() -> None:
    assert images.create_argv("/i/c.qcow2", "/i/p.qcow2", "qcow2") == [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "/i/p.qcow2",
        "-F",
        "qcow2",
        "/i/c.qcow2",
    ]
