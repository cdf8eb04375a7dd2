"""Forwarding to a real rsyslogd on loopback (UDP, TCP, TLS), as RFC 5424 and as CEF, and what
it wrote; a receiver that is down loses nothing: the backlog goes out when it is back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from controller.audit.log import LOG, AuditLog
from controller.audit.records import Event, digest
from tests.audit.rsyslog import free_port, rsyslog, tls_files
from tests.policy.support import FleetRepo, init_repo, invoke

NOW = datetime(2030, 1, 1, tzinfo=UTC)
TRICKY = 'a "quoted" ] \\ reason = with | bars'


def write_log(state: Path, count: int = 3) -> list[bytes]:
    log = AuditLog(state, ed25519.Ed25519PrivateKey.generate)
    log.append([Event("certificate.revoked", "success", "DeviceFleet/sensors",
                      {"commit": "c0ffee", "author": "Alice <alice@example.com>"},
                      {"device": f"dev-{n}", "serial": f"{n:040x}", "reason": TRICKY})
                for n in range(count)], NOW)
    return (state / "audit" / LOG).read_bytes().splitlines()


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
def test_rfc5424_carries_the_fields_and_the_exact_line(tmp_path: Path, scheme: str) -> None:
    lines = write_log(tmp_path / "state")
    with rsyslog(tmp_path / "rsyslog") as receiver:
        port = receiver.udp if scheme == "udp" else receiver.tcp
        result = invoke("audit", "forward", "--state-dir", tmp_path / "state",
                        "--syslog", f"{scheme}://127.0.0.1:{port}")
        assert "sent 4 record(s)" in result.stdout
        received = receiver.received(4)
    assert [msgid for msgid, _, _ in received] == ["certificate.revoked"] * 3 + ["audit.sealed"]
    msgid, structured, message = received[1]
    assert structured.startswith("[fleetpki@32473 ")
    assert f'serial="{1:040x}"' in structured and 'device="dev-1"' in structured
    assert 'reason="a \\"quoted\\" \\] \\\\ reason = with | bars"' in structured
    assert 'actor.author="Alice <alice@example.com>"' in structured
    assert message.encode() == lines[1]  # the exact record: the chain can be re-checked
    assert json.loads(received[2][2])["prev"] == digest(message.encode())


def test_cef_over_tcp_escapes_its_values(tmp_path: Path) -> None:
    write_log(tmp_path / "state", count=1)
    with rsyslog(tmp_path / "rsyslog") as receiver:
        invoke("audit", "forward", "--state-dir", tmp_path / "state", "--format", "cef",
               "--syslog", f"tcp://127.0.0.1:{receiver.tcp}")
        (_, structured, message), _ = receiver.received(2)
    assert structured == "-"
    assert message.startswith("CEF:0|fleetpki|fleetpki|")
    assert "|certificate.revoked|certificate.revoked success|3|" in message
    assert f"cs2Label=serial cs2={0:040x}" in message
    assert 'msg=a "quoted" ] \\\\ reason \\= with | bars' in message
    assert "suser=Alice <alice@example.com>" in message and "rt=1893456000000" in message


def test_tls_with_the_receivers_ca_and_only_with_it(tmp_path: Path) -> None:
    lines = write_log(tmp_path / "state")
    tls = tls_files(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca = tls_files(tmp_path / "other")
    with rsyslog(tmp_path / "rsyslog", tls=tls) as receiver:
        url = f"tls://127.0.0.1:{receiver.tcp}"
        refused = invoke("audit", "forward", "--state-dir", tmp_path / "state", "--syslog", url,
                         "--ca", other_ca[0], rc=1)
        assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr
        assert "kept for the next attempt" in refused.stderr
        sent = invoke("audit", "forward", "--state-dir", tmp_path / "state", "--syslog", url,
                      "--ca", tls[0])
        assert "sent 4 record(s)" in sent.stdout
        received = receiver.received(4)
    assert [message.encode() for _, _, message in received] == lines


def test_a_down_receiver_neither_blocks_an_apply_nor_loses_a_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", "siem-tests-passphrase")
    monkeypatch.setenv("FLEETPKI_AUDIT_SYSLOG", f"tcp://127.0.0.1:{port}")
    repo, state = FleetRepo().write(tmp_path / "repo"), tmp_path / "state"
    init_repo(repo)
    invoke("apply", repo, "--state-dir", state)  # the receiver is down: the apply succeeds
    lines = (state / "audit" / LOG).read_bytes().splitlines()
    with rsyslog(tmp_path / "rsyslog", tcp=port) as receiver:
        invoke("audit", "forward", "--state-dir", state)  # the backlog, from the log
        invoke("apply", repo, "--state-dir", state)  # and the next run's own records
        everything = (state / "audit" / LOG).read_bytes().splitlines()
        received = receiver.received(len(everything))
    assert len(everything) > len(lines)
    assert [message.encode() for _, _, message in received] == everything  # once, in order


def test_forwarding_resumes_where_it_stopped_across_rotation(tmp_path: Path) -> None:
    state = tmp_path / "state"
    log = AuditLog(state, ed25519.Ed25519PrivateKey.generate, max_bytes=900)
    with rsyslog(tmp_path / "rsyslog") as receiver:
        url = f"tcp://127.0.0.1:{receiver.tcp}"
        for batch in range(4):
            log.append([Event("certificate.issued", "success", "DeviceFleet/sensors", {},
                              {"serial": f"{batch}-{n}"}) for n in range(3)], NOW)
            invoke("audit", "forward", "--state-dir", state, "--syslog", url)
        assert "sent 0 record(s)" in invoke("audit", "forward", "--state-dir", state,
                                            "--syslog", url).stdout
        files = sorted((state / "audit").glob("audit*.jsonl"))
        everything = b"".join(path.read_bytes() for path in files).splitlines()
        received = receiver.received(len(everything))
    assert len(files) > 2
    assert [message.encode() for _, _, message in received] == everything


def test_a_bad_destination_is_an_error_naming_it_before_anything_is_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", "siem-tests-passphrase")
    monkeypatch.setenv("FLEETPKI_AUDIT_SYSLOG", "ftp://127.0.0.1:514")
    repo, state = FleetRepo().write(tmp_path / "repo"), tmp_path / "state"
    init_repo(repo)
    result = invoke("apply", repo, "--state-dir", state, rc=1)
    assert result.stderr.startswith("error: $FLEETPKI_AUDIT_SYSLOG / $FLEETPKI_AUDIT_FORMAT: "
                                    "audit syslog destination 'ftp://127.0.0.1:514': expected "
                                    "udp://, tcp:// or tls://HOST:PORT")
    assert not (state / "inventory.db").exists()
    for args, said in ((["--syslog", "tcp://127.0.0.1"], "expected HOST:PORT"),
                       (["--syslog", "tcp://127.0.0.1:514", "--format", "xml"],
                        "audit format 'xml': expected one of rfc5424, cef")):
        failed = invoke("audit", "forward", "--state-dir", state, *args, rc=1)
        assert said in failed.stderr
