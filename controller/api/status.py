"""The `.status` of each kind: what fleetpki writes (status branch in git-only mode, the status
subresource in Kubernetes), as pydantic models.

Pure: no I/O. The CRDs' status schema is generated from these models (crds.py), and the tests
validate every status document `status/report.py` writes against them, so the schema and the
writer cannot drift. Unknown fields are errors here; in a cluster the API server prunes them,
except under `status.kopf`, where kopf keeps its own progress fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RFC3339 = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
           r"(Z|[+-][0-9]{2}:[0-9]{2})$")
LIST_LIMIT = 50  # status/report.py ATTENTION_LIMIT: status size is the same for 10 or 10^6 devices

Timestamp = Annotated[str, Field(pattern=RFC3339, json_schema_extra={"format": "date-time"})]
Count = Annotated[int, Field(ge=0)]


class StatusModel(BaseModel):
    """Base: a field the models do not know is an error (the writer and schema drifted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(StatusModel):
    """A Kubernetes condition (`metav1.Condition`): `Ready`, `Reconciling` or `Stalled`."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(max_length=1024)]
    message: Annotated[str | None, Field(
        max_length=32768, description="Absent when empty (Kubernetes 1.20 refuses an empty "
        "string in a merge patch of a structural status).")] = None
    lastTransitionTime: Annotated[Timestamp, Field(
        description="When the status of this condition last changed (RFC 3339).")]
    observedGeneration: Annotated[int | None, Field(
        ge=0, description="metadata.generation this condition was set from.")] = None


class CommonStatus(StatusModel):
    """Fields of every kind's status."""

    observedGeneration: Annotated[int | None, Field(
        ge=0, description="metadata.generation of the spec last reconciled.")] = None
    lastHandledReconcileAt: Annotated[str | None, Field(
        max_length=256, description="Value of the annotation fleetpki.io/reconcile.requestedAt "
        "last handled (Flux convention: set the annotation to force a reconcile).")] = None
    observedCommit: Annotated[str | None, Field(
        max_length=256, description="Git-only mode: the commit applied (`<sha>-dirty` for an "
        "uncommitted working tree).")] = None
    conditions: Annotated[list[Condition] | None, Field(
        max_length=16, description="Ready, Reconciling and Stalled.",
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"]})] = None
    failedAttempts: Annotated[int | None, Field(
        ge=0, description="Consecutive failed reconciles (reset on success).")] = None
    nextAttemptAt: Annotated[Timestamp | None, Field(
        description="When a failing object is retried (exponential backoff).")] = None
    kopf: Annotated[dict[str, Any] | None, Field(
        description="kopf's own progress fields.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})] = None


class CertificateStatus(StatusModel):
    """The CA's current certificate."""

    serial: Annotated[str, Field(max_length=64, description="Hex serial number.")]
    fingerprint: Annotated[str, Field(max_length=128, description="Hex SHA-256 of the DER.")]
    notBefore: Timestamp
    notAfter: Timestamp
    renewAt: Timestamp | None = None
    external: Annotated[bool | None, Field(
        description="A declared certificate of an external CA (no key held).")] = None


class CRLStatus(StatusModel):
    """The CA's current CRL."""

    number: Count
    thisUpdate: Timestamp
    nextUpdate: Timestamp
    entries: Count


class CertificateAuthorityStatus(CommonStatus):
    """Status of a CertificateAuthority: its current certificate and CRL."""

    certificate: CertificateStatus | None = None
    crl: CRLStatus | None = None


class DeviceCounts(StatusModel):
    """Device counts of the fleet."""

    declared: Count
    active: Count
    revoked: Count
    due: Count
    expired: Count
    failed: Count
    awaitingEnrollment: Count | None = None


class Attention(StatusModel):
    """A device that needs attention, and why."""

    device: Annotated[str, Field(max_length=256)]
    reason: str


class DeviceSourceStatus(StatusModel):
    """Kubernetes mode: where the devices were read from (a ConfigMap, a Flux source)."""

    kind: Annotated[str, Field(max_length=128)]
    name: Annotated[str, Field(max_length=253)]
    revision: Annotated[str | None, Field(max_length=512)] = None
    digest: Annotated[str | None, Field(max_length=256)] = None


class DeviceFleetStatus(CommonStatus):
    """Status of a DeviceFleet: counts and at most 50 devices needing attention, never a list
    of every device (its size is the same for ten devices or a million)."""

    devices: DeviceCounts | None = None
    attention: Annotated[list[Attention] | None, Field(max_length=LIST_LIMIT)] = None
    policyWarnings: Annotated[list[str] | None, Field(max_length=LIST_LIMIT)] = None
    nextRenewalAt: Annotated[Timestamp | None, Field(
        description="The earliest renewal due among the fleet's certificates.")] = None
    source: DeviceSourceStatus | None = None


class CertificateProfileStatus(CommonStatus):
    """Status of a CertificateProfile."""


class CertificatePolicyStatus(CommonStatus):
    """Status of a CertificatePolicy."""


SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Serial = Annotated[str, Field(max_length=64, description="Hex serial number.")]
KeyVersion = Annotated[int, Field(ge=1, description="The profile's `keyVersion` the key is of.")]
RevocationReason = Annotated[str, Field(max_length=64)]


class SigningCertificateStatus(StatusModel):
    """A SigningProfile's newest active certificate (code signing: the one of its newest
    release; time stamping: the TSA's)."""

    serial: Serial
    notAfter: Timestamp
    issuedAt: Timestamp
    keyVersion: KeyVersion
    release: Annotated[str | None, Field(max_length=253)] = None


class RevokedStatus(StatusModel):
    """Declared `revoked` and applied: the certificates are on the CA's CRL."""

    reason: RevocationReason
    revokedAt: Timestamp | None = None


class SigningProfileStatus(CommonStatus):
    """Status of a SigningProfile: the key version it signs with and its current certificate.
    The key itself is in the keystore (a Secret in the operator's namespace), never here."""

    usage: Literal["codeSigning", "timeStamping"] | None = None
    keyAlgorithm: Annotated[str | None, Field(
        max_length=32, description="The key's algorithm (the spec's, or its default).")] = None
    keyVersion: KeyVersion | None = None
    certificate: SigningCertificateStatus | None = None
    activeCertificates: Count | None = None
    revoked: RevokedStatus | None = None


class SignatureStatus(StatusModel):
    """A release's signature: its own code-signing certificate and the signed manifest."""

    serial: Serial
    profile: Annotated[str, Field(max_length=253)]
    keyVersion: KeyVersion
    signedAt: Timestamp
    notAfter: Timestamp
    manifestSha256: SHA256
    state: Literal["active", "revoked"]
    revokedAt: Timestamp | None = None
    reason: Annotated[RevocationReason | None, Field(
        description="Why the signature was revoked (the release was withdrawn, changed: "
        "superseded, or its profile revoked).")] = None


class ReleaseStatus(CommonStatus):
    """Status of a Release: `Signed`, `Pending` (not yet signed, or changed and not yet
    signed again), `Withdrawn` (declared `revoked`, its signature revoked) or `SignerRevoked`
    (its SigningProfile is revoked)."""

    state: Literal["Pending", "Signed", "Withdrawn", "SignerRevoked"] | None = None
    artifacts: Count | None = None
    fleets: Annotated[list[Annotated[str, Field(max_length=63)]] | None, Field(
        max_length=LIST_LIMIT, description="The target fleets (at most 50 listed).")] = None
    signature: SignatureStatus | None = None


STATUS_KINDS: dict[str, type[CommonStatus]] = {
    "CertificateAuthority": CertificateAuthorityStatus,
    "ClusterCertificateAuthority": CertificateAuthorityStatus,
    "CertificateProfile": CertificateProfileStatus,
    "DeviceFleet": DeviceFleetStatus,
    "CertificatePolicy": CertificatePolicyStatus,
    "SigningProfile": SigningProfileStatus,
    "Release": ReleaseStatus,
}
