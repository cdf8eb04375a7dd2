"""Status in Kubernetes: each object's `.status` and aggregated Events.

The status documents are the ones git-only mode commits (`status/report.py`); here they get
what Kubernetes tools read: `observedGeneration` on the status and on every condition (kstatus,
`kubectl wait`, Flux and Argo CD health checks), `lastHandledReconcileAt` echoing the
`fleetpki.io/reconcile.requestedAt` annotation (Flux's convention), and an exponential backoff
of failing objects (cert-manager's 1h x 2^(n-1), capped), shown in the Stalled message.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.api.crds import GROUP, PLURALS, VERSION
from controller.api.status import STATUS_KINDS
from controller.status.report import status_path
from controller.status.store import StatusUpdate

REQUESTED_AT = "fleetpki.io/reconcile.requestedAt"
BACKOFF_BASE = timedelta(hours=1)
BACKOFF_CAP = timedelta(hours=32)
MERGE_PATCH = "application/merge-patch+json"
_RETRY_NOTE = " (attempt "
_EVENT_REASONS = {"issue": ("Issued", "issued"), "renew": ("Renewed", "renewed"),
                  "rekey": ("Rekeyed", "re-keyed"), "revoke": ("Revoked", "revoked"),
                  "create-ca": ("Created", "created"), "renew-ca": ("Renewed", "renewed"),
                  "sign-release": ("Signed", "signed"),
                  "withdraw-release": ("Withdrawn", "withdrawn"),
                  "revoke-signer": ("Revoked", "revoked")}
_EVENT_OBJECTS = {"CertificateAuthority": "CA certificate", "Release": "release signature",
                  "SigningProfile": "signing certificates"}  # else: N device certificate(s)
log = logging.getLogger("fleetpki.operator")
# how the operator's cluster scope declares a cluster-scoped object to the job
DECLARED_AS = {"ClusterCertificateAuthority": "CertificateAuthority"}
CLUSTER_EVENTS = "default"  # where Kubernetes records the events of cluster-scoped objects


def declared_ref(body: Mapping[str, Any]) -> str:
    """"Kind/name" as the job knows the object (the status it writes, the actions it plans)."""
    return f"{DECLARED_AS.get(body['kind'], body['kind'])}/{body['metadata']['name']}"


def backoff(attempts: int, base: timedelta = BACKOFF_BASE,
            cap: timedelta = BACKOFF_CAP) -> timedelta:
    """Delay before the next automatic attempt after `attempts` failed ones."""
    return min(base * 2 ** max(attempts - 1, 0), cap)


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def stalled_message(status: Mapping[str, Any]) -> str | None:
    """The Stalled condition's message without the retry note, when Stalled is True."""
    stalled = _condition(status, "Stalled")
    if stalled.get("status") != "True":
        return None
    return str(stalled.get("message", "")).split(_RETRY_NOTE, 1)[0]


def kube_status(document: Mapping[str, Any], body: Mapping[str, Any], now: datetime,
                base: timedelta = BACKOFF_BASE) -> dict[str, Any]:
    """An object's `.status` from its status document and the object as last read."""
    metadata = body.get("metadata") or {}
    generation = metadata.get("generation")
    before = body.get("status") or {}
    status = {k: v for k, v in (document.get("status") or {}).items() if k != "observedCommit"}
    conditions = [dict(c) for c in status.get("conditions") or []]
    if generation is not None:
        status["observedGeneration"] = generation
        for condition in conditions:
            condition["observedGeneration"] = generation
    requested = (metadata.get("annotations") or {}).get(REQUESTED_AT)
    if requested:
        status["lastHandledReconcileAt"] = requested
    status["conditions"] = conditions
    for condition in conditions:
        if not condition.get("message"):  # an empty string fails 1.20's merge-patch validation
            condition.pop("message", None)
    if stalled_message(status) is not None:
        same_spec = before.get("observedGeneration") == generation
        attempts = int(before.get("failedAttempts") or 0) + 1 if same_spec else 1
        retry = (now + backoff(attempts, base)).strftime("%Y-%m-%dT%H:%M:%SZ")
        status["failedAttempts"] = attempts
        status["nextAttemptAt"] = retry
        note = f"{_RETRY_NOTE}{attempts}; next automatic retry at {retry}, sooner on any change)"
        for condition in conditions:
            if condition["type"] == "Stalled" or (condition["type"] == "Ready"
                                                  and condition["status"] == "False"):
                condition["message"] = str(condition.get("message", "")) + note
    return status


def _patch(kind: str, new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that makes the status exactly `new`, leaving kopf's own `status.kopf`
    alone: every other field of the kind's status (and any `old` one) not in `new` is removed,
    whatever the object as read still showed."""
    fields = {*STATUS_KINDS[kind].model_fields, *old} if kind in STATUS_KINDS else set(old)
    return {"status": {**{key: None for key in sorted(fields - set(new) - {"kopf"})}, **new}}


def events_of(update: StatusUpdate, bodies: Iterable[Mapping[str, Any]],
              stalled_before: Mapping[str, str | None],
              stalled_now: Mapping[str, str | None]) -> list[tuple[str, str, str, str]]:
    """(object "Kind/name", type, reason, message): one event per object and action, plus a
    warning when an object newly stalls (a deny, a refusal, a mistake)."""
    events: list[tuple[str, str, str, str]] = []
    if update.done:
        counts = Counter((a.kind, a.name, a.action) for a in update.plan.actions)
        for (kind, name, action), number in sorted(counts.items()):
            if action in _EVENT_REASONS:
                reason, verb = _EVENT_REASONS[action]
                what = _EVENT_OBJECTS.get(kind, f"{number} device certificate(s)")
                events.append((f"{kind}/{name}", "Normal", reason, f"{what} {verb}"))
    for body in bodies:
        ref = declared_ref(body)
        message = stalled_now.get(ref)
        if message is not None and message != stalled_before.get(ref):
            reason = "Denied" if "policy denial" in message else \
                "Refused" if update.outcome.refusal else "InvalidSpec"
            events.append((ref, "Warning", reason, message[:1024]))
    return events


class KubeStatus:
    """The `.status` of the objects of one namespace, or with `namespace` None of cluster-scoped
    objects (a StatusStore)."""

    def __init__(self, api: client.ApiClient, namespace: str | None,
                 bodies: Iterable[Mapping[str, Any]], base: timedelta = BACKOFF_BASE,
                 announced: dict[str, str | None] | None = None) -> None:
        """`announced`: each object's stall last told in an event, kept by the caller across
        runs (the objects as read may not show the last run's status yet)."""
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.bodies = {declared_ref(b): b for b in bodies}
        self.base = base
        self.announced = announced if announced is not None else {}

    @property
    def where(self) -> str:
        return f"in the .status of its object in namespace {self.namespace}" \
            if self.namespace is not None else "in the .status of its cluster-scoped object"

    def observed(self) -> str | None:
        return None  # each object's observedGeneration is set when writing

    def read(self) -> dict[str, bytes]:
        return {status_path(*ref.split("/", 1)): yaml.safe_dump({"status": b["status"]}).encode()
                for ref, b in self.bodies.items() if b.get("status")}

    def history(self, path: str) -> Iterable[bytes]:
        current = self.read().get(path)
        return [current] if current is not None else []

    def write(self, update: StatusUpdate) -> str | None:
        before: dict[str, str | None] = {}
        after: dict[str, str | None] = {}
        for ref, body in self.bodies.items():
            text = update.files.get(status_path(*ref.split("/", 1)))
            if text is None:
                continue
            status = kube_status(yaml.safe_load(text) or {}, body, update.now, self.base)
            old = body.get("status") or {}
            before[ref] = self.announced.get(ref, stalled_message(old))
            after[ref] = stalled_message(status)
            self._patch_status(body, _patch(body["kind"], status, old))
        for ref, kind, reason, message in events_of(update, self.bodies.values(), before, after):
            if ref in self.bodies:
                self.event(self.bodies[ref], kind, reason, message, update.now)
        self.announced.update(after)
        return None

    def _patch_status(self, body: Mapping[str, Any], patch: dict[str, Any]) -> None:
        name, plural = body["metadata"]["name"], PLURALS[body["kind"]]
        try:
            if self.namespace is None:
                self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, plural, name, patch, _content_type=MERGE_PATCH)
            else:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, self.namespace, plural, name, patch,
                    _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise

    def event(self, body: Mapping[str, Any], kind: str, reason: str, message: str,
              now: datetime) -> None:
        metadata = body["metadata"]
        where = self.namespace or CLUSTER_EVENTS
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{metadata['name']}.{secrets.token_hex(8)}", namespace=where),
            involved_object=client.V1ObjectReference(
                api_version=body.get("apiVersion"), kind=body["kind"], name=metadata["name"],
                namespace=self.namespace, uid=metadata.get("uid"),
                resource_version=metadata.get("resourceVersion")),
            reason=reason, message=message, type=kind, count=1,
            first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="fleetpki"),
            reporting_component="fleetpki.io/operator")
        try:
            self.core.create_namespaced_event(where, event)
        except ApiException as exc:  # an event is worth a log line, never a failed reconcile
            log.warning("cannot record event %s on %s/%s: HTTP %s", reason, body["kind"],
                        metadata["name"], exc.status)
