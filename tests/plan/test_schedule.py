"""Renewal windows with deterministic per-device jitter, and CRL re-publication."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controller.plan.schedule import crl_due, renew_before, renewal_time

NOT_AFTER = 2_000_000_000
WINDOW = timedelta(days=30)
W = int(WINDOW.total_seconds())


def test_renew_before_defaults_to_a_third_of_the_lifetime() -> None:
    assert renew_before(timedelta(days=90), None) == timedelta(days=30)
    assert renew_before(timedelta(days=90), timedelta(days=7)) == timedelta(days=7)


@pytest.mark.parametrize("key", ["sensors/dev-1", "sensors/dev-2", "", "x" * 500, "ünïcode/☃"])
def test_renewal_time_lies_in_the_first_half_of_the_window(key: str) -> None:
    at = renewal_time(NOT_AFTER, WINDOW, key)
    assert NOT_AFTER - W <= at <= NOT_AFTER - W // 2


def test_renewal_time_is_deterministic() -> None:
    first = [renewal_time(NOT_AFTER, WINDOW, f"fleet/dev-{i}") for i in range(100)]
    again = [renewal_time(NOT_AFTER, WINDOW, f"fleet/dev-{i}") for i in range(100)]
    assert first == again


def test_renewal_times_spread_over_the_half_window() -> None:
    times = [renewal_time(NOT_AFTER, WINDOW, f"sensors/dev-{i:04d}") for i in range(1000)]
    assert all(NOT_AFTER - W <= t <= NOT_AFTER - W // 2 for t in times)
    assert len(set(times)) > 990
    assert max(times) - min(times) > 0.95 * (W / 2)
    # Roughly uniform: each quarter of the half-window gets a fair share.
    quarter = W / 8
    counts = [sum(1 for t in times if k * quarter <= t - (NOT_AFTER - W) < (k + 1) * quarter)
              for k in range(4)]
    assert min(counts) > 150, counts


def test_renewal_time_moves_with_not_after_and_window() -> None:
    key = "sensors/dev-1"
    base = renewal_time(NOT_AFTER, WINDOW, key)
    assert renewal_time(NOT_AFTER + 3600, WINDOW, key) == base + 3600
    short = renewal_time(NOT_AFTER, timedelta(days=2), key)
    assert NOT_AFTER - 2 * 86400 <= short <= NOT_AFTER - 86400


def test_crl_due_half_way_to_next_update() -> None:
    this_update, next_update = 1_000_000, 1_000_000 + 7 * 86400
    half = this_update + 7 * 86400 // 2
    assert not crl_due(this_update, next_update, this_update)
    assert not crl_due(this_update, next_update, half - 1)
    assert crl_due(this_update, next_update, half)
    assert crl_due(this_update, next_update, next_update + 1)
