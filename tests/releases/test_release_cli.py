"""The script contract: `fleetpki export release DIR --release NAME --out OUT/` and
`fleetpki verify ARTIFACT --manifest OUT/manifest.json --trust ROOT.pem [--crl FILE]`: exit 0
when valid, 1 with the reason otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from controller.cli import app
from tests.releases.support import Setup, release, signing_profile


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_plan_apply_export_verify(setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    state = ("--state-dir", str(setup.state.path))
    code, plan, _ = run("plan", setup.repo, *state)
    assert code == 0 and "+ sign-release Release/fw-1  (not yet signed)" in plan
    assert run("apply", setup.repo, *state)[0] == 0
    code, plan, _ = run("plan", setup.repo, *state)
    assert "sign-release" not in plan and "Plan: no changes." in plan
    code, shown, _ = run("status", setup.repo, *state, "-o", "json")
    [row] = json.loads(shown)["releases"]
    assert (row["release"], row["state"], row["profile"]) == ("fw-1", "active", "firmware")
    profiles = {p["profile"]: p for p in json.loads(shown)["signingProfiles"]}
    assert sorted(profiles) == ["firmware", "tsa"]
    assert profiles["firmware"] == {"profile": "firmware", "usage": "codeSigning",
                                    "keyVersion": 1, "serial": row["serial"],
                                    "notAfter": row["notAfter"], "active": 1, "revoked": 0}
    assert profiles["tsa"]["usage"] == "timeStamping" and profiles["tsa"]["active"] == 1
    code, table, _ = run("status", setup.repo, *state)
    assert code == 0 and "Signing profiles" in table and "Release signatures" in table
    out = setup.tmp / "OUT"
    code, listed, _ = run("export", "release", setup.repo, "--release", "fw-1", "--out", out,
                          *state)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "chain.pem", "manifest.json",
                                                     "manifest.p7s"]
    assert (out / "manifest.p7s").read_bytes()[:1] == b"\x30"  # DER
    crl = setup.crl()
    artifact = setup.repo / "artifacts" / "firmware.bin"
    code, said, _ = run("verify", artifact, "--manifest", out / "manifest.json", "--trust",
                        out / "ca.pem", "--crl", crl, "--fleet", "sensors")
    assert code == 0 and said.startswith("OK: release fw-1, signed ")
    other = setup.tmp / "other.bin"
    other.write_bytes(b"not the firmware")
    code, _, reason = run("verify", other, "--manifest", out / "manifest.json", "--trust",
                          out / "ca.pem")
    assert code == 1 and "verification failed: the artifact's SHA-256 is not in the " \
        "manifest" in reason
    code, _, reason = run("verify", artifact, "--manifest", out / "manifest.json", "--trust",
                          out / "ca.pem", "--fleet", "gateways")
    assert code == 1 and "does not target fleet 'gateways'" in reason
    code, _, reason = run("verify", artifact, "--manifest", out / "manifest.json", "--trust",
                          setup.tmp / "missing.pem")
    assert code == 1 and "cannot read" in reason and "missing.pem" in reason


def test_export_of_an_unknown_release_fails(setup: Setup) -> None:
    setup.declare(signing_profile(), release())
    setup.apply()
    code, _, reason = run("export", "release", setup.repo, "--release", "nope", "--out",
                          setup.tmp / "x", "--state-dir", setup.state.path)
    assert code == 1 and "no signed Release named 'nope'" in reason
