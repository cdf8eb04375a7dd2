"""CMS SignedData (RFC 5652) for every signing algorithm fleetpki supports, one code path.

asn1crypto gives the ASN.1 structures (SignedData, SignerInfo, attributes, TSTInfo), which
cryptography's PKCS7SignatureBuilder cannot build for Ed25519 or ML-DSA nor extend with an
unsigned attribute (the timestamp token); cryptography computes and checks the signatures.
Algorithms (signed attributes always present, so every algorithm signs their DER):
- ECDSA P-256 / P-384: SHA-256 / SHA-384, ecdsa-with-SHA256 / -SHA384;
- RSA-3072: SHA-256, PKCS #1 v1.5 (rsaEncryption, as OpenSSL writes it);
- Ed25519 (RFC 8419): SHA-512 digest of the content, pure Ed25519 over the attributes;
- ML-DSA-65 (RFC 9882): SHA-512 digest of the content, pure ML-DSA over the attributes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from controller.pki.keys import PrivateKey, PublicKey, supported_public_key

ML_DSA_OIDS = {"2.16.840.1.101.3.4.3.17": "ML-DSA-44", "2.16.840.1.101.3.4.3.18": "ML-DSA-65",
               "2.16.840.1.101.3.4.3.19": "ML-DSA-87"}
_ML_DSA_BY_CLASS = {mldsa.MLDSA44PrivateKey: "2.16.840.1.101.3.4.3.17",
                    mldsa.MLDSA65PrivateKey: "2.16.840.1.101.3.4.3.18",
                    mldsa.MLDSA87PrivateKey: "2.16.840.1.101.3.4.3.19"}
_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(),
                                            "sha384": hashes.SHA384(),
                                            "sha512": hashes.SHA512()}


class SignatureError(Exception):
    """A CMS structure that is malformed or whose signature does not verify."""


def algorithms(key: PrivateKey) -> tuple[str, str]:
    """(digest algorithm, signature algorithm) names in asn1crypto's terms, or a dotted OID."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ("sha384", "sha384_ecdsa") if key.curve.key_size > 256 else \
            ("sha256", "sha256_ecdsa")
    if isinstance(key, rsa.RSAPrivateKey):
        return "sha256", "rsassa_pkcs1v15"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "sha512", "ed25519"
    for cls, oid in _ML_DSA_BY_CLASS.items():
        if isinstance(key, cls):
            return "sha512", oid
    raise SignatureError(f"no CMS signature algorithm for {type(key).__name__}")


def digest(name: str, data: bytes) -> bytes:
    if name not in _HASHES:
        raise SignatureError(f"unsupported digest algorithm {name}")
    return hashlib.new(name, data).digest()


def _sign(key: PrivateKey, digest_name: str, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_HASHES[digest_name]))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), _HASHES[digest_name])
    return key.sign(data)  # Ed25519, ML-DSA: pure signatures over the attributes


def _verify(public_key: PublicKey, algorithm: str, digest_name: str, signature: bytes,
            data: bytes) -> None:
    """Raise SignatureError unless `signature` over `data` verifies under `public_key` with
    the named signature algorithm (which must fit the key)."""
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            hash_name = {"sha256_ecdsa": "sha256", "sha384_ecdsa": "sha384",
                         "sha512_ecdsa": "sha512", "ecdsa": digest_name}.get(algorithm)
            if hash_name not in _HASHES:
                raise SignatureError(f"signature algorithm {algorithm} does not fit an EC key")
            public_key.verify(signature, data, ec.ECDSA(_HASHES[hash_name]))
        elif isinstance(public_key, rsa.RSAPublicKey):
            hash_name = {"rsassa_pkcs1v15": digest_name, "sha256_rsa": "sha256",
                         "sha384_rsa": "sha384", "sha512_rsa": "sha512"}.get(algorithm)
            if hash_name not in _HASHES:
                raise SignatureError(f"signature algorithm {algorithm} does not fit an RSA key")
            public_key.verify(signature, data, padding.PKCS1v15(), _HASHES[hash_name])
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            if algorithm != "ed25519":
                raise SignatureError(f"signature algorithm {algorithm} does not fit Ed25519")
            public_key.verify(signature, data)
        else:
            expected = next(oid for cls, oid in (
                (mldsa.MLDSA44PublicKey, "2.16.840.1.101.3.4.3.17"),
                (mldsa.MLDSA65PublicKey, "2.16.840.1.101.3.4.3.18"),
                (mldsa.MLDSA87PublicKey, "2.16.840.1.101.3.4.3.19")) if isinstance(public_key, cls))
            if algorithm != expected:
                raise SignatureError(f"signature algorithm {algorithm} does not fit "
                                     f"{ML_DSA_OIDS[expected]}")
            public_key.verify(signature, data)
    except InvalidSignature:
        raise SignatureError("the signature does not verify") from None


def _asn1_certificate(certificate: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(certificate.public_bytes(Encoding.DER))


def signing_certificate_v2(certificate: x509.Certificate) -> tsp.SigningCertificateV2:
    """ESS signingCertificateV2 (RFC 5035): binds the signer's certificate (SHA-256)."""
    der = certificate.public_bytes(Encoding.DER)
    return tsp.SigningCertificateV2({"certs": [{"cert_hash": hashlib.sha256(der).digest()}]})


def sign(content: bytes, key: PrivateKey, certificate: x509.Certificate,
         chain: Sequence[x509.Certificate], signing_time: datetime | None, *,
         content_type: str = "data", detached: bool = True,
         countersign: Callable[[bytes], cms.CMSAttribute] | None = None,
         with_certificates: bool = True) -> bytes:
    """DER ContentInfo(SignedData) over `content` by `key` (whose certificate is
    `certificate`), with `certificate` and `chain` in its certificates (unless not
    `with_certificates`), the signed attributes contentType, messageDigest,
    signingCertificateV2 and (if given) signingTime.
    `countersign(signature)` returns an unsigned attribute over the signature value (the
    timestamp token)."""
    digest_name, signature_name = algorithms(key)
    attributes = [
        {"type": "content_type", "values": [content_type]},
        {"type": "message_digest", "values": [digest(digest_name, content)]},
        {"type": "signing_certificate_v2", "values": [signing_certificate_v2(certificate)]},
    ]
    if signing_time is not None:
        attributes.append({"type": "signing_time", "values": [cms.Time({"utc_time": signing_time})
                                                               if 1950 <= signing_time.year < 2050
                                                               else cms.Time({"generalized_time":
                                                                              signing_time})]})
    signed_attrs = cms.CMSAttributes(attributes)
    signature = _sign(key, digest_name, signed_attrs.dump())
    signer: dict[str, object] = {
        "version": "v1",
        "sid": cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber({
            "issuer": _asn1_certificate(certificate).issuer,
            "serial_number": certificate.serial_number})}),
        "digest_algorithm": algos.DigestAlgorithm({"algorithm": digest_name}),
        "signed_attrs": signed_attrs,
        "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": signature_name}),
        "signature": signature,
    }
    if countersign is not None:
        signer["unsigned_attrs"] = cms.CMSAttributes([countersign(signature)])
    encapsulated: dict[str, object] = {"content_type": content_type}
    if not detached:
        encapsulated["content"] = core.ParsableOctetString(content)
    fields: dict[str, object] = {
        "version": "v3" if content_type != "data" else "v1",
        "digest_algorithms": [algos.DigestAlgorithm({"algorithm": digest_name})],
        "encap_content_info": encapsulated,
        "signer_infos": [signer],
    }
    if with_certificates:
        fields["certificates"] = [_asn1_certificate(c) for c in (certificate, *chain)]
    signed_data = cms.SignedData(fields)
    return cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()


@dataclass(frozen=True)
class Signed:
    """A SignedData whose signature verified: who signed, when they say, and what."""

    signer: x509.Certificate
    certificates: tuple[x509.Certificate, ...]  # all certificates carried, signer included
    content: bytes  # the detached content given, or the encapsulated one
    content_type: str
    signing_time: datetime | None
    signature: bytes  # SignerInfo.signature (what a timestamp token covers)
    digest_algorithm: str
    signature_algorithm: str
    unsigned: cms.CMSAttributes | None


def _load(der: bytes) -> cms.SignedData:
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise SignatureError(f"not a CMS SignedData ({info['content_type'].native})")
        signed = info["content"]
        for name in ("digest_algorithms", "encap_content_info", "certificates", "signer_infos"):
            signed[name]  # noqa: B018 - parse these now, so damage is reported here
        return signed
    except SignatureError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise SignatureError(f"not a DER CMS SignedData: {exc}") from None


def _certificates(signed: cms.SignedData) -> tuple[x509.Certificate, ...]:
    found = []
    for choice in signed["certificates"] or []:
        if choice.name != "certificate":
            continue
        try:
            found.append(x509.load_der_x509_certificate(choice.chosen.dump()))
        except ValueError as exc:
            raise SignatureError(f"a certificate in the signature cannot be read: {exc}") \
                from None
    return tuple(found)


def _attribute(attributes: cms.CMSAttributes, name: str) -> list[object]:
    values = [a["values"] for a in attributes if a["type"].native == name]
    if len(values) > 1:
        raise SignatureError(f"signed attribute {name} appears twice")
    return list(values[0]) if values else []


def verify(der: bytes, detached_content: bytes | None = None) -> Signed:
    """Check the one SignerInfo of `der` against its content and its signer's certificate
    (carried in the SignedData, found by issuer and serial). Trust is not judged here."""
    signed = _load(der)
    infos = list(signed["signer_infos"])
    if len(infos) != 1:
        raise SignatureError(f"expected one signer, found {len(infos)}")
    info = infos[0]
    encapsulated = signed["encap_content_info"]
    content_type = encapsulated["content_type"].dotted if encapsulated["content_type"].native \
        is None else encapsulated["content_type"].native
    if detached_content is None:
        if encapsulated["content"].native is None:
            raise SignatureError("the signature is detached: the content must be given")
        content = encapsulated["content"].parsed.dump() \
            if isinstance(encapsulated["content"], core.ParsableOctetString) and \
            encapsulated["content"].parsed is not None else encapsulated["content"].native
        if not isinstance(content, bytes):
            content = encapsulated["content"].contents
    else:
        if encapsulated["content"].native is not None:
            raise SignatureError("the signature encapsulates content: it is not detached")
        content = detached_content
    sid = info["sid"]
    if sid.name != "issuer_and_serial_number":
        raise SignatureError("the signer is not identified by issuer and serial number")
    certificates = _certificates(signed)
    wanted = (sid.chosen["issuer"].dump(), sid.chosen["serial_number"].native)
    signer = next((c for c in certificates
                   if (_asn1_certificate(c).issuer.dump(), c.serial_number) == wanted), None)
    if signer is None:
        raise SignatureError("the signer's certificate is not in the signature")
    attributes = info["signed_attrs"]
    if not attributes:
        raise SignatureError("the signature has no signed attributes")
    digest_name = info["digest_algorithm"]["algorithm"].native
    signature_algorithm = info["signature_algorithm"]["algorithm"]
    signature_name = signature_algorithm.native if signature_algorithm.native not in \
        (None, signature_algorithm.dotted) else signature_algorithm.dotted
    declared_type = _attribute(attributes, "content_type")
    if [getattr(v, "native", None) for v in declared_type] != [content_type]:
        raise SignatureError("the signed contentType attribute does not match the content")
    message_digest = _attribute(attributes, "message_digest")
    if len(message_digest) != 1 or \
            getattr(message_digest[0], "native", None) != digest(digest_name, content):
        raise SignatureError("the content does not match the signed message digest (the "
                             "content was changed after signing)")
    encoded = attributes.dump()
    _verify(supported_public_key(signer.public_key()), signature_name, digest_name,
            info["signature"].native, b"\x31" + encoded[1:])
    times = _attribute(attributes, "signing_time")
    signing_time = getattr(times[0], "native", None) if times else None
    unsigned = info["unsigned_attrs"] if info["unsigned_attrs"].native is not None else None
    return Signed(signer, certificates, content, content_type, signing_time,
                  info["signature"].native, digest_name, signature_name, unsigned)
