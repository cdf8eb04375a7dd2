"""Device-facing servers: OCSP, CRL/CA distribution (HTTP) and EST (HTTPS)."""
