"""RFC 3161 timestamp tokens, made by fleetpki's own time-stamping authority (a SigningProfile
with `usage: timeStamping`) and carried as the unsigned attribute id-aa-timeStampToken
(RFC 3161 appendix A) of the release signature: the token's message imprint is the SHA-256 of
the SignerInfo's signature value, so it proves the signature existed at `genTime`, and the
signature stays verifiable after the signing certificate expires."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import cms, tsp
from cryptography import x509

from controller.pki import der
from controller.pki.keys import PrivateKey
from controller.signing.cms import SignatureError, Signed, sign, verify

# The TSA policy (TSTInfo.policy): an OID under 2.25 (UUID-based, RFC 4122 / X.667).
TSA_POLICY = "2.25.195086093744839493305347935617186862517"
ACCURACY_SECONDS = 1


IMPRINT_ALGORITHMS = {"sha256": 32, "sha384": 48, "sha512": 64}  # name -> digest size


@dataclass(frozen=True)
class Authority:
    """A time-stamping authority: its key, certificate and the chain above it."""

    key: PrivateKey
    certificate: x509.Certificate
    chain: Sequence[x509.Certificate]


def make_token(signature: bytes, tsa: Authority, gen_time: datetime, serial: int) -> bytes:
    """A DER TimeStampToken (ContentInfo) over SHA-256(`signature`) at `gen_time`."""
    return _token(tsa, "sha256", hashlib.sha256(signature).digest(), gen_time, serial)


def _token(tsa: Authority, algorithm: str, hashed: bytes, gen_time: datetime, serial: int,
           nonce: int | None = None, with_certificates: bool = True) -> bytes:
    fields: dict[str, object] = {
        "version": "v1",
        "policy": TSA_POLICY,
        "message_imprint": {"hash_algorithm": {"algorithm": algorithm},
                            "hashed_message": hashed},
        "serial_number": serial,
        "gen_time": gen_time,
        "accuracy": {"seconds": ACCURACY_SECONDS},
    }
    if nonce is not None:
        fields["nonce"] = nonce
    return sign(tsp.TSTInfo(fields).dump(), tsa.key, tsa.certificate, tsa.chain, None,
                content_type="tst_info", detached=False, with_certificates=with_certificates)


def reply(request: bytes, tsa: Authority, gen_time: datetime, serial: int) -> bytes:
    """The DER TimeStampResp (RFC 3161 2.4.2) to the DER TimeStampReq `request`: granted, with
    a token over the request's imprint (and its nonce; the certificates only if it asks), or
    a rejection saying why (badDataFormat, badAlg, unacceptedPolicy, unacceptedExtension)."""
    try:
        parsed = tsp.TimeStampReq.load(request, strict=True)
        version = parsed["version"].native
        imprint = parsed["message_imprint"]
        algorithm = imprint["hash_algorithm"]["algorithm"].native
        hashed = imprint["hashed_message"].native
        nonce, wants_certificates = parsed["nonce"].native, bool(parsed["cert_req"].native)
        policy, extensions = parsed["req_policy"].native, parsed["extensions"].native
    except (ValueError, TypeError, KeyError) as exc:
        return _rejection("bad_data_format", f"not a DER TimeStampReq: {exc}")
    if version != "v1":
        return _rejection("bad_data_format", f"TimeStampReq version {version}: only v1")
    if IMPRINT_ALGORITHMS.get(algorithm) != len(hashed or b""):
        return _rejection("bad_alg", f"message imprint {algorithm}: SHA-256, SHA-384 or "
                          "SHA-512 of the right length only")
    if policy not in (None, TSA_POLICY):
        return _rejection("unaccepted_policy", f"policy {policy}: only {TSA_POLICY}")
    if extensions:
        return _rejection("unaccepted_extensions", "no request extensions are supported")
    token = _token(tsa, algorithm, hashed, gen_time, serial, nonce, wants_certificates)
    return tsp.TimeStampResp({"status": {"status": "granted"},
                              "time_stamp_token": cms.ContentInfo.load(token)}).dump()


def _rejection(failure: str, why: str) -> bytes:
    """A TimeStampResp without a token (asn1crypto's model insists on one, RFC 3161 not)."""
    status = tsp.PKIStatusInfo({"status": "rejection", "status_string": [why],
                                "fail_info": {failure}}).dump()
    return der.der_tlv(0x30, status)


def token_attribute(token: bytes) -> cms.CMSAttribute:
    """The unsigned attribute id-aa-timeStampToken holding `token`."""
    return cms.CMSAttribute({"type": "signature_time_stamp_token",
                             "values": [cms.ContentInfo.load(token)]})


@dataclass(frozen=True)
class Timestamp:
    """A token whose TSA signature and imprint verified (trust in the TSA is judged apart)."""

    gen_time: datetime
    signed: Signed  # the token's own SignedData: its signer is the TSA certificate
    der: bytes


def tokens_of(signed: Signed) -> list[bytes]:
    """The DER timestamp tokens in a signature's unsigned attributes."""
    if signed.unsigned is None:
        return []
    return [value.dump() for attribute in signed.unsigned
            if attribute["type"].native == "signature_time_stamp_token"
            for value in attribute["values"]]


def check_token(token: bytes, signature: bytes) -> Timestamp:
    """Verify `token`'s own signature and that it stamps `signature`; SignatureError if not."""
    stamped = verify(token)
    if stamped.content_type != "tst_info":
        raise SignatureError("the timestamp token does not hold a TSTInfo")
    try:
        info = tsp.TSTInfo.load(stamped.content, strict=True)
        imprint = info["message_imprint"]
        algorithm = imprint["hash_algorithm"]["algorithm"].native
        gen_time = info["gen_time"].native
        hashed = imprint["hashed_message"].native
    except (ValueError, TypeError, KeyError) as exc:
        raise SignatureError(f"the timestamp token's TSTInfo cannot be read: {exc}") from None
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise SignatureError(f"unsupported timestamp imprint algorithm {algorithm}")
    if hashlib.new(algorithm, signature).digest() != hashed:
        raise SignatureError("the timestamp token stamps another signature")
    return Timestamp(gen_time, stamped, token)
