"""The Kubernetes emulator behaves as an API server where kmock alone does not: each addition is
exercised through the `kubernetes` client over real HTTP, and kopf runs against it."""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.kube_emulator import RunningEmulator, wait_for

GROUP, VERSION, PLURAL = "fleetpki.io", "v1alpha1", "devicefleets"
NS = "fleets"


def fleet(name: str, spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeviceFleet",
            "metadata": {"name": name, **metadata}, "spec": spec or {"devices": 1}}


@pytest.fixture
def crs(kube_emulator: RunningEmulator) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_emulator.api_client())


def create(crs: client.CustomObjectsApi, obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = crs.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, obj)
    return result


def patch(crs: client.CustomObjectsApi, name: str, body: Any, *, status: bool = False,
          content_type: str | None = None) -> dict[str, Any]:
    method = crs.patch_namespaced_custom_object_status if status \
        else crs.patch_namespaced_custom_object
    kwargs = {"_content_type": content_type} if content_type else {}
    result: dict[str, Any] = method(GROUP, VERSION, NS, PLURAL, name, body, **kwargs)
    return result


def read(crs: client.CustomObjectsApi, name: str) -> dict[str, Any]:
    result: dict[str, Any] = crs.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    return result


def api_error(call: Any, *args: Any, **kwargs: Any) -> ApiException:
    with pytest.raises(ApiException) as raised:
        call(*args, **kwargs)
    return raised.value


def test_server_sets_metadata_and_generation_bumps_on_spec_changes_only(
        crs: client.CustomObjectsApi) -> None:
    created = create(crs, fleet("a"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["namespace"] == NS
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0

    labelled = patch(crs, "a", {"metadata": {"labels": {"tier": "gold"}}})
    assert labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    status = patch(crs, "a", {"status": {"phase": "Ready"}}, status=True)
    assert status["metadata"]["generation"] == 1
    changed = patch(crs, "a", {"spec": {"devices": 2}})
    assert changed["metadata"]["generation"] == 2
    assert changed["metadata"]["uid"] == meta["uid"]
    assert changed["metadata"]["creationTimestamp"] == meta["creationTimestamp"]
    same = patch(crs, "a", {"spec": {"devices": 2}})  # no change: nothing moves
    assert same["metadata"] == changed["metadata"]


def test_status_is_isolated_both_ways(crs: client.CustomObjectsApi) -> None:
    created = create(crs, {**fleet("a"), "status": {"phase": "Forged"}})
    assert "status" not in created  # ignored on create, as with the status subresource

    main = patch(crs, "a", {"spec": {"devices": 3}, "status": {"phase": "Ignored"}})
    assert main["spec"] == {"devices": 3} and "status" not in main

    via_status = patch(crs, "a", {"spec": {"devices": 9}, "metadata": {"labels": {"x": "y"}},
                                  "status": {"phase": "Ready"}}, status=True)
    assert via_status["status"] == {"phase": "Ready"}
    assert via_status["spec"] == {"devices": 3} and "labels" not in via_status["metadata"]

    again = patch(crs, "a", {"status": None, "spec": {"devices": 4}})
    assert again["status"] == {"phase": "Ready"} and again["spec"] == {"devices": 4}
    assert read(crs, "a")["status"] == {"phase": "Ready"}


def test_stale_resource_version_and_duplicate_create_conflict(
        crs: client.CustomObjectsApi) -> None:
    created = create(crs, fleet("a"))
    stale = created["metadata"]["resourceVersion"]
    patch(crs, "a", {"spec": {"devices": 2}})

    error = api_error(crs.patch_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "a",
                      {"metadata": {"resourceVersion": stale}, "spec": {"devices": 5}})
    assert error.status == 409
    error = api_error(crs.replace_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "a",
                      {**created, "spec": {"devices": 5}})
    assert error.status == 409
    error = api_error(crs.patch_namespaced_custom_object_status, GROUP, VERSION, NS, PLURAL,
                      "a", {"metadata": {"resourceVersion": stale}, "status": {"x": 1}})
    assert error.status == 409
    assert read(crs, "a")["spec"] == {"devices": 2} and "status" not in read(crs, "a")

    error = api_error(create, crs, fleet("a"))
    assert error.status == 409 and "AlreadyExists" in str(error.body)


def test_missing_objects_and_resources_are_404(crs: client.CustomObjectsApi) -> None:
    assert api_error(read, crs, "nothing").status == 404
    assert api_error(patch, crs, "nothing", {"spec": {}}).status == 404
    assert api_error(crs.delete_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                     "nothing").status == 404
    assert api_error(crs.list_namespaced_custom_object, GROUP, VERSION, NS,
                     "unknowns").status == 404


def test_failed_json_patch_test_is_422(crs: client.CustomObjectsApi) -> None:
    create(crs, fleet("a", {"devices": 1}))
    ops = [{"op": "test", "path": "/spec/devices", "value": 7},
           {"op": "replace", "path": "/spec/devices", "value": 8}]
    error = api_error(patch, crs, "a", ops, content_type="application/json-patch+json")
    assert error.status == 422
    assert read(crs, "a")["spec"] == {"devices": 1}

    ops[0]["value"] = 1
    result = patch(crs, "a", ops, content_type="application/json-patch+json")
    assert result["spec"] == {"devices": 8} and result["metadata"]["generation"] == 2


def test_label_and_field_selectors(crs: client.CustomObjectsApi) -> None:
    create(crs, fleet("gold", labels={"tier": "gold", "site": "a"}))
    create(crs, fleet("silver", labels={"tier": "silver"}))
    create(crs, fleet("bare"))

    def names(**selectors: str) -> list[str]:
        listed = crs.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, **selectors)
        return [item["metadata"]["name"] for item in listed["items"]]

    assert names() == ["bare", "gold", "silver"]
    assert names(label_selector="tier=gold") == names(label_selector="tier==gold") == ["gold"]
    assert names(label_selector="tier!=gold") == ["bare", "silver"]
    assert names(label_selector="tier in (gold, silver),!site") == ["silver"]
    assert names(label_selector="tier notin (gold)") == ["bare", "silver"]
    assert names(label_selector="tier") == ["gold", "silver"]
    assert names(field_selector="metadata.name=bare") == ["bare"]
    assert api_error(names, label_selector="tier in gold").status == 400  # malformed
    assert crs.list_namespaced_custom_object(GROUP, VERSION, "elsewhere", PLURAL)["items"] == []
    listed = crs.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert listed["kind"] == "DeviceFleetList" and listed["metadata"]["resourceVersion"]


def test_put_replaces_the_object(crs: client.CustomObjectsApi) -> None:
    created = create(crs, fleet("a", {"devices": 1, "old": True}, labels={"x": "1"}))
    replaced = crs.replace_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "a",
        {**fleet("a", {"devices": 2}), "metadata": {
            "name": "a", "resourceVersion": created["metadata"]["resourceVersion"]}})
    assert replaced["spec"] == {"devices": 2} and "labels" not in replaced["metadata"]
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["metadata"]["generation"] == 2

    status = crs.replace_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "a", {**replaced, "status": {"phase": "Ready"}})
    assert status["status"] == {"phase": "Ready"} and status["metadata"]["generation"] == 2
    # A custom resource's PUT needs the resourceVersion, as on a real cluster.
    error = api_error(crs.replace_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "a",
                      fleet("a"))
    assert error.status == 422


def test_deletion_waits_for_finalizers(crs: client.CustomObjectsApi) -> None:
    create(crs, fleet("a", finalizers=["fleetpki.io/first", "fleetpki.io/second"]))
    crs.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    marked = read(crs, "a")
    assert marked["metadata"]["deletionTimestamp"]

    error = api_error(patch, crs, "a", {"metadata": {"finalizers": [
        "fleetpki.io/first", "fleetpki.io/second", "fleetpki.io/third"]}})
    assert error.status == 422
    patch(crs, "a", {"metadata": {"finalizers": ["fleetpki.io/second"]}})
    assert read(crs, "a")["metadata"]["finalizers"] == ["fleetpki.io/second"]
    patch(crs, "a", {"metadata": {"finalizers": None}})
    assert api_error(read, crs, "a").status == 404

    create(crs, fleet("a"))  # the name is free again
    crs.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    assert api_error(read, crs, "a").status == 404


def test_watch_streams_changes_with_resource_versions(crs: client.CustomObjectsApi) -> None:
    create(crs, fleet("before"))
    listed = crs.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    since = listed["metadata"]["resourceVersion"]

    created = create(crs, fleet("a", finalizers=["fleetpki.io/f"]))
    patched = patch(crs, "a", {"spec": {"devices": 2}})
    crs.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    patch(crs, "a", {"metadata": {"finalizers": []}})

    events = [(event["type"], event["object"]["metadata"]["name"],
               event["object"]["metadata"]["resourceVersion"])
              for event in watch.Watch().stream(
                  crs.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                  resource_version=since, timeout_seconds=1)]
    assert [event[:2] for event in events] == [
        ("ADDED", "a"), ("MODIFIED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert events[0][2] == created["metadata"]["resourceVersion"]
    assert events[1][2] == patched["metadata"]["resourceVersion"]
    assert len({event[2] for event in events}) == 4

    fresh = [(event["type"], event["object"]["metadata"]["name"])
             for event in watch.Watch().stream(crs.list_namespaced_custom_object, GROUP,
                                               VERSION, NS, PLURAL, timeout_seconds=1)]
    assert fresh == [("ADDED", "before")]


def test_live_watch_sees_a_change_and_ends_when_closed(
        kube_emulator: RunningEmulator, crs: client.CustomObjectsApi) -> None:
    seen: list[tuple[str, str]] = []

    def follow() -> None:
        for event in watch.Watch().stream(crs.list_namespaced_custom_object, GROUP, VERSION,
                                          NS, PLURAL, timeout_seconds=30):
            seen.append((event["type"], event["object"]["metadata"]["name"]))

    watcher = threading.Thread(target=follow)
    watcher.start()
    wait_for(lambda: kube_emulator.kube.open_watches == 1)
    create(crs, fleet("live"))
    wait_for(lambda: seen == [("ADDED", "live")])
    kube_emulator.close_watches()
    watcher.join(5)
    assert not watcher.is_alive()


def test_compaction_expires_old_resource_versions(
        kube_emulator: RunningEmulator, crs: client.CustomObjectsApi) -> None:
    since = create(crs, fleet("a"))["metadata"]["resourceVersion"]
    patch(crs, "a", {"spec": {"devices": 5}})
    kube_emulator.compact()
    with pytest.raises(ApiException) as raised:
        list(watch.Watch().stream(crs.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                                  resource_version=since, timeout_seconds=1))
    assert raised.value.status == 410


def test_injected_faults_and_delays(kube_emulator: RunningEmulator,
                                    crs: client.CustomObjectsApi) -> None:
    fault = kube_emulator.fail_next("PATCH", "/devicefleets/a/status", 503, count=2)
    create(crs, fleet("a"))  # not matching
    for _ in range(2):
        assert api_error(patch, crs, "a", {"status": {"x": 1}}, status=True).status == 503
    assert fault.hits == 2 and fault.remaining == 0
    assert "status" not in read(crs, "a")  # a failed request changed nothing
    assert patch(crs, "a", {"status": {"x": 1}}, status=True)["status"] == {"x": 1}

    delay = kube_emulator.add_delay("GET", "/devicefleets/a", 0.3)
    with pytest.raises(Exception, match="timed out"):  # urllib3 retries: every attempt is late
        crs.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", _request_timeout=0.1)
    assert delay.hits >= 1
    kube_emulator.remove_delay(delay)
    assert read(crs, "a")["status"] == {"x": 1}


def test_direct_helpers_and_core_resources(kube_emulator: RunningEmulator) -> None:
    kube_emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    stored = kube_emulator.create({"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": {"name": "c", "namespace": NS},
                                   "data": {"k": "v"}})
    assert stored["metadata"]["resourceVersion"]
    core = client.CoreV1Api(kube_emulator.api_client())
    assert core.read_namespaced_config_map("c", NS).data == {"k": "v"}
    assert core.read_namespace(NS).metadata.uid
    secret = core.create_namespaced_secret(NS, client.V1Secret(
        metadata=client.V1ObjectMeta(name="s"), string_data={"a": "b"}))
    assert secret.metadata.resource_version
    core.create_namespaced_event(NS, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="ev-"), reason="Test", message="m",
        involved_object=client.V1ObjectReference(kind="DeviceFleet", name="a", namespace=NS)))
    events = client.EventsV1Api(kube_emulator.api_client())
    events.create_namespaced_event(NS, client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="e2"), reason="Test",
        event_time=datetime.datetime.now(tz=datetime.UTC),
        action="Tested", note="n", reporting_controller="fleetpki.io/test",
        reporting_instance="test"))
    assert [e.reason for e in core.list_namespaced_event(
        NS, field_selector="involvedObject.name=a").items] == ["Test"]
    assert [ns.metadata.name for ns in core.list_namespace().items] == [NS]
    core.patch_namespace_status(NS, {"status": {"phase": "Terminating"}})
    assert core.read_namespace_status(NS).status.phase == "Terminating"
    assert kube_emulator.get("v1/configmaps", NS, "c") == stored
    assert kube_emulator.get("v1/configmaps", NS, "missing") is None


@pytest.fixture
def kopf_operator(kube_emulator: RunningEmulator) -> Iterator[kopf.OperatorRegistry]:
    """A minimal kopf operator on the emulator, as tests/kube_emulator.py documents it."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        info: kopf.ConnectionInfo = kube_emulator.connection_info()
        return info

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(patch: kopf.Patch, **_: Any) -> None:
        patch.status["handled"] = True

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    settings.watching.server_timeout = 10
    settings.networking.error_backoffs = [0.1]
    stop_flag, ready_flag = threading.Event(), threading.Event()

    def run() -> None:
        asyncio.run(kopf.operator(registry=registry, settings=settings, standalone=True,
                                  clusterwide=False, namespaces=[NS], stop_flag=stop_flag,
                                  ready_flag=ready_flag))

    thread = threading.Thread(target=run, name="kopf")
    thread.start()
    try:
        assert ready_flag.wait(10)
        yield registry
    finally:
        stop_flag.set()
        thread.join(10)
        assert not thread.is_alive()


@pytest.mark.usefixtures("kopf_operator")
def test_kopf_handles_a_created_fleet(kube_emulator: RunningEmulator,
                                      crs: client.CustomObjectsApi) -> None:
    create(crs, fleet("a"))
    assert wait_for(lambda: kube_emulator.open_watches) == 1
    handled = wait_for(lambda: read(crs, "a").get("status", {}).get("handled"))
    assert handled is True


def test_kopf_retries_a_failed_status_patch(kopf_operator: kopf.OperatorRegistry,
                                            kube_emulator: RunningEmulator,
                                            crs: client.CustomObjectsApi) -> None:
    fault = kube_emulator.fail_next("PATCH", "/devicefleets/a/status", 500)
    create(crs, fleet("a"))
    assert wait_for(lambda: read(crs, "a").get("status", {}).get("handled"), timeout=20)
    assert fault.hits == 1


def test_delete_preconditions_conflict(crs: client.CustomObjectsApi) -> None:
    created = create(crs, fleet("a"))
    stale = created["metadata"]["resourceVersion"]
    patch(crs, "a", {"spec": {"devices": 2}})
    error = api_error(crs.delete_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "a",
                      body=client.V1DeleteOptions(
                          preconditions=client.V1Preconditions(resource_version=stale)))
    assert error.status == 409
    assert read(crs, "a")["spec"] == {"devices": 2}
