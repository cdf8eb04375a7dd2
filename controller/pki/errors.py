"""Error type raised by the PKI layer."""


class PKIError(ValueError):
    """A PKI operation failed; messages never include key material."""
