"""Signing releases: manifests, CMS SignedData, RFC 3161 timestamps and their verification.

Pure: no I/O. asn1crypto builds and parses the ASN.1 structures; cryptography signs and
verifies. See docs/signing.md.
"""
