"""fleetpki: declarative, GitOps-driven PKI for IoT device fleets."""

from importlib.metadata import version

__version__ = version("fleetpki")
