"""Device sources read from the cluster: ConfigMaps and Flux source artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.api.devices import DeviceSourceError, DeviceText
from controller.api.resources import DeviceSource
from controller.sources.artifacts import ArtifactCache, artifact_device_text
from controller.sources.kube import Readers

FLUX_PLURALS = {"GitRepository": "gitrepositories", "OCIRepository": "ocirepositories"}
ARTIFACT_MAX_BYTES = 512 * 1024 * 1024  # a compressed artifact; its device file has its own cap
ARTIFACT_TIMEOUT = 120.0  # seconds for one download


def _absent_on_404(exc: ApiException, what: str, field: str) -> None:
    """404 means absent (the caller says so); anything else is an unreadable source."""
    if exc.status != 404:
        raise DeviceSourceError(f"cannot read {what}: HTTP {exc.status} {exc.reason}",
                                field=field) from None


def cluster_readers(api: client.ApiClient) -> Readers:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    cache = ArtifactCache()

    def config_map(namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            found = core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            _absent_on_404(exc, f"ConfigMap {namespace}/{name}", "configMapRef")
            return None
        serialised: Mapping[str, Any] = api.sanitize_for_serialization(found)
        return serialised

    def flux_source(api_version: str, kind: str, namespace: str,
                    name: str) -> Mapping[str, Any] | None:
        group, _, version = api_version.partition("/")
        try:
            found = custom.get_namespaced_custom_object(group, version, namespace,
                                                        FLUX_PLURALS[kind], name)
        except ApiException as exc:
            _absent_on_404(exc, f"{kind} {namespace}/{name}", "sourceRef")
            return None
        return found if isinstance(found, Mapping) else None

    def artifact(flux: Mapping[str, Any], source: DeviceSource) -> DeviceText:
        return artifact_device_text(flux, source, max_bytes=ARTIFACT_MAX_BYTES,
                                    timeout=ARTIFACT_TIMEOUT, cache=cache)

    return Readers(config_map, flux_source, artifact)
