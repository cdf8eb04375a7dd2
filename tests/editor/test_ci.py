"""The CI examples: plan-pr.sh run for real on a pull-request-like branch, the GitHub workflow
(and its plan step's shell), and the pre-commit hook definition."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import CI_DIR, EXAMPLE_REPO, ROOT, env_with_bin

PLAN_PR = CI_DIR / "plan-pr.sh"
WORKFLOW = CI_DIR / "github-actions.yml"
NEW_SENSORS = "sensor-1001,TS-100,berlin,\nsensor-1002,TS-200,munich,\n"

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None,
                                reason="needs git and bash")


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=fleetpki test", "-c", "user.email=test@fleetpki.invalid",
         "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
        cwd=repo, capture_output=True, text=True, check=True)
    return result.stdout


def pull_request(tmp_path: Path, csv_rows: str) -> Path:
    """A fleet repo: the example committed on main, and a branch `change` adding CSV rows."""
    repo = tmp_path / "fleet"
    shutil.copytree(EXAMPLE_REPO, repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "fleet")
    git(repo, "checkout", "-qb", "change")
    csv = repo / "fleets" / "sensors.csv"
    text = csv.read_text(encoding="utf-8")
    csv.write_text(text + ("" if text.endswith("\n") else "\n") + csv_rows, encoding="utf-8")
    git(repo, "commit", "-qam", "two more sensors")
    return repo


def run_plan_pr(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(PLAN_PR), *args], cwd=repo, env=env_with_bin(),
                          capture_output=True, text=True, check=False, timeout=300)


# --- plan-pr.sh ---------------------------------------------------------------------------------


def test_plan_pr_writes_the_markdown_plan_of_the_branch(tmp_path: Path) -> None:
    repo = pull_request(tmp_path, NEW_SENSORS)
    output = tmp_path / "plan.md"
    result = run_plan_pr(repo, "main", str(output))
    assert result.returncode == 0, result.stderr
    markdown = output.read_text(encoding="utf-8")
    assert "| DeviceFleet/sensors | issue | 2 |" in markdown, markdown
    assert "sensor-1001" in markdown and "sensor-0001" not in markdown
    assert "validate" in result.stderr and result.stdout == ""
    assert git(repo, "status", "--porcelain") == "", "the script changed the work tree"


def test_plan_pr_exits_with_the_plans_code_when_policy_denies(tmp_path: Path) -> None:
    # sensor-10002 breaks the fleet's fleetpki.io/device-id-pattern (the identity policy)
    repo = pull_request(tmp_path, "sensor-10002,TS-100,berlin,\n")
    output = tmp_path / "plan.md"
    result = run_plan_pr(repo, "main", str(output))
    assert result.returncode == 1, result.stderr
    markdown = output.read_text(encoding="utf-8")
    assert "identity/device-id-pattern" in markdown and "sensor-10002" in markdown


def test_plan_pr_explains_a_failure_in_the_markdown(tmp_path: Path) -> None:
    repo = pull_request(tmp_path, NEW_SENSORS)
    output = tmp_path / "plan.md"
    result = run_plan_pr(repo, "no-such-branch", str(output))
    assert result.returncode == 1
    markdown = output.read_text(encoding="utf-8")
    assert markdown.startswith("### fleetpki plan") and "no-such-branch" in markdown


def test_plan_pr_usage() -> None:
    result = run_plan_pr(ROOT)
    assert result.returncode == 2 and "Usage: plan-pr.sh BASE_REF" in result.stderr
    assert "set -euo pipefail" in PLAN_PR.read_text(encoding="utf-8")


# --- the GitHub workflow ----------------------------------------------------------------------


def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def steps() -> list[dict[str, Any]]:
    (job,) = workflow()["jobs"].values()
    found: list[dict[str, Any]] = job["steps"]
    return found


def step_running(command: str) -> dict[str, Any]:
    matching = [s for s in steps() if command in s.get("run", "")]
    assert len(matching) == 1, f"{len(matching)} steps run {command!r}"
    return matching[0]


def test_workflow_runs_on_pull_requests_only_and_may_comment() -> None:
    data = workflow()
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert isinstance(triggers, dict) and set(triggers) == {"pull_request"}
    assert data["permissions"]["pull-requests"] == "write"
    assert not any("fleetpki apply" in s.get("run", "") for s in steps()), "CI never applies"


def test_workflow_checks_out_history_and_has_the_validate_and_plan_steps() -> None:
    checkout = next(s for s in steps() if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    assert any(s.get("uses", "").startswith("actions/setup-python@") for s in steps())
    assert re.search(r'pip install "fleetpki @ git\+https://', step_running("pip install")["run"])
    assert step_running("fleetpki validate .")
    plan = step_running("fleetpki plan .")["run"]
    assert '--base "origin/$BASE_REF" -o markdown > plan.md' in plan
    assert step_running("fleetpki plan .")["env"]["BASE_REF"] == "${{ github.base_ref }}"
    comment = step_running("gh pr comment")
    assert "--edit-last ||" in comment["run"] and "GH_TOKEN" in comment["env"]
    fail = steps()[-1]
    assert "steps.plan.outputs.exitcode != '0'" in fail["if"] and "exit 1" in fail["run"]


@pytest.mark.parametrize(("base", "code"), [("main", "0"), ("gone", "1")])
def test_workflow_plan_step_script(tmp_path: Path, base: str, code: str) -> None:
    """The plan step's shell, run as GitHub runs it (bash -eo pipefail) in a PR checkout."""
    repo = pull_request(tmp_path, NEW_SENSORS)
    git(repo, "update-ref", "refs/remotes/origin/main", "main")
    summary, outputs = tmp_path / "summary.md", tmp_path / "outputs"
    env = {**env_with_bin(), "BASE_REF": base, "GITHUB_STEP_SUMMARY": str(summary),
           "GITHUB_OUTPUT": str(outputs)}
    result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                             step_running("fleetpki plan .")["run"]], cwd=repo, env=env,
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr  # the last step fails the job, not this one
    assert outputs.read_text(encoding="utf-8") == f"exitcode={code}\n"
    plan = (repo / "plan.md").read_text(encoding="utf-8")
    assert summary.read_text(encoding="utf-8") == plan
    if code == "0":
        assert "| DeviceFleet/sensors | issue | 2 |" in plan
    else:
        assert plan.startswith("### fleetpki plan") and "failed (exit code 1)" in plan


# --- pre-commit -------------------------------------------------------------------------------


def test_pre_commit_hook_definition() -> None:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert hook["id"] == "fleetpki-validate"
    assert hook["entry"] == "fleetpki validate" and hook["language"] == "python"
    assert hook["pass_filenames"] is False and hook["args"] == ["."]
    files = re.compile(hook["files"])
    for name in ("profiles.yaml", "fleets/x.yml", "fleets/sensors.csv", "fleets/cams.jsonl"):
        assert files.search(name), name
    for name in ("README.md", "yaml.txt", "notes.csv.bak"):
        assert not files.search(name), name


def test_pre_commit_config_example_uses_the_hook() -> None:
    config = yaml.safe_load((CI_DIR / "pre-commit-config.yaml").read_text(encoding="utf-8"))
    (repo,) = config["repos"]
    assert [h["id"] for h in repo["hooks"]] == ["fleetpki-validate"]
    assert repo["rev"]


def test_ci_readme_covers_the_three_files() -> None:
    readme = (CI_DIR / "README.md").read_text(encoding="utf-8")
    for name in ("github-actions.yml", "plan-pr.sh", "pre-commit-config.yaml"):
        assert f"({name})" in readme, name
