"""The article stage worker: reads new entries through a consumer group and processes them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter, deque
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
    """At most `concurrency` entries in flight, and at most `per_host` of them for one site.

    Entries are read ahead (up to READ_AHEAD x concurrency) and started site by site, in turn: a
    feed lists its own site's articles one after another, and without this they would fill every
    slot, each waiting out the site's politeness gap while other sites' articles waited behind them.
    An entry is acknowledged only with its article (see ingester.publish); one that fails stays
    pending and is retried, then dead-lettered; one read ahead and not started stays pending too.
    """

    READ_AHEAD = 4

    def __init__(self, stage: ArticleStage, consumer: Consumer, concurrency: int, *, per_host: int = 2,
                 on_progress: Callable[[], None] = lambda: None) -> None:
        self.stage = stage
        self.on_progress = on_progress  # the systemd watchdog: this loop is still turning
        self.consumer = consumer
        self.concurrency = concurrency
        self.per_host = per_host
        self.tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, deque[tuple[Message, Entry]]] = {}  # by host; the order is the turn
        self._active: Counter[str] = Counter()  # entries in flight by host
        self._held: set[str] = set()  # ids read and not finished (a reclaim may hand them out again)
        self._finished = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        with bound_contextvars(stage=STAGE):  # entry tasks started here inherit it
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        await self.consumer.setup()
        while not stop.is_set():
            room = self.READ_AHEAD * self.concurrency - len(self._held)
            if room <= 0:  # read ahead enough: wait for an entry to finish
                self._finished.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finished.wait(), 1.0)
                self.on_progress()
                continue
            self.consumer.batch = room
            try:
                messages = await self.consumer.read()
            except Exception as exc:  # Redis restarting: the client retries, then we do
                log.warning("reading entries failed", error=repr(exc))
                await asyncio.sleep(1)
                continue
            finally:
                self.on_progress()
            for msg in messages:
                await self._hold(msg)
            self._start()

    async def _hold(self, msg: Message) -> None:
        if msg.id in self._held:
            return
        try:
            entry = Entry.loads(msg.fields["data"])
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            await self.consumer.dead_letter(msg, f"unreadable entry: {exc!r}")
            return
        self._held.add(msg.id)
        self._waiting.setdefault(logs.url_host(entry.link), deque()).append((msg, entry))

    def _start(self) -> None:
        """Start waiting entries while there is room, one site after another."""
        while len(self.tasks) < self.concurrency:
            host = next((h for h in self._waiting if self._active[h] < self.per_host), None)
            if host is None:
                return
            queue = self._waiting.pop(host)
            msg, entry = queue.popleft()
            if queue:
                self._waiting[host] = queue  # to the back of the turn
            self._active[host] += 1
            task = asyncio.create_task(self._handle(msg, entry))
            self.tasks.add(task)
            task.add_done_callback(functools.partial(self._done, host, msg.id))

    def _done(self, host: str, entry_id: str, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._held.discard(entry_id)
        self._active[host] -= 1
        if not self._active[host]:
            del self._active[host]
        self._finished.set()
        self._start()

    async def _handle(self, msg: Message, entry: Entry) -> None:
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
        self._waiting.clear()  # not started: they stay pending for the next run
        if self.tasks:
            _, pending = await asyncio.wait(list(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
