"""kcm's metrics through Prometheus' own tool: lint of the exposition, and the alerting rules
of contrib/prometheus evaluated by ``promtool test rules`` on series kcm itself produced."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import kcm_env, run_kcm
from tests.fixtures.state import SEED_STATE, build_state

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
    assert "SUCCESS: 2 rules found" in checked.stdout


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
