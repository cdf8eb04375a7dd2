"""Encrypted private-key storage (never in git).

`KeyStore` does all the cryptography over a small blob backend (`KeyBlobs`): CA keys are stored
one blob each (`ca/<key id>.pem`) as passphrase-encrypted PKCS#8 PEM, next to `kek.json` (the
scrypt salt and a verifier of the key-encryption key). Device keys are envelope-encrypted with
AES-GCM under the KEK, derived once per store instance with scrypt; the resulting blobs are
persisted by the caller (in the inventory).

Backends: `FileBlobs` (files in the state directory's `keys/`, the layout of every fleetpki
state directory) and `controller.stores.secrets.SecretBlobs` (one Kubernetes Secret per blob).
A backend only stores bytes: the encryption is the same for both, so a Secret is an envelope,
not the protection.

Private key material and the passphrase never appear in exception messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from controller.pki.errors import PKIError
from controller.pki.keys import PrivateKey, supported_private_key

PASSPHRASE_ENV = "FLEETPKI_PASSPHRASE"

_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")
_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_LEN = 16
_NONCE_LEN = 12
_KEK_FILE_VERSION = 1
_KEK_VERIFIER_PLAINTEXT = b"fleetpki kek verifier v1"
_KEK_VERIFIER_AAD = b"fleetpki kek.json"
_BLOB_VERSION = 1
MIN_PASSPHRASE = 12  # characters, asked of a new keystore only


class KeyStoreError(Exception):
    """Key storage failure; messages name key ids and paths, never key material."""


class BlobError(KeyStoreError):
    """A backend could not read or write a blob: `where` names it (a path, a Secret), `reason`
    says why (an OS error, an HTTP status), never its content."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def _derive_kek(passphrase: bytes, salt: bytes) -> bytes:
    """Derive the 32-byte KEK from the passphrase with scrypt."""
    return Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P).derive(passphrase)


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700 if it does not exist yet."""
    if path.is_dir():
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir honours the umask; force the exact mode


def _write_new_file(path: Path, data: bytes) -> None:
    """Atomically publish `data` at `path` with mode 0600; FileExistsError if it exists.

    The data is written and fsynced to a 0600 temp file in the same directory, then
    hard-linked into place, which (unlike os.replace) never clobbers a concurrent writer.
    """
    tmp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # os.open honours the umask; force the exact mode
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _spki(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


KEK_BLOB = "kek.json"
CA_PREFIX = "ca/"
AUDIT_KEY_BLOB = "audit/signing-key.pem"
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]{1,250}")


def check_blob_name(name: str) -> None:
    """Blob names are `/`-separated segments of [A-Za-z0-9._-] (no `.` or `..`)."""
    segments = name.split("/")
    if not all(_SEGMENT_RE.fullmatch(s) and s not in (".", "..") for s in segments):
        raise KeyStoreError(f"invalid keystore blob name {name!r}")


def check_blob_prefix(prefix: str) -> None:
    """A listing prefix is "" (the top level) or a blob folder ending in `/`."""
    if prefix and not prefix.endswith("/"):
        raise KeyStoreError(f"invalid keystore blob prefix {prefix!r}")
    if prefix:
        check_blob_name(prefix[:-1])


class KeyBlobs(Protocol):
    """Where a KeyStore keeps its (already encrypted) blobs: `kek.json` and `ca/<key id>.pem`.

    A blob is live or quarantined (set aside, kept, never read or listed as live again).
    Errors are BlobError (a KeyStoreError) naming the blob, never its content.
    """

    def read(self, name: str) -> bytes | None:
        """The live blob's bytes; None when there is none (absent or quarantined). A blob that
        exists but cannot be read raises BlobError: unreadable is never absent."""
        ...

    def create(self, name: str, data: bytes) -> None:
        """Store a new blob durably; FileExistsError when one of that name exists already
        (the existing one is never replaced)."""
        ...

    def quarantine(self, name: str) -> None:
        """Set a live blob aside (kept, out of `read` and `names`); nothing if there is none."""
        ...

    def names(self, prefix: str, quarantined: bool = False) -> list[str]:
        """Sorted names of the live (or quarantined) blobs directly in folder `prefix`
        ("" or ending in `/`): `names("ca/")` is ["ca/a.pem", ...]."""
        ...

    def describe(self, name: str) -> str:
        """Where blob `name` is, for messages (a path, `Secret NAMESPACE/NAME`); "" for the
        whole store."""
        ...


class FileBlobs:
    """Blobs as files under `root` (a state directory's `keys/`): directories 0700, files 0600,
    written to a temporary file, fsynced and hard-linked into place (exclusive), quarantined
    into `orphaned/` beside them (`ca/orphaned/<key id>.pem`). Nothing is created until the
    first blob is written, so reading or listing never makes a directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        check_blob_name(name)
        return self.root / name

    def read(self, name: str) -> bytes | None:
        path = self._path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BlobError(str(path), exc.strerror or str(exc)) from None

    def create(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            _ensure_private_dir(self.root)
            _ensure_private_dir(path.parent)
            _write_new_file(path, data)
        except FileExistsError:
            raise
        except OSError as exc:
            raise BlobError(str(path), exc.strerror or str(exc)) from None

    def quarantine(self, name: str) -> None:
        path = self._path(name)
        if not path.is_file():
            return
        target = path.parent / "orphaned"
        try:
            _ensure_private_dir(target)
            os.replace(path, target / path.name)
            fsync_dir(target)
            fsync_dir(path.parent)
        except OSError as exc:
            raise BlobError(str(path), f"cannot quarantine: {exc.strerror or exc}") from None

    def names(self, prefix: str, quarantined: bool = False) -> list[str]:
        check_blob_prefix(prefix)
        folder = self.root / prefix / "orphaned" if quarantined else self.root / prefix
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BlobError(str(folder), exc.strerror or str(exc)) from None
        return [prefix + entry.name for entry in entries
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)]

    def describe(self, name: str) -> str:
        return str(self._path(name)) if name else str(self.root)


def ca_key_ids(blobs: KeyBlobs, quarantined: bool = False) -> list[str]:
    """The key ids of the CA keys in `blobs` (live ones, or the quarantined ones)."""
    return [name[len(CA_PREFIX):-len(".pem")] for name in blobs.names(CA_PREFIX, quarantined)
            if name.endswith(".pem")]


def initialised(blobs: KeyBlobs) -> bool:
    """Whether the keystore has its KEK parameters (`kek.json`): it has been used."""
    return KEK_BLOB in blobs.names("")


class KeyStore:
    """Passphrase-protected key store over a blob backend (files or Kubernetes Secrets)."""

    def __init__(self, blobs: KeyBlobs, passphrase: bytes, shared: KeyStore | None = None) -> None:
        """`shared`: where CA keys not found here are read (a Kubernetes namespace's keystore
        reads the cluster-wide CAs' keys from the cluster scope's); nothing is written there."""
        if not passphrase:
            raise KeyStoreError("keystore passphrase must not be empty")
        self.blobs = blobs
        self.shared = shared
        self._passphrase = passphrase
        self._aead: AESGCM | None = None
        self._kek: bytes = b""
        self._kek_lock = threading.Lock()

    @classmethod
    def from_env(cls, blobs: KeyBlobs, shared: KeyBlobs | None = None) -> KeyStore:
        """Build a store using the passphrase from $FLEETPKI_PASSPHRASE (for `shared` too)."""
        passphrase = os.environ.get(PASSPHRASE_ENV, "")
        if not passphrase:
            raise KeyStoreError(
                f"{PASSPHRASE_ENV} is not set: set it to the keystore passphrase "
                f"to unlock the keys in {blobs.describe('')}"
            )
        secret = passphrase.encode("utf-8")
        return cls(blobs, secret, cls(shared, secret) if shared is not None else None)

    # -- CA keys -------------------------------------------------------------------------

    @staticmethod
    def _ca_name(key_id: str) -> str:
        if not _KEY_ID_RE.fullmatch(key_id):
            raise KeyStoreError(
                f"invalid key id {key_id!r}: expected 1-200 characters from [A-Za-z0-9._-]"
            )
        return f"{CA_PREFIX}{key_id}.pem"

    def has_ca_key(self, key_id: str) -> bool:
        """Whether a (live) CA key exists for `key_id`."""
        return self.blobs.read(self._ca_name(key_id)) is not None

    def ca_key_ids(self) -> list[str]:
        """The key ids of the live CA keys (quarantined ones left out)."""
        return ca_key_ids(self.blobs)

    def _ca_file_passphrase(self, key_id: str) -> bytes:
        """Per-key PKCS#8 password derived from the scrypt KEK.

        PKCS#8 encryption in cryptography uses PBKDF2 with only 2048 iterations; feeding it a
        256-bit secret derived from the scrypt KEK makes offline guessing cost one scrypt per
        passphrase guess, as for device keys, while the file stays standard encrypted PKCS#8.
        """
        self._kek_aead()
        mac = hmac.HMAC(self._kek, hashes.SHA256())
        mac.update(b"fleetpki ca key v1:" + key_id.encode("utf-8"))
        return mac.finalize().hex().encode("ascii")

    def put_ca_key(self, key_id: str, key: PrivateKey) -> None:
        """Store a CA key; storing the same key again is a no-op, a different one an error."""
        name = self._ca_name(key_id)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._ca_file_passphrase(key_id)),
        )
        try:
            self.blobs.create(name, pem)
            return
        except FileExistsError:
            pass
        except BlobError as exc:
            raise KeyStoreError(
                f"cannot write CA key '{key_id}' ({exc.where}): {exc.reason}") from None
        existing = self._read_ca(key_id, name)
        if existing is None:  # a quarantined blob keeps its name (Secrets)
            raise KeyStoreError(
                f"refusing to overwrite CA key '{key_id}' ({self.blobs.describe(name)}): "
                "a quarantined key is stored under this id")
        if _spki(self._decrypt_ca(key_id, name, existing)) != _spki(key):
            raise KeyStoreError(
                f"refusing to overwrite CA key '{key_id}' ({self.blobs.describe(name)}): "
                "a different key is already stored under this id")

    def quarantine_ca_key(self, key_id: str) -> None:
        """Set aside a CA key that never signed a kept certificate (kept: `ca/orphaned/`)."""
        self.blobs.quarantine(self._ca_name(key_id))

    def _read_ca(self, key_id: str, name: str) -> bytes | None:
        try:
            return self.blobs.read(name)
        except BlobError as exc:
            raise KeyStoreError(
                f"cannot read CA key '{key_id}' ({exc.where}): {exc.reason}") from None

    def _decrypt_ca(self, key_id: str, name: str, data: bytes) -> PrivateKey:
        password = self._ca_file_passphrase(key_id)
        try:
            return supported_private_key(
                serialization.load_pem_private_key(data, password=password))
        except (ValueError, TypeError, UnsupportedAlgorithm, PKIError):
            raise KeyStoreError(
                f"cannot decrypt CA key '{key_id}' ({self.blobs.describe(name)}): "
                f"wrong {PASSPHRASE_ENV} or corrupt file"
            ) from None

    def get_ca_key(self, key_id: str) -> PrivateKey:
        """Load and decrypt a CA key."""
        name = self._ca_name(key_id)
        data = self._read_ca(key_id, name)
        if data is None and self.shared is not None and self.shared.has_ca_key(key_id):
            return self.shared.get_ca_key(key_id)
        if data is None:
            raise KeyStoreError(
                f"CA key '{key_id}' not found in keystore {self.blobs.describe('')}: refusing to "
                "continue (restore the keys from a backup; a new CA is never created silently)"
            )
        return self._decrypt_ca(key_id, name, data)

    def audit_signing_key(self) -> ed25519.Ed25519PrivateKey:
        """The controller's own Ed25519 key that seals the audit log, created on first use and
        stored encrypted like a CA key (`audit/signing-key.pem`)."""
        try:
            data = self.blobs.read(AUDIT_KEY_BLOB)
        except BlobError as exc:
            raise KeyStoreError(f"cannot read the audit signing key ({exc.where}): "
                                f"{exc.reason}") from None
        if data is None:
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(
                                        self._ca_file_passphrase(AUDIT_KEY_BLOB)))
            try:
                self.blobs.create(AUDIT_KEY_BLOB, pem)
                return key
            except FileExistsError:  # another process created it first: use that one
                return self.audit_signing_key()
            except BlobError as exc:
                raise KeyStoreError(f"cannot write the audit signing key ({exc.where}): "
                                    f"{exc.reason}") from None
        try:
            loaded = serialization.load_pem_private_key(
                data, password=self._ca_file_passphrase(AUDIT_KEY_BLOB))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            loaded = None
        if not isinstance(loaded, ed25519.Ed25519PrivateKey):
            raise KeyStoreError(f"cannot decrypt the audit signing key "
                                f"({self.blobs.describe(AUDIT_KEY_BLOB)}): wrong "
                                f"{PASSPHRASE_ENV} or corrupt file")
        return loaded

    def unlock(self) -> None:
        """Check the passphrase now (or create the KEK of an empty keystore), before any
        change that would need it."""
        self._kek_aead()

    # -- device keys (envelope encryption) ------------------------------------------------

    def _kek_aead(self) -> AESGCM:
        """Return the AES-GCM cipher under the KEK, deriving it on first use only."""
        with self._kek_lock:
            if self._aead is None:
                self._aead = self._load_or_create_kek()
            return self._aead

    def _read_kek(self) -> bytes | None:
        try:
            return self.blobs.read(KEK_BLOB)
        except BlobError as exc:
            raise KeyStoreError(f"cannot read KEK parameters {exc.where}: {exc.reason}") from None

    def _load_or_create_kek(self) -> AESGCM:
        where = self.blobs.describe(KEK_BLOB)
        raw = self._read_kek()
        if raw is not None:
            return self._open_kek(where, raw)
        if ca_key_ids(self.blobs) or ca_key_ids(self.blobs, quarantined=True):
            raise KeyStoreError(
                f"{where} is missing but the keystore {self.blobs.describe('')} holds CA keys: "
                f"restore {KEK_BLOB} from a backup (a new one would not open them)")
        if len(self._passphrase.decode("utf-8", "replace")) < MIN_PASSPHRASE:
            raise KeyStoreError(
                f"{PASSPHRASE_ENV} is too short for a new keystore: use at least "
                f"{MIN_PASSPHRASE} characters")
        salt = os.urandom(_SALT_LEN)
        self._kek = _derive_kek(self._passphrase, salt)
        aead = AESGCM(self._kek)
        nonce = os.urandom(_NONCE_LEN)
        verifier = nonce + aead.encrypt(nonce, _KEK_VERIFIER_PLAINTEXT, _KEK_VERIFIER_AAD)
        doc = {
            "version": _KEK_FILE_VERSION,
            "kdf": {"name": "scrypt", "n": _SCRYPT_N, "r": _SCRYPT_R, "p": _SCRYPT_P},
            "salt": base64.b64encode(salt).decode("ascii"),
            "verifier": base64.b64encode(verifier).decode("ascii"),
        }
        try:
            self.blobs.create(KEK_BLOB, json.dumps(doc, indent=2).encode("utf-8") + b"\n")
        except FileExistsError:  # another process won the race: use its salt
            raw = self._read_kek()
            if raw is None:
                raise KeyStoreError(f"{where} exists but cannot be read as a live blob") from None
            return self._open_kek(where, raw)
        except BlobError as exc:
            raise KeyStoreError(
                f"cannot write KEK parameters {exc.where}: {exc.reason}") from None
        return aead

    def _open_kek(self, where: str, raw: bytes) -> AESGCM:
        try:
            doc = json.loads(raw)
            kdf = doc["kdf"]
            supported = doc["version"] == _KEK_FILE_VERSION and kdf == {
                "name": "scrypt",
                "n": _SCRYPT_N,
                "r": _SCRYPT_R,
                "p": _SCRYPT_P,
            }
            salt = base64.b64decode(doc["salt"], validate=True)
            verifier = base64.b64decode(doc["verifier"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise KeyStoreError(f"corrupt KEK parameters file {where}") from None
        if not supported:
            raise KeyStoreError(f"unsupported KEK parameters in {where}")
        if len(salt) != _SALT_LEN or len(verifier) <= _NONCE_LEN:
            raise KeyStoreError(f"corrupt KEK parameters file {where}")
        kek = _derive_kek(self._passphrase, salt)
        aead = AESGCM(kek)
        try:
            aead.decrypt(verifier[:_NONCE_LEN], verifier[_NONCE_LEN:], _KEK_VERIFIER_AAD)
        except InvalidTag:
            raise KeyStoreError(
                f"cannot unlock the keystore ({where}): "
                f"wrong {PASSPHRASE_ENV} or corrupt file"
            ) from None
        self._kek = kek
        return aead

    def wrap_device_key(self, key_id: str, key: PrivateKey) -> bytes:
        """Encrypt a device key into an opaque blob bound to `key_id`."""
        aead = self._kek_aead()
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(_NONCE_LEN)
        return bytes([_BLOB_VERSION]) + nonce + aead.encrypt(nonce, der, key_id.encode("utf-8"))

    def unwrap_device_key(self, key_id: str, blob: bytes) -> PrivateKey:
        """Decrypt a blob produced by :meth:`wrap_device_key` for the same `key_id`."""
        aead = self._kek_aead()
        if len(blob) <= 1 + _NONCE_LEN or blob[0] != _BLOB_VERSION:
            raise KeyStoreError(f"cannot unwrap device key '{key_id}': malformed blob")
        nonce, ciphertext = blob[1 : 1 + _NONCE_LEN], blob[1 + _NONCE_LEN :]
        try:
            der = aead.decrypt(nonce, ciphertext, key_id.encode("utf-8"))
            return supported_private_key(serialization.load_der_private_key(der, password=None))
        except (InvalidTag, ValueError, TypeError, UnsupportedAlgorithm, PKIError):
            raise KeyStoreError(
                f"cannot unwrap device key '{key_id}': blob is corrupt, tampered with, "
                "or belongs to a different key id"
            ) from None


class FileKeyStore(KeyStore):
    """The keystore of a state directory: `KeyStore(FileBlobs(root), passphrase)`."""

    def __init__(self, root: Path, passphrase: bytes) -> None:
        super().__init__(FileBlobs(root), passphrase)
