"""Failed EST secrets: backoff per device and per client (unit, with a fake clock, and with curl
on a server with a short backoff); an undeclared device is refused exactly like a wrong secret."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator

import pytest

from controller.servers.throttle import Backoff, Throttle
from tests.servers.conftest import Env, Running
from tests.servers.test_est import csr, post, secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_the_cap_and_success_forgets() -> None:
    clock = Clock()
    throttle = Throttle(Backoff(allowed=3, first=1.0, cap=4.0, forget=60.0), clock)
    assert [throttle.failed("device a") for _ in range(2)] == [0.0, 0.0]
    assert throttle.retry_after(["device a"]) == 0.0
    locks = []
    for _ in range(4):
        locks.append(throttle.failed("device a"))
        assert throttle.retry_after(["client x", "device a"]) == locks[-1]
        clock.now += locks[-1]
        assert throttle.retry_after(["device a"]) == 0.0
    assert locks == [1.0, 2.0, 4.0, 4.0]
    throttle.succeeded("device a")
    assert throttle.failed("device a") == 0.0


def test_quiet_keys_are_forgotten_and_bounded() -> None:
    clock = Clock()
    throttle = Throttle(Backoff(allowed=1, first=5.0, cap=5.0, forget=60.0), clock, max_keys=2)
    assert throttle.failed("client x") == 5.0
    clock.now += 61
    assert throttle.failed("client x") == 5.0  # counted afresh, not doubled
    throttle.failed("device b")
    throttle.failed("device c")  # over max_keys: the longest quiet key goes
    assert throttle.retry_after(["client x"]) == 0.0
    assert throttle.retry_after(["device c"]) == 5.0


LOCK = 3.0


@pytest.fixture
def throttled(env: Env) -> Iterator[Running]:
    """A server that locks a device or client for LOCK seconds after its third failure."""
    running = Running(env, backoff=Backoff(allowed=3, first=LOCK, cap=LOCK))
    yield running
    running.stop()


def _without_date(headers: str) -> str:
    return re.sub(r"(?im)^date:.*$", "", headers)


def test_undeclared_device_and_wrong_secret_look_the_same(env: Env) -> None:
    """Same status, headers (but Date) and body (but the device id the client sent)."""
    secret(env, "dev-3")  # a declared device with an unused secret
    request = csr(env, "dev-3", "/CN=dev-3")
    server = Running(env)
    try:
        for path in ("/simpleenroll", "/sensors/simpleenroll"):
            replies = []
            for user in ("dev-3:wrong", "dev-9:wrong"):  # ids of the same length
                status, body, headers = post(server, env, path, request, "--user", user,
                                             name=user.split(":")[0])
                replies.append((status, body.read_bytes().replace(b"dev-9", b"dev-3"),
                                _without_date(headers)))
            assert replies[0] == replies[1]
            assert replies[0][0] == "401" and "WWW-Authenticate: Basic" in replies[0][2]
    finally:
        server.stop()


def test_wrong_secrets_are_throttled(throttled: Running, env: Env,
                                     caplog: pytest.LogCaptureFixture) -> None:
    token = secret(env, "dev-4")
    request = csr(env, "dev-4", "/CN=dev-4")
    with caplog.at_level(logging.WARNING, logger="controller.servers.app"):
        for _ in range(3):
            status, _, _ = post(throttled, env, "/simpleenroll", request, "--user", "dev-4:wrong")
            assert status == "401"
        # locked: the right secret is not even checked
        status, body, headers = post(throttled, env, "/simpleenroll", request, "--user",
                                     f"dev-4:{token}", name="locked")
        assert status == "429" and re.search(r"Retry-After: [123]\r?\n", headers), headers
        assert "too many failed attempts for 'dev-4'" in body.read_text()
        # the client is locked too, for any device
        status, _, _ = post(throttled, env, "/simpleenroll", request, "--user", "dev-1:x")
        assert status == "429"
    assert re.search(r"device 'dev-4' locked for 3 s .*device 'dev-4', client 127\.0\.0\.1",
                     caplog.text), caplog.text
    assert "client 127.0.0.1 locked for 3 s" in caplog.text
    assert "from 127.0.0.1 refused (429)" in caplog.text
    for _ in range(50):  # after the lock: the right secret works, and was not consumed
        time.sleep(LOCK / 10)
        status, body, _ = post(throttled, env, "/simpleenroll", request, "--user",
                               f"dev-4:{token}", name="after")
        if status != "429":
            break
    assert status == "200", body.read_text()


def test_many_devices_from_one_client_are_throttled(throttled: Running, env: Env) -> None:
    request = csr(env, "dev-3", "/CN=dev-3")
    statuses = [post(throttled, env, "/simpleenroll", request, "--user", f"guess-{n}:x")[0]
                for n in range(4)]
    assert statuses == ["401", "401", "401", "429"]
