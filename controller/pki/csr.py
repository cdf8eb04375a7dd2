"""Loading and verifying certificate signing requests."""

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from .errors import PKIError
from .keys import PublicKey


def load_csr(pem: bytes | str) -> x509.CertificateSigningRequest:
    """Load a PEM certificate signing request."""
    if isinstance(pem, str):
        pem = pem.encode()
    try:
        return x509.load_pem_x509_csr(pem)
    except ValueError:
        raise PKIError("not a PEM certificate signing request (expected -----BEGIN CERTIFICATE "
                       "REQUEST----- with a complete, valid DER body)") from None


def verify_csr(csr: x509.CertificateSigningRequest) -> None:
    """Check proof of possession: the CSR must be signed by the key it carries."""
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise PKIError("CSR signature is invalid")


def csr_public_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    """The CSR's public key, restricted to the supported key types."""
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"unsupported CSR public key: {exc}") from None
    if not isinstance(key, PublicKey):
        raise PKIError(f"unsupported CSR public key type {type(key).__name__}")
    return key
