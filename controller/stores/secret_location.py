"""Where a state directory's keys are: files in `<state>/keys`, or Kubernetes Secrets that the
directory records (`keystore.json`, written by the operator). Read by every command, so it
loads the Kubernetes client only for a directory whose keys are Secrets
(`controller.stores.secrets`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from controller.stores.keystore import KeyStoreError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from controller.stores.secrets import SecretBlobs

# the operator's cluster-wide CAs: not a DNS label, so no namespace's scope is ever the same
CLUSTER_SCOPE = "cluster.fleetpki.io"
LOCATION_FILE = "keystore.json"  # in a state directory whose keys are Secrets


def recorded_location(state: Path) -> dict[str, str] | None:
    """The Secrets (namespace, scope) a state directory's keys are in, if it says so."""
    path = state / LOCATION_FILE
    try:
        location = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"cannot read {path}: {exc}") from None
    if not isinstance(location, dict) or not {"namespace", "scope"} <= set(location):
        raise KeyStoreError(f"{path} does not say where the key Secrets are "
                            "(namespace, scope)")
    return {"namespace": str(location["namespace"]), "scope": str(location["scope"])}


def secret_blobs(state: Path, api: ApiClient | None = None, namespace: str | None = None,
                 scope: str | None = None) -> SecretBlobs | None:
    """The key Secrets of a state directory: recorded in it (any command finds them), or
    recorded now when `namespace` and `scope` are given (the operator). Keys recorded elsewhere
    than asked are refused: the operator never starts a second keystore beside the first."""
    recorded = recorded_location(state)
    if namespace is not None and scope is not None:
        asked = {"namespace": namespace, "scope": scope}
        if recorded is not None and recorded != asked:
            raise KeyStoreError(
                f"the keys of {state} are Secrets of namespace {recorded['namespace']} (scope "
                f"{recorded['scope']}), not of {namespace} (scope {scope}): refusing to use "
                "another keystore")
        if recorded is None:
            state.mkdir(parents=True, exist_ok=True, mode=0o700)
            (state / LOCATION_FILE).write_text(json.dumps(asked) + "\n", encoding="utf-8")
        recorded = asked
    if recorded is None:
        return None
    from controller.stores import secrets  # the Kubernetes client, for these keys only

    return secrets.SecretBlobs(secrets.client.CoreV1Api(api or secrets.api_client()),
                               recorded["namespace"], recorded["scope"])
