"""cert-manager usage names mapped to X.509 KeyUsage and ExtendedKeyUsage."""

from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from .errors import PKIError

_KEY_USAGE_FIELDS: dict[str, str] = {
    "signing": "digital_signature",
    "digital signature": "digital_signature",
    "content commitment": "content_commitment",
    "key encipherment": "key_encipherment",
    "key agreement": "key_agreement",
    "data encipherment": "data_encipherment",
    "cert sign": "key_cert_sign",
    "crl sign": "crl_sign",
    "encipher only": "encipher_only",
    "decipher only": "decipher_only",
}
_EXTENDED_USAGES: dict[str, x509.ObjectIdentifier] = {
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "s/mime": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsec end system": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.5"),
    "ipsec tunnel": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.6"),
    "ipsec user": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "microsoft sgc": x509.ObjectIdentifier("1.3.6.1.4.1.311.10.3.3"),
    "netscape sgc": x509.ObjectIdentifier("2.16.840.1.113730.4.1"),
}
USAGE_NAMES: frozenset[str] = frozenset(_KEY_USAGE_FIELDS) | frozenset(_EXTENDED_USAGES)


def parse_usages(usages: Sequence[str]) -> tuple[x509.KeyUsage, list[x509.ObjectIdentifier]]:
    """Translate usage names to a KeyUsage and de-duplicated EKU OIDs.

    When no key usage is named, the KeyUsage asserts digital signature only.
    """
    fields = dict.fromkeys(_KEY_USAGE_FIELDS.values(), False)
    extended: list[x509.ObjectIdentifier] = []
    for usage in usages:
        if usage in _KEY_USAGE_FIELDS:
            fields[_KEY_USAGE_FIELDS[usage]] = True
        elif usage in _EXTENDED_USAGES:
            if _EXTENDED_USAGES[usage] not in extended:
                extended.append(_EXTENDED_USAGES[usage])
        else:
            raise PKIError(f"unknown usage {usage!r}; allowed: {', '.join(sorted(USAGE_NAMES))}")
    if not any(fields.values()):
        fields["digital_signature"] = True
    if (fields["encipher_only"] or fields["decipher_only"]) and not fields["key_agreement"]:
        raise PKIError('"encipher only" and "decipher only" require "key agreement"')
    return x509.KeyUsage(**fields), extended
