"""CRLs, checked by cryptography and by the independent `openssl` CLI."""

import random
import re
from datetime import timedelta

import pytest
from cryptography import x509

from controller.pki import (
    REVOCATION_REASONS,
    PKIError,
    RevokedEntry,
    build_crl,
    build_leaf_certificate,
    build_name,
    certificate_to_pem,
    crl_to_der,
    crl_to_pem,
)
from controller.pki.keys import signature_hash

from .support import NOW, KeyFor, Openssl, Writer, make_root

ALGORITHM = "ECDSA-P256"


def _leaf_under_root(
    root_key: object, root: x509.Certificate, key_for: KeyFor, name: str
) -> x509.Certificate:
    return build_leaf_certificate(
        subject=build_name({"commonName": name}),
        subject_alt_names=[x509.DNSName(f"{name}.fleet.example")],
        public_key=key_for("Ed25519").public_key(),
        issuer_key=root_key,  # type: ignore[arg-type]
        issuer_certificate=root,
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + timedelta(days=30),
        usages=["client auth"],
    )


def test_crl_contents_signature_and_revocation_check_with_openssl(
    key_for: KeyFor, openssl: Openssl, write: Writer
) -> None:
    root_key, root = make_root(ALGORITHM)
    revoked = _leaf_under_root(root_key, root, key_for, "revoked")
    good = _leaf_under_root(root_key, root, key_for, "good")
    entries = [
        RevokedEntry(revoked.serial_number, NOW - timedelta(minutes=1), "keyCompromise"),
        RevokedEntry(1234567, NOW - timedelta(days=2), "cessationOfOperation"),
        RevokedEntry(7654321, NOW - timedelta(days=3), "superseded"),
    ]
    next_update = NOW + timedelta(days=7)
    crl = build_crl(
        issuer_certificate=root,
        issuer_key=root_key,
        entries=entries,
        crl_number=42,
        this_update=NOW - timedelta(minutes=1),
        next_update=next_update,
    )
    write("root.pem", certificate_to_pem(root))
    write("crl.pem", crl_to_pem(crl))
    write("revoked.pem", certificate_to_pem(revoked))
    write("good.pem", certificate_to_pem(good))

    text = openssl("crl", "-in", "crl.pem", "-noout", "-text")
    assert text.returncode == 0, text.stdout
    assert re.search(r"X509v3 CRL Number: *\n +42\n", text.stdout), text.stdout
    for shown in ("Key Compromise", "Cessation Of Operation", "Superseded"):
        assert shown in text.stdout
    shown_next = f"{next_update:%b} {next_update.day:2d} {next_update:%H:%M:%S %Y} GMT"
    assert f"Next Update: {shown_next}" in text.stdout
    assert "X509v3 Authority Key Identifier" in text.stdout

    verified = openssl("crl", "-in", "crl.pem", "-CAfile", "root.pem", "-verify", "-noout")
    assert verified.returncode == 0 and "verify OK" in verified.stdout, verified.stdout

    check = ("verify", "-crl_check", "-CAfile", "root.pem", "-CRLfile", "crl.pem")
    rejected = openssl(*check, "revoked.pem")
    assert rejected.returncode != 0 and "certificate revoked" in rejected.stdout
    accepted = openssl(*check, "good.pem")
    assert accepted.returncode == 0 and "good.pem: OK" in accepted.stdout, accepted.stdout


def test_crl_signed_by_another_ca_fails_openssl_verify(openssl: Openssl, write: Writer) -> None:
    root_key, root = make_root(ALGORITHM)
    _, other = make_root(ALGORITHM, "Other Root")
    crl = build_crl(
        issuer_certificate=root,
        issuer_key=root_key,
        entries=[],
        crl_number=1,
        this_update=NOW,
        next_update=NOW + timedelta(days=1),
    )
    write("other.pem", certificate_to_pem(other))
    write("crl.pem", crl_to_pem(crl))
    result = openssl("crl", "-in", "crl.pem", "-CAfile", "other.pem", "-verify", "-noout")
    assert "verify OK" not in result.stdout


def test_reason_extension_omitted_for_unspecified_and_entries_round_trip() -> None:
    root_key, root = make_root(ALGORITHM)
    entries = [
        RevokedEntry(index + 1, NOW - timedelta(hours=index), reason)
        for index, reason in enumerate(REVOCATION_REASONS)
    ]
    crl = x509.load_der_x509_crl(
        crl_to_der(
            build_crl(
                issuer_certificate=root,
                issuer_key=root_key,
                entries=entries,
                crl_number=7,
                this_update=NOW,
                next_update=NOW + timedelta(days=1),
            )
        )
    )
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl.next_update_utc == NOW + timedelta(days=1)
    assert len(crl) == len(REVOCATION_REASONS)
    for entry in entries:
        revoked = crl.get_revoked_certificate_by_serial_number(entry.serial)
        assert revoked is not None and revoked.revocation_date_utc == entry.revoked_at
        if entry.reason == "unspecified":
            with pytest.raises(x509.ExtensionNotFound):
                revoked.extensions.get_extension_for_class(x509.CRLReason)
        else:
            reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
            assert reason == REVOCATION_REASONS[entry.reason]


def test_crl_rejections(key_for: KeyFor) -> None:
    root_key, root = make_root(ALGORITHM)
    arguments: dict[str, object] = {
        "issuer_certificate": root,
        "issuer_key": root_key,
        "entries": [],
        "crl_number": 1,
        "this_update": NOW,
        "next_update": NOW + timedelta(days=1),
    }
    with pytest.raises(PKIError, match="'compromised'"):
        build_crl(**{**arguments, "entries": [RevokedEntry(1, NOW, "compromised")]})  # type: ignore[arg-type]
    with pytest.raises(PKIError, match="serial"):
        build_crl(**{**arguments, "entries": [RevokedEntry(0, NOW, "superseded")]})  # type: ignore[arg-type]
    with pytest.raises(PKIError, match="next_update"):
        build_crl(**{**arguments, "next_update": NOW})  # type: ignore[arg-type]
    with pytest.raises(PKIError, match="does not match"):
        build_crl(**{**arguments, "issuer_key": key_for(ALGORITHM)})  # type: ignore[arg-type]


def _builders_crl(root: x509.Certificate, key: object, entries: list[RevokedEntry],
                  number: int) -> x509.CertificateRevocationList:
    """The same CRL made entry by entry with cryptography's builders: the reference."""
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=root.subject, last_update=NOW, next_update=NOW + timedelta(days=1))
    for entry in entries:
        revoked = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(
            entry.revoked_at)
        if entry.reason != "unspecified":
            revoked = revoked.add_extension(
                x509.CRLReason(REVOCATION_REASONS[entry.reason]), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    builder = builder.add_extension(x509.CRLNumber(number), critical=False).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key()),  # type: ignore[arg-type]
        critical=False)
    return builder.sign(key, signature_hash(key))  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm, count", [
    ("ECDSA-P256", 3000), ("ECDSA-P384", 500), ("Ed25519", 500), ("RSA-3072", 300),
    ("ML-DSA-65", 300)])
def test_spliced_crl_is_the_builders_for_random_entries(
        algorithm: str, count: int, openssl: Openssl, write: Writer) -> None:
    """Serials of every length up to 159 bits, times before and after 2050 (UTCTime and
    GeneralizedTime), every reason: the TBS bytes are the builder's, the signature verifies
    (and for deterministic Ed25519 the whole CRL is the builder's)."""
    generator = random.Random(f"crl-{algorithm}")
    root_key, root = make_root(algorithm)
    reasons = list(REVOCATION_REASONS)
    entries = [RevokedEntry(generator.randrange(1, 2 ** generator.randint(1, 159)),
                            NOW + timedelta(seconds=generator.randint(-10 ** 9, 10 ** 9)),
                            generator.choice(reasons)) for _ in range(count)]
    number = generator.randrange(0, 2 ** 64)
    ours = build_crl(issuer_certificate=root, issuer_key=root_key, entries=entries,
                     crl_number=number, this_update=NOW, next_update=NOW + timedelta(days=1))
    theirs = _builders_crl(root, root_key, entries, number)
    assert ours.tbs_certlist_bytes == theirs.tbs_certlist_bytes
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    assert ours.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    if algorithm == "Ed25519":
        assert crl_to_der(ours) == crl_to_der(theirs)
    if not algorithm.startswith("ML-DSA"):  # Debian's OpenSSL 3.0 has no ML-DSA
        write("root.pem", certificate_to_pem(root))
        write("crl.pem", crl_to_pem(ours))
        verified = openssl("crl", "-in", "crl.pem", "-CAfile", "root.pem", "-verify", "-noout")
        assert verified.returncode == 0 and "verify OK" in verified.stdout, verified.stdout
