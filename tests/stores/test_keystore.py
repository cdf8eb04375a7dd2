"""Tests for controller.stores.keystore (real cryptography), over files and over Kubernetes
Secrets (kmock's emulator) where the behaviour is the backend's to keep."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa

from controller.stores import keystore
from controller.stores.keystore import (
    FileBlobs,
    FileKeyStore,
    KeyStore,
    KeyStoreError,
    PrivateKey,
)

from .conftest import Backend

PASS = b"correct horse battery staple"


def _private_der(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _assert_no_key_material(message: str, *keys: PrivateKey) -> None:
    assert "PRIVATE KEY" not in message
    assert "-----BEGIN" not in message
    assert PASS.decode() not in message
    for key in keys:
        assert _private_der(key).hex() not in message


@pytest.fixture
def store(backend: Backend) -> KeyStore:
    return KeyStore(backend.blobs(), PASS)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        ed25519.Ed25519PrivateKey.generate,
        mldsa.MLDSA44PrivateKey.generate,
    ],
    ids=["ec-p256", "ed25519", "ml-dsa-44"],
)
def test_ca_key_round_trip(store: KeyStore, make_key: Callable[[], PrivateKey]) -> None:
    key = make_key()
    store.put_ca_key("root-ca", key)
    loaded = store.get_ca_key("root-ca")
    assert type(loaded) is type(key)
    assert _private_der(loaded) == _private_der(key)


def test_ca_key_round_trip_rsa(store: KeyStore, rsa_key: rsa.RSAPrivateKey) -> None:
    store.put_ca_key("issuing.rsa-1", rsa_key)
    assert _private_der(store.get_ca_key("issuing.rsa-1")) == _private_der(rsa_key)


def test_ca_key_file_is_encrypted_pkcs8(store: KeyStore, backend: Backend) -> None:
    store.put_ca_key("root", ed25519.Ed25519PrivateKey.generate())
    pem = backend.raw("ca/root.pem")
    assert pem is not None and pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def test_file_and_directory_modes(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        root = tmp_path / "state" / "keys"
        store = FileKeyStore(root, PASS)
        store.put_ca_key("root", ec.generate_private_key(ec.SECP256R1()))
        store.wrap_device_key("dev-1", ed25519.Ed25519PrivateKey.generate())
    finally:
        os.umask(old_umask)
    assert _mode(root) == 0o700
    assert _mode(root / "ca") == 0o700
    assert _mode(root / "ca" / "root.pem") == 0o600
    assert _mode(root / "kek.json") == 0o600
    assert sorted(p.name for p in (root / "ca").iterdir()) == ["root.pem"]  # no temp leftovers


def test_has_ca_key(store: KeyStore) -> None:
    assert not store.has_ca_key("root")
    store.put_ca_key("root", ed25519.Ed25519PrivateKey.generate())
    assert store.has_ca_key("root")


def test_put_same_key_again_is_noop(store: KeyStore, backend: Backend) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    store.put_ca_key("root", key)
    before = backend.raw("ca/root.pem")
    store.put_ca_key("root", key)
    KeyStore(backend.blobs(), PASS).put_ca_key("root", key)
    assert backend.raw("ca/root.pem") == before


def test_put_refuses_to_overwrite_different_key(store: KeyStore, backend: Backend) -> None:
    first = ec.generate_private_key(ec.SECP256R1())
    store.put_ca_key("root", first)
    before = backend.raw("ca/root.pem")
    second = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(KeyStoreError, match="refusing to overwrite CA key 'root'") as info:
        KeyStore(backend.blobs(), PASS).put_ca_key("root", second)
    assert backend.blobs().describe("ca/root.pem") in str(info.value)
    _assert_no_key_material(str(info.value), first, second)
    assert backend.raw("ca/root.pem") == before
    assert _private_der(store.get_ca_key("root")) == _private_der(first)


def test_wrong_passphrase_on_ca_key(backend: Backend) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    KeyStore(backend.blobs(), PASS).put_ca_key("root", key)
    # CA key files are protected by a password derived from the scrypt KEK, so a wrong
    # passphrase is caught by the KEK verifier before the CA key file is even opened.
    with pytest.raises(KeyStoreError, match="wrong FLEETPKI_PASSPHRASE") as info:
        KeyStore(backend.blobs(), b"wrong").get_ca_key("root")
    message = str(info.value)
    assert backend.blobs().describe("kek.json") in message
    _assert_no_key_material(message, key)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_corrupt_ca_key_file(store: KeyStore, backend: Backend) -> None:
    store.put_ca_key("root", ed25519.Ed25519PrivateKey.generate())
    pem = backend.raw("ca/root.pem")
    assert pem is not None
    backend.overwrite("ca/root.pem", pem[:-40])
    with pytest.raises(KeyStoreError, match="wrong FLEETPKI_PASSPHRASE or corrupt file") as info:
        KeyStore(backend.blobs(), PASS).get_ca_key("root")
    assert backend.blobs().describe("ca/root.pem") in str(info.value)
    _assert_no_key_material(str(info.value))


def test_unencrypted_ca_key_file_is_rejected(store: KeyStore, backend: Backend) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    store.unlock()  # an initialised keystore (kek.json), then a plaintext file among its keys
    backend.overwrite(
        "ca/root.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyStoreError, match="cannot decrypt CA key 'root'") as info:
        store.get_ca_key("root")
    _assert_no_key_material(str(info.value), key)


@pytest.mark.parametrize("quarantined", [False, True])
def test_missing_kek_with_ca_keys_is_refused(store: KeyStore, backend: Backend,
                                             quarantined: bool) -> None:
    store.put_ca_key("root", ec.generate_private_key(ec.SECP256R1()))
    if quarantined:  # a quarantined key counts: a new kek.json would not open it either
        store.quarantine_ca_key("root")
    backend.remove("kek.json")
    with pytest.raises(KeyStoreError, match="is missing but the keystore") as info:
        KeyStore(backend.blobs(), PASS).unlock()
    assert backend.blobs().describe("kek.json") in str(info.value)
    assert backend.raw("kek.json") is None, "no new kek.json beside existing keys"


def test_new_keystore_needs_a_long_passphrase(backend: Backend) -> None:
    with pytest.raises(KeyStoreError, match="too short for a new keystore"):
        KeyStore(backend.blobs(), b"short").unlock()
    assert backend.raw("kek.json") is None


def test_missing_ca_key(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="CA key 'nope' not found in keystore .*refusing"):
        store.get_ca_key("nope")


def test_quarantine(store: KeyStore, backend: Backend) -> None:
    kept, orphan = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    store.put_ca_key("kept", kept)
    store.put_ca_key("orphan", orphan)
    stored = backend.raw("ca/orphan.pem")
    store.quarantine_ca_key("orphan")
    store.quarantine_ca_key("orphan")  # idempotent
    store.quarantine_ca_key("never-stored")
    assert store.ca_key_ids() == ["kept"]
    assert keystore.ca_key_ids(backend.blobs(), quarantined=True) == ["orphan"]
    assert not store.has_ca_key("orphan")
    with pytest.raises(KeyStoreError, match="CA key 'orphan' not found"):
        store.get_ca_key("orphan")
    assert backend.raw("ca/orphan.pem") == stored, "kept, byte for byte"
    assert _private_der(store.get_ca_key("kept")) == _private_der(kept)


def test_listing(store: KeyStore, backend: Backend) -> None:
    blobs = backend.blobs()
    assert blobs.names("") == [] and blobs.names("ca/") == []
    assert not keystore.initialised(blobs)
    store.put_ca_key("b-1", ed25519.Ed25519PrivateKey.generate())
    store.put_ca_key("A.2", ed25519.Ed25519PrivateKey.generate())
    assert blobs.names("") == ["kek.json"]
    assert blobs.names("ca/") == ["ca/A.2.pem", "ca/b-1.pem"]
    assert store.ca_key_ids() == ["A.2", "b-1"]
    assert keystore.initialised(blobs)
    with pytest.raises(KeyStoreError, match="invalid keystore blob"):
        blobs.names("ca")
    with pytest.raises(KeyStoreError, match="invalid keystore blob"):
        blobs.read("../kek.json")


@pytest.mark.parametrize("key_id", ["../x", "a/b", "", "x" * 201, "é", "root\n", "/etc/passwd"])
def test_bad_key_id_rejected(store: KeyStore, backend: Backend, tmp_path: Path,
                            key_id: str) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(KeyStoreError, match="invalid key id"):
        store.put_ca_key(key_id, key)
    with pytest.raises(KeyStoreError, match="invalid key id"):
        store.get_ca_key(key_id)
    with pytest.raises(KeyStoreError, match="invalid key id"):
        store.has_ca_key(key_id)
    assert not (tmp_path / "state" / "x").exists()
    assert not (tmp_path / "state" / "keys" / "x").exists()
    assert backend.blobs().names("") == []


def test_empty_passphrase_rejected(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="passphrase"):
        FileKeyStore(tmp_path / "keys", b"")
    with pytest.raises(KeyStoreError, match="passphrase"):
        KeyStore(FileBlobs(tmp_path / "keys"), b"")


def test_from_env(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    KeyStore(backend.blobs(), PASS).put_ca_key("root", key)
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASS.decode())
    loaded = KeyStore.from_env(backend.blobs()).get_ca_key("root")
    assert _private_der(loaded) == _private_der(key)


def test_file_key_store_is_the_file_backend(tmp_path: Path) -> None:
    """FileKeyStore(root, pw) is KeyStore(FileBlobs(root), pw): the same files."""
    key = ed25519.Ed25519PrivateKey.generate()
    FileKeyStore(tmp_path / "keys", PASS).put_ca_key("root", key)
    loaded = KeyStore(FileBlobs(tmp_path / "keys"), PASS).get_ca_key("root")
    assert _private_der(loaded) == _private_der(key)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "keys", "keys/ca", "keys/ca/root.pem", "keys/kek.json"]


def test_reading_creates_nothing(tmp_path: Path) -> None:
    """Listing and reading (what `plan` and the evidence check do) make no directory."""
    blobs = FileBlobs(tmp_path / "state" / "keys")
    assert blobs.read("kek.json") is None and blobs.names("ca/") == []
    assert not keystore.initialised(blobs)
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("value", [None, ""])
def test_from_env_requires_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("FLEETPKI_PASSPHRASE", raising=False)
    else:
        monkeypatch.setenv("FLEETPKI_PASSPHRASE", value)
    with pytest.raises(KeyStoreError, match="FLEETPKI_PASSPHRASE is not set"):
        KeyStore.from_env(FileBlobs(tmp_path / "keys"))


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        ed25519.Ed25519PrivateKey.generate,
        mldsa.MLDSA44PrivateKey.generate,
    ],
    ids=["ec-p256", "ed25519", "ml-dsa-44"],
)
def test_device_key_round_trip(store: KeyStore, make_key: Callable[[], PrivateKey]) -> None:
    key = make_key()
    blob = store.wrap_device_key("sensor-0001", key)
    assert blob[0] == 1
    assert _private_der(key) not in blob
    assert _private_der(store.unwrap_device_key("sensor-0001", blob)) == _private_der(key)


def test_device_key_round_trip_across_instances(backend: Backend) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    blob = KeyStore(backend.blobs(), PASS).wrap_device_key("dev", key)
    loaded = KeyStore(backend.blobs(), PASS).unwrap_device_key("dev", blob)
    assert _private_der(loaded) == _private_der(key)


def test_device_key_bound_to_key_id(store: KeyStore) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    blob = store.wrap_device_key("dev-a", key)
    with pytest.raises(KeyStoreError, match="cannot unwrap device key 'dev-b'") as info:
        store.unwrap_device_key("dev-b", blob)
    _assert_no_key_material(str(info.value), key)


def test_device_key_tampering_detected(store: KeyStore) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    blob = store.wrap_device_key("dev", key)
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(KeyStoreError, match="cannot unwrap device key 'dev'"):
            store.unwrap_device_key("dev", bytes(tampered))
    with pytest.raises(KeyStoreError, match="malformed blob"):
        store.unwrap_device_key("dev", blob[:10])


def test_device_key_wrong_passphrase(backend: Backend) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    blob = KeyStore(backend.blobs(), PASS).wrap_device_key("dev", key)
    other = KeyStore(backend.blobs(), b"not the passphrase")
    with pytest.raises(KeyStoreError, match="wrong FLEETPKI_PASSPHRASE") as info:
        other.unwrap_device_key("dev", blob)
    _assert_no_key_material(str(info.value), key)
    with pytest.raises(KeyStoreError, match="wrong FLEETPKI_PASSPHRASE"):
        other.wrap_device_key("dev-2", key)


def test_corrupt_kek_file(backend: Backend) -> None:
    KeyStore(backend.blobs(), PASS).wrap_device_key("dev", ed25519.Ed25519PrivateKey.generate())
    backend.overwrite("kek.json", b"{not json")
    with pytest.raises(KeyStoreError, match="corrupt KEK parameters") as info:
        KeyStore(backend.blobs(), PASS).wrap_device_key("dev", ed25519.Ed25519PrivateKey.generate())
    assert backend.blobs().describe("kek.json") in str(info.value)


def test_kek_derived_once_per_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real_derive = keystore._derive_kek

    def counting_derive(passphrase: bytes, salt: bytes) -> bytes:
        calls.append(salt)
        return real_derive(passphrase, salt)

    monkeypatch.setattr(keystore, "_derive_kek", counting_derive)
    root = tmp_path / "keys"
    key = ed25519.Ed25519PrivateKey.generate()

    store = FileKeyStore(root, PASS)
    assert calls == []  # lazy: nothing derived until a device key is wrapped
    blobs = [store.wrap_device_key(f"dev-{i}", key) for i in range(1000)]
    assert len(calls) == 1
    assert len(set(blobs)) == 1000  # fresh nonce per blob

    reopened = FileKeyStore(root, PASS)
    for i in (0, 499, 999):
        reopened.unwrap_device_key(f"dev-{i}", blobs[i])
    assert len(calls) == 2
    assert calls[0] == calls[1]  # same persisted salt


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_ca_key_file_readable_by_openssl(store: KeyStore, backend: Backend,
                                         tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    store.put_ca_key("root", key)
    pem = tmp_path / "root.pem"
    pem.write_bytes(backend.raw("ca/root.pem") or b"")
    result = subprocess.run(
        ["openssl", "pkey", "-in", str(pem), "-passin", "env:PW"],
        # standard encrypted PKCS#8; its password is derived from the passphrase's scrypt KEK
        env={**os.environ, "PW": store._ca_file_passphrase("root").decode()},
        capture_output=True,
        check=True,
    )
    loaded = serialization.load_pem_private_key(result.stdout, password=None)
    assert _private_der(loaded) == _private_der(key)


def test_a_namespace_reads_the_cluster_wide_cas_keys_but_never_writes_there(
        tmp_path: Path) -> None:
    cluster = KeyStore(FileBlobs(tmp_path / "cluster"), PASS)
    key = ec.generate_private_key(ec.SECP256R1())
    cluster.put_ca_key("cluster-key", key)
    namespace = KeyStore(FileBlobs(tmp_path / "namespace"), PASS, shared=cluster)
    assert _private_der(namespace.get_ca_key("cluster-key")) == _private_der(key)
    own = ec.generate_private_key(ec.SECP256R1())
    namespace.put_ca_key("own-key", own)
    assert not cluster.has_ca_key("own-key") and namespace.has_ca_key("own-key")
    assert not namespace.has_ca_key("cluster-key")  # read through, not copied
    with pytest.raises(KeyStoreError, match="not found in keystore"):
        namespace.get_ca_key("nowhere")
