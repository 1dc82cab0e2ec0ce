"""The article stage worker: reads new entries through a consumer group and processes them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars

from ingester import logs, metrics
from ingester.articles import ArticleStage, PageUnavailable
from ingester.record import Entry
from ingester.streams import Consumer, Message

log = structlog.get_logger("ingester.workers.articles")

GROUP = "articles"
STAGE = "articles"


class ArticleWorker:
    """At most `concurrency` entries in flight. An entry is acknowledged only with its article
    (see ingester.publish); one that fails stays pending and is retried, then dead-lettered."""

    def __init__(self, stage: ArticleStage, consumer: Consumer, concurrency: int, *,
                 on_progress: Callable[[], None] = lambda: None) -> None:
        self.stage = stage
        self.on_progress = on_progress  # the systemd watchdog: this loop is still turning
        self.consumer = consumer
        self.concurrency = concurrency
        self.tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(concurrency)

    async def run(self, stop: asyncio.Event) -> None:
        with bound_contextvars(stage=STAGE):  # entry tasks started here inherit it
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        await self.consumer.setup()
        while not stop.is_set():
            await self._room.acquire()  # read only what we have room for
            self._room.release()
            self.consumer.batch = max(1, self.concurrency - len(self.tasks))
            try:
                messages = await self.consumer.read()
            except Exception as exc:  # Redis restarting: the client retries, then we do
                log.warning("reading entries failed", error=repr(exc))
                await asyncio.sleep(1)
                continue
            finally:
                self.on_progress()
            for msg in messages:
                await self._room.acquire()
                task = asyncio.create_task(self._handle(msg))
                self.tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._room.release()

    async def _handle(self, msg: Message) -> None:
        try:
            entry = Entry.loads(msg.fields["data"])
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            await self.consumer.dead_letter(msg, f"unreadable entry: {exc!r}")
            return
        bind_contextvars(feed=entry.feed_url, host=logs.url_host(entry.link))  # this task's context
        try:
            await self.stage.process(entry, msg, self.consumer.group)
        except asyncio.CancelledError:
            raise  # left unacknowledged: another daemon (or this one) takes it over
        except PageUnavailable as exc:
            metrics.PAGE_RETRIES.inc()
            log.info("page unavailable; entry left pending for a retry", url=entry.link, reason=str(exc),
                     attempt=msg.deliveries, after=self.consumer.reclaim_idle_ms / 1000)
        except Exception as exc:
            log.exception("entry failed; left pending for a retry", url=entry.link, error=repr(exc),
                          attempt=msg.deliveries)

    async def drain(self, timeout: float) -> None:
        if self.tasks:
            _, pending = await asyncio.wait(list(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
