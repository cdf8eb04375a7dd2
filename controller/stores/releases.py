"""Signing certificates and release signatures, in the inventory.

A table of its own (`signing_certificates`, schema version 2 of `inventory.py`), so the
certificates table and its invariants are untouched. Every signed release has its own
code-signing certificate for its profile's key: withdrawing a release, or revoking a profile,
revokes certificates here, and the issuing CA's next CRL lists them. Timestamp authority
certificates (`release` empty, no manifest) are kept here too. Revoked signing certificates
stay on their CA's CRLs after they expire: a timestamped signature outlives its certificate,
and so must its revocation.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.stores.inventory import Inventory

COLUMNS = ("serial, profile, usage, release, digest, issuer_serial, key_id, state, not_after, "
           "der, issued_at, manifest, signature, revoked_at, reason")


@dataclass(frozen=True, slots=True)
class SigningRecord:
    """A signing certificate; for a release, with the manifest and signature it made."""

    serial: str
    profile: str
    usage: str
    release: str
    digest: str  # SHA-256 of the manifest (releases)
    issuer_serial: str
    key_id: str
    state: str
    not_after: int
    der: bytes
    issued_at: int
    manifest: bytes | None = None
    signature: bytes | None = None
    revoked_at: int | None = None
    reason: str | None = None

    @property
    def key_version(self) -> int:
        """The profile's `keyVersion` of the key (`signing.<profile>.<algorithm>.v<N>`)."""
        tail = self.key_id.rsplit(".v", 1)[-1]
        return int(tail) if tail.isdigit() and int(tail) > 0 else 1


class Releases:
    """The signing records of an inventory."""

    def __init__(self, inventory: Inventory) -> None:
        self.db = inventory.db

    def _select(self, where: str, params: tuple[object, ...] = ()) -> list[SigningRecord]:
        rows = self.db.execute(f"SELECT {COLUMNS} FROM signing_certificates WHERE {where}",
                               params)
        return [SigningRecord(*row) for row in rows]

    def current(self, release: str) -> SigningRecord | None:
        """The release's active signature (at most one)."""
        found = self._select("release = ? AND state = 'active' ORDER BY issued_at DESC",
                             (release,))
        return found[0] if found else None

    def history(self, release: str) -> list[SigningRecord]:
        return self._select("release = ? ORDER BY issued_at", (release,))

    def of_profile(self, profile: str) -> list[SigningRecord]:
        """Every certificate of the profile, oldest first."""
        return self._select("profile = ? ORDER BY issued_at, serial", (profile,))

    def profiles(self) -> dict[str, list[SigningRecord]]:
        """Profile -> its certificates, oldest first."""
        found: dict[str, list[SigningRecord]] = {}
        for record in self._select("1 = 1 ORDER BY profile, issued_at, serial"):
            found.setdefault(record.profile, []).append(record)
        return found

    def released(self) -> list[SigningRecord]:
        """Every release signature, newest first."""
        return self._select("release != '' ORDER BY issued_at DESC, release")

    def active(self, profile: str) -> list[SigningRecord]:
        return self._select("profile = ? AND state = 'active' ORDER BY serial", (profile,))

    def signed_at(self, at: int) -> list[SigningRecord]:
        """What a run at `at` signed or revoked (for the audit log)."""
        return self._select("issued_at = ? OR revoked_at = ? ORDER BY serial", (at, at))

    def revoked_by_issuer(self, issuer_serial: str) -> list[tuple[str, int, str]]:
        """(serial, revoked_at, reason) for the issuer's CRL, expired ones included."""
        return [(r.serial, r.revoked_at or 0, r.reason or "unspecified")
                for r in self._select("issuer_serial = ? AND state = 'revoked' ORDER BY serial",
                                      (issuer_serial,))]

    def revoked_total(self, issuer_serial: str) -> int:
        return len(self.revoked_by_issuer(issuer_serial))

    def insert(self, record: SigningRecord) -> None:
        self.db.execute(f"INSERT INTO signing_certificates ({COLUMNS}) VALUES "
                        f"({', '.join('?' * len(COLUMNS.split(', ')))})",
                        (record.serial, record.profile, record.usage, record.release,
                         record.digest, record.issuer_serial, record.key_id, record.state,
                         record.not_after, record.der, record.issued_at,
                         record.manifest, record.signature, record.revoked_at, record.reason))

    def revoke(self, serial: str, reason: str, at: int) -> None:
        self.db.execute("UPDATE signing_certificates SET state = 'revoked', revoked_at = ?, "
                        "reason = ? WHERE serial = ? AND state = 'active'", (at, reason, serial))
