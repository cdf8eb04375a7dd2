"""fleetpki: declarative, GitOps-driven PKI for IoT device fleets."""

__version__ = "0.1.0"
