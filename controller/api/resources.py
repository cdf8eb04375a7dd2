"""The fleetpki resources (`apiVersion: fleetpki.io/v1alpha1`): the single source of truth.

The same models validate YAML in git and generate the Kubernetes CRDs (`fleetpki crds`).
Field names follow cert-manager where the meaning is the same (`duration`, `renewBefore`,
`usages`, `rotationPolicy`).
"""

from __future__ import annotations

import fnmatch
import re
from datetime import timedelta
from typing import Annotated, Literal

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.api.durations import Duration
from controller.api.templates import TemplateError, check_template

GROUP = "fleetpki.io"
API_VERSION = f"{GROUP}/v1alpha1"

KeyAlgorithm = Literal[
    "ECDSA-P256", "ECDSA-P384", "Ed25519", "RSA-3072", "RSA-4096", "ML-DSA-44", "ML-DSA-65",
    "ML-DSA-87",
]
RevocationReason = Literal[
    "unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
    "cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise",
]
DNS_LABEL = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
OID = r"^[0-2](\.(0|[1-9][0-9]*))+$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
K8S_NAMESPACE = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
CONFIGMAP_KEY = r"^[-._a-zA-Z0-9]+$"
FLUX_SOURCE_API = r"^source\.toolkit\.fluxcd\.io/v[0-9]+((alpha|beta)[0-9]+)?$"
FLUX_SOURCE_VERSIONS = {"GitRepository": "source.toolkit.fluxcd.io/v1",
                        "OCIRepository": "source.toolkit.fluxcd.io/v1beta2"}
MAX_CONFIGMAP_REFS = 100
# Per-device kubernetes.io/tls Secrets (`tlsSecrets`) are for small in-cluster fleets: each
# Secret is a few KiB held in etcd and in the memory of the API server and of every client that
# watches Secrets (kubelets, controllers); one per certificate is what makes cert-manager need
# gigabytes at tens of thousands. Larger fleets get certificates over EST or
# `fleetpki export fleet`.
MAX_TLS_SECRETS = 1000
TLS_SECRET_PREFIX = r"^([a-z0-9][-a-z0-9.]*)?$"
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class Model(BaseModel):
    """Base: unknown fields are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ObjectMeta(Model):
    """Kubernetes-style metadata; `name` identifies the object within its kind."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    name: Annotated[str, Field(pattern=DNS_LABEL)]
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class LocalRef(Model):
    """Reference to another object of this repository by name."""

    name: Annotated[str, Field(pattern=DNS_LABEL)]


class IssuerRef(LocalRef):
    """A fleet's CA: one of its own namespace (or repository), or, in Kubernetes mode, a
    cluster-wide CA that allows the fleet's namespace (like cert-manager's ClusterIssuer)."""

    kind: Literal["CertificateAuthority", "ClusterCertificateAuthority"] = \
        "CertificateAuthority"


class Subject(Model):
    """X.509 subject attributes (camelCase as in cert-manager's `subject`)."""

    commonName: str | None = None
    organization: str | None = None
    organizationalUnit: str | None = None
    country: Annotated[str | None, Field(pattern=r"^[A-Z]{2}$")] = None
    locality: str | None = None
    province: str | None = None
    serialNumber: str | None = None

    def attributes(self) -> dict[str, str]:
        """Set attributes only, in a stable order."""
        return {k: v for k, v in self.model_dump().items() if v}


class CRLSpec(Model):
    """How the CA publishes revocation lists."""

    duration: Duration = timedelta(days=7)
    distributionPoint: str | None = None


class OCSPSpec(Model):
    url: str


class NameConstraints(Model):
    permittedDNSDomains: list[str] = []


EXTERNAL_UNUSED = ("parentRef", "keyAlgorithm", "duration", "renewBefore", "pathLength",
                   "nameConstraints", "crl", "ocsp")


class CertificateAuthoritySpec(Model):
    """`root`/`intermediate`: created and renewed by fleetpki, which keeps the key.
    `external`: a CA fleetpki only trusts (e.g. a manufacturer's IDevID CA): its `certificate`
    (PEM) is given and no key is ever held; it issues nothing here."""

    type: Literal["root", "intermediate", "external"]
    parentRef: LocalRef | None = None
    subject: Subject = Subject()
    certificate: Annotated[str | None, Field(max_length=65536)] = None
    keyAlgorithm: KeyAlgorithm = "ECDSA-P256"
    duration: Duration = timedelta(days=3650)
    renewBefore: Duration | None = None
    pathLength: Annotated[int, Field(ge=0, le=8)] | None = None
    nameConstraints: NameConstraints | None = None
    crl: CRLSpec = CRLSpec()
    ocsp: OCSPSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> CertificateAuthoritySpec:
        if self.type == "external":
            return self._check_external()
        if self.certificate is not None:
            raise ValueError("certificate: only for type: external (fleetpki makes the "
                             "certificates of its own CAs)")
        if self.type == "intermediate" and self.parentRef is None:
            raise ValueError("parentRef: required for an intermediate CA")
        if self.type == "root" and self.parentRef is not None:
            raise ValueError("parentRef: a root CA has no parent")
        if not self.subject.commonName:
            raise ValueError("subject.commonName: required for a CA")
        if self.renewBefore is not None and self.renewBefore >= self.duration:
            raise ValueError("renewBefore: must be shorter than duration")
        return self

    def _check_external(self) -> CertificateAuthoritySpec:
        unused = [name for name in EXTERNAL_UNUSED if name in self.model_fields_set]
        if unused:
            raise ValueError(f"{unused[0]}: not allowed for type: external (fleetpki holds no "
                             "key and makes no certificate for it)")
        if not self.certificate:
            raise ValueError("certificate: required for type: external (PEM)")
        try:
            x509.load_pem_x509_certificate(self.certificate.encode())
        except ValueError:
            raise ValueError("certificate: not a PEM X.509 certificate") from None
        return self

    def external_certificate(self) -> x509.Certificate:
        """The certificate of an external CA (validated when the spec was loaded)."""
        if self.type != "external" or not self.certificate:
            raise ValueError("not an external CA")
        return x509.load_pem_x509_certificate(self.certificate.encode())


NAMESPACE_PATTERN = r"^[a-z0-9*?]([-a-z0-9*?]{0,61}[a-z0-9*?])?$"


class ClusterCertificateAuthoritySpec(CertificateAuthoritySpec):
    """A CA the operator keeps once for the whole cluster; the fleets of the namespaces (or
    tenants) it allows issue from it, and its CRL lists their revocations together.
    `parentRef` names another ClusterCertificateAuthority."""

    type: Literal["root", "intermediate"]  # an external CA is declared where it is trusted
    allowedNamespaces: list[Annotated[str, Field(pattern=NAMESPACE_PATTERN)]] = []
    allowedTenants: list[Annotated[str, Field(pattern=DNS_LABEL)]] = []

    @model_validator(mode="after")
    def _check_cluster(self) -> ClusterCertificateAuthoritySpec:
        if self.ocsp is not None:
            raise ValueError("ocsp: not available for a cluster-wide CA yet (its certificates "
                             "are kept per namespace); its CRL lists every namespace's "
                             "revocations")
        return self

    def allows(self, namespace: str, tenant: str) -> bool:
        """Whether fleets of `namespace` (owned by `tenant`, "" for none) may issue from it:
        a namespace pattern (`*`, `?`) or the tenant is listed."""
        return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self.allowedNamespaces) \
            or (tenant != "" and tenant in self.allowedTenants)


class SubjectAltNames(Model):
    """SAN templates, rendered per device."""

    dnsNames: list[str] = []
    uris: list[str] = []
    ipAddresses: list[str] = []
    emailAddresses: list[str] = []

    def templates(self) -> list[str]:
        return [*self.dnsNames, *self.uris, *self.ipAddresses, *self.emailAddresses]


class ExtensionSpec(Model):
    """Device metadata under an OID, as a DER UTF8String rendered from a template."""

    oid: Annotated[str, Field(pattern=OID)]
    value: Annotated[str, Field(max_length=1024)]

    @field_validator("value")
    @classmethod
    def _template(cls, value: str) -> str:
        check_template(value)
        return value


class CertificateProfileSpec(Model):
    keyAlgorithm: KeyAlgorithm = "ECDSA-P256"
    keyGeneration: Literal["server", "device"] = "server"
    duration: Duration = timedelta(days=365)
    renewBefore: Duration | None = None
    usages: list[str] = ["digital signature", "client auth"]
    subject: dict[str, Annotated[str, Field(max_length=256)]] = {}
    subjectAltNames: SubjectAltNames = SubjectAltNames()
    extensions: list[ExtensionSpec] = []
    rotationPolicy: Literal["Always", "Never"] = "Always"

    @field_validator("usages")
    @classmethod
    def _usages(cls, usages: list[str]) -> list[str]:
        from controller.pki.errors import PKIError
        from controller.pki.usages import USAGE_NAMES, parse_usages

        unknown = [u for u in usages if u not in USAGE_NAMES]
        if unknown:
            raise ValueError(f"unknown usage(s) {unknown}; known: {sorted(USAGE_NAMES)}")
        try:
            parse_usages(usages)
        except PKIError as exc:
            raise ValueError(str(exc)) from None
        return usages

    @field_validator("subject")
    @classmethod
    def _subject(cls, subject: dict[str, str]) -> dict[str, str]:
        allowed = set(Subject.model_fields)
        for key, template in subject.items():
            if key not in allowed:
                raise ValueError(f"{key}: unknown subject attribute; allowed: {sorted(allowed)}")
            try:
                check_template(template)
            except TemplateError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return subject

    @field_validator("subjectAltNames")
    @classmethod
    def _sans(cls, sans: SubjectAltNames) -> SubjectAltNames:
        for template in sans.templates():
            check_template(template)
        return sans

    @model_validator(mode="after")
    def _check(self) -> CertificateProfileSpec:
        if not self.subject and not self.subjectAltNames.templates():
            raise ValueError("subject: a profile needs a subject or subjectAltNames")
        if self.renewBefore is not None and self.renewBefore >= self.duration:
            raise ValueError("renewBefore: must be shorter than duration")
        return self


class Revocation(Model):
    reason: RevocationReason = "unspecified"


class Device(Model):
    """One device: identity, labels for templates, and optionally its own public key or CSR."""

    id: Annotated[str, Field(pattern=DEVICE_ID)]
    labels: dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=256)]] = {}
    publicKey: Annotated[str | None, Field(max_length=16384)] = None
    csr: Annotated[str | None, Field(max_length=32768)] = None
    revoked: Revocation | None = None

    # a change to this validator, or a new one, must change desired.SOURCE_FORMAT: rows already
    # judged are not validated again (desired._row_rules)
    @model_validator(mode="after")
    def _one_key(self) -> Device:
        if self.publicKey and self.csr:
            raise ValueError("publicKey: give either publicKey or csr, not both")
        return self


def device_format(name: str, given: str | None = None) -> str:
    """`csv` or `jsonl`: `given`, else from the file name (`.jsonl`/`.ndjson`; otherwise CSV)."""
    return given or ("jsonl" if name.endswith(JSONL_SUFFIXES) else "csv")


def _inside(path: str) -> str:
    if path.startswith("/") or ".." in path.split("/"):
        raise ValueError("must be relative to the repository and stay inside it")
    return path


class ConfigMapKeyRef(Model):
    """One key of a ConfigMap in the fleet's namespace (Kubernetes mode)."""

    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]
    key: Annotated[str, Field(pattern=CONFIGMAP_KEY, max_length=253)] = "devices.csv"


class SourceRef(Model):
    """A Flux source whose artifact holds the device file (Kubernetes mode)."""

    kind: Literal["GitRepository", "OCIRepository"]
    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]
    namespace: Annotated[str | None, Field(pattern=K8S_NAMESPACE)] = None
    apiVersion: Annotated[str | None, Field(pattern=FLUX_SOURCE_API)] = None

    def resolved_api_version(self) -> str:
        return self.apiVersion or FLUX_SOURCE_VERSIONS[self.kind]


class DeviceSource(Model):
    """Devices for large fleets, as CSV or JSONL, from exactly one of: a file of the
    repository (`path`, git mode), ConfigMaps (`configMapRef`) or a file in a Flux source
    artifact (`sourceRef` with `path`); the last two only in Kubernetes mode."""

    path: Annotated[str | None, Field(min_length=1, max_length=4096)] = None
    format: Literal["csv", "jsonl"] | None = None
    configMapRef: Annotated[list[ConfigMapKeyRef],
                            Field(min_length=1, max_length=MAX_CONFIGMAP_REFS)] | None = None
    sourceRef: SourceRef | None = None

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str | None) -> str | None:
        return None if path is None else _inside(path)

    @model_validator(mode="after")
    def _one_form(self) -> DeviceSource:
        if self.configMapRef is not None:
            if self.sourceRef is not None:
                raise ValueError("sourceRef: give either configMapRef or sourceRef, not both")
            if self.path is not None:
                raise ValueError("path: not with configMapRef (each item names its key)")
            refs = [(ref.name, ref.key) for ref in self.configMapRef]
            twice = sorted({f"{n} key {k}" for n, k in refs if refs.count((n, k)) > 1})
            if twice:
                raise ValueError(f"configMapRef: listed twice: {', '.join(twice)}")
        elif self.path is None:
            raise ValueError("path: required with sourceRef (the file inside the artifact)"
                             if self.sourceRef is not None else
                             "path: required (a file of the repository), or give configMapRef, "
                             "or sourceRef with path")
        return self

    def resolved_format(self, name: str | None = None) -> str:
        """The format of `name` (a ConfigMap key), or of `path`."""
        return device_format(name if name is not None else self.path or "", self.format)


class IDevIDSpec(Model):
    """First enrollment with a manufacturer-installed certificate (RFC 7030 3.3.2): the TLS
    client certificate must be issued directly by the external CA `issuerRef`; the device id is
    its subject attribute `identity`."""

    issuerRef: LocalRef
    identity: Literal["commonName", "serialNumber"] = "serialNumber"


class EnrollmentSpec(Model):
    """Devices of this fleet may enroll over EST (`fleetpki serve`) with a key that is not in
    git; `bootstrap` is how a first enrollment authenticates: a one-time `secret`
    (`fleetpki enroll-secret`) or the device's manufacturer certificate (`idevid`)."""

    bootstrap: Literal["secret", "idevid"] = "secret"
    idevid: IDevIDSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> EnrollmentSpec:
        if self.bootstrap == "idevid" and self.idevid is None:
            raise ValueError("idevid: required for bootstrap: idevid")
        if self.bootstrap != "idevid" and self.idevid is not None:
            raise ValueError("idevid: only for bootstrap: idevid")
        return self


class TLSSecrets(Model):
    """Opt-in (Kubernetes operator only): one `kubernetes.io/tls` Secret per device with an
    active certificate, named `<namePrefix><device id as a DNS-1123 name>`, in the fleet's
    namespace. Only with `keyGeneration: server` and at most 1000 (MAX_TLS_SECRETS) devices."""

    namePrefix: Annotated[str | None, Field(pattern=TLS_SECRET_PREFIX, max_length=100)] = None

    @field_validator("namePrefix")
    @classmethod
    def _prefix(cls, prefix: str | None) -> str | None:
        if prefix and not re.match(DNS_SUBDOMAIN, prefix + "x"):
            raise ValueError("must begin a DNS-1123 subdomain name (lowercase letters, digits, "
                             "'-' and '.', no '.-' or '-.' or '..')")
        return prefix

    def prefix(self, fleet: str) -> str:
        """`namePrefix`, by default `<fleet>-`."""
        return f"{fleet}-" if self.namePrefix is None else self.namePrefix


class DeviceFleetSpec(Model):
    issuerRef: IssuerRef
    profileRef: LocalRef
    devices: list[Device] = []
    deviceSource: DeviceSource | None = None
    enrollment: EnrollmentSpec | None = None
    tlsSecrets: TLSSecrets | None = None
    suspend: bool = False
    decommissioned: bool = False
    deletionPolicy: Literal["Revoke", "Orphan"] = "Revoke"


SigningAlgorithm = Literal["ECDSA-P256", "ECDSA-P384", "Ed25519", "RSA-3072", "ML-DSA-65"]
SHA256_HEX = r"^[0-9a-f]{64}$"
VERSION_TEXT = r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$"


class SigningProfileSpec(Model):
    """A signing identity: its key lives in the keystore (Secrets in Kubernetes mode) and is
    rotated by raising `keyVersion`. `usage: codeSigning` signs releases (each release gets its
    own certificate for the profile's key, so withdrawing one release is one CRL entry);
    `usage: timeStamping` is a time-stamping authority (RFC 3161) that code-signing profiles
    name in `timestampAuthorityRef`. `revoked` revokes every certificate of the profile."""

    issuerRef: LocalRef
    usage: Literal["codeSigning", "timeStamping"] = "codeSigning"
    keyAlgorithm: SigningAlgorithm = "ECDSA-P256"
    keyVersion: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    duration: Duration = timedelta(days=365)
    subject: Subject = Subject()
    timestampAuthorityRef: LocalRef | None = None
    revoked: Revocation | None = None

    @model_validator(mode="after")
    def _check(self) -> SigningProfileSpec:
        if not self.subject.commonName:
            raise ValueError("subject.commonName: required for a signing profile")
        if self.usage == "timeStamping" and self.timestampAuthorityRef is not None:
            raise ValueError("timestampAuthorityRef: only for usage: codeSigning")
        return self


class ReleaseArtifact(Model):
    """A file of the repository (`path`, git-only mode: the operator refuses it, a cluster has
    no repository), or a binary kept elsewhere, by `name`, `sha256` and `size`."""

    path: Annotated[str | None, Field(min_length=1, max_length=4096)] = None
    name: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9._+-][A-Za-z0-9._+/-]{0,254}$")] = None
    sha256: Annotated[str | None, Field(pattern=SHA256_HEX)] = None
    size: Annotated[int | None, Field(ge=0)] = None

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str | None) -> str | None:
        return None if path is None else _inside(path)

    @model_validator(mode="after")
    def _one_form(self) -> ReleaseArtifact:
        if self.path is not None:
            if self.sha256 is not None or self.size is not None:
                raise ValueError("sha256: give either path or sha256 with size, not both")
            return self
        if self.sha256 is None or self.size is None or self.name is None:
            missing = [n for n in ("name", "sha256", "size") if getattr(self, n) is None]
            raise ValueError(f"{missing[0]}: required without path (an artifact is a path of "
                             "the repository, or name, sha256 and size)")
        return self


class LabelSelector(Model):
    matchLabels: dict[str, str] = {}


class ReleaseTargets(Model):
    """Fleets by name, and/or every fleet whose labels match one of `selectors`."""

    fleets: list[Annotated[str, Field(pattern=DNS_LABEL)]] = []
    selectors: list[LabelSelector] = []

    @model_validator(mode="after")
    def _some(self) -> ReleaseTargets:
        if not self.fleets and not self.selectors:
            raise ValueError("fleets: a release targets at least one fleet or selector")
        if any(not s.matchLabels for s in self.selectors):
            raise ValueError("selectors: an empty selector would target every fleet")
        return self


class FirmwareVersions(Model):
    """The device firmware versions a release may be installed on (inclusive)."""

    min: Annotated[str | None, Field(pattern=VERSION_TEXT)] = None
    max: Annotated[str | None, Field(pattern=VERSION_TEXT)] = None


class ReleaseSpec(Model):
    signingProfileRef: LocalRef
    version: Annotated[str | None, Field(pattern=VERSION_TEXT)] = None
    artifacts: Annotated[list[ReleaseArtifact], Field(min_length=1, max_length=1000)]
    targets: ReleaseTargets
    firmwareVersions: FirmwareVersions | None = None
    revoked: Revocation | None = None

    @model_validator(mode="after")
    def _check(self) -> ReleaseSpec:
        names = [a.name or (a.path or "").rsplit("/", 1)[-1] for a in self.artifacts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"artifacts: two artifacts named {twice[0]!r}")
        return self


class PolicySelector(Model):
    """Which objects a policy applies to; every field given must match (empty: all)."""

    fleets: list[str] = []
    profiles: list[str] = []
    authorities: list[str] = []
    matchLabels: dict[str, str] = {}


class PolicyRule(Model):
    """A CEL expression that must hold; `deny` blocks the action, `warn` only reports."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    expression: Annotated[str, Field(min_length=1, max_length=4096)]
    action: Literal["deny", "warn"] = "deny"
    message: Annotated[str, Field(min_length=1, max_length=1024)]


class CertificatePolicySpec(Model):
    selector: PolicySelector = PolicySelector()
    disabled: bool = False
    rules: list[PolicyRule] = []

    @model_validator(mode="after")
    def _check(self) -> CertificatePolicySpec:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rules: duplicate rule name(s) {duplicates}")
        if not self.rules and not self.disabled:
            raise ValueError("rules: a policy needs at least one rule (or disabled: true)")
        return self


TENANT_GLOB = r"^[A-Za-z0-9._*?/-]+$"
# CODEOWNERS owners: @user, @org/team or an email address
CODE_OWNER = r"^(@[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?|[^@\s]+@[^@\s]+\.[^@\s]+)$"


class TenantAllowances(Model):
    """What a tenant's fleets may use beyond what it declares itself (empty lists: no limit,
    except `authorities` and `profiles`: only the tenant's own)."""

    authorities: list[Annotated[str, Field(pattern=DNS_LABEL)]] = []
    profiles: list[Annotated[str, Field(pattern=DNS_LABEL)]] = []
    keyAlgorithms: list[KeyAlgorithm] = []
    maxValidity: Duration | None = None
    deviceIdPatterns: list[Annotated[str, Field(min_length=1, max_length=1024)]] = []


class TenantSpec(Model):
    """A team and where its objects live: `paths` (globs relative to the fleet directory, `*`
    within a path segment, `**` across segments) in git-only mode, `namespaces` in Kubernetes
    mode. `owners` go to CODEOWNERS (`fleetpki codeowners`)."""

    paths: list[Annotated[str, Field(pattern=TENANT_GLOB, max_length=512)]] = []
    namespaces: list[Annotated[str, Field(pattern=K8S_NAMESPACE)]] = []
    owners: list[Annotated[str, Field(pattern=CODE_OWNER)]] = []
    allowed: TenantAllowances = TenantAllowances()

    @field_validator("paths")
    @classmethod
    def _relative(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"{path!r}: paths are relative to the fleet directory and "
                                 "stay inside it")
        return paths

    @model_validator(mode="after")
    def _somewhere(self) -> TenantSpec:
        if not self.paths and not self.namespaces:
            raise ValueError("a tenant needs paths (git-only mode) or namespaces (Kubernetes "
                             "mode)")
        return self


class Resource(Model):
    apiVersion: Literal["fleetpki.io/v1alpha1"] = "fleetpki.io/v1alpha1"
    kind: str
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name


class CertificateAuthority(Resource):
    """A root or intermediate CA that fleetpki creates, renews and whose key it keeps, or an
    external CA (certificate only) trusted for IDevID bootstrap."""

    kind: Literal["CertificateAuthority"] = "CertificateAuthority"
    spec: CertificateAuthoritySpec


class ClusterCertificateAuthority(Resource):
    """A cluster-scoped CA (Kubernetes mode only): kept by the operator in its cluster scope,
    used by the fleets of the namespaces it allows."""

    kind: Literal["ClusterCertificateAuthority"] = "ClusterCertificateAuthority"
    spec: ClusterCertificateAuthoritySpec


Authority = CertificateAuthority | ClusterCertificateAuthority


class CertificateProfile(Resource):
    """What a device certificate looks like."""

    kind: Literal["CertificateProfile"] = "CertificateProfile"
    spec: CertificateProfileSpec


class DeviceFleet(Resource):
    """A set of devices issued from one CA with one profile."""

    kind: Literal["DeviceFleet"] = "DeviceFleet"
    spec: DeviceFleetSpec


class CertificatePolicy(Resource):
    """Rules (CEL) over authorities, profiles, fleets and devices; see docs/policies.md."""

    kind: Literal["CertificatePolicy"] = "CertificatePolicy"
    spec: CertificatePolicySpec


class Tenant(Resource):
    """A team, where its objects live and what they may use; accepted only from the trusted
    policy source (`--policies DIR`), never from the repository it governs."""

    kind: Literal["Tenant"] = "Tenant"
    spec: TenantSpec


class SigningProfile(Resource):
    """A code-signing (or time-stamping) identity issued by one of our CAs."""

    kind: Literal["SigningProfile"] = "SigningProfile"
    spec: SigningProfileSpec


class Release(Resource):
    """Artifacts signed together under a SigningProfile for target fleets."""

    kind: Literal["Release"] = "Release"
    spec: ReleaseSpec


KINDS: dict[str, type[Resource]] = {
    "CertificateAuthority": CertificateAuthority,
    "ClusterCertificateAuthority": ClusterCertificateAuthority,
    "CertificateProfile": CertificateProfile,
    "DeviceFleet": DeviceFleet,
    "CertificatePolicy": CertificatePolicy,
    "Tenant": Tenant,
    "SigningProfile": SigningProfile,
    "Release": Release,
}
