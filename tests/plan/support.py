"""Desired and observed states built by hand for the planner tests (no YAML, no inventory)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.api.desired import Desired, cross_check
from controller.api.devices import DeviceSet
from controller.api.loading import Located
from controller.api.resources import (
    CertificateAuthority,
    CertificateProfile,
    Device,
    DeviceFleet,
)
from controller.plan.intents import DeviceIntent
from controller.plan.model import CAObserved, CRLObserved, FleetObserved, Observed, Plan
from controller.plan.planner import ca_intent, plan

NOW = datetime(2030, 1, 1, tzinfo=UTC)
NOW_S = int(NOW.timestamp())
HOUR = 3600
DAY = 24 * HOUR
# Names chosen so that sorting alone would put the intermediate first.
ROOT = "z-root"
ISSUING = "a-issuing"
SITE_OID = "1.3.6.1.4.1.55555.1.2"
PROFILE_SPEC: dict[str, Any] = {
    "keyAlgorithm": "ECDSA-P256",
    "subject": {"commonName": "{{ device.id }}"},
    "extensions": [{"oid": SITE_OID, "value": "{{ device.labels.site }}"}],
}


def device(device_id: str, site: str = "berlin", **fields: Any) -> dict[str, Any]:
    return {"id": device_id, "labels": {"site": site}, **fields}


def authorities() -> list[Located]:
    root = {"type": "root", "subject": {"commonName": "Root"}}
    issuing = {"type": "intermediate", "parentRef": {"name": ROOT},
               "subject": {"commonName": "Issuing"}}
    return [
        Located(CertificateAuthority.model_validate({"metadata": {"name": ROOT}, "spec": root}),
                "authorities.yaml", 1),
        Located(CertificateAuthority.model_validate({"metadata": {"name": ISSUING},
                                                     "spec": issuing}), "authorities.yaml", 10),
    ]


def make_desired(
    devices: list[dict[str, Any]] | None = None,
    *,
    profile: dict[str, Any] | None = None,
    fleet: dict[str, Any] | None = None,
    more_fleets: dict[str, list[dict[str, Any]]] | None = None,
    ca_changes: dict[str, dict[str, Any]] | None = None,
) -> Desired:
    """Root + intermediate, profile `client` (PROFILE_SPEC | profile), fleet `sensors`.

    `devices` defaults to dev-1 and dev-2 at site berlin; `fleet` adds spec fields to
    `sensors`; `more_fleets` adds fleets (same issuer and profile) by name.
    """
    located = authorities()
    for name, changes in (ca_changes or {}).items():
        index = [item.resource.name for item in located].index(name)
        ca = located[index].resource
        data = ca.model_dump(mode="json")
        data["spec"] = {**data["spec"], **changes}
        located[index] = replace(located[index], resource=CertificateAuthority.model_validate(data))
    profile_spec = {**PROFILE_SPEC, **(profile or {})}
    located.append(Located(CertificateProfile.model_validate(
        {"metadata": {"name": "client"}, "spec": profile_spec}), "profiles.yaml", 1))
    fleets = {"sensors": (devices if devices is not None else [device("dev-1"), device("dev-2")],
                          fleet or {})}
    fleets.update({name: (devs, {}) for name, devs in (more_fleets or {}).items()})
    fleet_devices: dict[str, DeviceSet] = {}
    for name, (devs, extra) in fleets.items():
        spec = {"issuerRef": {"name": ISSUING}, "profileRef": {"name": "client"}, **extra}
        located.append(Located(DeviceFleet.model_validate(
            {"metadata": {"name": name}, "spec": spec}), f"fleets/{name}.yaml", 1))
        models = tuple(Device.model_validate(d) for d in devs)
        fleet_devices[name] = DeviceSet.of(models, {d.id: (f"fleets/{name}.csv", i + 2)
                                                    for i, d in enumerate(models)})
    desired, problems = cross_check(located, fleet_devices)
    assert problems == [], problems
    return desired


Intents = dict[tuple[str, str], DeviceIntent]


class Made(dict[tuple[str, str], DeviceIntent]):
    """An `IntentSink` keeping every intent told, by fleet and device."""

    def __call__(self, fleet: str, intent: DeviceIntent, labels: Mapping[str, str]) -> None:
        self[fleet, intent.device_id] = intent

    def gathered(self) -> Intents:
        found = dict(self)
        self.clear()
        return found

    def add(self, gathered: Intents) -> None:
        self.update(gathered)


def planned(desired: Desired, observed: Observed, now: datetime = NOW,
            **options: Any) -> tuple[Plan, Intents]:
    """The plan and, by fleet and device, the intents its planner made (it keeps none)."""
    made = Made()
    return plan(desired, observed, now, made=made, **options), dict(made)


def fresh_crl() -> CRLObserved:
    """Published an hour ago, valid for a week: not due."""
    return CRLObserved(NOW_S - HOUR, NOW_S - HOUR + 7 * DAY)


def converged(desired: Desired, renew_at: int = NOW_S + 30 * DAY) -> Observed:
    """What the inventory holds right after applying `desired`: nothing left to do."""
    intents = planned(desired, Observed())[1]
    cas = {name: CAObserved(f"ca-{name}", ca_intent(desired.authority(name)),
                            NOW_S + 3000 * DAY, NOW_S + 2000 * DAY)
           for name in desired.authorities}
    fleets = {}
    for name, decl in desired.fleets.items():
        active = {device_id: (f"serial-{device_id}", intent.digest, renew_at, intent.source)
                  for (fleet, device_id), intent in intents.items() if fleet == name}
        fleets[name] = FleetObserved(decl.content_hash, active, active_count=len(active))
    return Observed(cas, {name: fresh_crl() for name in cas}, fleets, frozenset(cas))


def with_fleet(observed: Observed, name: str, seen: FleetObserved) -> Observed:
    return replace(observed, fleets={**observed.fleets, name: seen})


def public_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
