"""`fleetpki export`: certificates, manufacturing bundles, CRLs and the trust bundle.

File contract (relied on by scripts): `cert.pem`, `chain.pem` (issuing CA up to, excluding, the
root), `ca.pem` (the root), `key.pem` (0600, only for server-generated keys).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509 import load_der_x509_certificate

from controller.clock import rfc3339
from controller.pki import bundles, certificates, keys
from controller.pki.crl import crl_to_pem
from controller.sources.worktree import enclosing_work_tree
from controller.stores.inventory import CertRecord, Inventory
from controller.stores.keystore import KeyStore

EXPORT_PASSPHRASE_ENV = "FLEETPKI_EXPORT_PASSPHRASE"


class ExportError(Exception):
    """Nothing to export, or the request is wrong; the message says which."""


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def issuer_chain(inventory: Inventory, record: CertRecord) -> list[x509.Certificate]:
    """Issuing CA first, root last."""
    chain: list[x509.Certificate] = []
    serial = record.issuer_serial
    while serial is not None:
        issuer = inventory.get(serial)
        if issuer is None:
            raise ExportError(f"issuer certificate {serial} missing from the inventory")
        chain.append(load_der_x509_certificate(issuer.der))
        serial = issuer.issuer_serial
    return chain


def _device_files(inventory: Inventory, keystore: Callable[[], KeyStore],
                  record: CertRecord) -> tuple[x509.Certificate, list[x509.Certificate],
                                               keys.PrivateKey | None]:
    chain = issuer_chain(inventory, record)
    key = None
    if record.key_blob is not None:
        key = keystore().unwrap_device_key(record.serial, record.key_blob)
    return load_der_x509_certificate(record.der), chain, key


def _active(inventory: Inventory, fleet: str, device: str) -> CertRecord:
    record = inventory.active_device(fleet, device)
    if record is None:
        history = inventory.device_history(fleet, device)
        state = f"its latest certificate is {history[-1].state}" if history else "no certificate"
        raise ExportError(f"device {device!r} of fleet {fleet!r} has no active certificate "
                          f"({state})")
    return record


def _refuse_keys_in_work_tree(out: Path, records: Iterable[CertRecord]) -> None:
    """A private key must never be one `git add` away from a repository: refuse an `out` inside
    a git work tree when any of `records` has a server-generated key."""
    top = enclosing_work_tree(out)
    if top is not None and any(record.key_blob is not None for record in records):
        raise ExportError(f"{out} is inside the git work tree {top}: the export would write "
                          f"private keys there, one `git add` away from the repository; choose "
                          f"an --out outside {top}")


def export_device_pem(inventory: Inventory, keystore: Callable[[], KeyStore], fleet: str,
                      device: str, out: Path) -> list[Path]:
    record = _active(inventory, fleet, device)
    _refuse_keys_in_work_tree(out, [record])
    return _write_pem(inventory, keystore, record, out)


@dataclass(frozen=True)
class DevicePEM:
    """A device's certificate files as PEM: `certificate`, `chain` (issuing CA up to,
    excluding, the root), `ca` (the root) and `key` (PKCS#8, only for server-generated keys;
    never in repr)."""

    certificate: bytes
    chain: bytes
    ca: bytes
    key: bytes | None = field(default=None, repr=False)


def device_pem(inventory: Inventory, keystore: Callable[[], KeyStore],
               record: CertRecord) -> DevicePEM:
    """The PEM files of one device certificate (what `export` writes and `tlsSecrets` hold)."""
    cert, chain, key = _device_files(inventory, keystore, record)
    return DevicePEM(certificates.certificate_to_pem(cert),
                     certificates.certificates_to_pem(chain[:-1]),
                     certificates.certificate_to_pem(chain[-1]),
                     keys.private_key_to_pem(key) if key is not None else None)


def _write_pem(inventory: Inventory, keystore: Callable[[], KeyStore], record: CertRecord,
               out: Path) -> list[Path]:
    pem = device_pem(inventory, keystore, record)
    written = {out / "cert.pem": pem.certificate, out / "chain.pem": pem.chain,
               out / "ca.pem": pem.ca}
    for path, data in written.items():
        write_file(path, data)
    if pem.key is not None:
        write_file(out / "key.pem", pem.key, 0o600)
        written[out / "key.pem"] = b""
    return list(written)


def export_device_p12(inventory: Inventory, keystore: Callable[[], KeyStore], fleet: str,
                      device: str, out: Path, passphrase: bytes) -> Path:
    record = _active(inventory, fleet, device)
    _refuse_keys_in_work_tree(out, [record])
    return _write_p12(inventory, keystore, record, out, passphrase)


def _write_p12(inventory: Inventory, keystore: Callable[[], KeyStore], record: CertRecord,
               out: Path, passphrase: bytes) -> Path:
    cert, chain, key = _device_files(inventory, keystore, record)
    data = bundles.to_pkcs12(name=record.device, key=key, certificate=cert, chain=chain,
                             passphrase=passphrase)
    path = out / f"{record.device}.p12"
    write_file(path, data, 0o600)
    return path


def export_fleet(inventory: Inventory, keystore: Callable[[], KeyStore], fleet: str,
                 out: Path, fmt: str,
                 progress: Callable[[int, int], None] = lambda done, total: None) -> int:
    """Per device under `out/<device-id>/`, calling `progress(done, total)` after each device;
    returns the number of devices exported."""
    keystore = functools.cache(keystore)  # unlock (one scrypt derivation) once, not per device
    devices = sorted(inventory.active_devices(fleet))
    if not devices:
        raise ExportError(f"fleet {fleet!r} has no active certificates")
    passphrase = b""
    if fmt == "p12":
        passphrase = os.environ.get(EXPORT_PASSPHRASE_ENV, "").encode()
        if not passphrase:
            raise ExportError(f"set {EXPORT_PASSPHRASE_ENV} to the PKCS#12 password")
    records = [_active(inventory, fleet, device) for device in devices]
    _refuse_keys_in_work_tree(out, records)
    for done, record in enumerate(records, start=1):
        if fmt == "p12":
            _write_p12(inventory, keystore, record, out / record.device, passphrase)
        else:
            _write_pem(inventory, keystore, record, out / record.device)
        progress(done, len(records))
    return len(devices)


def crl_bytes(inventory: Inventory, ca: str, der: bool) -> bytes:
    """PEM: the CRLs of every unexpired CA certificate generation; DER: the current one."""
    generations = inventory.ca_generations(ca)
    if not generations:
        raise ExportError(f"no CertificateAuthority {ca!r} in the inventory")
    if der:
        current = next((g for g in generations if g.state == "active"), None)
        crl = inventory.crl(current.serial) if current else None
        if crl is None:
            raise ExportError(f"the current certificate of CertificateAuthority {ca!r} has no "
                              "CRL yet: run `fleetpki apply`")
        return crl.der
    crls = [c for c in (inventory.crl(g.serial) for g in generations) if c is not None]
    if not crls:
        raise ExportError(f"CertificateAuthority {ca!r} has not published a CRL yet")
    return b"".join(crl_to_pem(x509.load_der_x509_crl(c.der)) for c in crls)


def trust_bundle(inventory: Inventory, now: int) -> bytes:
    """Every unexpired CA certificate (old generations too, during rollover)."""
    certs = [load_der_x509_certificate(g.der) for name in inventory.ca_names()
             for g in inventory.ca_generations(name) if g.not_after > now]
    if not certs:
        raise ExportError("no CA certificates in the inventory")
    return certificates.certificates_to_pem(certs)



def release_files(inventory: Inventory, release: str) -> tuple[bytes, bytes, bytes, bytes]:
    """(manifest.json, manifest.p7s, chain.pem, ca.pem) of a release's current signature:
    chain.pem is the signing certificate, then its issuing CAs up to, excluding, the root."""
    from controller.stores.releases import Releases

    store = Releases(inventory)
    record = store.current(release)
    if record is None or record.manifest is None or record.signature is None:
        history = store.history(release)
        if history:
            last = history[-1]
            raise ExportError(f"Release {release!r} has no valid signature: its last one was "
                              f"revoked ({last.reason})")
        raise ExportError(f"no signed Release named {release!r}: run `fleetpki apply` first")
    issuer = inventory.get(record.issuer_serial)
    if issuer is None:
        raise ExportError(f"issuer certificate {record.issuer_serial} missing from the inventory")
    signer = load_der_x509_certificate(record.der)
    chain = [load_der_x509_certificate(issuer.der), *issuer_chain(inventory, issuer)]
    return (record.manifest, record.signature,
            certificates.certificates_to_pem([signer, *chain[:-1]]),
            certificates.certificates_to_pem(chain[-1:]))


def export_release(inventory: Inventory, release: str, out: Path) -> list[Path]:
    """OUT/manifest.json, OUT/manifest.p7s (DER), OUT/chain.pem and OUT/ca.pem."""
    manifest, signature, chain, root = release_files(inventory, release)
    written = []
    for name, data in (("manifest.json", manifest), ("manifest.p7s", signature),
                       ("chain.pem", chain), ("ca.pem", root)):
        write_file(out / name, data)
        written.append(out / name)
    return written


def signing_rows(inventory: Inventory) -> list[dict[str, object]]:
    """Each signing profile's certificates: the newest active one, how many are active or
    revoked (`fleetpki status`)."""
    from controller.stores.releases import Releases

    rows: list[dict[str, object]] = []
    for profile, records in sorted(Releases(inventory).profiles().items()):
        active = [r for r in records if r.state == "active"]
        newest = active[-1] if active else None
        rows.append({"profile": profile, "usage": records[-1].usage,
                     "keyVersion": newest.key_version if newest else None,
                     "serial": newest.serial if newest else None,
                     "notAfter": rfc3339(newest.not_after) if newest else None,
                     "active": len(active), "revoked": len(records) - len(active)})
    return rows


def release_rows(inventory: Inventory) -> list[dict[str, object]]:
    """Every release signature, newest first (`fleetpki status`)."""
    from controller.stores.releases import Releases

    return [{"release": r.release, "state": r.state, "profile": r.profile, "serial": r.serial,
             "signedAt": rfc3339(r.issued_at), "notAfter": rfc3339(r.not_after),
             "manifestSha256": r.digest, "reason": r.reason}
            for r in Releases(inventory).released()]
