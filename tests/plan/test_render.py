"""Plans rendered as JSON (the scripting contract), markdown (pull requests) and text."""

from __future__ import annotations

import json

from controller.api.problems import Problem
from controller.plan.model import ACTION_NAMES, DEVICE_ACTIONS, Action, MassRevocation, Plan
from controller.plan.render import RENDERERS, as_json, as_markdown, as_text

CA = "CertificateAuthority"
FLEET = "DeviceFleet"


def sample_plan() -> Plan:
    return Plan(
        actions=(
            Action("create-ca", CA, "root", "CA not yet created"),
            Action("renew-ca", CA, "issuing", "due for renewal", serial="0a"),
            Action("revoke", FLEET, "sensors", "device marked revoked", "dev-3", "0b",
                   "keyCompromise"),
            Action("issue", FLEET, "sensors", "no certificate yet", "dev-1"),
            Action("renew", FLEET, "sensors", "due for renewal", "dev-2", "0c"),
            Action("rekey", FLEET, "sensors", "key changed", "dev-4", "0d"),
            Action("publish-crl", CA, "issuing", "new revocations"),
        ),
        problems=(Problem("s.csv", "device 'dev-9': bad", 3, "DeviceFleet/sensors", "labels",
                          "dev-9"),),
        warnings=("DeviceFleet/old is no longer declared",),
        mass_revocations=(MassRevocation("sensors", 1, 0),),
    )


def issues(count: int, fleets: int = 1) -> Plan:
    per_fleet = count // fleets
    return Plan(tuple(
        Action("issue", FLEET, f"fleet-{i // per_fleet:04d}", "no certificate yet",
               f"device-{i:06d}")
        for i in range(count)))


# --- JSON --------------------------------------------------------------------------------------


def test_json_contract() -> None:
    data = json.loads(as_json(sample_plan()))
    assert set(data) == {"actions", "summary", "dangers", "policy", "denied", "problems",
                         "warnings"}
    assert [a["action"] for a in data["actions"]] == [
        "create-ca", "renew-ca", "revoke", "issue", "renew", "rekey", "publish-crl"]
    for entry in data["actions"]:
        assert {"action", "kind", "name", "reason"} <= set(entry)
        assert ("device" in entry) == (entry["action"] in DEVICE_ACTIONS)
        assert all(isinstance(v, str) for v in entry.values())
    revoke = data["actions"][2]
    assert revoke == {"action": "revoke", "kind": FLEET, "name": "sensors", "device": "dev-3",
                      "reason": "device marked revoked", "serial": "0b",
                      "revocationReason": "keyCompromise"}
    assert data["actions"][0] == {"action": "create-ca", "kind": CA, "name": "root",
                                  "reason": "CA not yet created"}


def test_json_summary_counts_every_action_name() -> None:
    summary = json.loads(as_json(sample_plan()))["summary"]
    assert set(ACTION_NAMES) | {"total"} <= set(summary)
    assert all(summary[name] == 1 for name in ACTION_NAMES)
    assert summary["total"] == 7
    assert (summary["problems"], summary["warnings"]) == (1, 1)
    empty = json.loads(as_json(Plan(())))
    assert empty["actions"] == []
    assert {name: empty["summary"][name] for name in ACTION_NAMES} == dict.fromkeys(
        ACTION_NAMES, 0)
    assert empty["summary"]["total"] == 0


def test_json_problems_and_warnings() -> None:
    data = json.loads(as_json(sample_plan()))
    assert data["problems"] == [{"file": "s.csv", "line": 3, "object": "DeviceFleet/sensors",
                                 "field": "labels", "message": "device 'dev-9': bad",
                                 "device": "dev-9"}]
    assert data["warnings"] == ["DeviceFleet/old is no longer declared"]


# --- markdown ------------------------------------------------------------------------------------


def test_markdown_has_a_table_row_per_object_and_action() -> None:
    text = as_markdown(sample_plan())
    lines = text.splitlines()
    assert lines[0] == "### fleetpki plan"
    assert "| object | action | count | first devices |" in lines
    assert "|---|---|---:|---|" in lines
    assert "| DeviceFleet/sensors | issue | 1 | `dev-1` |" in lines
    assert "| CertificateAuthority/root | create-ca | 1 |  |" in lines
    assert "#### Warnings" in text and "DeviceFleet/old" in text
    assert "#### Problems" in text and "s.csv:3: DeviceFleet/sensors: labels:" in text


def test_markdown_without_changes_has_no_table() -> None:
    text = as_markdown(Plan(()))
    assert "Plan: no changes." in text
    assert "|" not in text


def test_markdown_stays_small_for_100000_issue_actions() -> None:
    text = as_markdown(issues(100_000))
    assert len(text.encode()) < 60 * 1024
    assert "| DeviceFleet/fleet-0000 | issue | 100000 |" in text
    assert "`device-000019`" in text and "`device-000020`" not in text
    assert "+99980" in text
    assert "Plan: 100000 issue." in text


def test_markdown_stays_small_for_100000_issue_actions_in_100_fleets() -> None:
    text = as_markdown(issues(100_000, fleets=100))
    assert len(text.encode()) < 60 * 1024
    assert text.count("| issue | 1000 |") == 100


def test_markdown_stays_small_for_100000_issue_actions_in_1000_fleets() -> None:
    text = as_markdown(issues(100_000, fleets=1000))
    assert len(text.encode()) < 60 * 1024
    assert "Plan: 100000 issue." in text


# --- text ---------------------------------------------------------------------------------------


def test_text_lists_actions_and_summary() -> None:
    text = as_text(sample_plan())
    assert "+ create-ca   CertificateAuthority/root  (CA not yet created)" in text
    assert "- revoke      DeviceFleet/sensors device dev-3  (device marked revoked)" in text
    assert "! warning: DeviceFleet/old is no longer declared" in text
    assert "x problem: s.csv:3: DeviceFleet/sensors: labels: device 'dev-9': bad" in text
    assert text.splitlines()[-1] == (
        "Plan: 1 create-ca, 1 renew-ca, 1 revoke, 1 issue, 1 renew, 1 rekey, 1 publish-crl.")


def test_text_summarises_beyond_twenty_per_group() -> None:
    text = as_text(issues(25))
    device_lines = [line for line in text.splitlines() if " device " in line]
    assert len(device_lines) == 20
    assert "device-000019" in text and "device-000020" not in text
    assert "... and 5 more" in text
    assert text.splitlines()[-1] == "Plan: 25 issue."


def test_text_shows_exactly_twenty_without_a_tail() -> None:
    text = as_text(issues(20))
    assert "more" not in text
    assert text.count(" device ") == 20


def test_text_without_changes() -> None:
    assert as_text(Plan(())) == "Plan: no changes.\n"


def test_renderers_are_registered() -> None:
    assert set(RENDERERS) == {"text", "markdown", "json"}
    assert RENDERERS["json"](Plan(())) == as_json(Plan(()))
