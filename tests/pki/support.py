"""Builders and constants shared by the PKI tests."""

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509

from controller.pki import (
    PrivateKey,
    build_ca_certificate,
    build_leaf_certificate,
    build_name,
    der_utf8_string,
    generate_private_key,
)

Openssl = Callable[..., subprocess.CompletedProcess[str]]
Writer = Callable[[str, bytes], str]
KeyFor = Callable[[str], PrivateKey]

NOW = datetime.now(UTC).replace(microsecond=0)
ROOT_CRL = "http://pki.fleet.example/crl/root.crl"
INTER_CRL = "http://pki.fleet.example/crl/intermediate.crl"
INTER_OCSP = "http://ocsp.fleet.example/intermediate"
DEVICE_OID = "1.3.6.1.4.1.55555.1.1"
DEVICE_MODEL = "sensor-x1"
LEAF_DNS = "device-1.fleet.example"
LEAF_URI = "spiffe://fleet.example/device/1"


@dataclass(frozen=True)
class Chain:
    """Root -> intermediate (pathLength 0) -> leaf, with their keys."""

    root_key: PrivateKey
    root: x509.Certificate
    inter_key: PrivateKey
    inter: x509.Certificate
    leaf_key: PrivateKey
    leaf: x509.Certificate


ChainFor = Callable[[str], Chain]


def make_root(
    algorithm: str, common_name: str = "Fleet Root CA"
) -> tuple[PrivateKey, x509.Certificate]:
    """A self-signed root valid for ten years."""
    key = generate_private_key(algorithm)
    root = build_ca_certificate(
        subject=build_name({"commonName": common_name, "organization": "Fleet", "country": "DE"}),
        public_key=key.public_key(),
        issuer_key=key,
        issuer_certificate=None,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=3650),
        path_length=1,
    )
    return key, root


def make_chain(algorithm: str) -> Chain:
    """A full chain whose leaf asks for 20 years (clamped to the intermediate's 5)."""
    root_key, root = make_root(algorithm)
    inter_key = generate_private_key(algorithm)
    inter = build_ca_certificate(
        subject=build_name({"commonName": "Fleet Issuing CA", "organization": "Fleet"}),
        public_key=inter_key.public_key(),
        issuer_key=root_key,
        issuer_certificate=root,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=5 * 365),
        path_length=0,
        crl_distribution_point=ROOT_CRL,
    )
    leaf_key = generate_private_key(algorithm)
    leaf = build_leaf_certificate(
        subject=build_name({"commonName": "device-1"}),
        subject_alt_names=[x509.DNSName(LEAF_DNS), x509.UniformResourceIdentifier(LEAF_URI)],
        public_key=leaf_key.public_key(),
        issuer_key=inter_key,
        issuer_certificate=inter,
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + timedelta(days=20 * 365),
        usages=["digital signature", "client auth"],
        extra_extensions=[(DEVICE_OID, der_utf8_string(DEVICE_MODEL))],
        crl_distribution_point=INTER_CRL,
        ocsp_url=INTER_OCSP,
    )
    return Chain(root_key, root, inter_key, inter, leaf_key, leaf)
