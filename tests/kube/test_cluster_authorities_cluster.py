"""Cluster-wide CAs on a real kube-apiserver, used as examples/cluster-wide-ca/ says: `kubectl
apply -k`, `kubectl wait` on the cluster-scoped ClusterCertificateAuthority and on the teams'
fleets, `kubectl get fcca`, a revocation by `kubectl patch`; the operator runs restricted to
namespaces with the ServiceAccount's identity (deploy/'s RBAC), and OpenSSL checks that both
namespaces' devices chain to the one CA and that its one CRL lists the revocation."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from controller import jobs
from tests.kube_emulator import wait_for
from tests.kube_objects import API, KEYS_NAMESPACE, condition, profile, running_operator
from tests.releases.support import needs_openssl

from .cluster import ROOT, Cluster, rows

CA = "acme-fleet-root"
TEAMS = {"team-meters": "meters", "team-valves": "valves"}  # namespace -> its fleet
OUTSIDERS = "outsiders"  # matches no glob of the CA's spec.allowedNamespaces (team-*)
CLUSTER_SCOPE = "cluster.fleetpki.io"


def get(cluster: Cluster, resource: str, namespace: str | None = None) -> Any:
    where = ("-n", namespace) if namespace is not None else ()
    return json.loads(cluster.kubectl("get", resource, *where, "-o", "json").stdout)


def outsiders() -> list[dict[str, Any]]:
    """A namespace the CA does not allow, with a profile and a fleet naming the CA anyway."""
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OUTSIDERS}},
            profile(OUTSIDERS),
            {"apiVersion": API, "kind": "DeviceFleet",
             "metadata": {"name": "intruders", "namespace": OUTSIDERS},
             "spec": {"issuerRef": {"kind": "ClusterCertificateAuthority", "name": CA},
                      "profileRef": {"name": "mqtt-client"}, "devices": [{"id": "o-1"}]}}]


def certificates(state_root: Path, namespace: str) -> dict[str, jobs.DeviceTLS]:
    """device -> its active certificate, from the namespace's state (as `fleetpki export`)."""
    state = jobs.StateDir.resolve(state_root / "namespaces" / namespace)
    return {found.device: found for found in jobs.device_tls_bundles(state, TEAMS[namespace])}


def openssl_verify(root: Path, certificate: bytes, tmp_path: Path, crl: Path | None = None
                   ) -> subprocess.CompletedProcess[str]:
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(certificate)
    command = ["openssl", "verify", "-x509_strict", "-CAfile", str(root)]
    if crl is not None:
        command += ["-crl_check", "-CRLfile", str(crl)]
    return subprocess.run([*command, str(leaf)], capture_output=True, text=True, check=False)


def crl_entries(cluster: Cluster) -> int | None:
    entries = (get(cluster, f"clustercertificateauthority/{CA}")["status"].get("crl")
               or {}).get("entries")
    return int(entries) if entries is not None else None


@needs_openssl
def test_two_teams_issue_from_one_cluster_wide_ca_and_share_its_crl(
        as_operator: Cluster, tmp_path: Path) -> None:
    cluster, state_root = as_operator, tmp_path / "state"
    with running_operator(state_root, (*TEAMS, OUTSIDERS)):
        cluster.kubectl("apply", "-k", str(ROOT / "examples" / "cluster-wide-ca"))
        cluster.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": outsiders()}))
        waited = cluster.kubectl("wait", "--for=condition=Ready", "--timeout=240s",
                                 f"clustercertificateauthority/{CA}", timeout=260)
        assert waited.stdout.count("condition met") == 1
        for namespace, name in TEAMS.items():
            cluster.kubectl("wait", "--for=condition=Ready", "--timeout=240s", "-n", namespace,
                            f"devicefleet/{name}", timeout=260)
            ready = get(cluster, f"devicefleet/{name}", namespace)
            assert ready["status"]["devices"]["active"] == 3
        for resource in ("clustercertificateauthorities", "fcca"):
            listing = cluster.kubectl("get", resource).stdout
            print(listing)
            row = rows(listing)[CA]
            header = listing.splitlines()[0].split()
            assert row[header.index("READY")] == "True"
        authority = get(cluster, f"clustercertificateauthority/{CA}")
        assert "namespace" not in authority["metadata"]  # cluster-scoped indeed
        serial = authority["status"]["certificate"]["serial"]

        # a namespace the CA does not allow is refused, naming the field and the namespace
        wait_for(lambda: condition(get(cluster, "devicefleet/intruders", OUTSIDERS),
                                   "Stalled").get("status") == "True", timeout=120)
        refused = get(cluster, "devicefleet/intruders", OUTSIDERS)
        message = condition(refused, "Stalled")["message"]
        assert f"ClusterCertificateAuthority/{CA} does not allow namespace '{OUTSIDERS}'" \
            in message
        assert "spec.issuerRef.name" in message
        assert condition(refused, "Ready")["status"] == "False"
        assert not (refused["status"].get("devices") or {}).get("active")

        # both teams' devices chain to the one cluster-wide CA certificate, by OpenSSL
        root = state_root / "cluster" / "public" / "ca" / f"{CA}.pem"
        meters = certificates(state_root, "team-meters")
        valves = certificates(state_root, "team-valves")
        assert sorted(meters) == ["meter-0001", "meter-0002", "meter-0003"]
        assert sorted(valves) == ["valve-0001", "valve-0002", "valve-0003"]
        for issued in (*meters.values(), *valves.values()):
            checked = openssl_verify(root, issued.pem.certificate, tmp_path)
            assert checked.returncode == 0, checked.stdout + checked.stderr

        # a meter revoked with kubectl is on the cluster CA's one CRL
        assert crl_entries(cluster) in (None, 0)
        cluster.kubectl("patch", "-n", "team-meters", "devicefleet/meters", "--type=json", "-p",
                        json.dumps([{"op": "add", "path": "/spec/devices/0/revoked",
                                     "value": {"reason": "keyCompromise"}}]))
        wait_for(lambda: crl_entries(cluster) == 1, timeout=120)
        fleet = get(cluster, "devicefleet/meters", "team-meters")["status"]
        assert fleet["devices"]["revoked"] == 1 and fleet["devices"]["active"] == 2
        assert get(cluster, f"clustercertificateauthority/{CA}")["status"]["certificate"][
            "serial"] == serial  # the same CA throughout

    crl = state_root / "cluster" / "public" / "crl" / f"{CA}.pem"
    revoked = openssl_verify(root, meters["meter-0001"].pem.certificate, tmp_path, crl)
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr
    for kept in (meters["meter-0002"], valves["valve-0001"]):
        checked = openssl_verify(root, kept.pem.certificate, tmp_path, crl)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    text = subprocess.run(["openssl", "crl", "-in", str(crl), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    listed = re.findall(r"Serial Number: ([0-9A-Fa-f]+)", text)
    assert [s.upper().lstrip("0") for s in listed] == \
        [meters["meter-0001"].serial.upper().lstrip("0")]
    der = state_root / "cluster" / "public" / "crl" / f"{CA}.crl"
    assert subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(der), "-noout",
                           "-text"], capture_output=True, text=True, check=True).stdout == text

    # the CA key is kept once, in the cluster scope: no copy per namespace, no owner
    listed_keys = json.loads(cluster.kubectl(
        "get", "secrets", "-n", KEYS_NAMESPACE, "-l", "fleetpki.io/blob=ca-key", "-o",
        "json").stdout)["items"]
    ca_keys = [s for s in listed_keys  # other tests of the session keep their namespaces' own
               if s["metadata"]["labels"]["fleetpki.io/scope"] in {CLUSTER_SCOPE, *TEAMS,
                                                                     OUTSIDERS}]
    assert [s["metadata"]["labels"]["fleetpki.io/scope"] for s in ca_keys] == [CLUSTER_SCOPE]
    assert not ca_keys[0]["metadata"].get("ownerReferences")
    for namespace in (*TEAMS, OUTSIDERS):
        assert get(cluster, "secrets", namespace)["items"] == []

    # a cluster-scoped object's events are recorded in namespace default, as Kubernetes does
    events = json.loads(cluster.kubectl(
        "get", "events", "-n", "default", "--field-selector",
        "involvedObject.kind=ClusterCertificateAuthority", "-o", "json").stdout)["items"]
    created = [(e["involvedObject"]["name"], e["message"]) for e in events
               if e["reason"] == "Created"]
    assert created == [(CA, "CA certificate created")]
    assert all("namespace" not in e["involvedObject"] for e in events)  # as API server checks
    for namespace in TEAMS:
        assert not [e for e in get(cluster, "events", namespace)["items"]
                    if e["involvedObject"]["kind"] == "ClusterCertificateAuthority"]
    # the session's cluster is shared: a later cluster-wide operator must not meet this CA
    # (its state directory is gone with tmp_path, so it would be Stalled as a lost volume)
    cluster.kubectl("delete", f"clustercertificateauthority/{CA}", "--wait=false")
