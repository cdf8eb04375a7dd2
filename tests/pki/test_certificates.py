"""Certificate building, checked by cryptography and by the independent `openssl` CLI."""

import hashlib
import re
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.pki import (
    PKIError,
    build_ca_certificate,
    build_leaf_certificate,
    build_name,
    certificate_fingerprint,
    certificate_to_pem,
    certificates,
    certificates_to_pem,
    der_utf8_string,
    load_certificate_pem,
    load_certificates_pem,
    random_serial,
)
from controller.pki.certificates import SERIAL_RANDOM_BITS

from .support import (
    DEVICE_MODEL,
    DEVICE_OID,
    INTER_CRL,
    INTER_OCSP,
    LEAF_DNS,
    LEAF_URI,
    NOW,
    ROOT_CRL,
    ChainFor,
    KeyFor,
    Openssl,
    Writer,
    make_root,
)

CLASSICAL = ["ECDSA-P256", "ECDSA-P384", "Ed25519", "RSA-3072", "RSA-4096"]


def _leaf(issuer_algorithm: str, chain_for: ChainFor, **overrides: object) -> x509.Certificate:
    """A leaf under the cached intermediate with the given keyword overrides."""
    chain = chain_for(issuer_algorithm)
    arguments: dict[str, object] = {
        "subject": build_name({"commonName": "device-2"}),
        "subject_alt_names": [x509.DNSName("device-2.fleet.example")],
        "public_key": chain.leaf_key.public_key(),
        "issuer_key": chain.inter_key,
        "issuer_certificate": chain.inter,
        "not_before": NOW - timedelta(minutes=5),
        "not_after": NOW + timedelta(days=30),
        "usages": ["server auth"],
    }
    arguments.update(overrides)
    return build_leaf_certificate(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", CLASSICAL)
def test_openssl_strictly_verifies_chain(
    algorithm: str, chain_for: ChainFor, openssl: Openssl, write: Writer
) -> None:
    chain = chain_for(algorithm)
    root = write("root.pem", certificate_to_pem(chain.root))
    inter = write("inter.pem", certificate_to_pem(chain.inter))
    leaf = write("leaf.pem", certificate_to_pem(chain.leaf))
    result = openssl("verify", "-x509_strict", "-CAfile", root, "-untrusted", inter, leaf)
    assert result.returncode == 0 and "leaf.pem: OK" in result.stdout, result.stdout
    # Sanity check of the check: without the intermediate the chain cannot be built.
    assert openssl("verify", "-x509_strict", "-CAfile", root, leaf).returncode != 0


@pytest.mark.parametrize("algorithm", CLASSICAL)
def test_openssl_text_shows_endpoints_and_device_extension(
    algorithm: str, chain_for: ChainFor, openssl: Openssl, write: Writer
) -> None:
    chain = chain_for(algorithm)
    leaf_text = openssl(
        "x509", "-in", write("leaf.pem", certificate_to_pem(chain.leaf)), "-noout", "-text"
    ).stdout
    assert f"URI:{INTER_CRL}" in leaf_text
    assert f"OCSP - URI:{INTER_OCSP}" in leaf_text
    assert f"{DEVICE_OID}:" in leaf_text and DEVICE_MODEL in leaf_text
    assert f"DNS:{LEAF_DNS}" in leaf_text and f"URI:{LEAF_URI}" in leaf_text
    assert "TLS Web Client Authentication" in leaf_text
    inter_text = openssl(
        "x509", "-in", write("inter.pem", certificate_to_pem(chain.inter)), "-noout", "-text"
    ).stdout
    assert f"URI:{ROOT_CRL}" in inter_text and "CA:TRUE, pathlen:0" in inter_text


@pytest.mark.parametrize("algorithm", CLASSICAL)
def test_extensions_criticality_and_validity_clamp(algorithm: str, chain_for: ChainFor) -> None:
    chain = chain_for(algorithm)
    for cert in (chain.root, chain.inter, chain.leaf):
        assert cert.serial_number.bit_length() == 159
        critical = {ext.oid for ext in cert.extensions if ext.critical}
        assert critical == {x509.BasicConstraints.oid, x509.KeyUsage.oid}
        cert.verify_directly_issued_by(chain.inter if cert is chain.leaf else chain.root)
    assert chain.leaf.not_valid_after_utc == chain.inter.not_valid_after_utc
    assert chain.leaf.not_valid_before_utc == NOW - timedelta(minutes=5)
    leaf_ext = chain.leaf.extensions
    assert leaf_ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf_ext.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert list(leaf_ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    custom = leaf_ext.get_extension_for_oid(x509.ObjectIdentifier(DEVICE_OID))
    assert custom.value.value == der_utf8_string(DEVICE_MODEL)  # type: ignore[attr-defined]
    inter_ski = chain.inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = leaf_ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == inter_ski.digest
    root_constraints = chain.root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_constraints.value.path_length == 1


def test_intermediate_expiry_is_clamped_to_root(key_for: KeyFor) -> None:
    root_key, root = make_root("ECDSA-P256")
    inter = build_ca_certificate(
        subject=build_name({"commonName": "Long Lived"}),
        public_key=key_for("ECDSA-P256").public_key(),
        issuer_key=root_key,
        issuer_certificate=root,
        not_before=NOW,
        not_after=NOW + timedelta(days=100 * 365),
        path_length=None,
    )
    assert inter.not_valid_after_utc == root.not_valid_after_utc


def test_name_constraints_are_critical_and_enforced_by_openssl(
    key_for: KeyFor, openssl: Openssl, write: Writer
) -> None:
    root_key, root = make_root("ECDSA-P256")
    inter_key = key_for("ECDSA-P384")
    inter = build_ca_certificate(
        subject=build_name({"commonName": "Constrained CA"}),
        public_key=inter_key.public_key(),
        issuer_key=root_key,
        issuer_certificate=root,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=365),
        path_length=0,
        permitted_dns_domains=["fleet.example"],
    )
    assert inter.extensions.get_extension_for_class(x509.NameConstraints).critical
    write("root.pem", certificate_to_pem(root))
    write("inter.pem", certificate_to_pem(inter))
    outcomes = {}
    for dns in ("ok.fleet.example", "evil.example.com"):
        leaf = build_leaf_certificate(
            subject=x509.Name([]),
            subject_alt_names=[x509.DNSName(dns)],
            public_key=key_for("Ed25519").public_key(),
            issuer_key=inter_key,
            issuer_certificate=inter,
            not_before=NOW - timedelta(minutes=5),
            not_after=NOW + timedelta(days=30),
            usages=["server auth"],
        )
        assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
        write("leaf.pem", certificate_to_pem(leaf))
        outcomes[dns] = openssl(
            "verify", "-x509_strict", "-CAfile", "root.pem", "-untrusted", "inter.pem", "leaf.pem"
        )
    assert outcomes["ok.fleet.example"].returncode == 0, outcomes["ok.fleet.example"].stdout
    assert outcomes["evil.example.com"].returncode != 0
    assert "permitted subtree violation" in outcomes["evil.example.com"].stdout


def test_issuer_path_length_zero_forbids_sub_ca(chain_for: ChainFor, key_for: KeyFor) -> None:
    chain = chain_for("ECDSA-P256")
    with pytest.raises(PKIError, match="path length 0"):
        build_ca_certificate(
            subject=build_name({"commonName": "Too Deep"}),
            public_key=key_for("ECDSA-P256").public_key(),
            issuer_key=chain.inter_key,
            issuer_certificate=chain.inter,
            not_before=NOW,
            not_after=NOW + timedelta(days=1),
            path_length=None,
        )


def test_root_must_be_self_signed_and_window_non_empty(key_for: KeyFor) -> None:
    arguments = {
        "subject": build_name({"commonName": "Root"}),
        "public_key": key_for("ECDSA-P256").public_key(),
        "issuer_key": key_for("ECDSA-P256"),
        "issuer_certificate": None,
        "not_before": NOW,
        "not_after": NOW + timedelta(days=1),
        "path_length": None,
    }
    with pytest.raises(PKIError, match="own key"):
        build_ca_certificate(**{**arguments, "issuer_key": key_for("Ed25519")})  # type: ignore[arg-type]
    with pytest.raises(PKIError, match="empty validity"):
        build_ca_certificate(**{**arguments, "not_after": NOW})  # type: ignore[arg-type]
    with pytest.raises(PKIError, match="timezone-aware"):
        build_ca_certificate(**{**arguments, "not_before": datetime(2030, 1, 1)})  # type: ignore[arg-type]
    with pytest.raises(PKIError, match="no issuer CRL"):
        build_ca_certificate(**{**arguments, "ocsp_url": "http://ocsp"})  # type: ignore[arg-type]


def test_leaf_rejections(chain_for: ChainFor, key_for: KeyFor) -> None:
    chain = chain_for("ECDSA-P256")
    with pytest.raises(PKIError, match="empty subject"):
        _leaf("ECDSA-P256", chain_for, subject=x509.Name([]), subject_alt_names=[])
    with pytest.raises(PKIError, match="cert sign"):
        _leaf("ECDSA-P256", chain_for, usages=["cert sign"])
    with pytest.raises(PKIError, match="not a CA"):
        _leaf("ECDSA-P256", chain_for, issuer_certificate=chain.leaf, issuer_key=chain.leaf_key)
    with pytest.raises(PKIError, match="does not match"):
        _leaf("ECDSA-P256", chain_for, issuer_key=key_for("ECDSA-P256"))
    with pytest.raises(PKIError, match="1.2.x"):
        _leaf("ECDSA-P256", chain_for, extra_extensions=[("1.2.x", b"\x05\x00")])
    with pytest.raises(PKIError, match="2.5.29.17"):  # duplicates the SAN extension
        _leaf("ECDSA-P256", chain_for, extra_extensions=[("2.5.29.17", b"\x30\x00")])
    with pytest.raises(PKIError, match="validity"):
        _leaf("ECDSA-P256", chain_for, not_before=chain.inter.not_valid_after_utc)


def test_leaf_defaults_to_digital_signature_and_non_critical_san(chain_for: ChainFor) -> None:
    leaf = _leaf("Ed25519", chain_for, usages=["server auth", "client auth"])
    key_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical and key_usage.value.digital_signature
    assert not key_usage.value.key_encipherment
    assert not leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_random_serial_is_always_159_bits() -> None:
    serials = {random_serial() for _ in range(2000)}
    assert len(serials) == 2000
    assert all(serial.bit_length() == 159 for serial in serials)


def test_random_serials_carry_110_random_bits_after_the_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Serials made later sort later (the inventory's index grows at its end), while the low
    110 bits stay the CSPRNG's: every one of them varies over a few hundred serials."""
    clock = iter(range(10**18, 10**18 + 1000 * 10**6, 10**6))  # a millisecond per serial
    monkeypatch.setattr(certificates.time, "time_ns", lambda: next(clock))
    serials = [random_serial() for _ in range(500)]
    assert serials == sorted(serials)
    assert [format(s, "040x") for s in serials] == sorted(format(s, "040x") for s in serials)
    low = [s & ((1 << SERIAL_RANDOM_BITS) - 1) for s in serials]
    varying = 0
    for other in low[1:]:
        varying |= other ^ low[0]
    assert varying == (1 << SERIAL_RANDOM_BITS) - 1
    assert SERIAL_RANDOM_BITS >= 64  # CA/Browser Forum Baseline Requirements 7.1


def test_build_name_order_and_validation() -> None:
    name = build_name(
        {
            "commonName": "dev",
            "serialNumber": "SN-1",
            "organizationalUnit": "Sensors",
            "organization": "Fleet",
            "locality": "Berlin",
            "province": "BE",
            "country": "DE",
        }
    )
    assert [attr.oid for attr in name] == [
        NameOID.COUNTRY_NAME,
        NameOID.STATE_OR_PROVINCE_NAME,
        NameOID.LOCALITY_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATIONAL_UNIT_NAME,
        NameOID.COMMON_NAME,
        NameOID.SERIAL_NUMBER,
    ]
    with pytest.raises(PKIError, match="emailAddress"):
        build_name({"emailAddress": "a@b"})
    with pytest.raises(PKIError, match="commonName"):
        build_name({"commonName": " "})
    with pytest.raises(PKIError, match="country"):
        build_name({"country": "DEU"})
    with pytest.raises(PKIError, match="commonName"):
        build_name({"commonName": "x" * 65})


@pytest.mark.parametrize(
    ("length", "header"), [(0, 2), (6, 2), (127, 2), (128, 3), (300, 4), (70000, 5)]
)
def test_der_utf8_string_is_decoded_by_openssl(
    length: int, header: int, openssl: Openssl, write: Writer
) -> None:
    value = "ä" + "x" * (length - 2) if length else ""  # "ä" is two UTF-8 octets
    der = der_utf8_string(value)
    result = openssl("asn1parse", "-inform", "DER", "-in", write("v.der", der))
    assert result.returncode == 0, result.stdout
    match = re.search(r"hl=(\d+) l=\s*(\d+) prim: UTF8STRING", result.stdout)
    assert match is not None, result.stdout
    assert (int(match[1]), int(match[2])) == (header, length) and header + length == len(der)


def test_pem_round_trip_and_fingerprint_match_openssl(
    chain_for: ChainFor, openssl: Openssl, write: Writer
) -> None:
    chain = chain_for("ECDSA-P256")
    bundle = certificates_to_pem([chain.leaf, chain.inter, chain.root])
    assert load_certificates_pem(bundle) == [chain.leaf, chain.inter, chain.root]
    assert load_certificate_pem(bundle.decode()) == chain.leaf
    der = chain.leaf.public_bytes(serialization.Encoding.DER)
    assert certificate_fingerprint(chain.leaf) == hashlib.sha256(der).hexdigest()
    result = openssl(
        "x509",
        "-in",
        write("leaf.pem", certificate_to_pem(chain.leaf)),
        "-noout",
        "-fingerprint",
        "-sha256",
    )
    assert result.stdout.strip().split("=", 1)[1].replace(":", "").lower() == (
        certificate_fingerprint(chain.leaf)
    )
    for loader in (load_certificate_pem, load_certificates_pem):
        with pytest.raises(PKIError, match="PEM certificate"):
            loader(b"garbage")
