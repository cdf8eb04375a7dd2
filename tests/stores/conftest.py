"""Keystore backends for the parametrized keystore tests: files in tmp_path, and Kubernetes
Secrets in the Kubernetes emulator (over real HTTP, see tests/kube_emulator.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.stores.keystore import FileBlobs, KeyBlobs
from controller.stores.secrets import SecretBlobs
from tests.kube_emulator import RunningEmulator

NAMESPACE = "fleetpki-system"
SCOPE = "fleet-a"


class Backend:
    """A keystore's storage, opened as often as a test likes, with raw access for faults."""

    kind = ""

    def blobs(self) -> KeyBlobs:
        raise NotImplementedError

    def raw(self, name: str) -> bytes | None:
        """The stored bytes of blob `name`, live or quarantined (bypassing the backend)."""
        raise NotImplementedError

    def overwrite(self, name: str, data: bytes) -> None:
        """Replace (or create) blob `name` with `data`, as damage or an attacker would."""
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError


class Files(Backend):
    kind = "files"

    def __init__(self, root: Path) -> None:
        self.root = root

    def blobs(self) -> FileBlobs:
        return FileBlobs(self.root)

    def raw(self, name: str) -> bytes | None:
        for path in (self.root / name, self.root / name.rsplit("/", 1)[0] / "orphaned"
                     / name.rsplit("/", 1)[-1]):
            if path.is_file():
                return path.read_bytes()
        return None

    def overwrite(self, name: str, data: bytes) -> None:
        (self.root / name).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / name).write_bytes(data)

    def remove(self, name: str) -> None:
        (self.root / name).unlink()


class Secrets(Backend):
    kind = "secrets"

    def __init__(self, kube: RunningEmulator, scope: str = SCOPE) -> None:
        self.kube = kube
        self.api = client.CoreV1Api(kube.api_client())
        self.scope = scope

    def blobs(self) -> SecretBlobs:
        return SecretBlobs(client.CoreV1Api(self.kube.api_client()), NAMESPACE, self.scope)

    def secret(self, name: str) -> client.V1Secret | None:
        try:
            return self.api.read_namespaced_secret(self.blobs().secret_name(name), NAMESPACE)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def raw(self, name: str) -> bytes | None:
        secret = self.secret(name)
        return None if secret is None else base64.b64decode(secret.data["blob"])

    def overwrite(self, name: str, data: bytes) -> None:
        self.overwrite_data(name, {"blob": base64.b64encode(data).decode()})

    def overwrite_data(self, name: str, data: dict[str, str]) -> None:
        """Replace the Secret by one of fleetpki's labels and annotation with `data` as is."""
        blobs = self.blobs()
        if self.secret(name) is not None:
            self.remove(name)
        self.api.create_namespaced_secret(NAMESPACE, client.V1Secret(
            type="Opaque", data=data, metadata=client.V1ObjectMeta(
                name=blobs.secret_name(name), labels=blobs.labels(name),
                annotations={"fleetpki.io/blob-name": name})))

    def remove(self, name: str) -> None:
        self.api.delete_namespaced_secret(self.blobs().secret_name(name), NAMESPACE)


@pytest.fixture(params=["files", "secrets"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "files":
        return Files(tmp_path / "state" / "keys")
    return Secrets(request.getfixturevalue("kube_emulator"))
