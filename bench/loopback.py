"""Serve a benchmark's aiohttp app on several loopback hosts (127.0.0.1..127.0.0.N), in a child process.

Several hosts make per-host politeness apply as it would on the open web.
"""

from __future__ import annotations

import asyncio
from typing import Any


def run_app(app: Any, port: int, hosts: int, ready: Any) -> None:
    """Serve `app` (an aiohttp.web.Application) on every host at `port` until killed; set `ready`."""
    from aiohttp import web

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for h in range(1, hosts + 1):
            await web.TCPSite(runner, f"127.0.0.{h}", port, backlog=1024).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())
