"""Renewal over time, through the job API with an injected clock (the CLI uses the real one)."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from controller import jobs
from controller.clock import epoch
from controller.plan.model import Plan

from .support import (
    EXAMPLE,
    der_to_pem,
    device_ids,
    dump_yaml,
    fleet,
    openssl,
    openssl_serial,
    profile,
    query,
    small_repo,
)

T0 = datetime(2031, 3, 1, 8, 0, tzinfo=UTC)
LIFETIME = timedelta(hours=48)
WINDOW = timedelta(hours=24)
SIZE = 24
pytestmark = pytest.mark.usefixtures("inventory_backend")  # on SQLite and on PostgreSQL


def actions(plan: Plan, kind: str | None = None) -> list[tuple[str, str, str | None]]:
    return [(a.action, a.name, a.device) for a in plan.actions if kind in (None, a.action)]


def spki(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def history(state: Path, fleet_name: str) -> dict[str, list[tuple[str, str, str | None, int]]]:
    """device -> [(serial, state, reason, issued_at)] oldest first."""
    found: dict[str, list[tuple[str, str, str | None, int]]] = {}
    for device, serial, cert_state, reason, issued in query(
            state, "SELECT device, serial, state, reason, issued_at FROM certificates "
            "WHERE kind = 'device' AND owner = ? ORDER BY device, issued_at, rowid",
            (fleet_name,)):
        found.setdefault(device, []).append((serial, cert_state, reason, issued))
    return found


def der_of(state: Path, serial: str) -> bytes:
    return bytes(query(state, "SELECT der FROM certificates WHERE serial = ?", (serial,))[0][0])


def crl_text(state: Path) -> str:
    return openssl("crl", "-inform", "DER", "-in", state / "public" / "crl" / "devices-ca.crl",
                   "-noout", "-text").stdout


def short_lived_repo(root: Path) -> Path:
    root.mkdir()
    shutil.copy(EXAMPLE / "authorities.yaml", root / "authorities.yaml")
    short = {"duration": "48h", "renewBefore": "24h"}
    dump_yaml(root / "profiles.yaml",
              profile("rotating", rotationPolicy="Always", **short),
              profile("keeping", rotationPolicy="Never", **short))
    dump_yaml(root / "fleets.yaml",
              fleet("always", "rotating", devices=[{"id": d} for d in device_ids("a", SIZE)]),
              fleet("never", "keeping", devices=[{"id": d} for d in device_ids("n", SIZE)]))
    return root


def test_renewal_with_jitter_and_rotation_policies(passphrase: str, tmp_path: Path) -> None:
    repo = short_lived_repo(tmp_path / "repo")
    state = jobs.StateDir.resolve(tmp_path / "state")
    first = jobs.apply(repo, state, T0)
    assert first.result.done == {"create-ca": 2, "issue": 2 * SIZE, "publish-crl": 2}
    issued = {name: history(state.path, name) for name in ("always", "never")}

    assert jobs.plan(repo, state, T0 + timedelta(hours=11)).actions == ()
    # Renewal times are spread over the first half of the renewal window (24h..36h after
    # issuance): at +40h every device is due, at +30h only part of each fleet.
    everything = jobs.plan(repo, state, T0 + timedelta(hours=40))
    assert len(actions(everything, "rekey")) == SIZE and len(actions(everything, "renew")) == SIZE
    partial = jobs.plan(repo, state, T0 + timedelta(hours=30))
    due: dict[str, set[str]] = {
        name: {d for a, n, d in actions(partial) if n == name and a in ("renew", "rekey") and d}
        for name in ("always", "never")}
    for name, devices in due.items():
        assert 0 < len(devices) < SIZE, f"jitter spreads the renewals of {name}: {devices}"
    assert {a for a, n, _ in actions(partial) if n == "always"} == {"rekey"}, "rotation Always"
    assert {a for a, n, _ in actions(partial) if n == "never"} == {"renew"}, "rotation Never"
    assert ("publish-crl", "devices-ca", None) in actions(partial), "superseded go on the CRL"

    second = jobs.apply(repo, state, T0 + timedelta(hours=30))
    assert second.result.done.get("rekey") == len(due["always"])
    assert second.result.done.get("renew") == len(due["never"])
    assert query(state.path, "SELECT owner, device, count(*) FROM certificates WHERE "
                 "state = 'active' GROUP BY 1, 2 HAVING count(*) > 1") == []
    crl = crl_text(state.path)
    for name in ("always", "never"):
        now = history(state.path, name)
        for device, rows in now.items():
            if device not in due[name]:
                assert rows == issued[name][device], "not due: untouched"
                continue
            (old, old_state, reason, _), (new, new_state, _, issued_at) = rows
            assert (old_state, reason, new_state) == ("revoked", "superseded", "active")
            assert issued_at == epoch(T0 + timedelta(hours=30))
            assert openssl_serial(old) in crl and openssl_serial(new) not in crl
            same_key = spki(der_of(state.path, old)) == spki(der_of(state.path, new))
            assert same_key is (name == "never"), f"{name}/{device}: key rotation policy"
    assert "Superseded" in crl

    # The renewed certificate is valid for the profile's lifetime from the renewal.
    device = sorted(due["always"])[0]
    new_serial = history(state.path, "always")[device][-1][0]
    cert = der_to_pem(der_of(state.path, new_serial), tmp_path / "renewed.pem")
    end = openssl("x509", "-in", cert, "-noout", "-enddate").stdout.strip().split("=", 1)[1]
    assert datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC) == \
        T0 + timedelta(hours=30) + LIFETIME
    chain = tmp_path / "chain"
    chain.mkdir()
    for name in ("acme-root", "devices-ca"):
        shutil.copy(state.path / "public" / "ca" / f"{name}.pem", chain / f"{name}.pem")
    openssl("verify", "-x509_strict", "-attime", str(epoch(T0 + timedelta(hours=31))),
            "-CAfile", chain / "acme-root.pem", "-untrusted", chain / "devices-ca.pem", cert)

    # At +40h the rest is renewed, and only the rest.
    third = jobs.apply(repo, state, T0 + timedelta(hours=40))
    assert third.result.done.get("rekey", 0) == SIZE - len(due["always"])
    assert third.result.done.get("renew", 0) == SIZE - len(due["never"])
    for name in ("always", "never"):
        for device, rows in history(state.path, name).items():
            assert [r[1] for r in rows] == ["revoked", "active"], f"{name}/{device}"
    assert jobs.plan(repo, state, T0 + timedelta(hours=40)).actions == ()


def test_crl_is_republished_half_way_to_next_update(passphrase: str, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 3), git_init=False)
    state = jobs.StateDir.resolve(tmp_path / "state")
    crl_life = timedelta(hours=168)  # devices-ca in the example's authorities.yaml
    jobs.apply(repo, state, T0)

    def numbers() -> dict[str, int]:
        return dict(query(state.path, "SELECT ca_name, number FROM crls"))

    assert numbers() == {"acme-root": 1, "devices-ca": 1}
    assert jobs.plan(repo, state, T0 + crl_life * 0.4).actions == ()
    later = T0 + crl_life * 0.6
    plan = jobs.plan(repo, state, later)
    assert actions(plan) == [("publish-crl", "devices-ca", None)]
    assert "half-way" in plan.actions[0].reason
    jobs.apply(repo, state, later)
    assert numbers() == {"acme-root": 1, "devices-ca": 2}
    text = crl_text(state.path)
    assert re.search(r"X509v3 CRL Number:\s*\n\s*2\b", text)
    dates = openssl("crl", "-inform", "DER", "-in", state.path / "public" / "crl" /
                    "devices-ca.crl", "-noout", "-lastupdate", "-nextupdate").stdout
    found = {k: datetime.strptime(v.strip(), "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
             for k, v in (line.split("=", 1) for line in dates.splitlines())}
    assert found["lastUpdate"] == later
    assert found["nextUpdate"] == later + crl_life
    assert jobs.plan(repo, state, later).actions == ()


def test_intermediate_rollover_reissues_devices_under_the_new_ca(passphrase: str,
                                                                  tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 3), git_init=False)
    state = jobs.StateDir.resolve(tmp_path / "state")
    jobs.apply(repo, state, T0)
    old_ca = query(state.path, "SELECT serial FROM certificates WHERE kind = 'ca' AND "
                   "owner = 'devices-ca'")[0][0]
    # The intermediate lives 43800h with the default renewBefore of a third: due by +37000h.
    later = T0 + timedelta(hours=37000)
    plan = jobs.plan(repo, state, later)
    assert ("renew-ca", "devices-ca", None) in actions(plan)
    assert ("renew-ca", "acme-root", None) not in actions(plan)
    jobs.apply(repo, state, later)
    cas = dict(query(state.path, "SELECT serial, state FROM certificates WHERE kind = 'ca' "
                     "AND owner = 'devices-ca'"))
    assert cas[old_ca] == "retired" and list(cas.values()).count("active") == 1
    new_ca = next(s for s, st in cas.items() if st == "active")
    issuers = query(state.path, "SELECT DISTINCT issuer_serial FROM certificates WHERE "
                    "kind = 'device' AND state = 'active'")
    assert issuers == [(new_ca,)], "expired device certificates re-issued by the new CA"
    assert jobs.plan(repo, state, later).actions == ()
