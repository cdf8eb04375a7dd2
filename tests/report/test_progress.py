"""Long operations show a progress bar on a terminal and nothing in pipes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from controller import cli
from tests.discovery.support import Applied, apply_and_revoke
from tests.policy.support import PASSPHRASE, invoke


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
        yield apply_and_revoke(tmp_path_factory.mktemp("progress"), export=())


COMMANDS = {
    "report": (["report", "{repo}", "--out", "{tmp}/report"], "key algorithms"),
    "backup": (["backup", "--out", "{tmp}/backup.tar.gz"], "compressing"),
    "discover": (["discover", "{tmp}/none"], "discovering"),
    "export fleet": (["export", "fleet", "{repo}", "--fleet", "sensors", "--out",
                      "{tmp}/export"], "exporting"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_progress_on_a_terminal_only(command: str, applied: Applied, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPKI_PASSPHRASE", PASSPHRASE)
    (tmp_path / "none").mkdir()
    template, shown = COMMANDS[command]
    args = [a.format(repo=applied.repo, tmp=tmp_path) for a in template]
    piped = invoke(*args, "--state-dir", applied.state)
    assert piped.stderr == ""
    terminal = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=terminal, force_terminal=True, width=100))
    invoke(*args, "--state-dir", applied.state)
    assert shown in terminal.getvalue()
