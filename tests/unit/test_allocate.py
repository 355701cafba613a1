"""Carving pools and choosing lists: pure functions over named topologies."""

from __future__ import annotations

import re

import pytest

from kcm import cpulist
from kcm.allocate import carve, carving, choose_cpu_list
from kcm.errors import EnvironmentProblem, UsageError
from kcm.model import CpuList, Pool
from kcm.topology import Topology
from tests.fixtures.sysfs import (
    DUAL_SOCKET_20_CORE_HT,
    NO_HT_4,
    NON_CONTIGUOUS,
    SEED_16,
    FakeCpu,
    topology,
)


def topo(cpus: list[FakeCpu]) -> Topology:
    return topology(cpus)


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


# -- CPUs isolated at boot (isolcpus=, nohz_full=) ------------------------------------------

SEED_ISOLATED = cpulist.parse("4-7,12-15")  # isolcpus=4-7,12-15 on the seed's box
WARNING_4_12 = (
    "CPUs 4,12 are isolated at boot but end up in infra, the housekeeping pool; raise"
    " --num-dp-cores or --num-cp-cores to use them (whole cores only), or isolate fewer CPUs"
    " at boot"
)


@pytest.mark.parametrize(
    ("cpus", "isolated", "nohz_full", "dp", "cp", "expected", "warnings"),
    [
        pytest.param(
            SEED_16,
            SEED_ISOLATED,
            frozenset(),
            4,
            1,
            {
                "controlplane": ["3,11"],
                "dataplane": ["4,12", "5,13", "6,14", "7,15"],
                "infra": ["0-2,8-10"],
            },
            [],
            id="seed-isolcpus-4-7-defaults-give-the-seed-tree",
        ),
        pytest.param(
            SEED_16,
            frozenset(),
            SEED_ISOLATED,
            4,
            1,
            {
                "controlplane": ["3,11"],
                "dataplane": ["4,12", "5,13", "6,14", "7,15"],
                "infra": ["0-2,8-10"],
            },
            [],
            id="seed-nohz_full-only-counts-the-same",
        ),
        pytest.param(
            SEED_16,
            SEED_ISOLATED,
            frozenset(),
            2,
            1,
            {
                "controlplane": ["5,13"],  # the isolated core left over, before core 3
                "dataplane": ["6,14", "7,15"],
                "infra": ["0-4,8-12"],
            },
            [WARNING_4_12],
            id="seed-isolated-leftovers-to-controlplane-then-infra-warns",
        ),
        pytest.param(
            SEED_16,
            SEED_ISOLATED,
            frozenset(),
            2,
            3,
            {
                "controlplane": ["3-5,11-13"],  # both isolated leftovers, then the top other
                "dataplane": ["6,14", "7,15"],
                "infra": ["0-2,8-10"],
            },
            [],
            id="seed-controlplane-takes-isolated-first",
        ),
        pytest.param(
            SEED_16,
            cpulist.parse("2-3,10-11"),
            frozenset(),
            1,
            1,
            {
                "controlplane": ["2,10"],
                "dataplane": ["3,11"],  # from the isolated cores, not the top core 7
                "infra": ["0-1,4-9,12-15"],
            },
            [],
            id="seed-isolated-low-cores",
        ),
        pytest.param(
            DUAL_SOCKET_20_CORE_HT,
            cpulist.parse("2-9,22-29"),
            frozenset(),
            4,
            1,
            {
                "controlplane": ["5,25"],
                "dataplane": ["6,26", "7,27", "8,28", "9,29"],
                "infra": ["0-4,10-24,30-39"],
            },
            [
                "CPUs 2-4,22-24 are isolated at boot but end up in infra, the housekeeping"
                " pool; raise --num-dp-cores or --num-cp-cores to use them (whole cores"
                " only), or isolate fewer CPUs at boot"
            ],
            id="dual-socket-ht-isolated-on-socket-0",
        ),
        pytest.param(
            SEED_16,
            cpulist.parse("3-7,12-15"),  # CPU 3 isolated, its sibling 11 not
            frozenset(),
            4,
            0,
            {
                "controlplane": [],
                "dataplane": ["4,12", "5,13", "6,14", "7,15"],
                "infra": ["0-3,8-11"],
            },
            [
                "CPUs 3 are isolated at boot but end up in infra, the housekeeping pool;"
                " raise --num-dp-cores or --num-cp-cores to use them (whole cores only), or"
                " isolate fewer CPUs at boot"
            ],
            id="half-isolated-core-is-no-dataplane-core",
        ),
        pytest.param(
            SEED_16,
            cpulist.parse("4-7,12-14"),  # core 7 (7,15) only half isolated
            frozenset(),
            3,
            1,
            {
                "controlplane": ["7,15"],
                "dataplane": ["4,12", "5,13", "6,14"],
                "infra": ["0-3,8-11"],
            },
            [],
            id="half-isolated-top-core-goes-to-controlplane",
        ),
    ],
)
def test_carve_with_cpus_isolated_at_boot(
    cpus: list[FakeCpu],
    isolated: frozenset[int],
    nohz_full: frozenset[int],
    dp: int,
    cp: int,
    expected: dict[str, list[str]],
    warnings: list[str],
) -> None:
    carved = carving(topology(cpus, isolated=isolated, nohz_full=nohz_full), dp, cp)
    assert lists(carved.pools) == expected
    assert carved.warnings == warnings
    assert [p.exclusive for p in carved.pools.values()] == [False, True, False]


def test_an_isolated_core_with_an_offline_cpu_counts_by_its_online_cpus() -> None:
    # CPU 15 offline: core 7 is CPU 7 alone, isolated; CPU 14 is isolated, its sibling 6 not.
    topo_ = topology(SEED_16, offline=frozenset({15}), isolated=cpulist.parse("5,7,13-14"))
    assert lists(carving(topo_, 2, 0).pools) == {
        "controlplane": [],
        "dataplane": ["5,13", "7"],
        "infra": ["0-4,6,8-12,14"],
    }


@pytest.mark.parametrize(
    ("isolated", "dp", "message"),
    [
        (
            "6-7,14-15",
            4,
            "--num-dp-cores=4 needs 4 core(s) isolated at boot, but the host has 2 (isolated CPUs"
            " 6-7,14-15; a core counts when all its CPUs are): isolate more at boot or lower"
            " --num-dp-cores",
        ),
        (
            "4-7,12-14",
            4,
            "--num-dp-cores=4 needs 4 core(s) isolated at boot, but the host has 3 (isolated CPUs"
            " 4-7,12-14; a core counts when all its CPUs are)",
        ),
        ("4-7", 1, "--num-dp-cores=1 needs 1 core(s) isolated at boot, but the host has 0"),
    ],
)
def test_too_few_isolated_cores_is_an_error_naming_both_numbers(
    isolated: str, dp: int, message: str
) -> None:
    with pytest.raises(EnvironmentProblem, match=re.escape(message)):
        carving(topology(SEED_16, isolated=cpulist.parse(isolated)), dp, 1)


def test_isolated_cpus_that_are_offline_are_not_isolation() -> None:
    # isolcpus named CPUs that are offline now: nothing online is isolated, the seed's carving.
    offline = frozenset({7, 15})
    topo_ = topology(SEED_16, offline=offline, isolated=offline)
    assert topo_.isolated_at_boot == frozenset()
    assert carving(topo_, 2, 1).warnings == []
    assert lists(carving(topo_, 2, 1).pools) == lists(
        carve(topology(SEED_16, offline=offline), 2, 1)
    )
