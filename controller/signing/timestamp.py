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

from controller.pki.keys import PrivateKey
from controller.signing.cms import SignatureError, Signed, sign, verify

# The TSA policy (TSTInfo.policy): an OID under 2.25 (UUID-based, RFC 4122 / X.667).
TSA_POLICY = "2.25.195086093744839493305347935617186862517"
ACCURACY_SECONDS = 1


def make_token(signature: bytes, key: PrivateKey, certificate: x509.Certificate,
               chain: Sequence[x509.Certificate], gen_time: datetime, serial: int) -> bytes:
    """A DER TimeStampToken (ContentInfo) over SHA-256(`signature`) at `gen_time`."""
    info = tsp.TSTInfo({
        "version": "v1",
        "policy": TSA_POLICY,
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                            "hashed_message": hashlib.sha256(signature).digest()},
        "serial_number": serial,
        "gen_time": gen_time,
        "accuracy": {"seconds": ACCURACY_SECONDS},
    })
    return sign(info.dump(), key, certificate, chain, None, content_type="tst_info",
                detached=False)


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
