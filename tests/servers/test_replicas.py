"""Two server replicas on one inventory see an apply's revocation on their next request: on
SQLite through `PRAGMA data_version`, on PostgreSQL through the notifications its triggers send
on commit (LISTEN/NOTIFY), which drop the replicas' OCSP caches."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from controller import jobs
from controller.clock import epoch
from controller.servers.state import ServerState
from controller.stores.inventory import CertRecord
from tests.integration.support import (
    PASSPHRASE,
    commit_all,
    device_ids,
    edit_csv,
    small_repo,
)


def status(replica: ServerState, request: bytes) -> ocsp.OCSPCertStatus:
    return ocsp.load_der_ocsp_response(replica.ocsp_response(request)).certificate_status


def applied(tmp_path: Path) -> tuple[Path, jobs.StateDir, list[str], CertRecord, bytes]:
    """A fleet of three applied ($FLEETPKI_DATABASE_URL, if set, holds the inventory): the
    repository, the state, the ids, the first device's certificate and an OCSP request for it."""
    ids = device_ids("m", 3)
    repo = small_repo(tmp_path / "repo", ids)
    state = jobs.StateDir.resolve(tmp_path / "state")
    jobs.apply(repo, state, jobs.now_utc(), write_status=False)
    with state.reader() as inventory:
        device = inventory.active_device("meters", ids[0])
        assert device is not None and device.issuer_serial is not None
        issuer = inventory.get(device.issuer_serial)
        assert issuer is not None
    request = ocsp.OCSPRequestBuilder().add_certificate(
        x509.load_der_x509_certificate(device.der), x509.load_der_x509_certificate(issuer.der),
        hashes.SHA256()).build().public_bytes(Encoding.DER)
    return repo, state, ids, device, request


@pytest.mark.usefixtures("inventory_backend")
def test_replicas_answer_a_revocation_after_an_apply(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jobs.PASSPHRASE_ENV, PASSPHRASE)
    repo, state, ids, device, request = applied(tmp_path)
    replicas = [ServerState(None, state), ServerState(None, state)]
    try:
        assert [status(r, request) for r in replicas] == [ocsp.OCSPCertStatus.GOOD] * 2
        edit_csv(repo / "fleets" / "meters.csv", revoke={ids[0]: "keyCompromise"})
        commit_all(repo, "revoke one")
        jobs.apply(repo, state, jobs.now_utc(), write_status=False)
        assert [status(r, request) for r in replicas] == [ocsp.OCSPCertStatus.REVOKED] * 2
    finally:
        for replica in replicas:
            replica.close()


@pytest.mark.usefixtures("inventory_backend")
def test_another_replicas_enrollment_drops_answers_not_the_declaration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device certificate written by another replica or worker (as EST writes one) is seen on
    the next request, and costs no reload of the declaration; an apply that completes a fleet
    reloads it, with the device it added."""
    monkeypatch.setenv(jobs.PASSPHRASE_ENV, PASSPHRASE)
    repo, state, ids, device, request = applied(tmp_path)
    writer, reader = ServerState(repo, state), ServerState(repo, state)
    try:
        assert status(reader, request) == ocsp.OCSPCertStatus.GOOD  # now cached
        declared = reader.desired
        with writer.inventory.transaction():  # superseded, as by another worker's enrollment
            writer.inventory.revoke(device.serial, "superseded", epoch(jobs.now_utc()))
        assert status(reader, request) == ocsp.OCSPCertStatus.REVOKED
        assert reader.desired is declared
        added = device_ids("m", 1, start=4)[0]
        edit_csv(repo / "fleets" / "meters.csv", add=[f"{added},lab,"])
        commit_all(repo, "add one")
        jobs.apply(repo, state, jobs.now_utc(), write_status=False)
        reader.refresh()
        assert reader.desired is not declared
        assert reader.desired.fleets["meters"].device_set.find(added) is not None
    finally:
        writer.close()
        reader.close()
