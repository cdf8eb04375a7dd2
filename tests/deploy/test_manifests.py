"""deploy/ and examples/gitops: parseable YAML, least-privilege RBAC, a locked-down Deployment,
and a kustomization that old and new kustomize versions build."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.crds import PLURALS

from .support import DEPLOY, ROOT, documents, find, objects, tool

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *(ROOT / "examples" / "gitops").rglob("*.yaml")])
FLEETPKI_RESOURCES = set(PLURALS.values())


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses_into_kubernetes_objects(path: Path) -> None:
    docs = documents(path)
    assert docs, path
    for doc in docs:
        assert {"apiVersion", "kind"} <= set(doc), path
        if doc["kind"] != "Kustomization" or "metadata" in doc:
            assert doc["metadata"]["name"], path


def test_kustomization_lists_every_manifest_of_deploy() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    manifests = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml")
                 if p.name != "kustomization.yaml" and "argocd" not in p.parts}
    assert listed == manifests
    assert set(kustomization) == {"apiVersion", "kind", "resources"}, \
        "plain resources only: kustomize v2 (kubectl 1.20) must build it"


def rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs."""
    result: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return result


def test_cluster_role_is_exactly_what_the_operator_needs() -> None:
    rbac = documents(DEPLOY / "rbac.yaml")
    granted = rules(find(rbac, "ClusterRole", "fleetpki-operator"))
    expected: dict[tuple[str, str], set[str]] = {}
    for plural in FLEETPKI_RESOURCES:
        expected[("fleetpki.io", plural)] = {"get", "list", "watch", "patch"}
        expected[("fleetpki.io", f"{plural}/status")] = {"get", "patch", "update"}
    expected.update({
        ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
        ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
        ("", "events"): {"create", "patch"},
        ("events.k8s.io", "events"): {"create"},
        ("", "configmaps"): {"get", "list", "watch"},
        ("", "namespaces"): {"list", "watch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("source.toolkit.fluxcd.io", "gitrepositories"): {"get", "list", "watch"},
        ("source.toolkit.fluxcd.io", "ocirepositories"): {"get", "list", "watch"},
    })
    assert granted == expected
    assert not any("*" in group or "*" in resource or "*" in verbs
                   for (group, resource), verbs in granted.items())
    assert ("", "secrets") not in granted, "secrets only through the namespaced Role"


def test_secrets_only_in_the_operator_namespace_and_never_deleted() -> None:
    rbac = documents(DEPLOY / "rbac.yaml")
    role = find(rbac, "Role", "fleetpki-operator-secrets")
    assert role["metadata"]["namespace"] == "fleetpki-system"
    assert rules(role) == {("", "secrets"): {"get", "list", "watch", "create", "update", "patch"}}
    binding = find(rbac, "RoleBinding", "fleetpki-operator-secrets")
    assert binding["metadata"]["namespace"] == "fleetpki-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "fleetpki-operator-secrets"}
    device_tls = find(rbac, "ClusterRole", "fleetpki-device-tls-secrets")
    # exactly what controller/operator/tls_secrets.py does (delete: a revoked device's Secret)
    assert rules(device_tls) == {("", "secrets"): {"list", "create", "update", "delete"}}
    bound = {b["roleRef"]["name"] for b in rbac if b["kind"].endswith("Binding")}
    assert "fleetpki-device-tls-secrets" not in bound, "opt-in: not bound by default"
    cluster_binding = find(rbac, "ClusterRoleBinding", "fleetpki-operator")
    for binding in (cluster_binding, find(rbac, "RoleBinding", "fleetpki-operator-secrets")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fleetpki-operator",
                                        "namespace": "fleetpki-system"}]
    find(rbac, "ServiceAccount", "fleetpki-operator")


def deployment() -> dict[str, Any]:
    return find(objects(DEPLOY), "Deployment", "fleetpki-operator")


def containers() -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment()["spec"]["template"]["spec"]["containers"]}


def test_deployment_runs_one_operator_with_the_documented_arguments() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}, "the state volume is ReadWriteOnce"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "fleetpki-operator"
    operator = containers()["operator"]
    assert operator["image"] == "ghcr.io/fleetpki/fleetpki:0.1.0"
    assert operator["args"] == ["operator", "--all-namespaces", "--state-dir", "/var/lib/fleetpki",
                                "--peering", "fleetpki", "--health-port", "8080",
                                "--metrics-port", "9090"]
    env = {e["name"]: e for e in operator["env"]}
    assert env["FLEETPKI_PASSPHRASE"]["valueFrom"] == {
        "secretKeyRef": {"name": "fleetpki-passphrase", "key": "passphrase"}}
    assert env["FLEETPKI_OPERATOR_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}}
    for probe in ("livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for c in containers().values() for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090, "http": 8081, "est": 8443}
    mounts = {m["mountPath"]: m["name"] for m in operator["volumeMounts"]}
    assert mounts == {"/var/lib/fleetpki": "state", "/tmp": "tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"] == {"claimName": "fleetpki-state"}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    for container in containers().values():
        assert set(container["resources"]) == {"requests", "limits"}


def test_serve_uses_only_options_fleetpki_serve_has(tmp_path: Path) -> None:
    """The serve container's command line parses with the real CLI (click), and names the
    state directory of one namespace."""
    import typer

    from controller.cli import app

    (script,) = containers()["serve"]["args"]
    line = script[script.index("exec fleetpki serve"):].replace("\\\n", " ")
    words = line.split()[2:]  # after `exec fleetpki`
    state = next(w for w in script.split() if w.startswith("state="))
    words = [w.replace('"$state"', state.split("=", 1)[1]) for w in words]
    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    assert words[1] == '"$state/declaration"'  # what the operator writes for the namespace
    context = serve.make_context("serve", [str(tmp_path), *words[2:]])  # DIR must exist here
    assert context.params["state_dir"] == Path("/var/lib/fleetpki/namespaces/fleet-demo")
    assert context.params["http"] == "0.0.0.0:8081" and context.params["https"] == "0.0.0.0:8443"
    assert context.params["tls_ca"] == "devices-ca"


@pytest.mark.parametrize("name", ["operator", "serve"])
def test_containers_are_locked_down(name: str) -> None:
    context = containers()[name]["securityContext"]
    assert context == {"runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True,
                       "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                       "seccompProfile": {"type": "RuntimeDefault"}}
    pod = deployment()["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}


def test_state_volume_service_and_peering() -> None:
    items = objects(DEPLOY)
    pvc = find(items, "PersistentVolumeClaim", "fleetpki-state")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    service = find(items, "Service", "fleetpki")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "est", "metrics"}
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    find(items, "ClusterKopfPeering", "fleetpki")
    crds = {d["metadata"]["name"]: d for d in documents(DEPLOY / "crds" / "kopf-peering.yaml")}
    assert set(crds) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert crds["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    for item in items:
        if item["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding",
                                "CustomResourceDefinition", "ClusterKopfPeering"}:
            assert item["metadata"]["namespace"] == "fleetpki-system", item["kind"]


def test_dockerfile_runs_fleetpki_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "'.[kubernetes]'" in text
    assert "USER 65532:65532" in text
    assert 'ENTRYPOINT ["fleetpki"]' in text
    final = text[text.rindex("FROM "):]
    assert "pip install" not in final and "build-essential" not in final and "gcc" not in final


@pytest.mark.parametrize("directory", ["deploy", "examples/kubernetes",
                                       "examples/cluster-wide-ca"])
def test_kubectl_kustomize_builds(directory: str) -> None:
    kubectl = tool("kubectl", override="FLEETPKI_KUBECTL")
    run = subprocess.run([kubectl, "kustomize", directory], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    built = [d for d in yaml.safe_load_all(run.stdout) if d]
    expected = objects(ROOT / directory) + ([d for d in documents(
        DEPLOY / "crds" / "kopf-peering.yaml")] if directory == "deploy" else [])
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == \
        sorted((d["kind"], d["metadata"]["name"]) for d in expected)


def test_operator_uses_only_options_fleetpki_operator_has() -> None:
    import typer

    from controller.cli import app

    args = containers()["operator"]["args"]
    operator = typer.main.get_command(app).commands["operator"]  # type: ignore[attr-defined]
    context = operator.make_context("operator", args[1:])
    assert context.params["all_namespaces"] and context.params["peering"] == "fleetpki"
    assert (context.params["health_port"], context.params["metrics_port"]) == (8080, 9090)
