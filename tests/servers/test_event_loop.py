"""The servers run on uvloop's event loop (a dependency on Linux)."""

from __future__ import annotations

import asyncio

import uvloop

from controller.servers.app import run


def test_servers_run_on_uvloop() -> None:
    seen: list[object] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    run(main())
    assert len(seen) == 1 and isinstance(seen[0], uvloop.Loop)
