"""`fleetpki audit verify|forward`: check the audit log, resend it to SIEM receivers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from controller.audit.forward import Destination, destinations_from_env, forward
from controller.audit.log import AuditError, audit_dir, log_files, public_key, verify_log
from controller.audit.records import key_fingerprint
from controller.audit.siem import FORMATS

audit_app = typer.Typer(no_args_is_help=True, help="Verify the audit log; forward it to a SIEM.")

StateOpt = Annotated[Path | None, typer.Option(
    "--state-dir", help="State directory. Default: $FLEETPKI_STATE_DIR or "
    "~/.local/state/fleetpki.", show_default=False)]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _state(option: Path | None) -> Path:
    from controller.jobs import StateDir  # the job layer resolves the default state directory

    return StateDir.resolve(option).path


def _pinned(path: Path) -> ed25519.Ed25519PublicKey:
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise _fail(f"--public-key {path}: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise _fail(f"--public-key {path}: not an Ed25519 public key")
    return key


@audit_app.command("verify")
def verify(state_dir: StateOpt = None, public_key_file: Annotated[Path | None, typer.Option(
        "--public-key", help="Check the seals with this copy of audit-key.pub kept elsewhere "
        "(the one beside the log could have been replaced with the log).",
        show_default=False)] = None) -> None:
    """Check every record of `<state>/audit/audit.jsonl` and the files rotated beside it: the
    hash chain, the sequence and the signed seals. Exit 0 when intact; exit 1 naming the first
    bad record as FILE:LINE."""
    directory = audit_dir(_state(state_dir))
    if not log_files(directory):
        raise _fail(f"no audit log in {directory}")
    try:
        key = _pinned(public_key_file) if public_key_file else public_key(directory)
        verdict = verify_log(directory, key)
    except AuditError as exc:
        raise _fail(str(exc)) from None
    for warning in verdict.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if verdict.bad is not None:
        raise _fail(f"{verdict.bad.where}: {verdict.reason}")
    assert key is not None  # an intact log ends with a seal, which needs a key
    typer.echo(f"audit log intact: {verdict.records} records, {verdict.seals} seals, "
               f"{len(log_files(directory))} file(s), key {key_fingerprint(key)}")


@audit_app.command("forward")
def forward_command(state_dir: StateOpt = None, syslog: Annotated[list[str] | None, typer.Option(
        "--syslog", help="udp://, tcp:// or tls://HOST:PORT (repeatable). Default: "
        "$FLEETPKI_AUDIT_SYSLOG.", show_default=False)] = None,
        format: Annotated[str, typer.Option(
            "--format", help=f"{' or '.join(FORMATS)}.", envvar="FLEETPKI_AUDIT_FORMAT")]
        = "rfc5424",
        ca_file: Annotated[Path | None, typer.Option(
            "--ca", help="CA certificates that sign the TLS receiver's certificate.",
            envvar="FLEETPKI_AUDIT_SYSLOG_CA", show_default=False)] = None) -> None:
    """Send each receiver the records it has not received yet (what a down receiver missed)."""
    directory = audit_dir(_state(state_dir))
    try:
        destinations = [Destination.parse(url, format, ca_file) for url in syslog] if syslog \
            else destinations_from_env()
    except (ValueError, AuditError) as exc:
        raise _fail(str(exc)) from None
    if not destinations:
        raise _fail("no receiver: pass --syslog URL or set FLEETPKI_AUDIT_SYSLOG")
    failed = False
    for destination in destinations:
        try:
            sent = forward(directory, destination)
        except OSError as exc:
            typer.echo(f"error: {destination.url}: {exc} (kept for the next attempt)", err=True)
            failed = True
            continue
        typer.echo(f"{destination.url}: sent {sent} record(s)")
    if failed:
        raise typer.Exit(1)
