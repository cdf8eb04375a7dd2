"""Classify a found certificate against what fleetpki issued (pure: no I/O).

A finding has one `state`, the worst that applies (STATES, worst first), and every problem
found. Chains are checked with `verify_directly_issued_by` link by link rather than with
`cryptography.x509.verification`: its verifiers enforce the web PKI's server/client profiles
(EKU, SAN names), which device certificates need not satisfy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa
from cryptography.hazmat.primitives.hashes import MD5, SHA1

from controller.pki.certificates import certificate_fingerprint
from controller.pki.keys import PublicKey, key_algorithm_of

STATES = ("unreadable", "revoked", "unknown", "wrong-chain", "expired", "weak", "expiring",
          "managed")
MIN_RSA_BITS = 3072
MIN_EC_BITS = 256
MAX_CHAIN = 8


@dataclass(frozen=True, slots=True)
class Known:
    """What the inventory knows of a serial (hex, as stored)."""

    kind: str  # "ca" | "device"
    owner: str  # CA name or fleet name
    device: str
    state: str  # active | retired | revoked
    fingerprint: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Sighting:
    """Certificates seen at one place: a TLS endpoint's chain (leaf first), or one file's."""

    source: str  # "tls:HOST:PORT" or "file:PATH"
    certificates: tuple[x509.Certificate, ...] = ()
    error: str | None = None  # why nothing could be read there
    presented_chain: bool = False  # certificates[1:] is the chain that goes with [0] (TLS)


@dataclass(frozen=True, slots=True)
class Finding:
    source: str
    state: str  # the worst of `states`
    problems: tuple[str, ...] = ()
    states: tuple[str, ...] = ()  # every state that applies, worst first
    subject: str = ""
    issuer: str = ""
    serial: str = ""
    fingerprint: str = ""
    not_after: datetime | None = None
    key_algorithm: str = ""
    owner: str | None = None  # fleet or CA name, when managed/revoked
    device: str | None = None
    chain_verified: bool | None = None  # None: no chain presented (files)


def describe_key(public_key: object) -> str:
    """The key's algorithm name, also for keys fleetpki never issues (DSA, Ed448...)."""
    if isinstance(public_key, PublicKey):
        return key_algorithm_of(public_key)
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA-{public_key.key_size}"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def weaknesses(certificate: x509.Certificate) -> list[str]:
    """Why a certificate's key or signature is too weak (empty when it is not)."""
    found = []
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        found.append(f"weak key: RSA {key.key_size} bits (< {MIN_RSA_BITS})")
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < MIN_EC_BITS:
        found.append(f"weak key: curve {key.curve.name} (< {MIN_EC_BITS} bits)")
    elif isinstance(key, dsa.DSAPublicKey):
        found.append("weak key: DSA")
    digest = certificate.signature_hash_algorithm
    if isinstance(digest, MD5 | SHA1):
        found.append(f"weak signature: {digest.name.upper()}")
    return found


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # TypeError: an unsupported key type
        return False
    return True


def chains_to(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
              anchors: Sequence[x509.Certificate]) -> bool:
    """Whether `leaf` links, through `intermediates`, to one of `anchors` (signatures only)."""
    anchor_prints = {certificate_fingerprint(a) for a in anchors}
    current = leaf
    for _ in range(MAX_CHAIN):
        if certificate_fingerprint(current) in anchor_prints:
            return True
        if any(issued_by(current, a) for a in anchors):
            return True
        parent = next((c for c in intermediates if c is not current and issued_by(current, c)),
                      None)
        if parent is None:
            return False
        current = parent
    return False


def _name(name: x509.Name) -> str:
    return name.rfc4514_string()


def classify(sighting: Sighting, lookup: Callable[[str], Known | None],
             authorities: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
             now: datetime, expiring_within: timedelta) -> list[Finding]:
    """Findings for a sighting: for a TLS endpoint its leaf only (the rest is its chain), for a
    file every certificate in it. `authorities` are every CA certificate fleetpki made, `roots`
    the self-signed ones among them."""
    if sighting.error is not None:
        return [Finding(sighting.source, "unreadable", (sighting.error,), ("unreadable",))]
    certificates = sighting.certificates[:1] if sighting.presented_chain else \
        sighting.certificates
    findings = []
    for certificate in certificates:
        chain = sighting.certificates[1:] if sighting.presented_chain else None
        findings.append(_classify_one(sighting.source, certificate, chain, lookup, authorities,
                                      roots, now, expiring_within))
    return findings


def _classify_one(source: str, certificate: x509.Certificate,
                  chain: Sequence[x509.Certificate] | None,
                  lookup: Callable[[str], Known | None],
                  authorities: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
                  now: datetime, expiring_within: timedelta) -> Finding:
    serial = format(certificate.serial_number, "040x")
    fingerprint = certificate_fingerprint(certificate)
    known = lookup(serial)
    if known is not None and known.fingerprint != fingerprint:
        known = None
    problems: list[str] = []
    states: set[str] = set()
    if known is None:
        states.add("unknown")
        signer = next((a for a in authorities if issued_by(certificate, a)), None)
        problems.append("not in the inventory" + (
            f": signed by our CA {_name(signer.subject)} but never recorded" if signer
            else ": not issued by fleetpki (rogue)"))
    elif known.state == "revoked":
        states.add("revoked")
        problems.append(f"revoked ({known.reason or 'unspecified'}) but still in use")
    elif known.state == "retired":
        problems.append("superseded: a newer certificate was issued")
    verified = None
    if chain is not None and known is not None:
        verified = chains_to(certificate, chain, roots)
        if not verified:
            states.add("wrong-chain")
            problems.append("the presented chain does not lead to a fleetpki root")
    not_after = certificate.not_valid_after_utc
    if not_after <= now:
        states.add("expired")
        problems.append(f"expired {not_after.isoformat()}")
    elif not_after <= now + expiring_within:
        states.add("expiring")
        problems.append(f"expires {not_after.isoformat()}")
    weak = weaknesses(certificate)
    if weak:
        states.add("weak")
        problems.extend(weak)
    ordered = tuple(s for s in STATES if s in states) or ("managed",)
    return Finding(
        source=source, state=ordered[0], problems=tuple(problems), states=ordered,
        subject=_name(certificate.subject),
        issuer=_name(certificate.issuer), serial=serial, fingerprint=fingerprint,
        not_after=not_after, key_algorithm=describe_key(certificate.public_key()),
        owner=known.owner if known else None, device=(known.device or None) if known else None,
        chain_verified=verified)


def finding_dict(finding: Finding) -> dict[str, object]:
    """The JSON form of a finding (the contract is in docs/discovery.md)."""
    return {"source": finding.source, "state": finding.state, "states": list(finding.states),
            "problems": list(finding.problems),
            "subject": finding.subject, "issuer": finding.issuer, "serial": finding.serial,
            "fingerprint": finding.fingerprint,
            "notAfter": finding.not_after.isoformat() if finding.not_after else None,
            "keyAlgorithm": finding.key_algorithm, "owner": finding.owner,
            "device": finding.device, "chainVerified": finding.chain_verified}


def summary(findings: Sequence[Finding]) -> dict[str, int]:
    """Findings per state, every state present (0 when none)."""
    return {state: sum(1 for f in findings if f.state == state) for state in STATES}
