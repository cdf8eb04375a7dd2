"""Device sources read from the cluster: ConfigMaps and Flux source artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.sources.kube import DeviceSourceUnavailable, Readers

FLUX_PLURALS = {"GitRepository": "gitrepositories", "OCIRepository": "ocirepositories"}


def _absent_on_404(exc: ApiException, what: str) -> None:
    """404 means absent (the caller says so); anything else is an unreadable source."""
    if exc.status != 404:
        raise DeviceSourceUnavailable(f"cannot read {what}: HTTP {exc.status} {exc.reason}") \
            from None


def cluster_readers(api: client.ApiClient) -> Readers:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)

    def config_map(namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            return core.read_namespaced_config_map(name, namespace).data or {}
        except ApiException as exc:
            _absent_on_404(exc, f"ConfigMap {namespace}/{name}")
            return None

    def flux_source(api_version: str, kind: str, namespace: str,
                    name: str) -> Mapping[str, Any] | None:
        group, _, version = api_version.partition("/")
        if kind not in FLUX_PLURALS:
            raise DeviceSourceUnavailable(f"sourceRef.kind must be one of {sorted(FLUX_PLURALS)}")
        try:
            found = custom.get_namespaced_custom_object(group, version, namespace,
                                                        FLUX_PLURALS[kind], name)
            return found if isinstance(found, Mapping) else None
        except ApiException as exc:
            _absent_on_404(exc, f"{kind} {namespace}/{name}")
            return None

    def artifact(flux: Mapping[str, Any], path: str) -> str:
        raise DeviceSourceUnavailable("Flux source artifacts are not readable yet")

    return Readers(config_map, flux_source, artifact)
