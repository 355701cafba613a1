"""kcm's metrics through Prometheus' own tool: lint of the exposition, and the alerting rules
of contrib/prometheus evaluated by ``promtool test rules`` on series kcm itself produced."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kcm import totals
from kcm.fence import record
from tests.conftest import kcm_env, run_kcm
from tests.fixtures.state import SEED_STATE, build_state
from tests.integration.test_audit import fenced_host, plant_intruders, state_for

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus" / "kcm-alerts.yml"

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="needs promtool (Debian's prometheus package; scripts/setup.sh installs it as root)",
)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def test_the_exposition_passes_promtools_lint(tmp_path: Path) -> None:
    conf = build_state(str(tmp_path / "kcm"), SEED_STATE)
    text = run_kcm("metrics", f"--conf-dir={conf}", env=kcm_env()).out
    checked = promtool("check", "metrics", stdin=text)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def test_the_lint_has_teeth() -> None:
    bad = "# HELP kcm_things Things.\n# TYPE kcm_things counter\nkcm_things 1\n"
    checked = promtool("check", "metrics", stdin=bad)
    assert checked.returncode != 0
    assert "_total" in checked.stdout + checked.stderr


def test_the_rules_file_is_valid() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout


def dataplane(tmp_path: Path, name: str, free: int) -> dict[str, float]:
    """kcm's own figures for a 4-list dataplane with ``free`` lists free."""
    lists = {
        f"{cpu},{cpu + 8}": ("" if i < free else str(2000 + i)) for i, cpu in enumerate(range(4, 8))
    }
    conf = build_state(str(tmp_path / name), {"dataplane": (True, lists)})
    text = run_kcm("metrics", f"--conf-dir={conf}", env=kcm_env()).out
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("pool") == "dataplane" and s.name.startswith("kcm_pool_cpu_lists"):
                found[s.name] = s.value
    return found


def test_dataplane_full_fires_after_ten_minutes_of_every_list_held(tmp_path: Path) -> None:
    full = dataplane(tmp_path, "full", free=0)
    spare = dataplane(tmp_path, "spare", free=1)
    assert (full["kcm_pool_cpu_lists_free"], spare["kcm_pool_cpu_lists_free"]) == (0, 1)

    def series(instance: str, figures: list[dict[str, float]]) -> list[dict[str, str]]:
        """One sample a minute: the figures of each state for 5 minutes in turn, then the last."""
        out = []
        for name in ("kcm_pool_cpu_lists_free", "kcm_pool_cpu_lists"):
            values = [f"{f[name]:g}" for f in figures for _ in range(5)]
            values += [values[-1]] * (30 - len(values))
            labels = f'pool="dataplane",instance="{instance}",job="kcm"'
            out.append({"series": f"{name}{{{labels}}}", "values": " ".join(values)})
        return out

    def alert(instance: str) -> dict[str, object]:
        return {
            "exp_labels": {
                "severity": "warning",
                "pool": "dataplane",
                "instance": instance,
                "job": "kcm",
            },
            "exp_annotations": {
                "summary": f"{instance}: every dataplane CPU list is held",
                "description": (
                    f"All dataplane CPU lists of {instance} have been held for 10 minutes."
                    " Check for tasks that are gone (kcm_cpu_list_stale_tasks; kcm reconcile"
                    " frees them) or add dataplane cores."
                ),
            },
        }

    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    *series("full:9545", [full]),  # full all along
                    *series("spare:9545", [spare]),  # one list free all along
                    *series("blip:9545", [full, spare]),  # full for 5 minutes only
                    *series("later:9545", [spare, full]),  # full from minute 5 on
                ],
                "alert_rule_test": [
                    {"eval_time": "9m", "alertname": "KcmDataplaneFull", "exp_alerts": []},
                    {
                        "eval_time": "11m",
                        "alertname": "KcmDataplaneFull",
                        "exp_alerts": [alert("full:9545")],
                    },
                    {
                        "eval_time": "16m",
                        "alertname": "KcmDataplaneFull",
                        "exp_alerts": [alert("full:9545"), alert("later:9545")],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "kcm-alerts.test.yml"
    path.write_text(json.dumps(test, indent=2))  # JSON is YAML
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rule_test_has_teeth(tmp_path: Path) -> None:
    """The same harness fails when the alert is expected where the rule says no."""
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'kcm_pool_cpu_lists_free{pool="dataplane",instance="a"}',
                        "values": "1x20",
                    },
                    {
                        "series": 'kcm_pool_cpu_lists{pool="dataplane",instance="a"}',
                        "values": "4x20",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "KcmDataplaneFull",
                        "exp_alerts": [{"exp_labels": {"instance": "a"}}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "wrong.test.yml"
    path.write_text(json.dumps(test))
    assert promtool("test", "rules", str(path)).returncode != 0


def promtool_test(
    tmp_path: Path, series: list[dict[str, str]], checks: list[dict[str, object]]
) -> None:
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }
    path = tmp_path / "kcm-alerts.test.yml"
    path.write_text(json.dumps(test, indent=2))  # JSON is YAML
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def exported(conf: str, env: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """kcm's own exposition of ``conf``: sample name -> labels as text -> value."""
    text = run_kcm("metrics", f"--conf-dir={conf}", env=env or kcm_env()).out
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found.setdefault(s.name, {})[labels] = s.value
    return found


def test_reconcile_stalled_fires_three_intervals_after_the_last_pass(tmp_path: Path) -> None:
    conf = build_state(str(tmp_path / "kcm"), {"infra": (False, {"0": ""})})
    done = totals.Totals(pid=1, started=0.0, interval=60.0).after_pass(60.0, 0.01, ok=True)
    totals.record(conf, done)
    figures = exported(conf)
    assert figures["kcm_reconcile_interval_seconds"] == {"": 60.0}
    assert figures["kcm_reconcile_last_pass_timestamp_seconds"] == {"": 60.0}

    def series(instance: str, last_pass: str) -> list[dict[str, str]]:
        labels = f'instance="{instance}",job="kcm"'
        return [
            {
                "series": f"kcm_reconcile_last_pass_timestamp_seconds{{{labels}}}",
                "values": last_pass,
            },
            {"series": f"kcm_reconcile_interval_seconds{{{labels}}}", "values": "60x30"},
        ]

    alert = {
        "exp_labels": {"severity": "warning", "instance": "stopped:9545", "job": "kcm"},
        "exp_annotations": {
            "summary": "stopped:9545: the kcm reconcile loop has stalled",
            "description": (
                "The reconcile loop of stopped:9545 has finished no pass for more than three of"
                " its intervals. Check that kcm reconcile --interval runs (kubectl logs -c"
                " reconcile, or journalctl -u kcm-reconcile.service)."
            ),
        },
    }
    promtool_test(
        tmp_path,
        [
            *series("running:9545", "0+60x30"),  # a pass a minute, all along
            *series("stopped:9545", "0+60x5 300x25"),  # its last pass ended at 5 minutes
        ],
        [
            # 3 intervals after 5 minutes is 8; then one more minute of it.
            {"eval_time": "8m", "alertname": "KcmReconcileStalled", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "KcmReconcileStalled", "exp_alerts": [alert]},
        ],
    )


def test_shielded_cpu_intruded_fires_only_while_shielded(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    plant_intruders(host)
    conf = state_for(tmp_path)
    rec = record.Record("shielded", "b", "cgroup-v1", frozenset({3}), frozenset({0, 1, 2}), ())
    Path(conf, record.NAME).write_text(record.to_text(rec))
    figures = exported(conf, kcm_env(**host.env()))
    threads = figures["kcm_dataplane_cpu_intruding_threads"]['cpu="3"']
    irqs = figures["kcm_dataplane_cpu_intruding_irqs"]['cpu="3"']
    assert (threads, irqs) == (2, 1)
    assert figures["kcm_shield_state"]['state="shielded"'] == 1

    def series(instance: str, shielded: str, intruders: str) -> list[dict[str, str]]:
        labels = f'instance="{instance}",job="kcm"'
        return [
            {"series": f'kcm_shield_state{{state="shielded",{labels}}}', "values": shielded},
            {
                "series": f'kcm_dataplane_cpu_intruding_threads{{cpu="3",{labels}}}',
                "values": intruders,
            },
            {"series": f'kcm_dataplane_cpu_intruding_irqs{{cpu="3",{labels}}}', "values": "0x30"},
        ]

    alert = {
        "exp_labels": {
            "severity": "warning",
            "instance": "intruded:9545",
            "job": "kcm",
            "cpu": "3",
        },
        "exp_annotations": {
            "summary": "intruded:9545: shielded dataplane CPU 3 has intruders",
            "description": (
                "2 thread(s) and IRQ(s) may run on dataplane CPU 3 of intruded:9545 although it"
                " is shielded. kcm audit names them; kcm shield fences them off again."
            ),
        },
    }
    promtool_test(
        tmp_path,
        [
            *series("intruded:9545", "1x30", f"{threads:g}x30"),
            *series("unshielded:9545", "0x30", f"{threads:g}x30"),  # not shielded: expected
            *series("clean:9545", "1x30", "0x30"),
        ],
        [
            {"eval_time": "9m", "alertname": "KcmShieldedCpuIntruded", "exp_alerts": []},
            {"eval_time": "11m", "alertname": "KcmShieldedCpuIntruded", "exp_alerts": [alert]},
        ],
    )
