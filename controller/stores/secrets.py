"""Keystore blobs in Kubernetes Secrets, for the operator: `KeyStore(SecretBlobs(...), pw)`.

One Secret per blob in the operator's namespace, named `fleetpki-<scope>-<blob>-<hash>` (the
blob name lowercased with every other character turned into `-`, then 10 hex digits of
SHA-256 over scope and blob name, so that names differing only in case or punctuation never
share a Secret), type `Opaque`, `immutable: true`, the blob's bytes under the data key `blob`
(exactly the bytes of the file keystore: a CA key is the encrypted PKCS#8 PEM; the Secret is an
envelope, not the protection). Labels: `app.kubernetes.io/managed-by: fleetpki`,
`fleetpki.io/scope: <scope>` (the operator keeps one state per watched namespace) and
`fleetpki.io/blob: kek | ca-key | audit-key`; the annotation `fleetpki.io/blob-name` holds the
blob name.

Choices:

- **No owner references.** Deleting a custom resource must never delete a CA key, so the key
  Secrets belong to no object and Kubernetes' garbage collector never removes them.
- **Quarantine is a label**, `fleetpki.io/quarantined: "true"` (a patch), not a rename: a
  Secret cannot be renamed without deleting it, and the operator is granted no `delete` on
  Secrets. A quarantined Secret is kept, is absent to `read` and `names`, listed by
  `names(..., quarantined=True)`, and keeps its name (a new blob of the same name is refused).
- **Verbs**: `get`, `list` (by label selector), `create`, `patch` on Secrets in one namespace.
- **Unreadable is never absent.** Only HTTP 404 reads as "no blob"; 403 and every other
  failure raise BlobError naming the Secret and the HTTP status. A Secret of the right name
  without fleetpki's labels, of another scope or blob, or whose data is missing or not base64,
  is an error too. Error messages never carry the Secret's data or the API's response body.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from controller.api.names import MANAGED_BY, hashed_name
from controller.stores.keystore import (
    AUDIT_KEY_BLOB,
    KEK_BLOB,
    BlobError,
    KeyStoreError,
    check_blob_name,
    check_blob_prefix,
)
from controller.stores.secret_location import CLUSTER_SCOPE

SCOPE_LABEL = "fleetpki.io/scope"
BLOB_LABEL = "fleetpki.io/blob"
QUARANTINE_LABEL = "fleetpki.io/quarantined"
NAME_ANNOTATION = "fleetpki.io/blob-name"
DATA_KEY = "blob"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_MAX_NAME = 253
_HASH_LEN = 10


def blob_kind(name: str) -> str:
    """The `fleetpki.io/blob` label of a blob: `kek`, `ca-key`, `audit-key` or `other`."""
    if name == KEK_BLOB:
        return "kek"
    if name == AUDIT_KEY_BLOB:
        return "audit-key"
    if name.startswith("ca/") and name.endswith(".pem"):
        return "ca-key"
    return "other"


def secret_name(scope: str, name: str) -> str:
    """The Secret that holds blob `name` of `scope`: a DNS-1123 subdomain."""
    head = f"fleetpki-{scope}-"
    return head + hashed_name(name, f"{scope}\0{name}", _HASH_LEN, _MAX_NAME - len(head))


class SecretBlobs:
    """Keystore blobs as Secrets in `namespace`, one set per `scope` (see the module doc).

    `api` is a synchronous `kubernetes.client.CoreV1Api`.
    """

    def __init__(self, api: client.CoreV1Api, namespace: str, scope: str) -> None:
        for what, value in (("namespace", namespace), ("scope", scope)):
            if not _DNS_LABEL.fullmatch(value) and (what, value) != ("scope", CLUSTER_SCOPE):
                raise KeyStoreError(f"invalid keystore {what} {value!r}: expected a DNS-1123 "
                                    "label (lowercase letters, digits and '-', 1-63 characters)")
        self.api = api
        self.namespace = namespace
        self.scope = scope

    # -- naming --------------------------------------------------------------------------------

    def secret_name(self, name: str) -> str:
        check_blob_name(name)
        return secret_name(self.scope, name)

    def describe(self, name: str) -> str:
        if not name:
            return (f"Secrets labelled {SCOPE_LABEL}={self.scope} in namespace "
                    f"{self.namespace}")
        return f"Secret {self.namespace}/{self.secret_name(name)}"

    def labels(self, name: str) -> dict[str, str]:
        return {MANAGED_BY: "fleetpki", SCOPE_LABEL: self.scope, BLOB_LABEL: blob_kind(name)}

    def _failed(self, name: str, action: str, exc: Exception) -> BlobError:
        """A BlobError naming the Secret and the HTTP status (never the body or the data)."""
        if isinstance(exc, ApiException):
            reason = f"HTTP {exc.status}" + (f" {exc.reason}" if exc.reason else "")
        else:
            reason = type(exc).__name__
        return BlobError(self.describe(name), f"cannot {action} the Secret: {reason}")

    # -- KeyBlobs ------------------------------------------------------------------------------

    def _get(self, name: str) -> Any | None:
        """The Secret of blob `name` (checked to be fleetpki's, of this scope), None on 404."""
        try:
            secret = self.api.read_namespaced_secret(self.secret_name(name), self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._failed(name, "read", exc) from None
        except (HTTPError, OSError) as exc:
            raise self._failed(name, "read", exc) from None
        meta = secret.metadata
        labels = (meta.labels if meta is not None else None) or {}
        annotations = (meta.annotations if meta is not None else None) or {}
        if labels.get(MANAGED_BY) != "fleetpki" or labels.get(SCOPE_LABEL) != self.scope \
                or annotations.get(NAME_ANNOTATION) != name:
            raise BlobError(self.describe(name), f"the Secret is not fleetpki's blob {name!r} "
                            f"of scope {self.scope} (labels {MANAGED_BY}, {SCOPE_LABEL} or "
                            f"annotation {NAME_ANNOTATION} differ): refusing to use it")
        return secret

    def read(self, name: str) -> bytes | None:
        secret = self._get(name)
        if secret is None or _quarantined(secret):
            return None
        encoded = (secret.data or {}).get(DATA_KEY)
        if not isinstance(encoded, str):
            raise BlobError(self.describe(name), f"the Secret has no data key {DATA_KEY!r}")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BlobError(self.describe(name),
                            f"the Secret's data {DATA_KEY!r} is not base64") from None

    def create(self, name: str, data: bytes) -> None:
        body = client.V1Secret(
            api_version="v1", kind="Secret", type="Opaque", immutable=True,
            metadata=client.V1ObjectMeta(name=self.secret_name(name), namespace=self.namespace,
                                         labels=self.labels(name),
                                         annotations={NAME_ANNOTATION: name}),
            data={DATA_KEY: base64.b64encode(data).decode("ascii")})
        try:
            self.api.create_namespaced_secret(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise FileExistsError(f"{self.describe(name)} exists already") from None
            raise self._failed(name, "create", exc) from None
        except (HTTPError, OSError) as exc:
            raise self._failed(name, "create", exc) from None

    def quarantine(self, name: str) -> None:
        secret = self._get(name)
        if secret is None or _quarantined(secret):
            return
        patch = {"metadata": {"labels": {QUARANTINE_LABEL: "true"}}}
        try:
            self.api.patch_namespaced_secret(self.secret_name(name), self.namespace, patch)
        except (ApiException, HTTPError, OSError) as exc:
            raise self._failed(name, "quarantine (patch)", exc) from None

    def names(self, prefix: str, quarantined: bool = False) -> list[str]:
        check_blob_prefix(prefix)
        selector = (f"{MANAGED_BY}=fleetpki,{SCOPE_LABEL}={self.scope},"
                    + (f"{QUARANTINE_LABEL}=true" if quarantined else f"!{QUARANTINE_LABEL}"))
        found: set[str] = set()
        token: str | None = None
        while True:
            try:
                page = self.api.list_namespaced_secret(
                    self.namespace, label_selector=selector, limit=500, _continue=token)
            except (ApiException, HTTPError, OSError) as exc:
                raise self._failed("", "list", exc) from None
            for secret in page.items or []:
                meta = secret.metadata
                if meta is None:
                    continue
                labels = meta.labels or {}
                name = (meta.annotations or {}).get(NAME_ANNOTATION)
                if labels.get(MANAGED_BY) != "fleetpki" or labels.get(SCOPE_LABEL) != self.scope \
                        or _quarantined(secret) != quarantined or not isinstance(name, str):
                    continue  # the selector said so already; a server that ignores it is safe
                if name.startswith(prefix) and "/" not in name[len(prefix):] \
                        and meta.name == secret_name(self.scope, name):
                    found.add(name)
            token = page.metadata._continue if page.metadata is not None else None
            if not token:
                return sorted(found)


def _quarantined(secret: Any) -> bool:
    labels = (secret.metadata.labels if secret.metadata is not None else None) or {}
    return bool(labels.get(QUARANTINE_LABEL) == "true")


def api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:  # $KUBECONFIG as it is now (the client reads it once, when imported)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        except (config.ConfigException, OSError) as exc:
            raise KeyStoreError(f"cannot reach the Kubernetes API for the key Secrets: {exc}") \
                from None
    return client.ApiClient()
