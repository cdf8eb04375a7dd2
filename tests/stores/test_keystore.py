"""Tests for controller.stores.keystore (real cryptography, temporary directories)."""

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
from controller.stores.keystore import FileKeyStore, KeyStoreError, PrivateKey

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
def store(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "state" / "keys", PASS)


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
def test_ca_key_round_trip(store: FileKeyStore, make_key: Callable[[], PrivateKey]) -> None:
    key = make_key()
    store.put_ca_key("root-ca", key)
    loaded = store.get_ca_key("root-ca")
    assert type(loaded) is type(key)
    assert _private_der(loaded) == _private_der(key)


def test_ca_key_round_trip_rsa(store: FileKeyStore, rsa_key: rsa.RSAPrivateKey) -> None:
    store.put_ca_key("issuing.rsa-1", rsa_key)
    assert _private_der(store.get_ca_key("issuing.rsa-1")) == _private_der(rsa_key)


def test_ca_key_file_is_encrypted_pkcs8(store: FileKeyStore, tmp_path: Path) -> None:
    store.put_ca_key("root", ed25519.Ed25519PrivateKey.generate())
    pem = (tmp_path / "state" / "keys" / "ca" / "root.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


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


def test_has_ca_key(store: FileKeyStore) -> None:
    assert not store.has_ca_key("root")
    store.put_ca_key("root", ed25519.Ed25519PrivateKey.generate())
    assert store.has_ca_key("root")


def test_put_same_key_again_is_noop(store: FileKeyStore, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    store.put_ca_key("root", key)
    path = tmp_path / "state" / "keys" / "ca" / "root.pem"
    before = path.read_bytes()
    store.put_ca_key("root", key)
    assert path.read_bytes() == before


def test_put_refuses_to_overwrite_different_key(store: FileKeyStore, tmp_path: Path) -> None:
    first = ec.generate_private_key(ec.SECP256R1())
    store.put_ca_key("root", first)
    path = tmp_path / "state" / "keys" / "ca" / "root.pem"
    before = path.read_bytes()
    second = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(KeyStoreError, match="refusing to overwrite CA key 'root'") as info:
        store.put_ca_key("root", second)
    _assert_no_key_material(str(info.value), first, second)
    assert path.read_bytes() == before


def test_wrong_passphrase_on_ca_key(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    key = ec.generate_private_key(ec.SECP256R1())
    FileKeyStore(root, PASS).put_ca_key("root", key)
    # CA key files are protected by a password derived from the scrypt KEK, so a wrong
    # passphrase is caught by the KEK verifier before the CA key file is even opened.
    with pytest.raises(KeyStoreError, match="wrong FLEETPKI_PASSPHRASE") as info:
        FileKeyStore(root, b"wrong").get_ca_key("root")
    message = str(info.value)
    assert str(root / "kek.json") in message
    _assert_no_key_material(message, key)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_corrupt_ca_key_file(store: FileKeyStore, tmp_path: Path) -> None:
    store.put_ca_key("root", ed25519.Ed25519PrivateKey.generate())
    path = tmp_path / "state" / "keys" / "ca" / "root.pem"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(KeyStoreError, match="wrong FLEETPKI_PASSPHRASE or corrupt file"):
        store.get_ca_key("root")


def test_unencrypted_ca_key_file_is_rejected(store: FileKeyStore, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    store.unlock()  # an initialised keystore (kek.json), then a plaintext file among its keys
    ca_dir = tmp_path / "state" / "keys" / "ca"
    ca_dir.mkdir(mode=0o700)
    (ca_dir / "root.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyStoreError, match="cannot decrypt CA key 'root'") as info:
        store.get_ca_key("root")
    _assert_no_key_material(str(info.value), key)


def test_missing_kek_with_ca_keys_is_refused(store: FileKeyStore, tmp_path: Path) -> None:
    store.put_ca_key("root", ec.generate_private_key(ec.SECP256R1()))
    kek = tmp_path / "state" / "keys" / "kek.json"
    kek.unlink()
    with pytest.raises(KeyStoreError, match="kek.json is missing but the keystore"):
        FileKeyStore(tmp_path / "state" / "keys", PASS).get_ca_key("root")
    assert not kek.exists(), "no new kek.json beside existing keys"


def test_new_keystore_needs_a_long_passphrase(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="too short for a new keystore"):
        FileKeyStore(tmp_path / "keys", b"short").unlock()
    assert not (tmp_path / "keys" / "kek.json").exists()


def test_missing_ca_key(store: FileKeyStore) -> None:
    with pytest.raises(KeyStoreError, match="CA key 'nope' not found in keystore .*refusing"):
        store.get_ca_key("nope")


@pytest.mark.parametrize("key_id", ["../x", "a/b", "", "x" * 201, "é", "root\n", "/etc/passwd"])
def test_bad_key_id_rejected(store: FileKeyStore, tmp_path: Path, key_id: str) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(KeyStoreError, match="invalid key id"):
        store.put_ca_key(key_id, key)
    with pytest.raises(KeyStoreError, match="invalid key id"):
        store.get_ca_key(key_id)
    with pytest.raises(KeyStoreError, match="invalid key id"):
        store.has_ca_key(key_id)
    assert not (tmp_path / "state" / "x").exists()
    assert not (tmp_path / "state" / "keys" / "x").exists()


def test_empty_passphrase_rejected(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="passphrase"):
        FileKeyStore(tmp_path / "keys", b"")


def test_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    FileKeyStore(tmp_path / "keys", PASS).put_ca_key("root", key)
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASS.decode())
    loaded = FileKeyStore.from_env(tmp_path / "keys").get_ca_key("root")
    assert _private_der(loaded) == _private_der(key)


@pytest.mark.parametrize("value", [None, ""])
def test_from_env_requires_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("FLEETPKI_PASSPHRASE", raising=False)
    else:
        monkeypatch.setenv("FLEETPKI_PASSPHRASE", value)
    with pytest.raises(KeyStoreError, match="FLEETPKI_PASSPHRASE is not set"):
        FileKeyStore.from_env(tmp_path / "keys")


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        ed25519.Ed25519PrivateKey.generate,
        mldsa.MLDSA44PrivateKey.generate,
    ],
    ids=["ec-p256", "ed25519", "ml-dsa-44"],
)
def test_device_key_round_trip(store: FileKeyStore, make_key: Callable[[], PrivateKey]) -> None:
    key = make_key()
    blob = store.wrap_device_key("sensor-0001", key)
    assert blob[0] == 1
    assert _private_der(key) not in blob
    assert _private_der(store.unwrap_device_key("sensor-0001", blob)) == _private_der(key)


def test_device_key_round_trip_across_instances(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    blob = FileKeyStore(tmp_path / "keys", PASS).wrap_device_key("dev", key)
    loaded = FileKeyStore(tmp_path / "keys", PASS).unwrap_device_key("dev", blob)
    assert _private_der(loaded) == _private_der(key)


def test_device_key_bound_to_key_id(store: FileKeyStore) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    blob = store.wrap_device_key("dev-a", key)
    with pytest.raises(KeyStoreError, match="cannot unwrap device key 'dev-b'") as info:
        store.unwrap_device_key("dev-b", blob)
    _assert_no_key_material(str(info.value), key)


def test_device_key_tampering_detected(store: FileKeyStore) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    blob = store.wrap_device_key("dev", key)
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(KeyStoreError, match="cannot unwrap device key 'dev'"):
            store.unwrap_device_key("dev", bytes(tampered))
    with pytest.raises(KeyStoreError, match="malformed blob"):
        store.unwrap_device_key("dev", blob[:10])


def test_device_key_wrong_passphrase(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    key = ed25519.Ed25519PrivateKey.generate()
    blob = FileKeyStore(root, PASS).wrap_device_key("dev", key)
    other = FileKeyStore(root, b"not the passphrase")
    with pytest.raises(KeyStoreError, match="wrong FLEETPKI_PASSPHRASE") as info:
        other.unwrap_device_key("dev", blob)
    _assert_no_key_material(str(info.value), key)
    with pytest.raises(KeyStoreError, match="wrong FLEETPKI_PASSPHRASE"):
        other.wrap_device_key("dev-2", key)


def test_corrupt_kek_file(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    FileKeyStore(root, PASS).wrap_device_key("dev", ed25519.Ed25519PrivateKey.generate())
    (root / "kek.json").write_text("{not json")
    with pytest.raises(KeyStoreError, match="corrupt KEK parameters"):
        FileKeyStore(root, PASS).wrap_device_key("dev", ed25519.Ed25519PrivateKey.generate())


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
def test_ca_key_file_readable_by_openssl(store: FileKeyStore, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    store.put_ca_key("root", key)
    result = subprocess.run(
        ["openssl", "pkey", "-in", str(tmp_path / "state/keys/ca/root.pem"), "-passin", "env:PW"],
        # standard encrypted PKCS#8; its password is derived from the passphrase's scrypt KEK
        env={**os.environ, "PW": store._ca_file_passphrase("root").decode()},
        capture_output=True,
        check=True,
    )
    loaded = serialization.load_pem_private_key(result.stdout, password=None)
    assert _private_der(loaded) == _private_der(key)
