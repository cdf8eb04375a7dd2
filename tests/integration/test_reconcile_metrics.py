"""`fleetpki reconcile --metrics-port`: reconciles by result and the inventory gauges, scraped
over HTTP from the running loop."""

from __future__ import annotations

import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from .support import Cli, device_ids, small_repo


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape_until(cli: Cli, log: Path, wanted: str, *args: str | Path) -> str:
    """Run the loop (1 s interval) with metrics until an exposition contains `wanted`."""
    port = free_port()
    process = cli.popen("reconcile", "--interval", "1s", "--metrics-port", str(port), *args,
                        log=log)
    try:
        deadline = time.monotonic() + 120  # safety net only
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=10) as page:
                    text: str = page.read().decode()
                if wanted in text:
                    return text
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet
            time.sleep(0.1)
        raise AssertionError(f"no {wanted!r} scraped; log:\n{log.read_text()}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_applied_reconciles_and_inventory_gauges(cli_process: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 2))
    text = scrape_until(cli_process, tmp_path / "loop.log",
                        'fleetpki_reconciles_total{namespace="",result="applied"} 2.0',
                        "--repo", repo, "--state-dir", tmp_path / "state")
    assert ('fleetpki_certificates{ca="devices-ca",fleet="meters",namespace="",'
            'state="active"} 2.0') in text
    assert 'fleetpki_reconcile_last_success_timestamp_seconds{namespace=""}' in text
    assert 'fleetpki_reconcile_duration_seconds_count{namespace=""}' in text
    assert "meter-" not in text  # device ids are never labels


def test_failing_reconciles_are_counted(cli_process: Cli, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo", device_ids("meter", 2))
    text = scrape_until(cli_process, tmp_path / "loop.log",
                        'fleetpki_reconciles_total{namespace="",result="error"} 2.0',
                        "--repo", repo, "--ref", "nope", "--state-dir", tmp_path / "state")
    assert 'result="applied"' not in text
