"""Allowed signers: which SSH keys may sign changes to which tenants' paths.

The file is ssh-keygen's ALLOWED SIGNERS format, with tenant name patterns as principals:
`sensors ssh-ed25519 AAAA...`, `sensors,meters ssh-ed25519 AAAA...`, `* ssh-ed25519 AAAA...`
(`*` matches every tenant: a platform key). Keys are known by their fingerprint as git prints it
(`%GF`): `SHA256:` and the unpadded base64 of the SHA-256 of the key blob.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from controller.policy.tenancy import Tenancy


class SignersFileError(Exception):
    """The allowed signers file cannot be read or has a malformed line (`file:line: why`)."""


def fingerprint(blob: bytes) -> str:
    """An SSH key's SHA256 fingerprint, as ssh-keygen and git print it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _field(line: str) -> tuple[str, str]:
    """The first whitespace-separated field (double quotes keep spaces) and the rest."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char.isspace() and not quoted:
            return line[:index], line[index:].lstrip()
    return line, ""


def _key_blob(keytype: str, encoded: str) -> bytes:
    """The decoded key, checked to be of `keytype` (its blob starts with the type's name)."""
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not valid base64") from None
    size = int.from_bytes(blob[:4], "big")
    if blob[4:4 + size] != keytype.encode():
        raise ValueError(f"the key is not a {keytype} key")
    return blob


def _parse_line(line: str) -> tuple[tuple[str, ...], str]:
    """(principal patterns, key fingerprint) of one line, or ValueError."""
    principals, rest = _field(line)
    patterns = tuple(principals.strip('"').split(","))
    if not all(patterns):
        raise ValueError("empty principal pattern")
    keytype, rest = _field(rest)
    if keytype and not (keytype.startswith(("ssh-", "ecdsa-", "sk-"))):  # options come first
        if "cert-authority" in keytype.split(","):
            raise ValueError("cert-authority keys are not supported: list each signing key")
        keytype, rest = _field(rest)
    encoded, _comment = _field(rest)
    if not keytype or not encoded:
        raise ValueError("expected: principals [options] keytype base64-key [comment]")
    return patterns, fingerprint(_key_blob(keytype, encoded))


@dataclass(frozen=True)
class AllowedSigners:
    """Key fingerprint -> the tenant name patterns it may sign for; `file` names the source."""

    file: str
    keys: Mapping[str, tuple[str, ...]]

    @classmethod
    def parse(cls, text: str, file: str) -> AllowedSigners:
        """Every key line (`#` comments and blank lines skipped); SignersFileError names the
        first malformed line as `file:line`."""
        keys: dict[str, tuple[str, ...]] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                patterns, key = _parse_line(line)
            except ValueError as exc:
                raise SignersFileError(f"{file}:{number}: {exc}") from None
            keys[key] = keys.get(key, ()) + tuple(p for p in patterns
                                                  if p not in keys.get(key, ()))
        return cls(file, keys)


def allows(patterns: tuple[str, ...], tenant: str) -> bool:
    """Whether the principal patterns match a tenant name (`*`, `?`; `!pattern` excludes)."""
    if any(fnmatchcase(tenant, p[1:]) for p in patterns if p.startswith("!")):
        return False
    return any(fnmatchcase(tenant, p) for p in patterns if not p.startswith("!"))


def path_refusal(patterns: tuple[str, ...], path: str | None, tenancy: Tenancy) -> str | None:
    """Why a key with these principal patterns may not change `path` (relative to the fleet
    directory; None: outside it), or None when it may. A path a tenant owns needs that tenant;
    a path no tenant owns needs every tenant; without tenants any allowed key may."""
    if path is None or not tenancy.tenants:
        return None
    owners = tenancy.owning(path)
    missing = [t for t in owners or sorted(tenancy.tenants) if not allows(patterns, t)]
    if not missing:
        return None
    scope = (f"tenant {', '.join(missing)}" if owners else
             f"{', '.join(missing)} (a path no tenant owns needs a key allowed for every tenant)")
    return f"allowed for {','.join(patterns)}, not for {scope}"
