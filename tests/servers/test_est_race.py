"""Two enrollments of one device at once (two workers or replicas): the one recorded second
finds the device's active certificate changed since it looked and is refused with 409, rolled
back whole (its one-time secret is still there), instead of a second active certificate."""

from __future__ import annotations

import pytest

from controller.apply.executor import Executor
from controller.clock import epoch, now_utc
from controller.plan.intents import DeviceIntent
from controller.plan.model import Action
from controller.stores.inventory import CertRecord
from tests.servers.conftest import Env, Running
from tests.servers.test_est import csr, post, secret


def test_an_enrollment_recorded_meanwhile_is_a_conflict(
        server: Running, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Executor._device_certificate
    elsewhere: list[CertRecord] = []

    def raced(self: Executor, action: Action, intent: DeviceIntent) -> CertRecord:
        """While this request signs, another process records the device's new certificate."""
        if not elsewhere:
            elsewhere.append(real(self, action, intent))
            with env.state.inventory() as other, other.transaction():
                assert action.serial is not None
                other.revoke(action.serial, "superseded", epoch(now_utc()))
                other.insert(elsewhere[0])
        return real(self, action, intent)

    monkeypatch.setattr(Executor, "_device_certificate", raced)
    token = secret(env, "dev-1")
    request = csr(env, "dev-1", "/CN=dev-1")
    status, body, _ = post(server, env, "/simpleenroll", request, "--user", f"dev-1:{token}",
                           name="raced")
    assert status == "409" and "enrolled meanwhile" in body.read_text()
    with env.state.reader() as inventory:
        active = inventory.active_device("sensors", "dev-1")
        assert active is not None and active.serial == elsewhere[0].serial
        assert [r.state for r in inventory.device_history("sensors", "dev-1")].count(
            "active") == 1
    status, body, _ = post(server, env, "/simpleenroll", request, "--user", f"dev-1:{token}",
                           name="retried")
    assert status == "200", body.read_text()  # the refused request consumed nothing
    with env.state.reader() as inventory:
        active = inventory.active_device("sensors", "dev-1")
        assert active is not None and active.serial != elsewhere[0].serial
