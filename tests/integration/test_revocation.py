"""Revoking devices by editing the declaration, checked with `openssl crl` and `openssl verify`."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from controller.api.durations import parse_duration

from .support import (
    Applied,
    Cli,
    active_serials,
    branch_sha,
    commit_all,
    edit_csv,
    openssl,
    status_files,
)

REVOKED_KEY = "sensor-0042"
REMOVED = "sensor-0043"
STILL_GOOD = "sensor-0044"


def crl_duration(repo: Path, ca: str) -> timedelta:
    for document in yaml.safe_load_all((repo / "authorities.yaml").read_text()):
        if document["metadata"]["name"] == ca:
            return parse_duration(document["spec"]["crl"]["duration"])
    raise AssertionError(f"no CA {ca}")


def crl_entries(text: str) -> dict[str, str]:
    """Serial (openssl's upper-case hex) -> reason, from `openssl crl -text`."""
    entries: dict[str, str] = {}
    serial = None
    lines = iter(text.splitlines())
    for line in lines:
        found = re.match(r"\s*Serial Number: ([0-9A-F]+)", line)
        if found:
            serial = found.group(1)
            entries[serial] = "unspecified"
        elif "CRL Reason Code" in line and serial is not None:
            entries[serial] = next(lines).strip()
    return entries


def crl_number(text: str) -> int:
    found = re.search(r"X509v3 CRL Number:\s*\n\s*(\d+)", text)
    assert found, text
    return int(found.group(1))


def openssl_time(value: str) -> datetime:
    return datetime.strptime(value.strip(), "%b %d %H:%M:%S %Y %Z")


def as_openssl(serial: str) -> str:
    text = format(int(serial, 16), "X")
    return text if len(text) % 2 == 0 else "0" + text


def export_device(cli: Cli, applied: Applied, device: str, out: Path) -> Path:
    cli("export", "cert", applied.repo, "--state-dir", applied.state, "--fleet", "sensors",
        "--device", device, "--out", out)
    return out


def revoke_two(applied: Applied) -> None:
    edit_csv(applied.repo / "fleets" / "sensors.csv", revoke={REVOKED_KEY: "keyCompromise"},
             delete=[REMOVED])
    commit_all(applied.repo, "revoke sensor-0042 (stolen), retire sensor-0043")


def test_revoke_by_editing_the_csv(applied_example: Applied, cli: Cli, tmp_path: Path) -> None:
    repo, state = applied_example
    serials = active_serials(state, "sensors")
    # The devices' certificates as they were handed out before the revocation.
    revoked_dir = export_device(cli, applied_example, REVOKED_KEY, tmp_path / "revoked")
    good_dir = export_device(cli, applied_example, STILL_GOOD, tmp_path / "good")
    revoke_two(applied_example)

    plan = json.loads(cli("plan", repo, "--state-dir", state, "-o", "json").stdout)
    actions = [(a["action"], a.get("device", a["name"]), a.get("revocationReason"),
                a.get("serial")) for a in plan["actions"]]
    assert actions == [
        ("revoke", REVOKED_KEY, "keyCompromise", serials[REVOKED_KEY]),
        ("revoke", REMOVED, "cessationOfOperation", serials[REMOVED]),
        ("publish-crl", "devices-ca", None, None),
    ]
    cli("plan", repo, "--state-dir", state, "--detailed-exitcode", rc=2)

    applied = cli("apply", repo, "--state-dir", state).stdout
    assert "2 revoke" in applied and "1 publish-crl" in applied
    after = active_serials(state, "sensors")
    assert REVOKED_KEY not in after and REMOVED not in after and len(after) == 998
    assert after[STILL_GOOD] == serials[STILL_GOOD], "other devices are untouched"

    crl = tmp_path / "devices-ca.crl.pem"
    cli("export", "crl", repo, "--state-dir", state, "--ca", "devices-ca", "--out", crl)
    text = openssl("crl", "-in", crl, "-noout", "-text").stdout
    assert crl_entries(text) == {as_openssl(serials[REVOKED_KEY]): "Key Compromise",
                                 as_openssl(serials[REMOVED]): "Cessation Of Operation"}
    assert crl_number(text) == 2
    dates = openssl("crl", "-in", crl, "-noout", "-lastupdate", "-nextupdate").stdout
    found = dict(line.split("=", 1) for line in dates.splitlines())
    assert openssl_time(found["nextUpdate"]) - openssl_time(found["lastUpdate"]) == \
        crl_duration(repo, "devices-ca")

    # The same CRL is what the broker reads from the public directory (DER).
    public = state / "public" / "crl" / "devices-ca.crl"
    published = openssl("crl", "-inform", "DER", "-in", public, "-noout", "-text").stdout
    assert crl_entries(published) == crl_entries(text)

    # openssl verify with the CRL rejects the revoked certificate and accepts the others.
    trust = tmp_path / "trust.pem"
    trust.write_text((revoked_dir / "ca.pem").read_text() + (revoked_dir / "chain.pem").read_text())
    rejected = openssl("verify", "-crl_check", "-CRLfile", crl, "-CAfile", trust,
                       revoked_dir / "cert.pem", check=False)
    assert rejected.returncode != 0
    assert "certificate revoked" in rejected.stdout + rejected.stderr
    accepted = openssl("verify", "-crl_check", "-CRLfile", crl, "-CAfile", trust,
                       good_dir / "cert.pem")
    assert accepted.stdout.strip().endswith(": OK")
    # The whole chain, with the root's CRL too.
    both = tmp_path / "all-crls.pem"
    root_crl = tmp_path / "root.crl.pem"
    cli("export", "crl", repo, "--state-dir", state, "--ca", "acme-root", "--out", root_crl)
    both.write_text(crl.read_text() + root_crl.read_text())
    openssl("verify", "-crl_check_all", "-CRLfile", both, "-CAfile", revoked_dir / "ca.pem",
            "-untrusted", revoked_dir / "chain.pem", good_dir / "cert.pem")
    rejected_all = openssl("verify", "-crl_check_all", "-CRLfile", both, "-CAfile",
                           revoked_dir / "ca.pem", "-untrusted", revoked_dir / "chain.pem",
                           revoked_dir / "cert.pem", check=False)
    assert "certificate revoked" in rejected_all.stdout + rejected_all.stderr

    # Status reports the revocations; the revoked device is no longer exportable.
    sensors = status_files(repo)["status/DeviceFleet/sensors.yaml"]["status"]
    assert sensors["devices"]["declared"] == 998
    assert (sensors["devices"]["active"], sensors["devices"]["revoked"]) == (998, 2)
    ca_status = status_files(repo)["status/CertificateAuthority/devices-ca.yaml"]["status"]
    assert (ca_status["crl"]["number"], ca_status["crl"]["entries"]) == (2, 2)
    gone = cli("export", "cert", repo, "--state-dir", state, "--fleet", "sensors", "--device",
               REVOKED_KEY, "--out", tmp_path / "again", rc=1)
    assert "latest certificate is revoked" in gone.stderr
    rows = json.loads(cli("status", repo, "--state-dir", state, "--fleet", "sensors",
                          "--devices", "-o", "json").stdout)
    reasons = {r["device"]: (r["state"], r["reason"]) for r in rows}
    assert reasons[REVOKED_KEY] == ("revoked", "keyCompromise")
    assert reasons[REMOVED] == ("revoked", "cessationOfOperation")


def test_revoked_stays_revoked(applied_example: Applied, cli: Cli) -> None:
    """Un-marking a revoked device issues a new certificate; the old one stays on the CRL."""
    repo, state = applied_example
    old = active_serials(state, "sensors")[REVOKED_KEY]
    revoke_two(applied_example)
    cli("apply", repo, "--state-dir", state)
    edit_csv(repo / "fleets" / "sensors.csv", revoke={REVOKED_KEY: ""})
    commit_all(repo, f"{REVOKED_KEY} is trusted again")
    plan = json.loads(cli("plan", repo, "--state-dir", state, "-o", "json").stdout)
    assert [(a["action"], a.get("device")) for a in plan["actions"]
            if a["action"] != "publish-crl"] == [("issue", REVOKED_KEY)]
    cli("apply", repo, "--state-dir", state)
    new = active_serials(state, "sensors")[REVOKED_KEY]
    assert new != old
    assert (state / "public" / "crl" / "devices-ca.crl").exists()
    text = openssl("crl", "-inform", "DER", "-in", state / "public" / "crl" / "devices-ca.crl",
                   "-noout", "-text").stdout
    assert as_openssl(old) in crl_entries(text)
    assert as_openssl(new) not in crl_entries(text)


def test_apply_with_revocations_converges_in_one_run(applied_example: Applied, cli: Cli) -> None:
    """Once the revocations are on the CRL, the next plan is empty and apply commits nothing."""
    repo, state = applied_example
    revoke_two(applied_example)
    cli("apply", repo, "--state-dir", state)
    tip = branch_sha(repo, "fleetpki/status")
    again = cli("plan", repo, "--state-dir", state, "--detailed-exitcode", rc=None)
    assert again.returncode == 0, f"plan after apply is not empty:\n{again.stdout}"
    assert "no changes" in cli("apply", repo, "--state-dir", state).stdout
    assert branch_sha(repo, "fleetpki/status") == tip
