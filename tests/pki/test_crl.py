"""CRLs, checked by cryptography and by the independent `openssl` CLI."""

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
