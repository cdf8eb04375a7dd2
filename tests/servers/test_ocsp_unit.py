"""The pure OCSP responder: bytes in, bytes out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp

from controller.pki import certificates as certs
from controller.pki.der import der_oid, der_tlv
from controller.servers import ocsp

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SHA1 = "1.3.14.3.2.26"
UNSUPPORTED_HASHES = {"md5": "1.2.840.113549.2.5", "sha3-256": "2.16.840.1.101.3.4.2.8",
                      "made-up": "1.2.3.4"}


def _ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.build_ca_certificate(
        subject=certs.build_name({"commonName": "Unit CA"}), public_key=key.public_key(),
        issuer_key=key, issuer_certificate=None, not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=10), path_length=0)
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return certs.build_leaf_certificate(
        subject=certs.build_name({"commonName": "leaf"}), subject_alt_names=[],
        public_key=key.public_key(), issuer_key=ca_key, issuer_certificate=ca,
        not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=5),
        usages=["digital signature"], serial=serial)


def _responder() -> tuple[ocsp.Responder, x509.Certificate, x509.Certificate, list[int]]:
    ca, key = _ca()
    leaf = _leaf(ca, key, 1000)
    calls: list[int] = []

    def lookup(issuer: ocsp.Issuer, serial: int) -> ocsp.Status:
        calls.append(serial)
        if serial == 1000:
            return ocsp.Status("revoked", NOW - timedelta(hours=1), "keyCompromise")
        return ocsp.Status("unknown")

    return ocsp.Responder(ocsp.IssuerIndex([ocsp.Issuer("ca", ca, key)]), lookup), ca, leaf, calls


def _request(leaf: x509.Certificate, ca: x509.Certificate, nonce: bytes | None = None,
             algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, algorithm or hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_revoked_with_reason_and_nonce_echoed() -> None:
    responder, ca, leaf, _ = _responder()
    for algorithm in (hashes.SHA1(), hashes.SHA256()):
        der = responder.respond(_request(leaf, ca, b"0123456789abcdef", algorithm), NOW)
        response = x509_ocsp.load_der_ocsp_response(der)
        assert response.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
        assert response.revocation_reason == x509.ReasonFlags.key_compromise
        assert response.next_update_utc == NOW + ocsp.DEFAULT_VALIDITY
        nonce = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        assert nonce == b"0123456789abcdef"
        ca.public_key().verify(  # type: ignore[call-arg,union-attr]
            response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))


def test_nonce_less_answers_are_cached_until_invalidated() -> None:
    responder, ca, leaf, calls = _responder()
    request = _request(leaf, ca)
    first = responder.respond(request, NOW)
    assert responder.respond(request, NOW + timedelta(minutes=1)) == first
    assert calls == [1000]
    responder.invalidate()
    responder.respond(request, NOW)
    assert calls == [1000, 1000]
    responder.respond(request, NOW + ocsp.DEFAULT_VALIDITY / 2)  # half its validity: stale
    assert calls == [1000, 1000, 1000]


def test_garbage_and_unknown_issuer() -> None:
    responder, ca, leaf, _ = _responder()
    malformed = x509_ocsp.load_der_ocsp_response(responder.respond(b"\x30\x03junk", NOW))
    assert malformed.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    other_ca, other_key = _ca()
    stranger = _leaf(other_ca, other_key, 5)
    answer = x509_ocsp.load_der_ocsp_response(responder.respond(_request(stranger, other_ca), NOW))
    assert answer.response_status == x509_ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_two_certificates_in_one_request_is_malformed() -> None:
    """cryptography parses one CertID only; a two-request OCSPRequest is malformedRequest."""
    responder, ca, leaf, _ = _responder()
    single = _request(leaf, ca)
    # OCSPRequest { TBSRequest { requestList { Request } } }, all short-form lengths here:
    # duplicate the Request to make a requestList of two.
    assert single[1] < 0x80 and single[3] < 0x80 and single[5] < 0x80
    one = single[6:]
    double = der_tlv(0x30, der_tlv(0x30, der_tlv(0x30, one + one)))
    assert len(x509_ocsp.load_der_ocsp_request(single).public_bytes(
        serialization.Encoding.DER)) == len(single)
    answer = x509_ocsp.load_der_ocsp_response(responder.respond(double, NOW))
    assert answer.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def cert_id_request(hash_oid: str, name_hash: bytes, key_hash: bytes, serial: int) -> bytes:
    """A DER OCSPRequest naming one CertID, built by hand: any hash OID, any (even negative)
    serial number."""
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    algorithm = der_tlv(0x30, der_oid(hash_oid) + b"\x05\x00")
    cert_id = der_tlv(0x30, algorithm + der_tlv(0x04, name_hash) + der_tlv(0x04, key_hash)
                      + der_tlv(0x02, serial_der))
    return der_tlv(0x30, der_tlv(0x30, der_tlv(0x30, der_tlv(0x30, cert_id))))


def _hashes(leaf: x509.Certificate, ca: x509.Certificate) -> tuple[bytes, bytes]:
    """(issuer name hash, issuer key hash), SHA-1, of the CertID naming `leaf`."""
    request = x509_ocsp.load_der_ocsp_request(_request(leaf, ca))
    return request.issuer_name_hash, request.issuer_key_hash


def test_hand_built_request_parses_as_built() -> None:
    responder, ca, leaf, _ = _responder()
    name_hash, key_hash = _hashes(leaf, ca)
    der = cert_id_request(SHA1, name_hash, key_hash, 1000)
    assert der == _request(leaf, ca)
    answer = x509_ocsp.load_der_ocsp_response(responder.respond(der, NOW))
    assert answer.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED


def test_unsupported_hash_algorithm_is_malformed() -> None:
    responder, ca, leaf, calls = _responder()
    name_hash, key_hash = _hashes(leaf, ca)
    for oid in UNSUPPORTED_HASHES.values():
        der = responder.respond(cert_id_request(oid, name_hash, key_hash, 1000), NOW)
        answer = x509_ocsp.load_der_ocsp_response(der)
        assert answer.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST, oid
    assert calls == []


def test_negative_serial_is_malformed_zero_is_unknown() -> None:
    responder, ca, leaf, calls = _responder()
    name_hash, key_hash = _hashes(leaf, ca)
    for serial in (-1, -1000, -(2**159)):
        der = responder.respond(cert_id_request(SHA1, name_hash, key_hash, serial), NOW)
        answer = x509_ocsp.load_der_ocsp_response(der)
        assert answer.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert calls == []
    zero = x509_ocsp.load_der_ocsp_response(
        responder.respond(cert_id_request(SHA1, name_hash, key_hash, 0), NOW))
    assert zero.certificate_status == x509_ocsp.OCSPCertStatus.UNKNOWN
