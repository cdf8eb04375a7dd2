"""Tenants: every object belongs to the team that owns where it is declared (a path in git-only
mode, a namespace in Kubernetes mode), never to a label it sets on itself."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from controller.api.desired import Desired
from controller.api.loading import Located
from controller.api.problems import Problem
from controller.api.resources import ClusterCertificateAuthority, Tenant

TENANT_OWNED = ("CertificateAuthority", "CertificateProfile", "DeviceFleet")


@cache
def _glob(pattern: str) -> re.Pattern[str]:
    """`*` and `?` within one path segment, `**` across segments."""
    out = ""
    for token in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
        if token in ("**/", "**"):
            out += "(?:.*/)?" if token == "**/" else ".*"
        elif token == "*":
            out += "[^/]*"
        elif token == "?":
            out += "[^/]"
        else:
            out += re.escape(token)
    return re.compile(out)


def path_matches(pattern: str, path: str) -> bool:
    """Whether `path` (relative, `/`-separated) is `pattern` or lies in a directory it names,
    as in CODEOWNERS."""
    parts = path.strip("/").split("/")
    regex = _glob(pattern)
    return any(regex.fullmatch("/".join(parts[:n])) for n in range(len(parts), 0, -1))


def tenant_of(tenant: Located) -> Tenant:
    assert isinstance(tenant.resource, Tenant)
    return tenant.resource


@dataclass(frozen=True)
class Tenancy:
    """The declared tenants and the tenant of each object ("Kind/name" -> tenant name). Without
    tenants, nothing belongs to any tenant and rules see empty names."""

    tenants: dict[str, Located] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def owning(self, path: str) -> list[str]:
        """The tenants whose paths cover a file (relative to the fleet directory)."""
        return sorted(name for name, item in self.tenants.items()
                      if any(path_matches(p, path) for p in tenant_of(item).spec.paths))

    def of_namespace(self, namespace: str) -> list[str]:
        return sorted(name for name, item in self.tenants.items()
                      if namespace in tenant_of(item).spec.namespaces)

    def name_of(self, ref: str) -> str:
        return self.owners.get(ref, "")

    def data(self, ref: str) -> dict[str, Any]:
        """The `tenant` a CEL rule sees for an object: its name and allowances."""
        name = self.name_of(ref)
        if not name:
            return {"name": "", "authorities": [], "profiles": [], "keyAlgorithms": [],
                    "deviceIdPatterns": []}
        allowed = tenant_of(self.tenants[name]).spec.allowed
        return {"name": name, **allowed.model_dump(), "maxValidity": allowed.maxValidity}


NO_TENANTS = Tenancy()


def _objects(desired: Desired) -> Iterable[Located]:
    """The objects that belong to a tenant (cluster-wide CAs belong to none)."""
    yield from (item for item in desired.authorities.values()
                if not isinstance(item.resource, ClusterCertificateAuthority))
    yield from desired.profiles.values()
    yield from (decl.located for decl in desired.fleets.values())


def assign(tenants: Iterable[Located], desired: Desired,
           namespace: str | None = None) -> tuple[Tenancy, list[Problem]]:
    """Each object's tenant from where it is declared: its file in git-only mode, `namespace`
    in Kubernetes mode. With tenants declared, an object no tenant (or more than one) owns is a
    problem, and so is a device file outside its fleet's tenant."""
    by_name = {tenant_of(item).name: item for item in tenants}
    tenancy = Tenancy(by_name)
    if not by_name:
        return tenancy, []
    problems: list[Problem] = []
    owners: dict[str, str] = {}

    places = "namespaces" if namespace is not None else "paths"

    def owner(located: Located, where: str, names: list[str]) -> str:
        if len(names) == 1:
            return names[0]
        reason = (f"{where} is in no tenant's {places} ({', '.join(sorted(by_name))}); "
                  "declare it where a tenant owns it" if not names else
                  f"{where} is owned by several tenants ({', '.join(names)}); tenants' "
                  f"{places} must not overlap")
        problems.append(Problem(located.file, reason, located.line, located.ref))
        return ""

    for located in _objects(desired):
        if namespace is not None:
            names = tenancy.of_namespace(namespace)
            found = owner(located, f"namespace {namespace!r}", names)
        else:
            found = owner(located, located.file, tenancy.owning(located.file))
        if found:
            owners[located.ref] = found
    if namespace is None:
        for decl in desired.fleets.values():
            fleet_tenant = owners.get(decl.located.ref)
            files = sorted(set(decl.device_set.files) - {decl.located.file})
            for file in files:
                if fleet_tenant and fleet_tenant not in tenancy.owning(file):
                    problems.append(Problem(
                        decl.located.file, f"device file {file} is outside the paths of "
                        f"tenant {fleet_tenant!r}", decl.located.line_of("spec", "deviceSource"),
                        decl.located.ref, "spec.deviceSource.path"))
    return Tenancy(by_name, owners), problems


def cluster_access(desired: Desired, tenancy: Tenancy, namespace: str | None) -> list[Problem]:
    """Cluster-wide CAs exist in Kubernetes mode only, and a fleet issues from one only if it
    allows the fleet's namespace or tenant (its spec.allowedNamespaces/allowedTenants)."""
    problems: list[Problem] = []
    if namespace is None:
        for item in desired.authorities.values():
            if isinstance(item.resource, ClusterCertificateAuthority):
                problems.append(Problem(item.file, "ClusterCertificateAuthority: cluster-scoped, "
                                        "Kubernetes mode only (in git, declare a "
                                        "CertificateAuthority and share it with "
                                        "Tenant spec.allowed.authorities)", item.line, item.ref,
                                        "kind"))
        return problems
    for decl in desired.fleets.values():
        issuer = desired.authorities.get(decl.fleet.spec.issuerRef.name)
        if issuer is None or not isinstance(issuer.resource, ClusterCertificateAuthority):
            continue
        tenant = tenancy.name_of(decl.located.ref)
        if not issuer.resource.spec.allows(namespace, tenant):
            who = f"namespace {namespace!r}" + (f" (tenant {tenant!r})" if tenant else "")
            problems.append(Problem(
                decl.located.file, f"{issuer.ref} does not allow {who}: it issues only to the "
                "namespaces and tenants in its spec.allowedNamespaces and spec.allowedTenants",
                decl.located.line_of("spec", "issuerRef", "name"), decl.located.ref,
                "spec.issuerRef.name"))
    return problems
