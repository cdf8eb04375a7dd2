"""Per-device `kubernetes.io/tls` Secrets for the fleets that opt in (`spec.tlsSecrets`).

Run after a successful apply of the namespace: for each opted-in fleet, one Secret per device
with an active certificate, `<namePrefix><device id as a DNS-1123 name>`, with `tls.crt`
(leaf and chain), `tls.key` (PKCS#8) and `ca.crt` (the root), labelled with the fleet and
annotated with the certificate's serial. A Secret is created when missing, replaced when the
serial changed (renewal, re-key) and not written when it is the same; Secrets of the fleet
whose device has no active certificate any more, and those of fleets that no longer opt in,
are deleted. The PEMs come from the job layer (`jobs.device_tls_bundles`), the same code as
`fleetpki export`.

Verbs (ClusterRole `fleetpki-device-tls-secrets`, bound per namespace): list, create, update,
delete on Secrets. A namespace where no fleet opts in needs none of them: a refused list there
is not an error.

Failures (a missing RoleBinding, a conflict, a Secret of the same name not made by fleetpki)
are logged and told in a Warning event on the fleet (once per distinct message), and the run
raises `TLSSecretsError` so that kopf retries it; the certificates themselves are applied and
their status written already. No message ever holds Secret data.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller import jobs
from controller.api.names import MANAGED_BY, hashed_name
from controller.api.resources import API_VERSION, DNS_SUBDOMAIN, TLSSecrets

FLEET_LABEL = "fleetpki.io/fleet"
SERIAL_ANNOTATION = "fleetpki.io/serial"
TLS_TYPE = "kubernetes.io/tls"
SELECTOR = f"{MANAGED_BY}=fleetpki,{FLEET_LABEL}"
FAILED_REASON = "TLSSecretsFailed"
_NAME = re.compile(DNS_SUBDOMAIN)
log = logging.getLogger("fleetpki.operator")

# (DeviceFleet body, message): a Warning event on the fleet
Warn = Callable[[Mapping[str, Any], str], None]


class TLSSecretsError(Exception):
    """Some Secrets could not be written or deleted; the message names them, never their
    data. The run is retried."""


def device_name(device: str) -> str:
    """A device id as a DNS-1123 name: the id itself when it is one; otherwise lowercased,
    every run of other characters as '-', plus 8 hex digits of the id's SHA-256, so that ids
    differing only in case or punctuation stay apart."""
    return device if _NAME.match(device) else hashed_name(device, device, 8)


@dataclass(frozen=True)
class OptedIn:
    """A fleet of the namespace with `spec.tlsSecrets`, as the cluster holds it."""

    body: Mapping[str, Any]
    prefix: str

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


def opted_in(objects: Iterable[Mapping[str, Any]]) -> dict[str, OptedIn]:
    """The DeviceFleets with `spec.tlsSecrets` (validated by the apply that preceded)."""
    found: dict[str, OptedIn] = {}
    for body in objects:
        raw = (body.get("spec") or {}).get("tlsSecrets") if body.get("kind") == "DeviceFleet" \
            else None
        if raw is not None:
            name = body["metadata"]["name"]
            found[name] = OptedIn(body, TLSSecrets.model_validate(raw).prefix(name))
    return found


@dataclass(frozen=True)
class Existing:
    """A Secret made here, as listed."""

    serial: str | None
    resource_version: str | None


def _failure(what: str, exc: ApiException) -> str:
    return f"{what}: HTTP {exc.status} {exc.reason}"  # never the body: it may echo the data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class TLSSecretSync:
    """The per-device Secrets of one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str, state: jobs.StateDir,
                 warn: Warn, announced: dict[str, str]) -> None:
        """`announced`: each fleet's failure last told in an event, kept by the caller across
        runs (the same failure is not told again on every retry)."""
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.state = state
        self.warn = warn
        self.announced = announced

    def sync(self, fleets: Mapping[str, OptedIn]) -> dict[str, int]:
        """Converge; returns counts of Secrets created, updated and deleted. Raises
        TLSSecretsError (after doing everything else) when some could not be written."""
        done = {"created": 0, "updated": 0, "deleted": 0}
        try:
            listed = self.core.list_namespaced_secret(self.namespace,
                                                      label_selector=SELECTOR).items
        except ApiException as exc:
            if not fleets and exc.status in (403, 404):
                return done  # nothing opts in here, and nothing may have been written
            raise TLSSecretsError(_failure(f"cannot list the Secrets of namespace "
                                           f"{self.namespace}", exc)) from None
        current: dict[str, dict[str, Existing]] = {}
        for secret in listed:
            meta = secret.metadata
            if secret.type != TLS_TYPE or meta is None or not meta.name:
                continue  # never anything but the Secrets made here, whatever their labels
            fleet = (meta.labels or {}).get(FLEET_LABEL, "")
            current.setdefault(fleet, {})[meta.name] = Existing(
                (meta.annotations or {}).get(SERIAL_ANNOTATION), meta.resource_version)
        failures: list[str] = []
        for fleet in sorted(set(current) | set(fleets)):
            secrets = current.get(fleet, {})
            found = self._fleet(fleets[fleet], secrets, done) if fleet in fleets else \
                self._delete(secrets, set(secrets), done)
            if fleet in fleets:
                self._tell(fleets[fleet], found)
            failures.extend(found)
        if failures:
            more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
            raise TLSSecretsError("; ".join(failures[:5]) + more)
        return done

    def _tell(self, fleet: OptedIn, failures: list[str]) -> None:
        if not failures:
            self.announced.pop(fleet.name, None)
            return
        message = f"{len(failures)} device TLS Secret(s) not written: {failures[0]}"
        for failure in failures:
            log.warning("namespace %s, DeviceFleet %s: %s", self.namespace, fleet.name, failure)
        if self.announced.get(fleet.name) != message:
            self.warn(fleet.body, message[:1024])
            self.announced[fleet.name] = message

    def _fleet(self, fleet: OptedIn, secrets: Mapping[str, Existing],
               done: dict[str, int]) -> list[str]:
        failures: list[str] = []
        serials = jobs.active_serials(self.state, fleet.name)
        names: dict[str, str] = {}  # Secret name -> device
        shared: set[str] = set()
        for device in sorted(serials):
            name = fleet.prefix + device_name(device)
            if name in names:
                shared.add(name)
                failures.append(f"devices {names[name]!r} and {device!r} would share the "
                                f"Secret {name}; neither gets one")
            names[name] = device
        for name in shared:
            del names[name]
        stale = {device for name, device in names.items()
                 if name not in secrets or secrets[name].serial != serials[device]}
        for bundle in jobs.device_tls_bundles(self.state, fleet.name, stale):
            name = fleet.prefix + device_name(bundle.device)
            existing = secrets.get(name)
            body = self._body(fleet, name, bundle, existing)
            try:
                if existing is None:
                    self.core.create_namespaced_secret(self.namespace, body)
                    done["created"] += 1
                else:
                    self.core.replace_namespaced_secret(name, self.namespace, body)
                    done["updated"] += 1
            except ApiException as exc:
                failures.append(_failure(f"Secret {name}", exc))
        return failures + self._delete(secrets, set(secrets) - set(names), done)

    def _delete(self, secrets: Mapping[str, Existing], names: set[str],
                done: dict[str, int]) -> list[str]:
        failures: list[str] = []
        for name in sorted(names):
            try:
                self.core.delete_namespaced_secret(name, self.namespace)
                done["deleted"] += 1
            except ApiException as exc:
                if exc.status != 404:
                    failures.append(_failure(f"deleting Secret {name}", exc))
        return failures

    def _body(self, fleet: OptedIn, name: str, bundle: jobs.DeviceTLS,
              existing: Existing | None) -> client.V1Secret:
        pem = bundle.pem
        assert pem.key is not None  # device_tls_bundles yields only devices with a key
        uid = fleet.body["metadata"].get("uid")
        owners = [client.V1OwnerReference(api_version=API_VERSION, kind="DeviceFleet",
                                          name=fleet.name, uid=uid, controller=True)] \
            if uid else None
        return client.V1Secret(
            api_version="v1", kind="Secret", type=TLS_TYPE,
            metadata=client.V1ObjectMeta(
                name=name, namespace=self.namespace,
                labels={MANAGED_BY: "fleetpki", FLEET_LABEL: fleet.name},
                annotations={SERIAL_ANNOTATION: bundle.serial}, owner_references=owners,
                resource_version=existing.resource_version if existing else None),
            data={"tls.crt": _b64(pem.certificate + pem.chain), "tls.key": _b64(pem.key),
                  "ca.crt": _b64(pem.ca)})
