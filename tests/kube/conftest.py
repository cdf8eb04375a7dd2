"""Fixtures of the real-kube-apiserver tier (the cluster itself lives in `cluster.py`).

`kube_cluster` starts etcd + kube-apiserver once per test session, and only when a test asks
for it. Without the binaries (`.ci/build-kube-apiserver` builds them) the tests skip, unless
FLEETPKI_REQUIRE_KUBE=1 (set by .ci/run), where they fail instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from .cluster import (
    BUILD_HINT,
    CRDS,
    PASSPHRASE,
    ROOT,
    Cluster,
    ClusterStartError,
    missing_tools,
    running_cluster,
)


@pytest.fixture(scope="session")
def kube_tools() -> None:
    """kube-apiserver, etcd and kubectl are there: skip without them, or fail when
    FLEETPKI_REQUIRE_KUBE=1 (CI)."""
    missing = missing_tools()
    if missing:
        message = f"real kube-apiserver tier: missing {', '.join(missing)}; {BUILD_HINT}"
        if os.environ.get("FLEETPKI_REQUIRE_KUBE") == "1":
            pytest.fail(message + " (FLEETPKI_REQUIRE_KUBE=1)", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def kube_cluster(kube_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running kube-apiserver 1.20 + etcd on loopback (see `cluster.py` for what it lacks:
    no controller-manager)."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_cluster(tmp_path_factory.mktemp("kube")))
        except ClusterStartError as error:
            failure: str | None = str(error)
        else:
            failure = None
        if failure is not None:  # outside `except`: no chained traceback in the report
            pytest.fail(f"real kube-apiserver tier did not start: {failure}", pytrace=False)
        yield cluster


@pytest.fixture(scope="session")
def fleetpki_crds(kube_cluster: Cluster) -> Cluster:
    """The cluster with the repository's CRDs (crds/) applied and established."""
    kube_cluster.kubectl("apply", "-f", str(CRDS))
    names = [f"crd/{path.stem.split('_', 1)[1]}.{path.stem.split('_', 1)[0]}"
             for path in sorted(CRDS.glob("fleetpki.io_*.yaml"))]
    kube_cluster.kubectl("wait", "--for", "condition=established", "--timeout=60s", *names)
    return kube_cluster


@pytest.fixture(scope="session")
def deployed(fleetpki_crds: Cluster) -> Cluster:
    """deploy/ applied as the README says (Deployment and PVC are stored; no pod runs here)."""
    fleetpki_crds.kubectl("apply", "-f", str(ROOT / "crds"), "-f", str(ROOT / "deploy" / "crds"))
    fleetpki_crds.kubectl("wait", "--for", "condition=established", "--timeout=60s",
                          "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev")
    fleetpki_crds.kubectl("apply", "-k", str(ROOT / "deploy"))
    return fleetpki_crds


@pytest.fixture
def as_operator(deployed: Cluster, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """The operator's credentials: the ServiceAccount of deploy/, bound by deploy/'s RBAC."""
    monkeypatch.setenv("KUBECONFIG", str(deployed.kubeconfig("operator")))
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    return deployed
