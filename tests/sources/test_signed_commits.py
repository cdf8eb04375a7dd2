"""`--require-signed-commits --allowed-signers FILE` on `apply` and `reconcile`.

Real git, real SSH signatures: ed25519 keys made by ssh-keygen in tmp_path (.ci/run installs
openssh-client). The fleet is the two-tenant example (platform/**, teams/sensors/**,
teams/meters/**) with its trusted policy directory; the allowed signers give the platform key
every tenant (`*`) and each team's key its own tenant.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.api.loading import parse_documents
from controller.policy.signers import AllowedSigners, SignersFileError, allows, path_refusal
from controller.policy.tenancy import Tenancy
from tests.policy.support import PASSPHRASE, PROJECT, git, invoke

EXAMPLE = PROJECT / "examples" / "tenants"
STATUS = "fleetpki/status"
SENSORS = "teams/sensors/fleet.yaml"
KEYS = ("platform", "sensors", "meters", "stranger")


def ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    assert found, "ssh-keygen is missing: install openssh-client (.ci/run does)"
    return found


@dataclass
class Setup:
    fleet: Path
    policies: Path
    allowed: Path
    keys: dict[str, Path]  # private key files; `.pub` beside each
    state: Path

    def fingerprint(self, key: str) -> str:
        listing = subprocess.run([ssh_keygen(), "-lf", f"{self.keys[key]}.pub"], check=True,
                                 capture_output=True, text=True).stdout
        return listing.split()[1]

    def commit(self, message: str, key: str | None) -> str:
        """Commit everything, signed with `key` (None: unsigned); the new HEAD."""
        git(self.fleet, "add", "-A")
        signing = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.keys[key]}", "commit",
                   "-S"] if key else ["commit"]
        git(self.fleet, *signing, "-q", "--allow-empty", "-m", message)
        return git(self.fleet, "rev-parse", "HEAD").strip()

    def add_device(self, device: str, file: str = SENSORS) -> None:
        path = self.fleet / file
        text = path.read_text(encoding="utf-8")
        path.write_text(text + f"    - id: {device}\n", encoding="utf-8")

    def devices(self, fleet: str = "sensors") -> list[dict[str, str]]:
        """The fleet's certificates in the inventory (serials included)."""
        result = invoke("status", self.fleet, "--state-dir", self.state, "--fleet", fleet,
                        "--devices", "-o", "json")
        rows: list[dict[str, str]] = json.loads(result.stdout)
        return rows

    def status_message(self) -> str:
        return git(self.fleet, "log", "-1", "--format=%B", STATUS).strip()

    def status_file(self, path: str) -> str:
        return git(self.fleet, "show", f"{STATUS}:{path}")


@dataclass
class RunResult:
    code: int
    stdout: str
    stderr: str


Run = Callable[..., RunResult]


def unboxed(text: str) -> str:
    """A usage error's message out of rich's box, on one line."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    """The example fleet, committed on main with the platform key; nothing applied yet."""
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    shutil.copytree(EXAMPLE, tmp_path / "example")
    keys = {}
    for name in KEYS:
        keys[name] = tmp_path / "keys" / name
        keys[name].parent.mkdir(exist_ok=True)
        subprocess.run([ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test",
                        "-f", str(keys[name])], check=True)
    public = {name: " ".join(Path(f"{path}.pub").read_text().split()[:2])
              for name, path in keys.items()}
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"# principals are tenants\n* {public['platform']} platform team\n"
                       f"sensors namespaces=\"git\" {public['sensors']}\n"
                       f"meters {public['meters']}\n", encoding="utf-8")
    fleet = tmp_path / "example" / "fleet-repo"
    result = Setup(fleet, tmp_path / "example" / "platform-policies", allowed, keys,
                   tmp_path / "state")
    git(fleet, "init", "-q", "-b", "main")
    result.commit("fleet declaration", "platform")
    return result


def run_apply(setup: Setup, *extra: str, rc: int, signed: bool = True) -> RunResult:
    signing = ["--require-signed-commits", "--allowed-signers", setup.allowed] if signed else []
    result = invoke("apply", setup.fleet, "--state-dir", setup.state, "--policies",
                    setup.policies, *signing, *extra, rc=rc)
    return RunResult(result.exit_code, result.stdout, result.stderr)


def run_reconcile(setup: Setup, *extra: str, rc: int, signed: bool = True) -> RunResult:
    """One `reconcile --once` of the fleet repository, pushing status back to it."""
    signing = ["--require-signed-commits", "--allowed-signers", setup.allowed] if signed else []
    result = invoke("reconcile", "--repo", setup.fleet, "--ref", "main", "--once", "--push",
                    "--state-dir", setup.state, "--policies", setup.policies, *signing, *extra,
                    rc=rc)
    return RunResult(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(params=[run_apply, run_reconcile], ids=["apply", "reconcile"])
def run(request: pytest.FixtureRequest) -> Run:
    runner: Run = request.param
    return runner


def refused(setup: Setup, run: Run, commit: str, file: str, reason: str) -> None:
    """The run exits 1 naming the commit, the file and the reason; no certificate changes,
    and the fleet is Stalled with that message on the status branch."""
    before = setup.devices()
    result = run(setup, rc=1)
    said = " ".join(result.stderr.split())
    assert f"commit {commit[:12]} (" in said and f"): {file}: {reason}" in said, said
    assert setup.devices() == before
    assert setup.status_message() == "fleetpki status: refused"
    status = setup.status_file("status/DeviceFleet/sensors.yaml")
    stalled = " ".join(status.split("type: Stalled", 1)[1].split())
    assert stalled.startswith("status: 'True'") and f"{commit[:12]}" in stalled


@pytest.fixture
def applied(setup: Setup, run: Run) -> Setup:
    """The platform-signed declaration, applied (with signatures required)."""
    run(setup, rc=0)
    assert len(setup.devices()) == 2
    return setup


def test_a_properly_signed_change_is_applied_and_its_signer_recorded(
        applied: Setup, run: Run) -> None:
    setup = applied
    first = git(setup.fleet, "rev-parse", "HEAD").strip()
    assert setup.status_message().splitlines()[2:] == [
        f"Applied-commit: {first}",
        f"Applied-commit-signer: * {setup.fingerprint('platform')}"]
    setup.add_device("sensor-0003")
    head = setup.commit("add sensor-0003", "sensors")
    run(setup, rc=0)
    assert "sensor-0003" in {row["device"] for row in setup.devices()}
    assert setup.status_message().splitlines()[2:] == [
        f"Applied-commit: {head}",
        f"Applied-commit-signer: sensors {setup.fingerprint('sensors')}"]


def test_an_unsigned_commit_is_refused(applied: Setup, run: Run) -> None:
    applied.add_device("sensor-0003")
    commit = applied.commit("add sensor-0003", None)
    refused(applied, run, commit, SENSORS, "not signed")


def test_a_commit_signed_by_an_unknown_key_is_refused(applied: Setup, run: Run) -> None:
    applied.add_device("sensor-0003")
    commit = applied.commit("add sensor-0003", "stranger")
    refused(applied, run, commit, SENSORS,
            f"signed by key {applied.fingerprint('stranger')}, which is not in {applied.allowed}")


def test_a_tenants_key_may_not_change_another_tenants_fleet(applied: Setup, run: Run) -> None:
    applied.add_device("sensor-0003")
    commit = applied.commit("add sensor-0003", "meters")
    refused(applied, run, commit, SENSORS, f"signed by key {applied.fingerprint('meters')} "
            "allowed for meters, not for tenant sensors")


def test_a_refused_commit_stays_refused_under_later_signed_commits(
        applied: Setup, run: Run) -> None:
    applied.add_device("sensor-0003")
    unsigned = applied.commit("add sensor-0003", None)
    run(applied, rc=1)
    refused(applied, run, unsigned, SENSORS, "not signed")  # a refused run records no progress
    applied.add_device("sensor-0004")
    applied.commit("add sensor-0004", "sensors")
    refused(applied, run, unsigned, SENSORS, "not signed")


def test_only_commits_after_the_last_applied_one_are_checked(setup: Setup, run: Run) -> None:
    unsigned = setup.commit("unsigned tweak", None)
    # the first run with signatures required checks every commit reachable from HEAD
    result = run(setup, rc=1)
    said = " ".join(result.stderr.split())
    assert f'{unsigned[:12]} (policy tests: "unsigned tweak"): (no files): not signed' in said
    run(setup, rc=0, signed=False)  # applied (unsigned history) without the requirement
    setup.add_device("sensor-0003")
    head = setup.commit("add sensor-0003", "sensors")
    run(setup, rc=0)
    assert "sensor-0003" in {row["device"] for row in setup.devices()}
    assert f"Applied-commit: {head}" in setup.status_message()


def test_a_merge_is_judged_by_its_own_changes_and_the_merged_commits_by_theirs(
        setup: Setup) -> None:
    run_apply(setup, rc=0)
    git(setup.fleet, "checkout", "-q", "-b", "meters-change")
    setup.add_device("meter-0000aaaa", "teams/meters/fleet.yaml")
    branch_commit = setup.commit("add a meter", None)
    git(setup.fleet, "checkout", "-q", "main")
    setup.add_device("sensor-0003")
    setup.commit("add sensor-0003", "sensors")
    # a clean merge changes no file beyond its parents: the sensors key may sign it
    git(setup.fleet, "-c", "gpg.format=ssh", "-c", f"user.signingkey={setup.keys['sensors']}",
        "merge", "-q", "-S", "--no-ff", "-m", "merge meters", "meters-change")
    result = run_apply(setup, rc=1)
    assert (f"commit {branch_commit[:12]} (policy tests: \"add a meter\"): "
            "teams/meters/fleet.yaml: not signed") in " ".join(result.stderr.split())
    git(setup.fleet, "reset", "-q", "--hard", "HEAD~1")
    git(setup.fleet, "checkout", "-q", "meters-change")
    git(setup.fleet, "reset", "-q", "HEAD~1")
    setup.commit("add a meter", "meters")
    git(setup.fleet, "checkout", "-q", "main")
    git(setup.fleet, "-c", "gpg.format=ssh", "-c", f"user.signingkey={setup.keys['sensors']}",
        "merge", "-q", "-S", "--no-ff", "-m", "merge meters", "meters-change")
    run_apply(setup, rc=0)
    assert "sensor-0003" in {row["device"] for row in setup.devices()}
    assert "meter-0000aaaa" in {row["device"] for row in setup.devices("meters")}
    assert f"Applied-commit-signer: sensors {setup.fingerprint('sensors')}" in (
        setup.status_message())


def test_paths_outside_the_fleet_directory_need_only_an_allowed_key(setup: Setup) -> None:
    """DIR is a subdirectory: a tenant's key may change the repository's other files, not the
    fleet directory's files that no tenant owns."""
    repository = setup.fleet.parent  # example/: fleet-repo/ and platform-policies/
    shutil.rmtree(setup.fleet / ".git")
    git(repository, "init", "-q", "-b", "main")
    setup.fleet = repository
    setup.commit("fleet declaration", "platform")
    (repository / "README.md").write_text("notes\n", encoding="utf-8")
    setup.commit("notes", "meters")
    fleet = repository / "fleet-repo"
    args = ("--state-dir", setup.state, "--policies", setup.policies,
            "--require-signed-commits", "--allowed-signers", setup.allowed)
    invoke("apply", fleet, *args, rc=0)
    (fleet / "README.md").write_text("fleet notes\n", encoding="utf-8")
    commit = setup.commit("fleet notes", "meters")
    result = invoke("apply", fleet, *args, rc=1)
    assert (f"commit {commit[:12]} (policy tests: \"fleet notes\"): fleet-repo/README.md: "
            f"signed by key {setup.fingerprint('meters')} allowed for meters, not for platform, "
            "sensors (a path no tenant owns needs a key allowed for every tenant)"
            ) in " ".join(result.stderr.split())


def test_options_go_together_and_a_working_tree_has_no_signature(setup: Setup) -> None:
    usage = invoke("apply", setup.fleet, "--state-dir", setup.state, "--require-signed-commits",
                   rc=2)
    assert "--require-signed-commits and --allowed-signers FILE go together" in unboxed(
        usage.stderr)
    dirty = run_apply(setup, "--allow-uncommitted", rc=2)
    assert "a working tree has no signature: --allow-uncommitted cannot be used with " \
        "--require-signed-commits" in unboxed(dirty.stderr)
    assert not setup.state.exists()


def test_a_malformed_allowed_signers_line_is_an_error_naming_file_and_line(
        setup: Setup, run: Run) -> None:
    setup.allowed.write_text(setup.allowed.read_text() + "meters ssh-ed25519 !!notbase64\n")
    result = run(setup, rc=1)
    assert f"error: {setup.allowed}:5: the key is not valid base64" in result.stderr
    assert not (setup.state / "inventory.db").exists()


# --- the allowed signers file and principal matching, without git ------------------------------
KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOlObWRzXjxL0GgLW5cnFnMfmcRjdbAQWeoYZCppHKq+"
FINGERPRINT = "SHA256:/c0xmEwReLERdNgRCvmlFuyBtIEyuFw7itegXANEEXA"  # ssh-keygen -lf's


def test_allowed_signers_lines_map_fingerprints_to_tenant_patterns() -> None:
    text = (f"# comment\n\nsensors,meters ssh-ed25519 {KEY} someone@example\n"
            f'"platform" namespaces="git,file",valid-after="20200101" ssh-ed25519 {KEY}\n')
    signers = AllowedSigners.parse(text, "signers")
    assert signers.keys == {FINGERPRINT: ("sensors", "meters", "platform")}


@pytest.mark.parametrize(("line", "reason"), [
    ("sensors", "expected: principals [options] keytype base64-key [comment]"),
    (f"sensors ssh-rsa {KEY}", "the key is not a ssh-rsa key"),
    (f"sensors cert-authority ssh-ed25519 {KEY}", "cert-authority keys are not supported"),
    (f",sensors ssh-ed25519 {KEY}", "empty principal pattern"),
])
def test_a_malformed_line_names_file_and_line(line: str, reason: str) -> None:
    with pytest.raises(SignersFileError) as raised:
        AllowedSigners.parse(f"# keys\n{line}\n", "allowed_signers")
    assert str(raised.value).startswith(f"allowed_signers:2: {reason}")


def test_principal_patterns_match_tenant_names() -> None:
    assert allows(("*",), "sensors")
    assert allows(("sens*", "meters"), "sensors") and allows(("sens*", "meters"), "meters")
    assert not allows(("meters",), "sensors")
    assert not allows(("*", "!sensors"), "sensors") and allows(("*", "!sensors"), "meters")


def test_a_path_needs_its_tenant_and_an_unowned_path_every_tenant() -> None:
    text = (EXAMPLE / "platform-policies" / "tenants.yaml").read_text()
    tenants, problems = parse_documents(text, "tenants.yaml")
    assert problems == []
    tenancy = Tenancy({item.resource.name: item for item in tenants})
    assert path_refusal(("sensors",), SENSORS, tenancy) is None
    assert path_refusal(("meters",), SENSORS, tenancy) == (
        "allowed for meters, not for tenant sensors")
    assert path_refusal(("*",), "README.md", tenancy) is None
    assert path_refusal(("sensors", "meters"), "README.md", tenancy) == (
        "allowed for sensors,meters, not for platform (a path no tenant owns needs a key "
        "allowed for every tenant)")
    assert path_refusal(("meters",), None, tenancy) is None  # outside the fleet directory
    assert path_refusal(("meters",), SENSORS, Tenancy()) is None  # no tenants declared


def test_the_audit_log_names_the_applied_commit_its_author_and_signer(
        applied: Setup, run: Run) -> None:
    head = git(applied.fleet, "rev-parse", "HEAD").strip()
    log = (applied.state / "audit" / "audit.jsonl").read_text(encoding="utf-8")
    started = [json.loads(line) for line in log.splitlines() if '"apply.started"' in line]
    assert started[-1]["actor"]["commit"] == head
    assert started[-1]["actor"]["signer"] == f"* {applied.fingerprint('platform')}"
    assert started[-1]["actor"]["author"] == git(applied.fleet, "log", "-1",
                                                 "--format=%an <%ae>").strip()
