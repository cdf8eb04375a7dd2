"""Gather what the inventory knows into the plain `Observed` input of the planner."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from controller.api.desired import Desired
from controller.clock import epoch
from controller.plan.model import CAObserved, CRLObserved, FleetObserved, Observed
from controller.stores.inventory import ActiveOf, Inventory
from controller.stores.releases import Releases


def observe(inventory: Inventory, desired: Desired, now: datetime,
            elsewhere: Sequence[Inventory] = (), active: ActiveOf | None = None) -> Observed:
    """One place that reads state; fleets unchanged since their last apply load only due rows,
    and those whose changed rows are known, the certificates of those devices and due rows.
    `elsewhere`: inventories whose revocations under our CAs our CRLs list too (the namespaces
    that issue from the cluster-wide CAs). `active` reads a fleet's active certificates
    (default: `inventory.active_devices`)."""
    active = active or inventory.active_devices
    now_s = epoch(now)
    authorities: dict[str, CAObserved] = {}
    crls: dict[str, CRLObserved] = {}
    releases = Releases(inventory)
    for name in inventory.ca_names():
        record = inventory.active_ca(name)
        if record is None:
            continue
        authorities[name] = CAObserved(record.serial, record.intent, record.not_after,
                                       record.renew_at)
        crl = inventory.crl(record.serial)
        if crl is not None:
            missing = inventory.revoked_total(record.serial) + \
                releases.revoked_total(record.serial) - crl.revoked_total + \
                sum(other.revoked_total(record.serial) for other in elsewhere)
            crls[name] = CRLObserved(crl.this_update, crl.next_update, missing)
    fleets: dict[str, FleetObserved] = {}
    # Owners starting with "_" (e.g. `fleetpki serve`'s own TLS certificate) are not fleets.
    known = {name for name in inventory.fleet_names() if not name.startswith("_")}
    for name in sorted(known | set(desired.fleets)):
        stored_hash = inventory.fleet_hash(name)
        decl = desired.fleets.get(name)
        count = inventory.active_count(name)
        changes = decl.device_set.changes if decl is not None else None
        if decl is not None and stored_hash == decl.content_hash:
            fleets[name] = FleetObserved(stored_hash, None, inventory.due_devices(name, now_s),
                                         count)
        elif changes is not None:  # only these rows changed since the last complete apply
            fleets[name] = FleetObserved(stored_hash, inventory.active_of(name, changes.ids),
                                         inventory.due_devices(name, now_s), count)
        else:
            fleets[name] = FleetObserved(stored_hash, active(name),
                                         active_count=count)
    signed = {name: (r.serial, r.digest) for name in desired.releases
              if (r := releases.current(name)) is not None}
    signers = {name: tuple(r.serial for r in releases.active(name))
               for name in desired.signing_profiles}
    return Observed(authorities, crls, fleets, frozenset(inventory.ca_names()), signed,
                    {name: serials for name, serials in signers.items() if serials})
