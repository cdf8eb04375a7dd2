"""Where the policies and tenants that bind a fleet directory come from.

By default: the project's default policies, replaced by the repository's own of the same name.
With a trusted directory (`--policies DIR`, e.g. a checkout of the platform team's repository):
the defaults replaced by that directory's policies, and its Tenants; the repository's own
CertificatePolicies are then refused, so a change cannot weaken the rules that judge it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.api.desired import Desired, add_unique
from controller.api.loading import Located, parse_documents
from controller.api.problems import Problem
from controller.api.resources import CertificatePolicy
from controller.policy.defaults import default_policies, effective_policies
from controller.sources.repo import yaml_files

TRUSTED_KINDS = ("CertificatePolicy", "Tenant")


@dataclass(frozen=True)
class PolicySource:
    """`defaults`: include the default policies. `directory`: the trusted policy directory.
    `namespace` (Kubernetes mode): every object belongs to this namespace's tenant. `cluster`:
    the operator's cluster-wide CAs, which belong to no tenant."""

    defaults: bool = True
    directory: Path | None = None
    namespace: str | None = None
    cluster: bool = False  # the operator's cluster scope: its CAs belong to no tenant


DEFAULT_SOURCE = PolicySource()


@dataclass(frozen=True)
class Policies:
    policies: list[Located]
    tenants: list[Located]
    problems: list[Problem]


def read_trusted_directory(directory: Path) -> tuple[dict[str, Located], list[Located],
                                                 list[Problem]]:
    """The CertificatePolicies (by name) and Tenants of a trusted directory."""
    if not directory.is_dir():
        return {}, [], [Problem(str(directory), "--policies: not a directory")]
    policies: dict[str, Located] = {}
    tenants: dict[str, Located] = {}
    problems: list[Problem] = []
    for path in yaml_files(directory):
        file = str(path)
        try:
            found, found_problems = parse_documents(path.read_text(encoding="utf-8"), file)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(file, f"cannot read: {exc}"))
            continue
        problems += found_problems
        for item in found:
            if item.resource.kind not in TRUSTED_KINDS:
                problems.append(Problem(
                    file, f"{item.resource.kind} does not belong in the trusted policy "
                    f"directory (only {', '.join(TRUSTED_KINDS)})", item.line, item.ref, "kind"))
                continue
            add_unique(policies if isinstance(item.resource, CertificatePolicy) else tenants,
                       item, problems)
    return policies, list(tenants.values()), problems


def read_policies(source: PolicySource, desired: Desired) -> Policies:
    """The effective policies and the tenants for a repository's declaration, with problems:
    with a trusted directory, the repository's own CertificatePolicies are refused."""
    problems: list[Problem] = []
    defaults: list[Located] = []
    if source.defaults:
        defaults, default_problems = default_policies()
        problems += default_problems
    if source.directory is None:
        return Policies(effective_policies(desired.policies, defaults), [], problems)
    trusted, tenants, trusted_problems = read_trusted_directory(source.directory)
    problems += trusted_problems
    problems += [Problem(item.file, f"refused: policies come from the trusted directory "
                         f"{source.directory} (--policies), and a fleet repository may not add "
                         "to or weaken the rules that judge it; propose it there instead",
                         item.line, item.ref, "kind") for item in desired.policies.values()]
    return Policies(effective_policies(trusted, defaults), tenants, problems)

