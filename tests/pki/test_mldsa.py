"""ML-DSA chains.

The system `openssl` CLI (3.0) does not know ML-DSA, so these chains are checked with
cryptography's own signature verification (bundled OpenSSL) instead.
"""

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import SignatureAlgorithmOID

from controller.pki import certificate_to_pem, key_algorithm_of, load_certificate_pem

from .support import ChainFor

OIDS = {
    "ML-DSA-44": SignatureAlgorithmOID.ML_DSA_44,
    "ML-DSA-65": SignatureAlgorithmOID.ML_DSA_65,
    "ML-DSA-87": SignatureAlgorithmOID.ML_DSA_87,
}


@pytest.mark.parametrize("algorithm", list(OIDS))
def test_mldsa_chain_verifies(algorithm: str, chain_for: ChainFor) -> None:
    chain = chain_for(algorithm)
    chain.root.verify_directly_issued_by(chain.root)
    chain.inter.verify_directly_issued_by(chain.root)
    chain.leaf.verify_directly_issued_by(chain.inter)
    for cert in (chain.root, chain.inter, chain.leaf):
        assert cert.signature_algorithm_oid == OIDS[algorithm]
        assert cert.signature_hash_algorithm is None
        assert key_algorithm_of(cert.public_key()) == algorithm  # type: ignore[arg-type]
    assert load_certificate_pem(certificate_to_pem(chain.leaf)) == chain.leaf
    assert chain.leaf.not_valid_after_utc == chain.inter.not_valid_after_utc
    assert chain.leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_mldsa_leaf_does_not_verify_against_the_wrong_issuer(chain_for: ChainFor) -> None:
    chain = chain_for("ML-DSA-65")
    other = chain_for("ML-DSA-44")
    with pytest.raises((InvalidSignature, ValueError)):
        chain.leaf.verify_directly_issued_by(chain.root)
    with pytest.raises((InvalidSignature, ValueError, TypeError)):
        chain.inter.verify_directly_issued_by(other.root)
