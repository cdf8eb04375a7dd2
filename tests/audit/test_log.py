"""The audit log: hash chain, seals, rotation and crash recovery, tampered with in every way
`fleetpki audit verify` must catch, checked through the CLI's exit code and message."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from controller.audit.log import LOG, PUBLIC_KEY, AuditLog, log_files
from controller.audit.records import Event, digest, encode
from controller.cli import app

NOW = datetime(2030, 1, 1, tzinfo=UTC)
KEY = ed25519.Ed25519PrivateKey.generate()


def events(count: int, start: int = 0) -> list[Event]:
    return [Event("certificate.issued", "success", "DeviceFleet/sensors",
                  {"commit": "abc", "author": "Alice <alice@example.com>"},
                  {"device": f"sensor-{n}", "serial": f"{n:040x}"})
            for n in range(start, start + count)]


def write_log(state: Path, batches: int = 3, per_batch: int = 4, max_bytes: int = 1 << 20,
              key: ed25519.Ed25519PrivateKey | None = KEY) -> AuditLog:
    log = AuditLog(state, lambda: key, max_bytes=max_bytes)
    for batch in range(batches):
        log.append(events(per_batch, batch * per_batch), NOW)
    return log


def verify(state: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", "verify", "--state-dir", str(state), *extra])
    return result.exit_code, result.output


def lines_of(state: Path) -> list[bytes]:
    return (state / "audit" / LOG).read_bytes().splitlines(keepends=True)


def put(state: Path, lines: list[bytes]) -> None:
    (state / "audit" / LOG).write_bytes(b"".join(lines))


def rewrite(lines: list[bytes], index: int, **changes: object) -> list[bytes]:
    """Change record `index` and recompute every later `prev`, keeping the old signatures."""
    out = list(lines[:index])
    for number, line in enumerate(lines[index:], start=index):
        record = json.loads(line)
        if number == index:
            record.update(changes)
        if out:
            record["prev"] = digest(out[-1].rstrip(b"\n"))
        out.append(encode(record) + b"\n")
    return out


def forged(before: bytes, seq: int) -> bytes:
    """A record chained exactly after `before`, as an attacker inserting it would write it."""
    record = json.loads(before) | {"seq": seq, "device": "intruder",
                                   "prev": digest(before.rstrip(b"\n"))}
    return encode(record) + b"\n"


def test_an_untouched_log_verifies_and_its_files_are_private(tmp_path: Path) -> None:
    write_log(tmp_path)
    code, output = verify(tmp_path)
    assert code == 0, output
    assert "15 records, 3 seals, 1 file(s)" in output
    assert (tmp_path / "audit" / LOG).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "audit").stat().st_mode & 0o777 == 0o700
    records = [json.loads(line) for line in lines_of(tmp_path)]
    assert [r["seq"] for r in records] == list(range(1, 16))
    assert [r["action"] for r in records if "sig" in r] == ["audit.sealed"] * 3


@pytest.mark.parametrize(("tamper", "line", "why"), [
    (lambda ls: ls[:6] + [ls[6].replace(b"sensor-5", b"sensor-9")] + ls[7:], 7, "edited"),
    (lambda ls: ls[:6] + ls[7:], 7, "deleted, inserted or reordered"),
    (lambda ls: ls[:6] + [ls[2]] + ls[6:], 7, "deleted, inserted or reordered"),
    (lambda ls: ls[:6] + [forged(ls[5], 7)] + ls[6:], 7, "inserted record"),
    (lambda ls: ls[:5] + [ls[6], ls[5]] + ls[7:], 6, "deleted, inserted or reordered"),
    (lambda ls: ls[:-1], 11, "unsealed tail"),
    (lambda ls: ls[:-1] + [ls[-1][:40]], 15, "incomplete record"),
    (lambda ls: rewrite(ls, 6, device="evil"), 6, "does not verify"),
    (lambda ls: rewrite(ls, 0, device="evil"), 1, "does not verify"),
    (lambda ls: ls[1:], 1, "does not start at record 1"),
])
def test_verify_names_the_first_bad_record(tmp_path: Path, tamper, line: int, why: str) -> None:
    write_log(tmp_path)
    put(tmp_path, tamper(lines_of(tmp_path)))
    code, output = verify(tmp_path)
    assert code == 1
    assert f"error: {tmp_path / 'audit' / LOG}:{line}: " in output
    assert why in output


def test_a_replaced_public_key_is_caught_and_a_pinned_one_is_used(tmp_path: Path) -> None:
    write_log(tmp_path)
    original = tmp_path / "pinned.pub"
    original.write_bytes((tmp_path / "audit" / PUBLIC_KEY).read_bytes())
    forger = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "audit" / PUBLIC_KEY).write_bytes(
        forger.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    code, output = verify(tmp_path)
    assert code == 1 and ":1: " in output and "does not verify" in output
    assert verify(tmp_path, "--public-key", str(original))[0] == 0


def test_a_forger_resealing_with_their_own_key_fails_against_the_pinned_key(
        tmp_path: Path) -> None:
    write_log(tmp_path)
    pinned = tmp_path / "pinned.pub"
    pinned.write_bytes((tmp_path / "audit" / PUBLIC_KEY).read_bytes())
    other = tmp_path / "other"
    write_log(other, key=ed25519.Ed25519PrivateKey.generate())  # a whole log of a forger
    (tmp_path / "audit" / LOG).write_bytes((other / "audit" / LOG).read_bytes())
    assert verify(tmp_path, "--public-key", str(pinned))[0] == 1


def test_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    write_log(tmp_path, batches=6, max_bytes=2000)
    files = log_files(tmp_path / "audit")
    assert len(files) > 2 and files[-1].name == LOG
    assert files[0].name == "audit-000000000001.jsonl"
    code, output = verify(tmp_path)
    assert code == 0, output
    assert "30 records, 6 seals" in output
    # an edit in a rotated file, then a whole rotated file removed
    middle = files[1].read_bytes().splitlines(keepends=True)
    files[1].write_bytes(b"".join([middle[0].replace(b"sensor", b"SENSOR"), *middle[1:]]))
    code, output = verify(tmp_path)
    assert code == 1 and f"{files[1]}:1: " in output and "edited" in output
    files[1].unlink()
    code, output = verify(tmp_path)
    assert code == 1 and f"{files[2]}:1: " in output


def test_an_unsealed_tail_is_sealed_late_by_the_next_append_with_a_warning(
        tmp_path: Path) -> None:
    write_log(tmp_path, batches=1)
    write_log(tmp_path, batches=1, key=None)  # e.g. a run refused for a wrong passphrase
    code, output = verify(tmp_path)
    assert code == 1 and ":6: unsealed tail" in output
    with open(tmp_path / "audit" / LOG, "ab") as handle:  # and a write cut short
        handle.write(b'{"seq": 10, "act')
    write_log(tmp_path, batches=1)
    code, output = verify(tmp_path)
    assert code == 0, output
    assert "warning:" in output and "records 6..9 were written without a seal" in output
    recovered = [json.loads(line) for line in lines_of(tmp_path)
                 if b'"audit.recovered"' in line]
    assert recovered[0]["droppedBytes"] == len(b'{"seq": 10, "act')


def test_no_log_or_an_emptied_one_is_an_error(tmp_path: Path) -> None:
    code, output = verify(tmp_path)
    assert code == 1 and "no audit log" in output
    write_log(tmp_path)
    put(tmp_path, [])
    code, output = verify(tmp_path)
    assert code == 1 and f"{LOG}:1: no record at all" in output


def test_concurrent_writers_keep_one_chain(tmp_path: Path) -> None:
    """apply and serve append to the same log from different processes: the lock orders them
    (threads with their own AuditLog open their own lock file descriptions, like processes)."""
    def writer(number: int) -> None:
        log = AuditLog(tmp_path, lambda: KEY)
        for batch in range(10):
            log.append(events(2, number * 100 + batch * 2), NOW)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    code, output = verify(tmp_path)
    assert code == 0, output
    assert "120 records, 40 seals" in output


def test_an_empty_current_file_after_rotation_does_not_restart_the_chain(
        tmp_path: Path) -> None:
    log = write_log(tmp_path, batches=3, max_bytes=500)
    (tmp_path / "audit" / LOG).rename(tmp_path / "audit" / "audit-999999999999.jsonl")
    (tmp_path / "audit" / LOG).touch()  # a crash between creating the file and writing it
    log.append(events(1), NOW)
    code, output = verify(tmp_path)
    assert code == 0, output
    assert "17 records" in output


def test_unsealed_records_right_after_a_rotation_are_recovered_onto_the_chain(
        tmp_path: Path) -> None:
    write_log(tmp_path, batches=2, max_bytes=500)
    write_log(tmp_path, batches=1, max_bytes=500, key=None)  # rotated, then left unsealed
    assert b"audit.sealed" not in lines_of(tmp_path)[-1]
    content = (tmp_path / "audit" / LOG).read_bytes()
    (tmp_path / "audit" / LOG).write_bytes(content + content[:30])  # and a partial seal line
    write_log(tmp_path, batches=1, max_bytes=1 << 20)
    code, output = verify(tmp_path)
    assert code == 0, output
    assert "records 11..14 were written without a seal" in output
