"""Feed polling: an APScheduler tick claims due feeds from the Redis schedule and polls them."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars

from ingester.poll import Poller
from ingester.schedule import Schedule

log = structlog.get_logger("ingester.workers.poller")

STAGE = "poll"
TICK_SECONDS = 0.5
TICK_BUDGET = 10.0  # a tick that cannot reach Redis gives up; the next one tries again


class PollWorker:
    """Keeps up to `concurrency` polls in flight. Each poll is its own task with its own deadline,
    so a slow feed never holds up the tick, and a hung tick never stops a feed for good."""

    def __init__(self, poller: Poller, schedule: Schedule, concurrency: int) -> None:
        self.poller = poller
        self.schedule = schedule
        self.concurrency = concurrency
        self.tasks: set[asyncio.Task[object]] = set()
        self.stopping = False

    async def tick(self) -> None:
        if self.stopping:
            return
        with bound_contextvars(stage=STAGE):
            try:
                async with asyncio.timeout(TICK_BUDGET):
                    due = await self.schedule.claim(self.concurrency - len(self.tasks))
            except Exception as exc:  # Redis down: log, and the next tick retries
                log.warning("schedule claim failed", error=repr(exc))
                return
        for fid in due:
            task: asyncio.Task[object] = asyncio.create_task(self._poll(fid))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _poll(self, fid: str) -> None:
        bind_contextvars(stage=STAGE, feed_id=fid)  # this task's own context; Poller.poll adds the URL
        try:
            await self.poller.poll(fid)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(fid))
            raise
        except Exception as exc:  # a bug or Redis outage: the lease expires and the feed comes back
            log.exception("poll crashed", error=repr(exc))

    async def _release(self, fid: str) -> None:
        """An interrupted poll makes the feed due at once, for this or another daemon."""
        with contextlib.suppress(Exception):  # else the lease runs out anyway
            await self.schedule.reschedule(fid, 0)

    async def drain(self, timeout: float) -> None:
        """Stop claiming; let in-flight polls finish for up to `timeout` seconds, then cancel them."""
        self.stopping = True
        if self.tasks:
            _, pending = await asyncio.wait(list(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
