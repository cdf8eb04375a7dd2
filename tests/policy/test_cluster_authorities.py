"""ClusterCertificateAuthority in a namespace's declaration (as the operator writes it): which
namespaces and tenants may use it, how a fleet names it, and that git-only mode refuses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from controller import jobs
from controller.api.resources import ClusterCertificateAuthoritySpec
from controller.plan.model import CAObserved, Observed

from .support import NOW

API = "fleetpki.io/v1alpha1"


def cluster_ca(name: str = "fleet-root", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ClusterCertificateAuthority", "metadata": {"name": name},
            "spec": {"type": "root", "subject": {"commonName": name}, "pathLength": 0,
                     "allowedNamespaces": ["team-*"], **spec}}


def namespace_objects(issuer: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [
        {"apiVersion": API, "kind": "CertificateProfile", "metadata": {"name": "mqtt"},
         "spec": {"subject": {"commonName": "{{ device.id }}"}}},
        {"apiVersion": API, "kind": "DeviceFleet", "metadata": {"name": "meters"},
         "spec": {"issuerRef": issuer or {"kind": "ClusterCertificateAuthority",
                                          "name": "fleet-root"},
                  "profileRef": {"name": "mqtt"}, "devices": [{"id": "m-1"}, {"id": "m-2"}]}},
    ]


def declaration(tmp_path: Path, *documents: dict[str, Any]) -> Path:
    directory = tmp_path / "declaration"
    directory.mkdir(exist_ok=True)
    (directory / "objects.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return directory


def problems(directory: Path, namespace: str | None, policies: Path | None = None) -> list[str]:
    source = jobs.PolicySource(directory=policies, namespace=namespace)
    _, found = jobs.read_declaration(directory, source)
    return [f"{p.field}: {p.message}" for p in found]


def tenants(tmp_path: Path, *names: tuple[str, str]) -> Path:
    directory = tmp_path / "trusted"
    directory.mkdir()
    (directory / "tenants.yaml").write_text(yaml.safe_dump_all(
        [{"apiVersion": API, "kind": "Tenant", "metadata": {"name": tenant},
          "spec": {"namespaces": [namespace]}} for tenant, namespace in names]))
    return directory


def test_a_fleet_of_an_allowed_namespace_uses_it(tmp_path: Path) -> None:
    directory = declaration(tmp_path, cluster_ca(), *namespace_objects())
    assert problems(directory, "team-meters") == []


def test_a_namespace_it_does_not_allow_is_refused_naming_the_field(tmp_path: Path) -> None:
    directory = declaration(tmp_path, cluster_ca(), *namespace_objects())
    (found,) = problems(directory, "outsiders")
    assert found.startswith("spec.issuerRef.name: ClusterCertificateAuthority/fleet-root does "
                            "not allow namespace 'outsiders'")


def test_a_tenant_it_allows_may_use_it_from_any_of_its_namespaces(tmp_path: Path) -> None:
    trusted = tenants(tmp_path, ("meters", "metering"), ("valves", "valving"))
    directory = declaration(tmp_path, cluster_ca(allowedNamespaces=[], allowedTenants=["meters"]),
                            *namespace_objects())
    assert problems(directory, "metering", trusted) == []
    (found,) = problems(directory, "valving", trusted)
    assert "does not allow namespace 'valving' (tenant 'valves')" in found


def test_the_default_ca_access_policy_lets_tenants_use_it(tmp_path: Path) -> None:
    """It belongs to no tenant, so `authority.tenant == fleet.tenant` would deny it; the rule
    leaves cluster-wide CAs to their own allow lists."""
    trusted = tenants(tmp_path, ("meters", "team-meters"))
    directory = declaration(tmp_path, cluster_ca(), *namespace_objects())
    _, found = jobs.validate(directory, NOW, jobs.PolicySource(directory=trusted,
                                                               namespace="team-meters"))
    assert found == [] or all(f.action != "deny" for f in found)


def test_git_only_mode_refuses_it(tmp_path: Path) -> None:
    directory = declaration(tmp_path, cluster_ca(), *namespace_objects())
    (found,) = problems(directory, None)
    assert found.startswith("kind: ClusterCertificateAuthority: cluster-scoped, Kubernetes mode "
                            "only")


@pytest.mark.parametrize(("issuer", "expected"), [
    ({"name": "fleet-root"}, "spec.issuerRef.name: no CertificateAuthority named 'fleet-root'"),
    ({"kind": "ClusterCertificateAuthority", "name": "other"},
     "spec.issuerRef.name: no ClusterCertificateAuthority named 'other'"),
])
def test_the_fleet_names_its_kind(tmp_path: Path, issuer: dict[str, str], expected: str) -> None:
    directory = declaration(tmp_path, cluster_ca(), *namespace_objects(issuer))
    assert problems(directory, "team-meters") == [expected]


def test_a_namespace_ca_of_the_same_name_is_refused(tmp_path: Path) -> None:
    own = {"apiVersion": API, "kind": "CertificateAuthority", "metadata": {"name": "fleet-root"},
           "spec": {"type": "root", "subject": {"commonName": "own"}, "pathLength": 0}}
    directory = declaration(tmp_path, own, cluster_ca(), *namespace_objects())
    found = problems(directory, "team-meters")
    assert any(p.startswith("metadata.name: CertificateAuthority/fleet-root has the same name")
               for p in found), found


def test_parents_stay_on_their_side(tmp_path: Path) -> None:
    intermediate = {"apiVersion": API, "kind": "CertificateAuthority",
                    "metadata": {"name": "team-ca"},
                    "spec": {"type": "intermediate", "parentRef": {"name": "fleet-root"},
                             "subject": {"commonName": "team"}, "pathLength": 0}}
    directory = declaration(tmp_path, cluster_ca(), intermediate, *namespace_objects())
    assert "spec.parentRef.name: ClusterCertificateAuthority/fleet-root cannot be the parent: " \
        "need a CertificateAuthority of the same namespace" in problems(directory, "team-meters")


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "external"}, "type\n  Input should be 'root' or 'intermediate'"),
    ({"ocsp": {"url": "http://ocsp.example"}}, "ocsp: not available for a cluster-wide CA"),
])
def test_what_a_cluster_wide_ca_cannot_be(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ClusterCertificateAuthoritySpec.model_validate(
            {"type": "root", "subject": {"commonName": "x"}, **spec})


def test_the_plan_leaves_its_certificate_and_crl_to_the_cluster_scope(tmp_path: Path) -> None:
    """In a namespace, a cluster-wide CA is never created nor its CRL published; its fleets
    wait (with a warning) until its certificate is there, then issue under it."""
    directory = declaration(tmp_path, cluster_ca(), *namespace_objects())
    loaded = jobs.load(directory, jobs.PolicySource(namespace="team-meters"))
    waiting = loaded.plan(Observed(), NOW)
    assert waiting.actions == ()
    assert any("waiting for ClusterCertificateAuthority/fleet-root" in w
               for w in waiting.warnings)
    there = Observed(authorities={"fleet-root": CAObserved("0a", "x", 2_000_000_000,
                                                           1_900_000_000)},
                     known_authorities=frozenset({"fleet-root"}))
    ready = loaded.plan(there, NOW)
    assert sorted((a.action, a.device) for a in ready.actions) == [("issue", "m-1"),
                                                                   ("issue", "m-2")]
