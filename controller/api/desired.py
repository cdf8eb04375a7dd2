"""The desired state: all resources of a repository, cross-checked and ready to plan."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _string
from typing import Any

from controller import __version__
from controller.api.devices import (
    DeviceSet,
    DeviceSummary,
    Judged,
    ReadDevices,
    read_fleet_devices,
)
from controller.api.loading import Located
from controller.api.problems import Problem
from controller.api.resources import (
    MAX_TLS_SECRETS,
    Authority,
    CertificateAuthority,
    CertificateProfile,
    ClusterCertificateAuthority,
    Device,
    DeviceFleet,
    Release,
    SigningProfile,
)


@dataclass(frozen=True)
class FleetDecl:
    """A fleet with its devices (inline plus `deviceSource`, parsed on first use) and a content
    hash of both."""

    located: Located
    device_set: DeviceSet
    content_hash: str

    @property
    def fleet(self) -> DeviceFleet:
        assert isinstance(self.located.resource, DeviceFleet)
        return self.located.resource

    def device(self, device_id: str) -> Device | None:
        return self.device_set.find(device_id)

    @property
    def summary(self) -> DeviceSummary:
        return self.device_set.summary


# change when a certificate or the validation of a row comes to depend on more than before
SOURCE_FORMAT = "source-2"
Issued = Callable[[str], Collection[str]]  # fleet -> source digests of its active certificates
# fleet -> its content hash when last applied, and its summary then (None: not known)
Applied = Mapping[str, tuple[str, DeviceSummary | None]]
ReadArtifact = Callable[[str], tuple[str, int]]  # repository path -> (sha256 hex, size)
# Kubernetes mode has no repository: no `read_artifact`, and the operator refuses `path` first
PATH_NEEDS_REPOSITORY = ("artifacts by path are read from a git repository only; give name, "
                         "sha256 and size")


@dataclass(frozen=True, slots=True)
class Artifact:
    """A release artifact as signed: its name in the manifest, SHA-256 (hex) and size."""

    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ReleaseDecl:
    """A release with its artifacts' digests and the fleets its targets resolve to."""

    located: Located
    artifacts: tuple[Artifact, ...]
    fleets: tuple[str, ...]

    @property
    def release(self) -> Release:
        assert isinstance(self.located.resource, Release)
        return self.located.resource


@dataclass(frozen=True)
class Desired:
    """Everything declared, by kind and name."""

    authorities: dict[str, Located] = field(default_factory=dict)
    profiles: dict[str, Located] = field(default_factory=dict)
    fleets: dict[str, FleetDecl] = field(default_factory=dict)
    policies: dict[str, Located] = field(default_factory=dict)
    signing_profiles: dict[str, Located] = field(default_factory=dict)
    releases: dict[str, ReleaseDecl] = field(default_factory=dict)

    def signing_profile(self, name: str) -> SigningProfile:
        resource = self.signing_profiles[name].resource
        assert isinstance(resource, SigningProfile)
        return resource

    def authority(self, name: str) -> Authority:
        resource = self.authorities[name].resource
        assert isinstance(resource, (CertificateAuthority, ClusterCertificateAuthority))
        return resource

    def held_here(self, name: str) -> bool:
        """Whether this declaration creates, renews and publishes the CRL of the CA: not an
        external CA, nor a cluster-wide one (kept by the operator's cluster scope)."""
        resource = self.authorities[name].resource
        return isinstance(resource, CertificateAuthority) and resource.spec.type != "external"

    def profile(self, name: str) -> CertificateProfile:
        resource = self.profiles[name].resource
        assert isinstance(resource, CertificateProfile)
        return resource

    def authorities_in_order(self) -> list[str]:
        """CA names with every parent before its children (requires an acyclic hierarchy)."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order or name in visiting or name not in self.authorities:
                return  # done, a cycle, or an undeclared parent (reported by validation)
            visiting.add(name)
            parent = self.authority(name).spec.parentRef
            if parent is not None:
                visit(parent.name)
            order.append(name)

        for name in sorted(self.authorities):
            visit(name)
        return order


def content_hash(*parts: object) -> str:
    """Stable SHA-256 of JSON-serialisable parts."""
    return hash_parts(hashlib.sha256(), *parts).hexdigest()


def hash_parts(digest: Any, *parts: object) -> Any:
    """`digest` (a hashlib object) updated with parts as `content_hash` does: the content hash
    of `a, b, c` is `hash_parts(hash_parts(sha256(), a).copy(), b, c)`'s, so a common prefix
    can be hashed once."""
    for part in parts:
        digest.update(_json(part).encode())
        digest.update(b"\0")
    return digest


def _json(part: object) -> str:
    """Compact JSON with sorted keys; pairs of strings (an intent's subject, SANs and
    extensions, hashed for every device) are written directly, byte for byte as json.dumps
    writes them, at a fifth of its cost."""
    if isinstance(part, tuple) and all(
            isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)
            and isinstance(pair[1], str) for pair in part):
        return "[" + ",".join(f"[{_string(key)},{_string(value)}]" for key, value in part) + "]"
    return json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)


def source_context(fleet: DeviceFleet, profile: CertificateProfile) -> bytes:
    """What a device's certificate depends on besides its row: the fleet (but its devices), the
    profile, whole, and the rules a row is validated by (`Device` and this version). With the
    row's digest it makes the device's source digest (`source_digest`)."""
    return hash_parts(hashlib.sha256(), SOURCE_FORMAT, _row_rules(), fleet.name,
                      fleet.spec.model_dump(mode="json", exclude={"devices"}),
                      profile.spec.model_dump(mode="json")).digest()


def source_digest(context: bytes, row: bytes) -> str:
    """The source digest of a device whose row has the digest `row` (see `source_context`)."""
    return hashlib.sha256(context + row).hexdigest()


def judged_rows(sources: Collection[str], context: bytes) -> Judged:
    """Rows (by digest) that active certificates were issued from, under `context`: judged
    then by the same rules, they need not be validated again."""
    return lambda row: source_digest(context, row) in sources


@functools.cache
def _row_rules() -> str:
    """`Device`'s fields and constraints, and the version. Its custom validators are not in the
    schema: a change to one of them must change SOURCE_FORMAT."""
    return content_hash(__version__, Device.model_json_schema())


def fleet_hash(fleet: DeviceFleet, devices: DeviceSet, profile: CertificateProfile) -> str:
    """Changes whenever anything that could change a device certificate changes (`tlsSecrets`
    cannot: it is where the operator copies them); the devices count as the text declaring
    them, so an unchanged fleet is known without parsing its rows."""
    return content_hash(
        fleet.spec.model_dump(mode="json", exclude={"devices", "tlsSecrets"}),
        profile.spec.model_dump(mode="json"), devices.digest)


def add_unique(
    index: dict[str, Located], item: Located, problems: list[Problem]
) -> None:
    """Index `item` by name, or report it as a duplicate of the first one declared."""
    name = item.resource.name
    if name in index:
        first = index[name]
        problems.append(
            Problem(item.file, f"duplicate name; first declared at {first.file}:{first.line}",
                    item.line_of("metadata", "name"), item.ref, "metadata.name")
        )
    else:
        index[name] = item


def tls_secret_problems(item: Located, profile: CertificateProfile,
                        devices: DeviceSet) -> list[Problem]:
    """`spec.tlsSecrets` needs keys fleetpki holds, and a fleet small enough for one Secret per
    device (MAX_TLS_SECRETS)."""
    fleet = item.resource
    assert isinstance(fleet, DeviceFleet)
    if fleet.spec.tlsSecrets is None:
        return []
    line = item.line_of("spec", "tlsSecrets")
    if profile.spec.keyGeneration != "server":
        return [Problem(item.file, f"CertificateProfile {profile.name!r} has keyGeneration: "
                        f"{profile.spec.keyGeneration}: fleetpki holds no device key to put in a "
                        "Secret (only keyGeneration: server)", line, item.ref, "spec.tlsSecrets")]
    count = devices.summary.declared
    if count > MAX_TLS_SECRETS:
        return [Problem(item.file, f"{count} devices (not revoked): one Secret per device is "
                        f"limited to {MAX_TLS_SECRETS} (each is held in etcd and in the memory "
                        "of the API server and its watchers); give devices of a larger fleet "
                        "their certificates over EST or with `fleetpki export fleet`", line,
                        item.ref, "spec.tlsSecrets")]
    return []


def _judged(issued: Issued | None, fleet: DeviceFleet, profile: CertificateProfile
            ) -> Judged | None:
    sources = issued(fleet.name) if issued is not None else ()
    return judged_rows(sources, source_context(fleet, profile)) if sources else None


def _changes_only(item: Located, devices: DeviceSet, profile: CertificateProfile,
                  last: tuple[str, DeviceSummary | None] | None,
                  previous: ReadDevices | None, problems: list[Problem]) -> bool:
    """Parse only the rows changed since the fleet was last applied, if `previous` reads the
    text it was applied with (its content hash tells: the fleet and profile are alike too).
    Counts not kept then (a pull request's base) are counted from that text."""
    if previous is None or last is None:
        return False
    fleet = item.resource
    assert isinstance(fleet, DeviceFleet)
    before = read_fleet_devices(item, [], previous)  # unreadable: another digest, no match
    if fleet_hash(fleet, before, profile) != last[0]:
        return False
    before.defer(last[1])  # judged then: counted without validating a row
    return devices.parse_changes(before, problems)


def _external(item: Located) -> bool:
    return isinstance(item.resource, CertificateAuthority) and \
        item.resource.spec.type == "external"


def _cluster(item: Located) -> bool:
    return isinstance(item.resource, ClusterCertificateAuthority)


def _add_authority(authorities: dict[str, Located], item: Located,
                   problems: list[Problem]) -> None:
    """CAs of a namespace and the cluster-wide CAs its fleets use share one name space (the
    inventory knows a CA by name): the same name for both is refused, naming the clash."""
    first = authorities.get(item.resource.name)
    if first is not None and first.resource.kind != item.resource.kind:
        problems.append(Problem(item.file, f"{first.ref} has the same name: a namespace's CAs "
                                "and the ClusterCertificateAuthorities its fleets use need "
                                "distinct names; rename one", item.line_of("metadata", "name"),
                                item.ref, "metadata.name"))
        return
    add_unique(authorities, item, problems)


def _check_parent(item: Located, parent: Located) -> Problem | None:
    """A cluster-wide CA's parent is cluster-wide; a namespace's CA has a parent of its own
    namespace that holds a key."""
    where = item.line_of("spec", "parentRef", "name"), item.ref, "spec.parentRef.name"
    if _cluster(item) != _cluster(parent):
        need = "a ClusterCertificateAuthority" if _cluster(item) else \
            "a CertificateAuthority of the same namespace"
        return Problem(item.file, f"{parent.ref} cannot be the parent: need {need}", *where)
    if _external(parent):
        return Problem(item.file, f"CertificateAuthority {parent.resource.name!r} is external "
                       "(no key held here): it cannot be a parent", *where)
    return None


def cross_check(
    located: list[Located],
    fleet_devices: dict[str, DeviceSet],
    invalid: frozenset[str] = frozenset(),
    applied: Applied | None = None,
    read_artifact: ReadArtifact | None = None,
    issued: Issued | None = None,
    deferred: bool = False,
    previous: ReadDevices | None = None,
) -> tuple[Desired, list[Problem]]:
    """Index resources and check references and cycles; parse the devices of every fleet but
    those `applied` as they are (name -> content hash and summary when last applied, None if
    unknown), or of any fleet when `deferred` (a pull request's base). The rows of a fleet's
    active certificates, as `issued` gives them, are not validated again. Of a fleet whose
    device text alone changed since it was applied, where `previous` reads the text then, only
    the rows that differ are parsed (`DeviceSet.parse_changes`).

    References to objects in `invalid` ("Kind/name" that failed schema validation, already
    reported) are not reported again as missing.
    """
    problems: list[Problem] = []
    authorities: dict[str, Located] = {}
    profiles: dict[str, Located] = {}
    fleet_objs: dict[str, Located] = {}
    policies: dict[str, Located] = {}
    signing: dict[str, Located] = {}
    release_objs: dict[str, Located] = {}
    for item in located:
        kind = item.resource.kind
        if kind in ("CertificateAuthority", "ClusterCertificateAuthority"):
            _add_authority(authorities, item, problems)
            continue
        target = {"CertificateProfile": profiles, "DeviceFleet": fleet_objs,
                  "CertificatePolicy": policies, "SigningProfile": signing,
                  "Release": release_objs}[kind]
        add_unique(target, item, problems)

    for name, item in authorities.items():
        ca = item.resource
        assert isinstance(ca, (CertificateAuthority, ClusterCertificateAuthority))
        parent = ca.spec.parentRef
        if parent is None:
            continue
        if parent.name in authorities:
            mismatch = _check_parent(item, authorities[parent.name])
            if mismatch is not None:
                problems.append(mismatch)
                continue
        else:
            if f"{ca.kind}/{parent.name}" in invalid:
                continue
            problems.append(Problem(item.file, f"no {ca.kind} named {parent.name!r}",
                                    item.line_of("spec", "parentRef", "name"), item.ref,
                                    "spec.parentRef.name"))
            continue
        seen: set[str] = {name}
        cursor: str | None = parent.name
        while cursor is not None:
            if cursor in seen:
                problems.append(Problem(item.file, f"CA hierarchy has a cycle through {cursor!r}",
                                        item.line_of("spec", "parentRef", "name"), item.ref,
                                        "spec.parentRef.name"))
                break
            seen.add(cursor)
            cursor_item = authorities.get(cursor)
            cursor_ca = cursor_item.resource if cursor_item else None
            ref = cursor_ca.spec.parentRef if isinstance(cursor_ca, CertificateAuthority) else None
            cursor = ref.name if ref else None

    fleets: dict[str, FleetDecl] = {}
    for name, item in fleet_objs.items():
        fleet = item.resource
        assert isinstance(fleet, DeviceFleet)
        ok = True
        issuer_kind = fleet.spec.issuerRef.kind
        for field_name, kind, index in (("issuerRef", issuer_kind, authorities),
                                        ("profileRef", "CertificateProfile", profiles)):
            target = getattr(fleet.spec, field_name).name
            if target in index and index[target].resource.kind == kind:
                continue
            ok = False
            if f"{kind}/{target}" not in invalid:  # already reported as invalid itself
                problems.append(Problem(item.file, f"no {kind} named {target!r}",
                                        item.line_of("spec", field_name, "name"), item.ref,
                                        f"spec.{field_name}.name"))
        issuer_item = authorities.get(fleet.spec.issuerRef.name)
        if issuer_item is not None and _external(issuer_item):
            ok = False
            problems.append(Problem(item.file, f"CertificateAuthority "
                                    f"{fleet.spec.issuerRef.name!r} is external (no key held "
                                    "here): it cannot issue a fleet's certificates",
                                    item.line_of("spec", "issuerRef", "name"), item.ref,
                                    "spec.issuerRef.name"))
        enrollment = fleet.spec.enrollment
        if enrollment is not None and enrollment.idevid is not None:
            idevid_ca = enrollment.idevid.issuerRef.name
            idevid_item = authorities.get(idevid_ca)
            if (idevid_item is None or not _external(idevid_item)) \
                    and f"CertificateAuthority/{idevid_ca}" not in invalid:
                problems.append(Problem(
                    item.file, f"no external CertificateAuthority named {idevid_ca!r}",
                    item.line_of("spec", "enrollment", "idevid", "issuerRef", "name"),
                    item.ref, "spec.enrollment.idevid.issuerRef.name"))
        profile_item = profiles.get(fleet.spec.profileRef.name)
        devices = fleet_devices.get(name) or DeviceSet.of((), {})
        if ok and profile_item is not None:
            profile = profile_item.resource
            assert isinstance(profile, CertificateProfile)
            digest = fleet_hash(fleet, devices, profile)
            last = (applied or {}).get(name)
            if deferred or (last is not None and last[0] == digest):
                devices.defer(last[1] if last is not None else None)
            elif not _changes_only(item, devices, profile, last, previous, problems):
                devices.parse(problems, _judged(issued, fleet, profile))
            problems.extend(tls_secret_problems(item, profile, devices))
            fleets[name] = FleetDecl(item, devices, digest)
        else:
            devices.parse(problems)  # report bad rows with the fleet's own problems
    _check_signing(signing, authorities, invalid, problems)
    releases = _check_releases(release_objs, signing, fleet_objs, read_artifact, invalid,
                               problems)
    return Desired(authorities, profiles, fleets, policies, signing, releases), problems


def _check_signing(signing: dict[str, Located], authorities: dict[str, Located],
                   invalid: frozenset[str], problems: list[Problem]) -> None:
    for item in signing.values():
        profile = item.resource
        assert isinstance(profile, SigningProfile)
        issuer = profile.spec.issuerRef.name
        if issuer not in authorities:
            if f"CertificateAuthority/{issuer}" not in invalid:
                problems.append(Problem(item.file, f"no CertificateAuthority named {issuer!r}",
                                        item.line_of("spec", "issuerRef", "name"), item.ref,
                                        "spec.issuerRef.name"))
        elif _external(authorities[issuer]) or _cluster(authorities[issuer]):
            what = "cluster-wide" if _cluster(authorities[issuer]) else "external"
            problems.append(Problem(item.file, f"CertificateAuthority {issuer!r} is {what} "
                                    "(no key held here): it cannot issue signing certificates",
                                    item.line_of("spec", "issuerRef", "name"), item.ref,
                                    "spec.issuerRef.name"))
        tsa = profile.spec.timestampAuthorityRef
        if tsa is None:
            continue
        tsa_item = signing.get(tsa.name)
        tsa_profile = tsa_item.resource if tsa_item is not None else None
        if (not isinstance(tsa_profile, SigningProfile)
                or tsa_profile.spec.usage != "timeStamping") \
                and f"SigningProfile/{tsa.name}" not in invalid:
            problems.append(Problem(item.file, f"no SigningProfile named {tsa.name!r} with "
                                    "usage: timeStamping",
                                    item.line_of("spec", "timestampAuthorityRef", "name"),
                                    item.ref, "spec.timestampAuthorityRef.name"))


def _check_releases(release_objs: dict[str, Located], signing: dict[str, Located],
                    fleet_objs: dict[str, Located], read_artifact: ReadArtifact | None,
                    invalid: frozenset[str], problems: list[Problem]) -> dict[str, ReleaseDecl]:
    releases: dict[str, ReleaseDecl] = {}
    for name, item in release_objs.items():
        release = item.resource
        assert isinstance(release, Release)
        ok = True
        ref = release.spec.signingProfileRef.name
        profile_item = signing.get(ref)
        profile = profile_item.resource if profile_item is not None else None
        if not isinstance(profile, SigningProfile) or profile.spec.usage != "codeSigning":
            ok = False
            if f"SigningProfile/{ref}" not in invalid:
                problems.append(Problem(item.file, f"no SigningProfile named {ref!r} with "
                                        "usage: codeSigning",
                                        item.line_of("spec", "signingProfileRef", "name"),
                                        item.ref, "spec.signingProfileRef.name"))
        targets = release.spec.targets
        fleets = set()
        for index, fleet in enumerate(targets.fleets):
            if fleet in fleet_objs:
                fleets.add(fleet)
            elif f"DeviceFleet/{fleet}" not in invalid:
                ok = False
                problems.append(Problem(item.file, f"no DeviceFleet named {fleet!r}",
                                        item.line_of("spec", "targets", "fleets", index),
                                        item.ref, f"spec.targets.fleets[{index}]"))
        for selector in targets.selectors:
            fleets.update(n for n, f in fleet_objs.items()
                          if all(f.resource.metadata.labels.get(k) == v
                                 for k, v in selector.matchLabels.items()))
        if ok and not fleets:
            ok = False
            problems.append(Problem(item.file, "the targets select no DeviceFleet",
                                    item.line_of("spec", "targets"), item.ref, "spec.targets"))
        found: list[Artifact] = []
        for index, spec in enumerate(release.spec.artifacts):
            if spec.path is None:
                assert spec.name is not None and spec.sha256 is not None and spec.size is not None
                found.append(Artifact(spec.name, spec.sha256, spec.size))
                continue
            try:
                if read_artifact is None:
                    raise ValueError(PATH_NEEDS_REPOSITORY)
                digest, size = read_artifact(spec.path)
            except ValueError as exc:
                ok = False
                problems.append(Problem(item.file, f"cannot read {spec.path}: {exc}",
                                        item.line_of("spec", "artifacts", index, "path"),
                                        item.ref, f"spec.artifacts[{index}].path"))
                continue
            found.append(Artifact(spec.name or spec.path.rsplit("/", 1)[-1], digest, size))
        if ok:
            releases[name] = ReleaseDecl(item, tuple(found), tuple(sorted(fleets)))
    return releases
