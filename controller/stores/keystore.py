"""Encrypted private-key storage in the controller's state directory (never in git).

CA keys are stored one per file as passphrase-encrypted PKCS#8 PEM. Device keys are
envelope-encrypted with AES-GCM under a key-encryption key (KEK) derived once per
store instance with scrypt; the resulting blobs are persisted by the caller.

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

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, hmac, serialization
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


class FileKeyStore:
    """Passphrase-protected key store rooted at e.g. ``<state-dir>/keys``."""

    def __init__(self, root: Path, passphrase: bytes) -> None:
        if not passphrase:
            raise KeyStoreError("keystore passphrase must not be empty")
        self._root = Path(root)
        self._passphrase = passphrase
        self._aead: AESGCM | None = None
        self._kek: bytes = b""
        self._kek_lock = threading.Lock()
        try:
            _ensure_private_dir(self._root)
        except OSError as exc:
            raise KeyStoreError(f"cannot create keystore directory {self._root}: {exc}") from exc

    @classmethod
    def from_env(cls, root: Path) -> FileKeyStore:
        """Build a store using the passphrase from $FLEETPKI_PASSPHRASE."""
        passphrase = os.environ.get(PASSPHRASE_ENV, "")
        if not passphrase:
            raise KeyStoreError(
                f"{PASSPHRASE_ENV} is not set: set it to the keystore passphrase "
                f"to unlock the keys in {root}"
            )
        return cls(root, passphrase.encode("utf-8"))

    # -- CA keys -------------------------------------------------------------------------

    def _ca_path(self, key_id: str) -> Path:
        if not _KEY_ID_RE.fullmatch(key_id):
            raise KeyStoreError(
                f"invalid key id {key_id!r}: expected 1-200 characters from [A-Za-z0-9._-]"
            )
        return self._root / "ca" / f"{key_id}.pem"

    def has_ca_key(self, key_id: str) -> bool:
        """Whether a CA key file exists for `key_id`."""
        return self._ca_path(key_id).is_file()

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
        path = self._ca_path(key_id)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._ca_file_passphrase(key_id)),
        )
        try:
            _ensure_private_dir(path.parent)
            _write_new_file(path, pem)
        except FileExistsError:
            if _spki(self.get_ca_key(key_id)) != _spki(key):
                raise KeyStoreError(
                    f"refusing to overwrite CA key '{key_id}' ({path}): "
                    "a different key is already stored under this id"
                ) from None
        except OSError as exc:
            raise KeyStoreError(f"cannot write CA key '{key_id}' ({path}): {exc}") from exc

    def quarantine_ca_key(self, key_id: str) -> None:
        """Move a CA key that never signed a kept certificate to `ca/orphaned/` (kept, 0600)."""
        path = self._ca_path(key_id)
        if path.is_file():
            target = self._root / "ca" / "orphaned"
            _ensure_private_dir(target)
            os.replace(path, target / path.name)

    def get_ca_key(self, key_id: str) -> PrivateKey:
        """Load and decrypt a CA key."""
        path = self._ca_path(key_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(
                f"CA key '{key_id}' not found in keystore {self._root}: refusing to continue "
                "(restore the keys from a backup of the state directory; a new CA is never created "
                "silently)"
            ) from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read CA key '{key_id}' ({path}): {exc}") from exc
        password = self._ca_file_passphrase(key_id)
        try:
            return supported_private_key(
                serialization.load_pem_private_key(data, password=password))
        except (ValueError, TypeError, UnsupportedAlgorithm, PKIError):
            raise KeyStoreError(
                f"cannot decrypt CA key '{key_id}' ({path}): wrong {PASSPHRASE_ENV} or corrupt file"
            ) from None

    def ca_key_files(self) -> list[Path]:
        """Every CA key file, orphaned ones included."""
        return sorted((self._root / "ca").rglob("*.pem"))

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

    def _load_or_create_kek(self) -> AESGCM:
        path = self._root / "kek.json"
        try:
            return self._open_kek(path, path.read_bytes())
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise KeyStoreError(f"cannot read KEK parameters {path}: {exc}") from exc
        if self.ca_key_files():
            raise KeyStoreError(
                f"{path} is missing but the keystore {self._root} holds CA keys: restore "
                "kek.json from a backup of the state directory (a new one would not open them)")
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
            _write_new_file(path, json.dumps(doc, indent=2).encode("utf-8") + b"\n")
        except FileExistsError:  # another process won the race: use its salt
            return self._open_kek(path, path.read_bytes())
        except OSError as exc:
            raise KeyStoreError(f"cannot write KEK parameters {path}: {exc}") from exc
        return aead

    def _open_kek(self, path: Path, raw: bytes) -> AESGCM:
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
            raise KeyStoreError(f"corrupt KEK parameters file {path}") from None
        if not supported:
            raise KeyStoreError(f"unsupported KEK parameters in {path}")
        if len(salt) != _SALT_LEN or len(verifier) <= _NONCE_LEN:
            raise KeyStoreError(f"corrupt KEK parameters file {path}")
        kek = _derive_kek(self._passphrase, salt)
        aead = AESGCM(kek)
        try:
            aead.decrypt(verifier[:_NONCE_LEN], verifier[_NONCE_LEN:], _KEK_VERIFIER_AAD)
        except InvalidTag:
            raise KeyStoreError(
                f"cannot unlock the keystore ({path}): "
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
