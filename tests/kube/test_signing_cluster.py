"""Release signing in Kubernetes mode, on a real kube-apiserver: `kubectl apply` a SigningProfile
and a Release, the operator (with deploy/'s ServiceAccount permissions) signs it, `kubectl get`
shows it, the signing key is a Secret in the operator's namespace, `fleetpki export release`
from the operator's state gives what `openssl cms -verify` accepts, `revoked` withdraws it, and
an artifact by `path` (there is no repository in a cluster) is Stalled naming the field."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from controller import jobs
from controller.stores.releases import Releases
from tests.kube_emulator import wait_for
from tests.kube_objects import API, authority, condition, fleet, profile, running_operator
from tests.releases.support import needs_openssl, openssl_cms_verify

from .cluster import Cluster, rows

KEYS = "fleetpki-system"
FIRMWARE = b"\x7fELF firmware for the cluster tests\n" * 100
SIGNING_KEY_BLOB = "ca/signing.firmware.ECDSA-P256.v1.pem"


def fleetpki(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "fleetpki"), *args],
                          capture_output=True, text=True, check=False, timeout=120)


def get(cluster: Cluster, resource: str, namespace: str) -> Any:
    return json.loads(cluster.kubectl("get", resource, "-n", namespace, "-o", "json").stdout)


def signing_profile(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "SigningProfile",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"issuerRef": {"name": "devices-ca"}, "duration": "720h",
                     "subject": {"commonName": f"{name} (cluster test)"}, **spec}}


def release(namespace: str, name: str, artifacts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Release", "metadata": {"name": name,
                                                                "namespace": namespace},
            "spec": {"signingProfileRef": {"name": "firmware"}, "version": "1.0.0",
                     "artifacts": artifacts, "targets": {"fleets": ["sensors"]}}}


BY_DIGEST = [{"name": "firmware.bin", "sha256": hashlib.sha256(FIRMWARE).hexdigest(),
              "size": len(FIRMWARE)}]


def apply(cluster: Cluster, *documents: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": list(documents)}))


def namespace_with_ca(namespace: str, *documents: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            authority(namespace), profile(namespace), fleet(namespace, ["s-1"]),
            *documents]


def key_secrets(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    """The operator's keystore Secrets of `namespace`'s state, by blob name."""
    items = get(cluster, "secrets", KEYS)["items"]
    return {s["metadata"]["annotations"]["fleetpki.io/blob-name"]: s for s in items
            if s["metadata"].get("labels", {}).get("fleetpki.io/scope") == namespace}


@needs_openssl
def test_a_release_is_signed_listed_exported_verified_and_withdrawn(
        as_operator: Cluster, tmp_path: Path) -> None:
    cluster, namespace = as_operator, "signing-demo"
    state = tmp_path / "state" / "namespaces" / namespace
    with running_operator(tmp_path / "state", (namespace,)):
        apply(cluster, *namespace_with_ca(
            namespace,
            signing_profile(namespace, "tsa", usage="timeStamping"),
            signing_profile(namespace, "firmware", timestampAuthorityRef={"name": "tsa"}),
            release(namespace, "fw-1", BY_DIGEST)))
        waited = cluster.kubectl("wait", "--for=condition=Ready", "--timeout=240s", "-n",
                                 namespace, "releases.fleetpki.io/fw-1",
                                 "signingprofiles.fleetpki.io/firmware",
                                 "signingprofiles.fleetpki.io/tsa", timeout=260)
        assert waited.stdout.count("condition met") == 3
        listing = cluster.kubectl("get", "releases", "-n", namespace).stdout
        print(listing)
        assert listing.split()[:8] == ["NAME", "PROFILE", "VERSION", "ARTIFACTS", "READY",
                                       "STATE", "SIGNED", "AGE"]
        assert rows(listing)["fw-1"][:6] == ["fw-1", "firmware", "1.0.0", "1", "True", "Signed"]
        profiles = cluster.kubectl("get", "fsp", "-n", namespace).stdout
        print(profiles)
        assert rows(profiles)["firmware"][:5] == ["firmware", "devices-ca", "ECDSA-P256", "1",
                                                  "True"]
        assert "release.fleetpki.io/fw-1" in cluster.kubectl("get", "fleetpki", "-n",
                                                             namespace).stdout

        body = get(cluster, "releases.fleetpki.io/fw-1", namespace)
        signature = body["status"]["signature"]
        assert body["status"]["state"] == "Signed" and body["status"]["observedGeneration"] == 1
        assert body["status"]["fleets"] == ["sensors"] and body["status"]["artifacts"] == 1
        assert signature["state"] == "active" and signature["profile"] == "firmware"
        firmware = get(cluster, "signingprofiles.fleetpki.io/firmware", namespace)["status"]
        assert firmware["certificate"]["serial"] == signature["serial"]
        assert firmware["keyVersion"] == 1 and firmware["certificate"]["release"] == "fw-1"

        # the signing keys are Secrets in the operator's namespace, like CA keys; never in the
        # release's namespace, its status or its events
        secrets = key_secrets(cluster, namespace)
        assert {SIGNING_KEY_BLOB, "ca/signing.tsa.ECDSA-P256.v1.pem"} <= set(secrets)
        key_secret = secrets[SIGNING_KEY_BLOB]
        assert key_secret["metadata"]["labels"]["fleetpki.io/blob"] == "ca-key"
        assert not key_secret["metadata"].get("ownerReferences")
        pem = base64.b64decode(key_secret["data"]["blob"])
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert get(cluster, "secrets", namespace)["items"] == []
        events = get(cluster, "events", namespace)["items"]
        signed = [(e["involvedObject"]["name"], e["message"]) for e in events
                  if e["involvedObject"]["kind"] == "Release" and e["reason"] == "Signed"]
        assert signed == [("fw-1", "release signature signed")]  # one event, once
        public = json.dumps([body, firmware, events])
        for line in pem.decode().splitlines()[1:-1]:
            assert line not in public
        assert key_secret["data"]["blob"] not in public and "PRIVATE KEY" not in public

        # Kubernetes users export from the operator's state (`kubectl exec` in the pod)
        out = tmp_path / "fw-1"
        exported = fleetpki("export", "release", str(state / "declaration"), "--release", "fw-1",
                            "--state-dir", str(state), "--out", str(out))
        assert exported.returncode == 0, exported.stderr
        manifest = (out / "manifest.json").read_bytes()
        assert hashlib.sha256(manifest).hexdigest() == signature["manifestSha256"]
        assert json.loads(manifest)["artifacts"] == BY_DIGEST
        checked = openssl_cms_verify(out, out / "ca.pem")
        assert checked.returncode == 0, checked.stderr
        assert "Verification successful" in checked.stderr
        artifact = tmp_path / "firmware.bin"
        artifact.write_bytes(FIRMWARE)
        verified = fleetpki("verify", str(artifact), "--manifest", str(out / "manifest.json"),
                            "--trust", str(out / "ca.pem"), "--fleet", "sensors")
        assert verified.returncode == 0 and "OK: release fw-1" in verified.stdout
        shown = json.loads(fleetpki("status", str(state / "declaration"), "--state-dir",
                                    str(state), "-o", "json").stdout)
        assert [(r["release"], r["state"], r["serial"]) for r in shown["releases"]] == [
            ("fw-1", "active", signature["serial"])]

        cluster.kubectl("patch", "-n", namespace, "releases.fleetpki.io/fw-1", "--type=merge",
                        "-p", json.dumps({"spec": {"revoked": {"reason": "keyCompromise"}}}))
        wait_for(lambda: get(cluster, "releases.fleetpki.io/fw-1", namespace)["status"].get(
            "observedGeneration") == 2, timeout=120)
        withdrawn = get(cluster, "releases.fleetpki.io/fw-1", namespace)["status"]
        assert withdrawn["state"] == "Withdrawn"
        assert withdrawn["signature"]["serial"] == signature["serial"]
        assert withdrawn["signature"]["state"] == "revoked"
        assert withdrawn["signature"]["reason"] == "keyCompromise"
        assert condition({"status": withdrawn}, "Ready")["reason"] == "Withdrawn"
        assert rows(cluster.kubectl("get", "frel", "-n", namespace).stdout)["fw-1"][5] == \
            "Withdrawn"
        crl = tmp_path / "devices-ca.crl.pem"
        written = fleetpki("export", "crl", str(state / "declaration"), "--ca", "devices-ca",
                           "--state-dir", str(state), "--out", str(crl))
        assert written.returncode == 0, written.stderr
        refused = openssl_cms_verify(out, out / "ca.pem", crl=crl)
        assert refused.returncode != 0 and "revoked" in refused.stderr
        again = fleetpki("export", "release", str(state / "declaration"), "--release", "fw-1",
                         "--state-dir", str(state), "--out", str(tmp_path / "again"))
        assert again.returncode != 0 and "no valid signature" in again.stderr + again.stdout


def test_an_artifact_by_path_is_stalled_naming_the_field_and_nothing_is_applied(
        as_operator: Cluster, tmp_path: Path) -> None:
    cluster, namespace = as_operator, "signing-path"
    state = tmp_path / "state" / "namespaces" / namespace
    with running_operator(tmp_path / "state", (namespace,)):
        apply(cluster, *namespace_with_ca(namespace))
        cluster.kubectl("wait", "--for=condition=Ready", "--timeout=180s", "-n", namespace,
                        "devicefleet/sensors", timeout=200)
        apply(cluster, signing_profile(namespace, "firmware"),
              release(namespace, "fw-2", [{"path": "firmware.bin"}]))
        wait_for(lambda: condition(get(cluster, "releases.fleetpki.io/fw-2", namespace),
                                   "Stalled").get("status") == "True", timeout=120)
        stalled = condition(get(cluster, "releases.fleetpki.io/fw-2", namespace), "Stalled")
        assert stalled["reason"] == "InvalidSpec"
        assert "spec.artifacts[0].path" in stalled["message"]
        assert "give name, sha256 and size" in stalled["message"]
        row = rows(cluster.kubectl("get", "releases", "-n", namespace).stdout)["fw-2"]
        assert row[:6] == ["fw-2", "firmware", "1.0.0", "", "False", ""]
        warnings = [e for e in get(cluster, "events", namespace)["items"]
                    if e["involvedObject"]["name"] == "fw-2"]
        assert warnings and {(e["type"], e["reason"]) for e in warnings} == {
            ("Warning", "InvalidSpec")}
        assert all("spec.artifacts[0].path" in e["message"] for e in warnings)
        # the run is refused as a whole: no signing key, no signing certificate, no signature
        # (never half-applied), and the objects already applied keep their status
        with jobs.StateDir(state).reader() as inventory:
            assert Releases(inventory).of_profile("firmware") == []
            assert Releases(inventory).released() == []
        assert SIGNING_KEY_BLOB not in key_secrets(cluster, namespace)
        assert condition(get(cluster, "devicefleet/sensors", namespace), "Ready")["status"] == \
            "True"

        apply(cluster, release(namespace, "fw-2", BY_DIGEST))
        cluster.kubectl("wait", "--for=condition=Ready", "--timeout=180s", "-n", namespace,
                        "releases.fleetpki.io/fw-2", timeout=200)
        fixed = get(cluster, "releases.fleetpki.io/fw-2", namespace)["status"]
        assert fixed["state"] == "Signed" and fixed["observedGeneration"] == 2
        assert condition({"status": fixed}, "Stalled")["status"] == "False"
        assert SIGNING_KEY_BLOB in key_secrets(cluster, namespace)
