"""cert-manager usage names."""

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.pki import USAGE_NAMES, PKIError, parse_usages


def test_all_cert_manager_names_are_known() -> None:
    assert len(USAGE_NAMES) == 23
    for name in USAGE_NAMES:
        parse_usages([name] if "only" not in name else [name, "key agreement"])


def test_key_usages_and_extended_usages_are_split() -> None:
    key_usage, extended = parse_usages(
        ["signing", "key encipherment", "server auth", "s/mime", "email protection", "ipsec user"]
    )
    assert key_usage.digital_signature and key_usage.key_encipherment
    assert not key_usage.key_cert_sign and not key_usage.content_commitment
    assert extended == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
        x509.ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    ]


def test_digital_signature_is_the_default_key_usage() -> None:
    key_usage, extended = parse_usages(["client auth"])
    assert key_usage.digital_signature and not key_usage.key_encipherment
    assert extended == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_encipher_only_requires_key_agreement() -> None:
    with pytest.raises(PKIError, match="key agreement"):
        parse_usages(["encipher only"])
    key_usage, _ = parse_usages(["key agreement", "decipher only"])
    assert key_usage.decipher_only and not key_usage.encipher_only


def test_unknown_usage_is_named() -> None:
    with pytest.raises(PKIError, match="'server-auth'"):
        parse_usages(["client auth", "server-auth"])
