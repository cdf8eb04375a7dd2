"""The example alert rules: valid for Prometheus (`promtool check rules`), firing as their unit
tests say (`promtool test rules`), and written over metric names fleetpki exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY, generate_latest

from controller.servers.metrics import ServerMetrics
from controller.status import metrics  # noqa: F401  (registers the reconcile metrics)

MONITORING = Path(__file__).resolve().parents[2] / "examples" / "monitoring"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: install Debian's prometheus (.ci/run does)"
    return subprocess.run([tool, *args], cwd=MONITORING, capture_output=True, text=True,
                          check=False, timeout=120)


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_rules_fire_as_their_unit_tests_say() -> None:
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]}
    assert {"FleetpkiCAExpiring", "FleetpkiReconcileFailing"} <= tested
    result = promtool("test", "rules", "alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_use_exported_metric_names(tmp_path: Path) -> None:
    exported = ServerMetrics(tmp_path / "inventory.db").registry
    text = (generate_latest(exported) + generate_latest(REGISTRY)).decode()
    names = set(re.findall(r"^# TYPE (fleetpki_\w+)", text, re.MULTILINE))
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    used = {name for group in rules["groups"] for rule in group["rules"]
            for name in re.findall(r"fleetpki_\w+", rule["expr"])}
    assert used and used <= names, used - names
