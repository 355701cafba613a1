"""Carving pools and choosing lists: pure functions over named topologies."""

from __future__ import annotations

import pytest

from kcm.allocate import carve, choose_cpu_list
from kcm.errors import EnvironmentProblem, UsageError
from kcm.model import CpuList, Pool
from kcm.topology import Core, Topology
from tests.fixtures.sysfs import (
    DUAL_SOCKET_20_CORE_HT,
    NO_HT_4,
    NON_CONTIGUOUS,
    SEED_16,
    FakeCpu,
)


def topo(cpus: list[FakeCpu]) -> Topology:
    cores: dict[tuple[int, ...], Core] = {}
    for c in cpus:
        cores.setdefault(c.siblings, Core(c.socket, c.core_id, c.siblings))
    return Topology.from_cores(list(cores.values()))


def lists(pools: dict[str, Pool]) -> dict[str, list[str]]:
    return {name: list(pool.cpu_lists) for name, pool in pools.items()}


@pytest.mark.parametrize(
    ("name", "cpus", "dp", "cp", "expected"),
    [
        (
            "seed 16 CPUs, defaults",
            SEED_16,
            4,
            1,
            {
                "controlplane": ["3,11"],
                "dataplane": ["4,12", "5,13", "6,14", "7,15"],
                "infra": ["0-2,8-10"],
            },
        ),
        (
            "seed 16 CPUs, 2+2",
            SEED_16,
            2,
            2,
            {
                "controlplane": ["4-5,12-13"],
                "dataplane": ["6,14", "7,15"],
                "infra": ["0-3,8-11"],
            },
        ),
        (
            "dual socket 20 cores HT",
            DUAL_SOCKET_20_CORE_HT,
            4,
            2,
            {
                "controlplane": ["14-15,34-35"],
                "dataplane": ["16,36", "17,37", "18,38", "19,39"],
                "infra": ["0-13,20-33"],
            },
        ),
        (
            "no HT, 4 CPUs",
            NO_HT_4,
            2,
            1,
            {"controlplane": ["1"], "dataplane": ["2", "3"], "infra": ["0"]},
        ),
        (
            "non-contiguous numbering",
            NON_CONTIGUOUS,
            2,
            1,
            {"controlplane": ["1,9"], "dataplane": ["4,12", "5,13"], "infra": ["0,8"]},
        ),
        (
            "zero controlplane cores",
            NO_HT_4,
            3,
            0,
            {"controlplane": [], "dataplane": ["1", "2", "3"], "infra": ["0"]},
        ),
    ],
)
def test_carve(
    name: str, cpus: list[FakeCpu], dp: int, cp: int, expected: dict[str, list[str]]
) -> None:
    pools = carve(topo(cpus), dp, cp)
    assert lists(pools) == expected
    assert pools["dataplane"].exclusive
    assert not pools["controlplane"].exclusive
    assert not pools["infra"].exclusive


def test_carve_needs_an_infra_core() -> None:
    with pytest.raises(
        EnvironmentProblem, match=r"4 dataplane \+ 0 controlplane .* the host has 4"
    ):
        carve(topo(NO_HT_4), 4, 0)


def test_carve_rejects_negative() -> None:
    with pytest.raises(UsageError):
        carve(topo(NO_HT_4), -1, 1)


def pool(exclusive: bool, **tasks: list[int]) -> Pool:
    return Pool("p", exclusive, {k: CpuList(k, v) for k, v in tasks.items()})


def test_exclusive_takes_lowest_free_list() -> None:
    p = Pool("dp", True, {n: CpuList(n, t) for n, t in [("4,12", [1]), ("5,13", []), ("6,14", [])]})
    chosen = choose_cpu_list(p)
    assert chosen is not None and chosen.cpus == "5,13"


def test_exclusive_full_is_none() -> None:
    p = Pool("dp", True, {"4,12": CpuList("4,12", [1]), "5,13": CpuList("5,13", [2])})
    assert choose_cpu_list(p) is None


def test_shared_takes_least_loaded() -> None:
    p = Pool(
        "cp", False, {"1": CpuList("1", [1, 2]), "2": CpuList("2", [3]), "3": CpuList("3", [4, 5])}
    )
    chosen = choose_cpu_list(p)
    assert chosen is not None and chosen.cpus == "2"


def test_numeric_not_lexical_tie_break() -> None:
    p = Pool("dp", True, {"10": CpuList("10"), "9": CpuList("9")})
    chosen = choose_cpu_list(p)
    assert chosen is not None and chosen.cpus == "9"


def test_empty_pool_is_none() -> None:
    assert choose_cpu_list(Pool("x", False, {})) is None
