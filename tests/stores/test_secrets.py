"""SecretBlobs: the keystore in Kubernetes Secrets (tests/kube_emulator.py, over real HTTP)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from controller import jobs
from controller.apply.evidence import ExistingCA, Places, refuse_existing_cas
from controller.stores.inventory import Inventory
from controller.stores.keystore import KeyStore, KeyStoreError, ca_key_ids
from controller.stores.secrets import SecretBlobs, secret_name
from tests.kube_emulator import RunningEmulator

from .conftest import NAMESPACE, SCOPE, Secrets

PASS = b"correct horse battery staple"
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
MARKERS = ("PRIVATE KEY", "-----BEGIN", PASS.decode())


def assert_clean(message: str) -> None:
    for marker in MARKERS:
        assert marker not in message


@pytest.fixture
def secrets(kube_emulator: RunningEmulator) -> Secrets:
    return Secrets(kube_emulator)


def test_secrets_are_labelled_opaque_immutable_and_owned_by_nothing(secrets: Secrets) -> None:
    store = KeyStore(secrets.blobs(), PASS)
    store.put_ca_key("acme-root-0123456789abcdef", ec.generate_private_key(ec.SECP256R1()))
    listed = secrets.api.list_namespaced_secret(NAMESPACE).items
    by_blob = {s.metadata.annotations["fleetpki.io/blob-name"]: s for s in listed}
    assert sorted(by_blob) == ["ca/acme-root-0123456789abcdef.pem", "kek.json"]
    for name, secret in by_blob.items():
        assert secret.metadata.name == secret_name(SCOPE, name)
        assert secret.metadata.name.startswith(f"fleetpki-{SCOPE}-")
        assert secret.metadata.owner_references is None, "deleting a CR never deletes a key"
        assert secret.type == "Opaque" and secret.immutable is True
        assert list(secret.data) == ["blob"]
        assert secret.metadata.labels == {
            "app.kubernetes.io/managed-by": "fleetpki", "fleetpki.io/scope": SCOPE,
            "fleetpki.io/blob": "kek" if name == "kek.json" else "ca-key"}
    pem = base64.b64decode(by_blob["ca/acme-root-0123456789abcdef.pem"].data["blob"])
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"), "as in the file keystore"


def test_secret_names_are_dns_subdomains_and_distinct() -> None:
    names = {secret_name("fleet-a", f"ca/{key_id}.pem")
             for key_id in ("root", "Root", "ro_ot", "ro.ot", "ro-ot", "x" * 200)}
    names |= {secret_name("fleet-a", "kek.json"), secret_name("fleet-b", "kek.json")}
    assert len(names) == 8
    for name in names:
        assert DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 253, name


def test_invalid_namespace_or_scope(secrets: Secrets) -> None:
    for namespace, scope in (("Fleet", "a"), ("ns", "a_b"), ("ns", "x" * 64), ("", "a")):
        with pytest.raises(KeyStoreError, match="invalid keystore"):
            SecretBlobs(secrets.api, namespace, scope)


def test_scopes_are_separate(kube_emulator: RunningEmulator) -> None:
    one, other = Secrets(kube_emulator, "fleet-a"), Secrets(kube_emulator, "fleet-b")
    key = ed25519.Ed25519PrivateKey.generate()
    KeyStore(one.blobs(), PASS).put_ca_key("root", key)
    assert other.blobs().names("") == [] and ca_key_ids(other.blobs()) == []
    with pytest.raises(KeyStoreError, match="not found in keystore"):
        KeyStore(other.blobs(), PASS).get_ca_key("root")
    KeyStore(other.blobs(), PASS).put_ca_key("root", ed25519.Ed25519PrivateKey.generate())
    assert KeyStore(one.blobs(), PASS).get_ca_key("root").public_key() == key.public_key()


@pytest.mark.parametrize("what", ["ca-key", "kek"])
def test_forbidden_read_is_an_error_not_absent(kube_emulator: RunningEmulator,
                                               secrets: Secrets, what: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    KeyStore(secrets.blobs(), PASS).put_ca_key("root", key)
    name = "ca/root.pem" if what == "ca-key" else "kek.json"
    secret = secrets.blobs().secret_name(name)
    kube_emulator.fail_next("GET", f"/secrets/{secret}", 403, count=None, reason="Forbidden")
    store = KeyStore(secrets.blobs(), PASS)
    with pytest.raises(KeyStoreError) as info:
        store.get_ca_key("root")
    message = str(info.value)
    assert f"Secret {NAMESPACE}/{secret}" in message and "HTTP 403" in message
    assert "not found" not in message
    assert_clean(message)
    with pytest.raises(KeyStoreError, match="HTTP 403"):
        secrets.blobs().read(name)


def forbid_listing_secrets(kube: RunningEmulator) -> None:
    """Every list of Secrets is 403 from now on (a list has a query: labelSelector, limit)."""
    kube.fail_next("GET", "/secrets?", 403, count=None, reason="Forbidden")


def test_forbidden_list_is_an_error(kube_emulator: RunningEmulator, secrets: Secrets) -> None:
    KeyStore(secrets.blobs(), PASS).unlock()
    forbid_listing_secrets(kube_emulator)
    with pytest.raises(KeyStoreError, match="cannot list .*HTTP 403"):
        secrets.blobs().names("ca/")


@pytest.mark.parametrize("data", [{"blob": "not base64!"}, {"other": "aGk="}, {}],
                         ids=["not-base64", "no-blob-key", "no-data"])
def test_corrupt_secret_is_an_error_never_absent(secrets: Secrets,
                                                 data: dict[str, str]) -> None:
    store = KeyStore(secrets.blobs(), PASS)
    store.put_ca_key("root", ec.generate_private_key(ec.SECP256R1()))
    secrets.overwrite_data("ca/root.pem", data)
    with pytest.raises(KeyStoreError, match="cannot read CA key 'root' \\(Secret ") as info:
        KeyStore(secrets.blobs(), PASS).get_ca_key("root")
    assert_clean(str(info.value))
    with pytest.raises(KeyStoreError):
        store.has_ca_key("root")
    with pytest.raises(KeyStoreError, match="refusing|cannot read"):  # never a new key
        store.put_ca_key("root", ec.generate_private_key(ec.SECP256R1()))


def test_foreign_secret_under_the_name_is_refused(secrets: Secrets) -> None:
    """A Secret of the right name that is not fleetpki's blob (labels, annotation) is an error,
    for reads and for writes."""
    from kubernetes import client

    name = secrets.blobs().secret_name("ca/root.pem")
    secrets.api.create_namespaced_secret(NAMESPACE, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name), data={"blob": "aGk="}))
    with pytest.raises(KeyStoreError, match="not fleetpki's blob"):
        KeyStore(secrets.blobs(), PASS).get_ca_key("root")
    with pytest.raises(KeyStoreError, match="not fleetpki's blob"):
        KeyStore(secrets.blobs(), PASS).put_ca_key("root", ed25519.Ed25519PrivateKey.generate())
    assert ca_key_ids(secrets.blobs()) == []  # not listed either


def test_quarantined_secret_keeps_its_name(secrets: Secrets) -> None:
    store = KeyStore(secrets.blobs(), PASS)
    key = ec.generate_private_key(ec.SECP256R1())
    store.put_ca_key("orphan", key)
    store.quarantine_ca_key("orphan")
    secret = secrets.secret("ca/orphan.pem")
    assert secret is not None and secret.metadata.labels["fleetpki.io/quarantined"] == "true"
    with pytest.raises(KeyStoreError, match="a quarantined key is stored under this id"):
        store.put_ca_key("orphan", key)


def places(tmp_path: Path, keys: SecretBlobs) -> Places:
    return Places(tmp_path / "state", keys, tmp_path / "state" / "public", None)


def test_evidence_finds_a_ca_secret(secrets: Secrets, tmp_path: Path) -> None:
    KeyStore(secrets.blobs(), PASS).put_ca_key("acme-root-0123456789abcdef",
                                               ec.generate_private_key(ec.SECP256R1()))
    with Inventory(tmp_path / "inventory.db") as inventory:  # empty
        with pytest.raises(ExistingCA) as info:
            refuse_existing_cas(["acme-root"], places(tmp_path, secrets.blobs()), inventory,
                                frozenset())
        refuse_existing_cas(["acme-root"], places(tmp_path, secrets.blobs()), inventory,
                            frozenset({"acme-root"}))  # --new-ca
    message = str(info.value)
    secret = secrets.blobs().secret_name("ca/acme-root-0123456789abcdef.pem")
    assert "CertificateAuthority/acme-root exists already: its key(s) " \
           f"Secret {NAMESPACE}/{secret}" in message
    assert "--new-ca acme-root" in message
    assert_clean(message)


def test_evidence_of_an_initialised_keystore_and_quarantine(secrets: Secrets,
                                                           tmp_path: Path) -> None:
    store = KeyStore(secrets.blobs(), PASS)
    store.put_ca_key("acme-root-0123456789abcdef", ec.generate_private_key(ec.SECP256R1()))
    store.quarantine_ca_key("acme-root-0123456789abcdef")  # a quarantined key is no evidence
    with pytest.raises(ExistingCA) as info:
        refuse_existing_cas(["acme-root"], places(tmp_path, secrets.blobs()), None, frozenset())
    message = str(info.value)
    assert "its key(s)" not in message
    assert f"is initialised (Secret {NAMESPACE}/{secret_name(SCOPE, 'kek.json')})" in message


def test_evidence_when_the_secrets_cannot_be_listed(kube_emulator: RunningEmulator,
                                                    secrets: Secrets, tmp_path: Path) -> None:
    forbid_listing_secrets(kube_emulator)
    with pytest.raises(KeyStoreError, match="HTTP 403"):
        refuse_existing_cas(["acme-root"], places(tmp_path, secrets.blobs()), None, frozenset())


def test_state_dir_with_secret_keys(secrets: Secrets, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`StateDir(path, key_blobs=SecretBlobs(...))`: its keystore and evidence use Secrets."""
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASS.decode())
    state = jobs.StateDir(tmp_path / "state", key_blobs=secrets.blobs())
    state.keystore().put_ca_key("acme-root-0123456789abcdef",
                                ed25519.Ed25519PrivateKey.generate())
    assert state.places(None).keys is state.key_blobs
    with pytest.raises(ExistingCA, match=f"Secret {NAMESPACE}/fleetpki-{SCOPE}-ca-acme-root"):
        refuse_existing_cas(["acme-root"], state.places(None), None,
                            frozenset())
    assert not (tmp_path / "state").exists()
