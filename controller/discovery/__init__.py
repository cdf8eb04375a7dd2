"""`fleetpki discover`: find certificates on TLS endpoints and in file trees, and classify them
against the inventory (see docs/discovery.md)."""
