"""CertificatePolicy rules: CEL expressions (cel-python) over plain data, deny or warn.

A rule's scope follows from the variables it uses: `device` -> once per device that would get a
certificate; `release`/`signingProfile` -> once per release and target fleet (`fleet` is the
target, `authority` the signing profile's CA); `fleet`/`profile` -> once per fleet; only
`authority` -> once per CA. Durations are
CEL `duration`s and `now` is a CEL `timestamp`, so `profile.duration <= duration("9552h")` works.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import celpy
from celpy import celtypes
from lark import Tree

from controller.api.desired import Desired, FleetDecl, ReleaseDecl
from controller.api.loading import Located
from controller.api.problems import Finding, Problem
from controller.api.resources import (
    Authority,
    CertificatePolicy,
    CertificateProfile,
    DeviceFleet,
    PolicyRule,
    SigningProfile,
)
from controller.plan.intents import DeviceIntent
from controller.plan.schedule import renew_before
from controller.policy.tenancy import NO_TENANTS, Tenancy

Scope = Literal["authority", "fleet", "device", "release"]
# cel-python's compiled runner is ~5x faster, but its has() macro yields a Python bool that
# breaks `&&`/`!`; expressions using has() run on the (correct) interpreted runner.
_COMPILED = celpy.Environment(runner_class=celpy.CompiledRunner)
# Evaluation errors become findings with their reason; cel-python's own logging of them
# ("Internal error: ...") would only be noise on stderr.
logging.getLogger("celpy").setLevel(logging.CRITICAL)
_INTERPRETED = celpy.Environment()
VARIABLES = ("device", "fleet", "profile", "authority", "tenant", "release", "signingProfile")


MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
MEMO_LIMIT = 100_000  # device-rule results remembered (by rule, fleet and fields read)


def _identifiers(tree: Tree) -> tuple[set[str], bool]:
    """Free top-level names an expression reads (macro variables such as `u` in
    `list.all(u, ...)` excluded), and whether it uses the has() macro."""
    names = {str(n.children[0]) for n in tree.iter_subtrees() if n.data == "ident"}
    bound: set[str] = set()
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg" and str(node.children[1]) in MACROS:
            arguments = node.children[2]
            if isinstance(arguments, Tree) and arguments.children:
                first = arguments.children[0]
                if isinstance(first, Tree):
                    bound |= {str(n.children[0]) for n in first.iter_subtrees()
                              if n.data == "ident"}
    uses_has = any(n.data == "ident_arg" and str(n.children[0]) == "has"
                   for n in tree.iter_subtrees())
    return names - bound, uses_has


def _device_fields(tree: Tree) -> frozenset[str] | None:
    """The `device.<field>`s an expression reads, or None when it uses `device` otherwise
    (whole, or as a macro variable): then its result may depend on anything about a device."""
    def is_device(node: object) -> bool:
        while isinstance(node, Tree) and node.data in ("member", "primary") \
                and len(node.children) == 1:
            node = node.children[0]
        return isinstance(node, Tree) and node.data == "ident" \
            and str(node.children[0]) == "device"

    uses = sum(1 for n in tree.iter_subtrees() if n.data == "ident"
               and str(n.children[0]) == "device")
    fields = [str(n.children[1]) for n in tree.iter_subtrees()
              if n.data == "member_dot" and is_device(n.children[0])]
    return frozenset(fields) if len(fields) == uses else None


def _scope(names: set[str]) -> Scope:
    if names & {"release", "signingProfile"}:
        return "release"
    if "device" in names:
        return "device"
    if names & {"fleet", "profile"} or "authority" not in names:
        return "fleet"
    return "authority"


def _disjuncts(tree: Tree) -> list[Tree]:
    """The operands of a top-level `a || b || c` (or the whole expression)."""
    node = tree.children[0] if tree.data == "expr" and len(tree.children) == 1 else tree
    operands: list[Tree] = []
    while isinstance(node, Tree) and node.data == "conditionalor" and len(node.children) == 2:
        operands.insert(0, node.children[1])
        node = node.children[0]
    return [node, *operands] if operands else [tree]


def _program(expression: str) -> tuple[Tree, celpy.Runner]:
    tree = _COMPILED.compile(expression)
    uses_has = _identifiers(tree)[1]
    return tree, (_INTERPRETED if uses_has else _COMPILED).program(tree)


def _guards(expression: str, tree: Tree) -> tuple[celpy.Runner, ...]:
    operands = _disjuncts(tree)
    if len(operands) < 2:
        return ()
    sources = [expression[o.meta.start_pos:o.meta.end_pos] for o in operands]
    return tuple(_program(source)[1] for source, operand in zip(sources, operands, strict=True)
                 if "device" not in _identifiers(operand)[0])


def scope_of(expression: str) -> Scope:
    """`release`/`signingProfile` -> per release and target fleet; `device` -> per device;
    `fleet`/`profile`/`tenant` (or nothing) -> per fleet; else per CA (then `tenant` is the
    CA's).
    Read from the parsed expression, so names in strings or comments do not count."""
    return _scope(_identifiers(_COMPILED.compile(expression))[0])


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to run. `guards` (device rules only) are its top-level `||` operands that
    do not read `device`: when one holds for a fleet, the rule holds for all its devices.
    `device_fields` (device rules only) are the device's fields it reads, when it reads nothing
    else of it: devices equal in those fields share its result."""

    policy: Located
    rule: PolicyRule
    index: int
    scope: Scope
    program: celpy.Runner
    guards: tuple[celpy.Runner, ...] = ()
    device_fields: frozenset[str] | None = None

    @property
    def ref(self) -> str:
        return f"{self.policy.resource.name}/{self.rule.name}"


def compile_policies(policies: Iterable[Located]) -> tuple[list[CompiledRule], list[Problem]]:
    """Parse every enabled rule; a broken expression is a problem naming file and rule."""
    rules: list[CompiledRule] = []
    problems: list[Problem] = []
    for item in policies:
        policy = item.resource
        assert isinstance(policy, CertificatePolicy)
        if policy.spec.disabled:
            continue
        for index, rule in enumerate(policy.spec.rules):
            try:
                tree, program = _program(rule.expression)
                unknown = _identifiers(tree)[0] - {*VARIABLES, "now"}
                if unknown:
                    raise ValueError(f"unknown variable(s) {sorted(unknown)}; rules can use "
                                     f"{', '.join(VARIABLES)} and now")
                scope = _scope(_identifiers(tree)[0])
                guards = _guards(rule.expression, tree) if scope == "device" else ()
                fields = _device_fields(tree) if scope == "device" else None
            except Exception as exc:  # cel-python raises parser-specific types
                where = (f"syntax error at line {exc.line}, column {exc.column}"
                         if isinstance(exc, celpy.CELParseError) else str(exc))
                problems.append(Problem(
                    item.file, f"rule {rule.name!r}: invalid CEL expression ({where}): "
                    f"{' '.join(rule.expression.split())}",
                    item.line_of("spec", "rules", index, "expression"), item.ref,
                    f"spec.rules[{index}].expression"))
                continue
            rules.append(CompiledRule(item, rule, index, scope, program, guards, fields))
    return rules, problems


def _cel(value: Any) -> Any:
    """Plain data -> CEL values; timedeltas become durations, datetimes timestamps."""
    if isinstance(value, timedelta):
        return celtypes.DurationType(seconds=int(value.total_seconds()))
    if isinstance(value, datetime):
        return celtypes.TimestampType(value)
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(k): _cel(v) for k, v in value.items()
                                 if v is not None})
    if isinstance(value, list | tuple):
        return celtypes.ListType([_cel(v) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    return celtypes.StringType(str(value))


def authority_data(ca: Authority, tenant: str = "") -> dict[str, Any]:
    spec = ca.spec
    return {
        "name": ca.name, "kind": ca.kind, "tenant": tenant, "labels": ca.metadata.labels,
        "annotations": ca.metadata.annotations,
        "type": spec.type, "parent": spec.parentRef.name if spec.parentRef else "",
        "keyAlgorithm": spec.keyAlgorithm, "duration": spec.duration,
        "renewBefore": renew_before(spec.duration, spec.renewBefore),
        "pathLength": spec.pathLength, "subject": spec.subject.attributes(),
        "crl": {"duration": spec.crl.duration, "distributionPoint": spec.crl.distributionPoint},
        "ocspUrl": spec.ocsp.url if spec.ocsp else None,
        "permittedDNSDomains": spec.nameConstraints.permittedDNSDomains
        if spec.nameConstraints else [],
    }


def profile_data(profile: CertificateProfile, tenant: str = "") -> dict[str, Any]:
    spec = profile.spec
    return {
        "name": profile.name, "tenant": tenant, "labels": profile.metadata.labels,
        "annotations": profile.metadata.annotations, "keyAlgorithm": spec.keyAlgorithm,
        "keyGeneration": spec.keyGeneration, "duration": spec.duration,
        "renewBefore": renew_before(spec.duration, spec.renewBefore), "usages": spec.usages,
        "subject": spec.subject, "subjectAltNames": spec.subjectAltNames.model_dump(),
        "rotationPolicy": spec.rotationPolicy,
        "extensions": [e.model_dump() for e in spec.extensions],
    }


def fleet_data(decl: FleetDecl, tenant: str = "") -> dict[str, Any]:
    fleet = decl.fleet
    return {
        "name": fleet.name, "tenant": tenant, "labels": fleet.metadata.labels,
        "annotations": fleet.metadata.annotations, "issuer": fleet.spec.issuerRef.name,
        "profile": fleet.spec.profileRef.name, "deviceCount": decl.summary.count,
        "suspend": fleet.spec.suspend, "decommissioned": fleet.spec.decommissioned,
        "deletionPolicy": fleet.spec.deletionPolicy,
    }


def device_data(intent: DeviceIntent, labels: Mapping[str, str],
                profile: CertificateProfile) -> dict[str, Any]:
    sans: dict[str, list[str]] = {"dns": [], "uri": [], "ip": [], "email": []}
    for kind, value in intent.sans:
        sans[kind].append(value)
    key = intent.device_key
    return {
        "id": intent.device_id, "labels": dict(labels), "subject": dict(intent.subject),
        "dnsNames": sans["dns"], "uris": sans["uri"], "ipAddresses": sans["ip"],
        "emailAddresses": sans["email"],
        "keyAlgorithm": key.algorithm if key is not None else profile.spec.keyAlgorithm,
        "keyGeneration": profile.spec.keyGeneration,
    }


def signing_profile_data(profile: SigningProfile, tenant: str = "") -> dict[str, Any]:
    spec = profile.spec
    return {
        "name": profile.name, "tenant": tenant, "labels": profile.metadata.labels,
        "annotations": profile.metadata.annotations, "usage": spec.usage,
        "issuer": spec.issuerRef.name, "keyAlgorithm": spec.keyAlgorithm,
        "keyVersion": spec.keyVersion, "duration": spec.duration,
        "subject": spec.subject.attributes(),
        "timestampAuthority": spec.timestampAuthorityRef.name
        if spec.timestampAuthorityRef else "",
        "revoked": spec.revoked is not None,
    }


def release_data(decl: ReleaseDecl, tenant: str = "") -> dict[str, Any]:
    release = decl.release
    spec = release.spec
    versions = spec.firmwareVersions
    return {
        "name": release.name, "tenant": tenant, "labels": release.metadata.labels,
        "annotations": release.metadata.annotations, "version": spec.version or "",
        "signingProfile": spec.signingProfileRef.name, "fleets": list(decl.fleets),
        "artifacts": [{"name": a.name, "sha256": a.sha256, "size": a.size}
                      for a in decl.artifacts],
        "minFirmwareVersion": versions.min if versions and versions.min else "",
        "maxFirmwareVersion": versions.max if versions and versions.max else "",
        "revoked": spec.revoked is not None,
    }


def _release_selected(policy: CertificatePolicy, release: ReleaseDecl, fleet: DeviceFleet,
                      ca: Authority) -> bool:
    """A release rule's selector: `fleets` and `matchLabels` pick target fleets,
    `authorities` the signing CA, `profiles` the SigningProfile."""
    selector = policy.spec.selector
    if selector.authorities and ca.name not in selector.authorities:
        return False
    if selector.profiles and release.release.spec.signingProfileRef.name not in \
            selector.profiles:
        return False
    if selector.fleets and fleet.name not in selector.fleets:
        return False
    return all(fleet.metadata.labels.get(k) == v for k, v in selector.matchLabels.items())


def _selected(policy: CertificatePolicy, fleet: DeviceFleet | None, ca: Authority,
              desired: Desired) -> bool:
    """Whether the policy's selector picks this fleet (with its issuer `ca`), or, for CA-only
    rules (`fleet` None), this CA; a fleet/profile selector picks the CAs issuing to them."""
    selector = policy.spec.selector
    if selector.authorities and ca.name not in selector.authorities:
        return False
    if fleet is None:
        if selector.fleets or selector.profiles:
            return any(_selected(policy, decl.fleet, ca, desired)
                       for decl in desired.fleets.values()
                       if decl.fleet.spec.issuerRef.name == ca.name)
        labels = ca.metadata.labels
    else:
        if selector.fleets and fleet.name not in selector.fleets:
            return False
        if selector.profiles and fleet.spec.profileRef.name not in selector.profiles:
            return False
        labels = fleet.metadata.labels
    return all(labels.get(k) == v for k, v in selector.matchLabels.items())


def _reason(error: BaseException) -> str:
    """The innermost message of cel-python's nested error tuples."""
    text = str(error)
    pending: list[object] = list(error.args)
    while pending:
        item = pending.pop(0)
        if isinstance(item, tuple | list):
            pending = list(item) + pending
        elif isinstance(item, str) and item != "evaluation error":
            text = item
    return text


def _activation(context: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _cel(value) for name, value in context.items()}


def _run(rule: CompiledRule, activation: dict[str, Any], target: str,
         device: str | None) -> Finding | None:
    policy = rule.policy.resource.name
    try:
        result = rule.program.evaluate(activation)
    except Exception as exc:  # an evaluation error counts against the rule: fail closed
        return Finding(policy, rule.rule.name, rule.rule.action,
                       f"{rule.rule.message} (rule could not be evaluated: {_reason(exc)})",
                       target, device)
    if isinstance(result, celtypes.BoolType | bool) and bool(result):
        return None
    if not isinstance(result, celtypes.BoolType | bool):
        message = f"{rule.rule.message} (rule returned {type(result).__name__}, not a bool)"
        return Finding(policy, rule.rule.name, rule.rule.action, message, target, device)
    return Finding(policy, rule.rule.name, rule.rule.action, rule.rule.message, target, device)


def _holds(guard: celpy.Runner, activation: dict[str, Any]) -> bool:
    try:
        result = guard.evaluate(activation)
    except Exception:  # an operand that cannot be evaluated proves nothing
        return False
    return isinstance(result, celtypes.BoolType | bool) and bool(result)


class PolicyMemo:
    """What repeated `evaluate` calls over one declaration may share (a server judging one
    enrollment at a time): each CA's findings, each fleet's findings, activation and the device
    rules its guards leave, and device-rule results by the device fields they read. Rules may
    read `now`, so it holds for one minute of it; drop it when the declaration changes."""

    def __init__(self) -> None:
        self.minute: int | None = None
        self.authorities: dict[str, list[tuple[int, Finding | None]]] = {}
        self.fleets: dict[str, _FleetJudgement] = {}
        self.devices: dict[tuple[str, int, str], Finding | None] = {}

    def at(self, now: datetime) -> PolicyMemo:
        """Itself, emptied if it was filled in another minute than `now`'s."""
        minute = int(now.timestamp()) // 60
        if minute != self.minute:
            self.minute = minute
            self.authorities, self.fleets, self.devices = {}, {}, {}
        return self


@dataclass(frozen=True)
class _FleetJudgement:
    findings: list[tuple[int, Finding | None]]
    activation: dict[str, Any]
    device_rules: list[tuple[int, CompiledRule]]


def _policy_of(rule: CompiledRule) -> CertificatePolicy:
    assert isinstance(rule.policy.resource, CertificatePolicy)
    return rule.policy.resource


def _judge_authority(ranked: list[tuple[int, CompiledRule]], desired: Desired, name: str,
                     now: datetime, tenancy: Tenancy) -> list[tuple[int, Finding | None]]:
    ca = desired.authority(name)
    ref = f"CertificateAuthority/{name}"
    activation = _activation({"authority": authority_data(ca, tenancy.name_of(ref)),
                              "tenant": tenancy.data(ref), "now": now})
    return [(rank, _run(rule, activation, ref, None)) for rank, rule in ranked
            if rule.scope == "authority" and _selected(_policy_of(rule), None, ca, desired)]


def _judge_fleet(ranked: list[tuple[int, CompiledRule]], desired: Desired, decl: FleetDecl,
                 now: datetime, tenancy: Tenancy) -> _FleetJudgement:
    ca = desired.authority(decl.fleet.spec.issuerRef.name)
    profile = desired.profile(decl.fleet.spec.profileRef.name)
    chosen = [(rank, rule) for rank, rule in ranked if rule.scope != "authority"
              and _selected(_policy_of(rule), decl.fleet, ca, desired)]
    if not chosen:
        return _FleetJudgement([], {}, [])
    target = f"DeviceFleet/{decl.fleet.name}"
    activation = _activation({
        "authority": authority_data(ca, tenancy.name_of(f"CertificateAuthority/{ca.name}")),
        "profile": profile_data(profile, tenancy.name_of(f"CertificateProfile/{profile.name}")),
        "fleet": fleet_data(decl, tenancy.name_of(target)), "tenant": tenancy.data(target),
        "now": now})
    findings = [(rank, _run(rule, activation, target, None)) for rank, rule in chosen
                if rule.scope == "fleet"]
    device_rules = [(rank, rule) for rank, rule in chosen if rule.scope == "device"
                    and not any(_holds(g, activation) for g in rule.guards)]
    return _FleetJudgement(findings, activation, device_rules)


class PolicyJudge:
    """Every rule over every object it selects: CA, fleet and release rules when made, device
    rules over each intent as the planner makes it (`device`: the devices that would get a
    certificate), each device's data converted once for all its rules, so that a plan need not
    hold every intent to be judged. `tenant` is the CA's tenant in CA rules, the fleet's in the
    others. With `fleet`, only that fleet and its issuing CA are judged (one EST enrollment); a
    `memo` carries what does not depend on the device from one such judge to the next."""

    def __init__(self, rules: list[CompiledRule], desired: Desired, now: datetime,
                 tenancy: Tenancy = NO_TENANTS, fleet: str | None = None,
                 memo: PolicyMemo | None = None) -> None:
        self._desired = desired
        self._memo = memo = (memo or PolicyMemo()).at(now)
        # (rule, object, number, device): a device's findings after its fleet's, by device id
        self._found: list[tuple[tuple[int, int, int, str], Finding]] = []
        self._fleets: dict[str, tuple[int, _FleetJudgement, CertificateProfile]] = {}
        ranked = list(enumerate(rules))
        if fleet is None:
            _evaluate_releases(ranked, desired, now, tenancy, self._record)
        issuer = desired.fleets[fleet].fleet.spec.issuerRef.name if fleet is not None else None
        for position, name in enumerate(desired.authorities_in_order()):
            if desired.authority(name).spec.type == "external" or issuer not in (None, name):
                continue  # nothing is made for it: no rule to gate
            if name not in memo.authorities:
                memo.authorities[name] = _judge_authority(ranked, desired, name, now, tenancy)
            for rank, finding in memo.authorities[name]:
                self._record(rank, position, 0, finding)
        for position, (name, decl) in enumerate(sorted(desired.fleets.items())):
            if fleet not in (None, name):
                continue
            if name not in memo.fleets:
                memo.fleets[name] = _judge_fleet(ranked, desired, decl, now, tenancy)
            judged = memo.fleets[name]
            for rank, finding in judged.findings:
                self._record(rank, position, 0, finding)
            if judged.device_rules:
                self._fleets[name] = (position, judged,
                                      desired.profile(decl.fleet.spec.profileRef.name))

    def _record(self, rank: int, target: int, number: int, finding: Finding | None,
                device: str = "") -> None:
        if finding is not None:
            self._found.append(((rank, target, number, device), finding))

    def device(self, fleet: str, intent: DeviceIntent,
               labels: Mapping[str, str] | None = None) -> None:
        """Judge a device of `fleet` that would get a certificate made from `intent`; `labels`
        are its declared ones (read from the declaration when not given)."""
        if (judging := self._fleets.get(fleet)) is None:
            return
        position, judged, profile = judging
        if labels is None:
            declared = self._desired.fleets[fleet].device(intent.device_id)
            labels = declared.labels if declared else {}
        target = f"DeviceFleet/{fleet}"
        data = device_data(intent, labels, profile)
        device_activation: dict[str, Any] | None = None
        for rank, rule in judged.device_rules:
            if rule.device_fields is None:
                if device_activation is None:
                    device_activation = {**judged.activation, "device": _cel(data)}
                self._record(rank, position, 0,
                             _run(rule, device_activation, target, intent.device_id),
                             intent.device_id)
                continue
            seen = {f: data[f] for f in sorted(rule.device_fields) if f in data}
            key = (fleet, rank, repr(seen))
            if key in self._memo.devices:
                finding = self._memo.devices[key]
            else:
                finding = _run(rule, {**judged.activation, "device": _cel(seen)}, target, None)
                if len(self._memo.devices) < MEMO_LIMIT:
                    self._memo.devices[key] = finding
            self._record(rank, position, 0, finding and replace(finding, device=intent.device_id),
                         intent.device_id)

    def gathered(self) -> list[tuple[tuple[int, int, int, str], Finding]]:
        """What was found so far, taken (and forgotten here): a worker's findings."""
        found, self._found = self._found, []
        return found

    def add(self, gathered: list[tuple[tuple[int, int, int, str], Finding]]) -> None:
        """Take in what another judge (a copy on a worker) `gathered`."""
        self._found += gathered

    def findings(self) -> list[Finding]:
        """What the rules found so far, in rule, object and device order."""
        return [finding for _, finding in sorted(self._found, key=lambda item: item[0])]


def evaluate(rules: list[CompiledRule], desired: Desired,
             intents: Mapping[tuple[str, str], DeviceIntent], now: datetime,
             tenancy: Tenancy = NO_TENANTS, fleet: str | None = None,
             memo: PolicyMemo | None = None) -> list[Finding]:
    """A `PolicyJudge`'s findings over these `intents`, keyed by fleet and device."""
    judge = PolicyJudge(rules, desired, now, tenancy, fleet, memo)
    for (fleet_name, _), intent in intents.items():
        judge.device(fleet_name, intent)
    return judge.findings()


RELEASE_POSITION = 1_000_000  # release findings come after those of CAs and fleets


def _evaluate_releases(ranked: list[tuple[int, CompiledRule]], desired: Desired, now: datetime,
                       tenancy: Tenancy, record: Any) -> None:
    """Release rules, once per release (not withdrawn) and target fleet."""
    release_rules = [(rank, rule) for rank, rule in ranked if rule.scope == "release"]
    if not release_rules:
        return
    for position, (name, decl) in enumerate(sorted(desired.releases.items())):
        if decl.release.spec.revoked is not None:
            continue  # withdrawing is never blocked
        target = f"Release/{name}"
        profile = desired.signing_profile(decl.release.spec.signingProfileRef.name)
        ca = desired.authority(profile.spec.issuerRef.name)
        base = {"release": release_data(decl, tenancy.name_of(target)),
                "signingProfile": signing_profile_data(
                    profile, tenancy.name_of(f"SigningProfile/{profile.name}")),
                "authority": authority_data(ca, tenancy.name_of(f"CertificateAuthority/"
                                                                f"{ca.name}")),
                "tenant": tenancy.data(target), "now": now}
        for number, fleet_name in enumerate(decl.fleets):
            fleet_decl = desired.fleets.get(fleet_name)
            if fleet_decl is None:
                continue
            chosen = [(rank, rule) for rank, rule in release_rules
                      if isinstance(rule.policy.resource, CertificatePolicy)
                      and _release_selected(rule.policy.resource, decl, fleet_decl.fleet, ca)]
            if not chosen:
                continue
            activation = _activation({**base, "fleet": fleet_data(
                fleet_decl, tenancy.name_of(f"DeviceFleet/{fleet_name}"))})
            for rank, rule in chosen:
                finding = _run(rule, activation, target, None)
                if finding is not None:
                    finding = replace(finding, message=f"{finding.message} (target fleet "
                                                       f"{fleet_name})")
                record(rank, RELEASE_POSITION + position, number, finding)
