"""Audit records as syslog messages for a SIEM (pure): RFC 5424 with the record's fields as
structured data and its exact line as the message (so the receiver can re-check the chain), or
ArcSight CEF carried in an RFC 5424 message; and RFC 6587 octet-counting for TCP and TLS."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

FORMATS = ("rfc5424", "cef")
PEN = 32473  # the enterprise number RFC 5612 reserves for documentation: SD-ID fleetpki@32473
FACILITY = 13  # log audit
APP = "fleetpki"
_BOM = b"\xef\xbb\xbf"
_SD_FIELDS = ("seq", "run", "outcome", "object", "device", "serial", "fingerprint",
              "replaces", "reason", "policy", "rule", "address", "crlNumber", "prev")


def severity(record: Mapping[str, Any]) -> int:
    """Syslog severity: notice (5) for a success, warning (4) otherwise."""
    return 5 if record.get("outcome") == "success" else 4


def _ascii_token(text: str, limit: int) -> str:
    """Printable US-ASCII without spaces (HOSTNAME, MSGID, PARAM-NAME), '-' when empty."""
    token = "".join(c for c in text if 33 <= ord(c) <= 126 and c not in '=]"')[:limit]
    return token or "-"


def _sd_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _flat(record: Mapping[str, Any]) -> dict[str, str]:
    """The record's fields for a SIEM: the usual ones and `actor.*`."""
    fields = {name: str(record[name]) for name in _SD_FIELDS if record.get(name) not in (None, "")}
    actor = record.get("actor")
    if isinstance(actor, Mapping):
        fields.update({f"actor.{k}": str(v) for k, v in sorted(actor.items())})
    return fields


def _header(record: Mapping[str, Any], hostname: str, procid: int, msgid: str) -> bytes:
    pri = FACILITY * 8 + severity(record)
    return (f"<{pri}>1 {record.get('time', '-')} {_ascii_token(hostname, 255)} {APP} "
            f"{procid} {_ascii_token(msgid, 32)} ").encode("ascii")


def rfc5424(record: Mapping[str, Any], line: bytes, hostname: str, procid: int) -> bytes:
    """One RFC 5424 message: SD-ID fleetpki@32473 with the fields, MSG the record's line."""
    params = " ".join(f'{_ascii_token(name, 32)}="{_sd_value(value)}"'
                      for name, value in _flat(record).items())
    structured = f"[{APP}@{PEN} {params}]".encode()
    return (_header(record, hostname, procid, str(record.get("action", "")))
            + structured + b" " + _BOM + line)


def _cef_header(text: object) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|")


def _cef_value(text: object) -> str:
    return (str(text).replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r")
            .replace("\n", "\\n"))


def _epoch_ms(time: object) -> str:
    try:
        return str(int(datetime.fromisoformat(str(time).replace("Z", "+00:00")).timestamp()
                       * 1000))
    except ValueError:
        return ""


def cef(record: Mapping[str, Any], version: str) -> str:
    """The record as a CEF:0 event: standard keys (rt, act, outcome, externalId, suser, src,
    msg, dvchost) and labelled custom strings for object, serial, fingerprint, device, run,
    commit."""
    actor = record.get("actor") if isinstance(record.get("actor"), Mapping) else {}
    assert isinstance(actor, Mapping)
    extension = {
        "rt": _epoch_ms(record.get("time")),
        "act": record.get("action", ""),
        "outcome": record.get("outcome", ""),
        "externalId": record.get("seq", ""),
        "suser": actor.get("author") or actor.get("device") or actor.get("user")
        or actor.get("pod") or "",
        "src": actor.get("address", ""),
        "dvchost": actor.get("host", ""),
        "msg": record.get("reason", ""),
    }
    for number, (label, value) in enumerate((
            ("object", record.get("object")), ("serial", record.get("serial")),
            ("fingerprint", record.get("fingerprint")), ("device", record.get("device")),
            ("run", record.get("run")), ("commit", actor.get("commit"))), start=1):
        if value:
            extension[f"cs{number}Label"] = label
            extension[f"cs{number}"] = value
    text = " ".join(f"{key}={_cef_value(value)}" for key, value in extension.items()
                    if value not in ("", None))
    action = str(record.get("action", ""))
    name = f"{action} {record.get('outcome', '')}".strip()
    level = 3 if record.get("outcome") == "success" else 7
    return (f"CEF:0|fleetpki|fleetpki|{_cef_header(version)}|{_cef_header(action)}|"
            f"{_cef_header(name)}|{level}|{text}")


def cef_message(record: Mapping[str, Any], version: str, hostname: str, procid: int) -> bytes:
    """A CEF event carried as the MSG of an RFC 5424 message (no structured data)."""
    return (_header(record, hostname, procid, str(record.get("action", ""))) + b"- "
            + cef(record, version).encode("utf-8"))


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 octet-counting framing (TCP, TLS): `LENGTH SP MESSAGE`."""
    return f"{len(message)} ".encode("ascii") + message
