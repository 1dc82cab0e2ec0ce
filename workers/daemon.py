"""The daemon: builds the stages from the config, runs them until SIGTERM/SIGINT, reloads on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import redis.asyncio as aioredis
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError, ResponseError

from ingester import config as config_mod
from ingester import systemd
from ingester.alerts import Alerter
from ingester.articles import ArticleStage
from ingester.config import Config
from ingester.connection import connect, safe_url
from ingester.embedded import EmbeddedRedis, EmbeddedRedisBusy, default_data_dir
from ingester.extract import Extractor
from ingester.health import HealthServer
from ingester.keys import Keys
from ingester.neardup import NearDupIndex
from ingester.opml import read_opml
from ingester.politeness import Gate
from ingester.poll import Poller
from ingester.pool import WorkerPool
from ingester.publish import Publisher
from ingester.safehttp import SafeClient
from ingester.schedule import FeedSource, Schedule
from ingester.streams import Consumer
from ingester.systemd import Watchdog
from ingester.topics import TopicSet
from workers.articles import GROUP as ARTICLES_GROUP
from workers.articles import ArticleWorker
from workers.maintenance import Maintenance
from workers.poller import TICK_SECONDS, PollWorker

log = structlog.get_logger("ingester.daemon")

STARTUP_WAIT = 15.0  # seconds the daemon waits for Redis to answer at start (a service manager restarts it)
PING_TIMEOUT = 3.0  # seconds for one attempt
SPARE_REDIS_CONNECTIONS = 50  # readers, alert senders, maintenance, health, slots being released
HEALTH_STALE_AFTER = 30.0  # /healthz fails when the scheduler has not ticked (every 0.5 s) for this long


def feed_sources(config: Config) -> list[FeedSource]:
    """[[feeds]] and the feeds of the [sources] OPML files, first mention wins."""
    sources = {f.url: FeedSource(f.url, f.interval) for f in config.feeds}
    for name in config.sources.opml:
        for feed in read_opml(config.path(name).read_bytes()):
            sources.setdefault(feed.url, FeedSource(feed.url, None, feed.title, feed.category))
    return list(sources.values())


def embedded_data_dir(config: Config) -> Path:
    return Path(config.redis.data_dir).expanduser() if config.redis.data_dir else default_data_dir()


def redis_connections(config: Config) -> int:
    """Enough Redis connections for every poll and article in flight at once, plus the stream readers,
    alert senders, maintenance and health checks (past that, a command waits for a free one)."""
    return config.polling.concurrency + config.articles.concurrency + SPARE_REDIS_CONNECTIONS


@contextlib.asynccontextmanager
async def open_redis(config: Config, *, attach: bool = False, wait: float = STARTUP_WAIT,
                     stop: asyncio.Event | None = None) -> AsyncIterator[aioredis.Redis]:
    """The configured Redis, or a private redis-server child when none is configured.

    attach=True (CLI tools) uses the embedded server of a daemon already running on the same data.
    Raises RedisUnreachable when it does not answer within `wait` seconds (or `stop` is set meanwhile).
    """
    url = config.redis_url
    embedded = None
    if url is None:
        data_dir = embedded_data_dir(config)
        embedded = EmbeddedRedis(data_dir)
        try:
            url = embedded.start()  # from this thread: the server dies with it (see embedded.py)
            log.info("embedded redis-server started", data_dir=str(data_dir))
        except EmbeddedRedisBusy as busy:
            if not (attach and busy.url):
                raise
            url, embedded = busy.url, None
    client = connect(url, namespace=config.redis.namespace, max_connections=redis_connections(config))
    try:
        await _wait_for(url, stop or asyncio.Event(), wait)
        log.info("redis connected", url=safe_url(url))
        yield client
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


TICK_JOB = "tick"


def make_scheduler() -> AsyncIOScheduler:
    """APScheduler for the daemon's periodic jobs: one run of a job at a time, missed runs coalesced.

    A tick still going when the next is due (waiting on a slow or restarting Redis) makes APScheduler
    skip the next with a warning, twice a second: by design, so not logged (other jobs' skips are).
    """
    logging.getLogger("apscheduler.scheduler").addFilter(_not_a_skipped_tick)
    job = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
    return AsyncIOScheduler(job_defaults=job)


def _not_a_skipped_tick(record: logging.LogRecord) -> bool:
    return not (record.getMessage().startswith(f'Execution of job "{TICK_JOB} (')
                and "maximum number of running instances reached" in record.getMessage())


class RedisUnreachable(Exception):
    """Redis did not answer at start, or refused our credentials; the message is one line."""


async def _wait_for(url: str, stop: asyncio.Event, wait: float) -> None:
    """Ping until Redis answers, for `wait` seconds at most (or until `stop`); a refused password fails
    at once. Each attempt gets PING_TIMEOUT: a host that drops packets is said so as soon as one ends."""
    probe, shown = connect(url, retry=False), safe_url(url)
    deadline, warned = time.monotonic() + wait, False
    try:
        while not stop.is_set():
            try:
                if await _unless(stop, asyncio.wait_for(probe.ping(), PING_TIMEOUT)):
                    return
            except (AuthenticationError, ResponseError) as exc:  # NOAUTH, WRONGPASS: no use waiting
                raise RedisUnreachable(f"cannot use {shown}: {exc}") from None
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                reason = str(exc) or f"no answer within {PING_TIMEOUT:g} s"
                if time.monotonic() >= deadline:
                    raise RedisUnreachable(f"cannot reach {shown}: {reason}") from None
                if not warned:
                    log.warning("redis not answering yet; retrying", url=shown, error=reason,
                                for_seconds=wait)
                    warned = True
                await _unless(stop, asyncio.sleep(1.0))
        raise RedisUnreachable(f"stopped while waiting for {shown}")
    finally:
        await probe.aclose()


async def _unless(stop: asyncio.Event, work: Awaitable[object]) -> bool:
    """Run `work` unless `stop` comes first (then cancel it): True when it finished."""
    task, stopped = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    task.result()  # its exception, if any
    return True


class Daemon:
    def __init__(self, config_path: str | Path, *, consumer_name: str | None = None) -> None:
        self.config_path = Path(config_path)
        self.config = config_mod.load(self.config_path)
        self.name = consumer_name or f"{socket.gethostname()}-{os.getpid()}"
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self._install_signals()  # from the start: a stop while starting up is a clean stop
        with structlog.contextvars.bound_contextvars(stage="daemon"):
            try:
                async with open_redis(self.config, stop=self.stop) as redis:
                    await self._run(redis)
            except RedisUnreachable:
                if not self.stop.is_set():  # stopped while waiting for Redis: a clean stop
                    raise

    async def _run(self, redis: aioredis.Redis) -> None:
        config = self.config
        self.redis = redis
        keys = Keys(config.redis.namespace)
        gate = Gate.from_config(redis, keys, config.network)
        # Enough connections for every poll and article in flight, in pools of 10 (httpx's cost per
        # request grows with the pool's size).
        in_flight = config.polling.concurrency + config.articles.concurrency
        client = SafeClient(config.network, gate=gate, pools=max(4, -(-in_flight // 10)))
        # A poll is a wait for the host's slot and a request (network.timeout each) and one parse
        # (as long again): the schedule's lease outlasts all three, so no feed is polled twice at once.
        parser = WorkerPool(max(1, (os.cpu_count() or 2) // 2), timeout=config.network.timeout)
        extractor = Extractor(workers=config.articles.workers, timeout=config.articles.extract_timeout)
        schedule = Schedule(redis, keys, lease=3 * config.network.timeout + 5)
        near = NearDupIndex(redis, keys, threshold=config.articles.near_duplicate_threshold,
                            retention=config.articles.dedup_retention)
        publisher = Publisher(redis, keys, retention=config.articles.dedup_retention, near=near)
        stage = ArticleStage(config, client, extractor, parser, publisher, TopicSet(config.topics))
        consumer = Consumer(redis, [keys.entries], ARTICLES_GROUP, self.name, dead_stream=keys.dead,
                            stage="articles", reclaim_idle=config.articles.reclaim_idle,
                            max_attempts=config.articles.max_attempts)
        watchdog = Watchdog()  # inert unless systemd set WATCHDOG_USEC for this process
        articles = ArticleWorker(stage, consumer, config.articles.concurrency,
                                 per_host=config.network.host_concurrency, on_progress=watchdog.progress)
        polls = PollWorker(Poller(redis, keys, config, client, parser, schedule), schedule,
                           config.polling.concurrency)
        maintenance = Maintenance(redis, keys, config)
        self.schedule, self.stage = schedule, stage
        added, removed = await schedule.sync(feed_sources(config))
        log.info("feeds synced", added=added, removed=removed,
                 total=len(await schedule.feeds()))
        await consumer.setup()

        health = (HealthServer(redis, config.server.host, config.server.port, stale_after=HEALTH_STALE_AFTER)
                  if config.server.port else None)  # port = 0: no health server
        if health:
            await health.start()  # before anything needs stopping: a port in use fails cleanly here

        async def tick() -> None:
            await polls.tick()  # bounded (TICK_BUDGET) and never raises
            if health:
                health.tick()
            watchdog.progress()

        await asyncio.gather(parser.start(), extractor.start())  # warm workers before the first poll
        scheduler = make_scheduler()
        scheduler.add_job(tick, "interval", seconds=TICK_SECONDS, name=TICK_JOB)
        scheduler.add_job(maintenance.run, "interval", seconds=60)
        scheduler.start()
        # Alerts get their own client: notifiers pace themselves per webhook (ingester.alerts),
        # and the per-host gate would make every Slack webhook share one slot on hooks.slack.com.
        self.keys, self.alert_client = keys, SafeClient(config.network)
        alerter = Alerter(redis, keys, config, self.alert_client, name=self.name)
        await alerter.setup()  # before the first article
        article_task = asyncio.create_task(articles.run(self.stop))
        self._start_alerts(alerter)
        self.ready.set()
        systemd.ready(f"{len(await schedule.feeds())} feeds, {len(config.topics)} topics")
        watchdog_task = asyncio.create_task(watchdog.run())  # systemd arms its timer at READY=1
        log.info("ingester running", feeds=len(await schedule.feeds()), topics=len(config.topics),
                 consumer=self.name)
        try:
            await self.stop.wait()
        finally:
            log.info("stopping", grace=config.server.shutdown_grace)
            systemd.stopping()
            watchdog_task.cancel()
            scheduler.shutdown(wait=False)
            await self._drain(polls, articles, article_task, config.server.shutdown_grace)
            if self._reloading is not None:  # a reload under way finishes first (it sees the stop)
                await asyncio.gather(self._reloading, return_exceptions=True)
            await self._stop_alerts(config.server.shutdown_grace)
            await asyncio.gather(client.aclose(), self.alert_client.aclose())
            extractor.close()
            parser.close()
            if health:  # last: probes keep an answer while the work drains
                await health.stop()
            log.info("stopped")

    @staticmethod
    async def _drain(polls: PollWorker, articles: ArticleWorker, reader: asyncio.Task[None],
                     grace: float) -> None:
        """Finish in-flight work within the grace period; what is left stays unacknowledged."""
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await asyncio.gather(polls.drain(grace), articles.drain(grace))

    def _start_alerts(self, alerter: Alerter) -> None:
        self._alerts_stop = asyncio.Event()
        self._alerts = asyncio.create_task(alerter.run(self._alerts_stop), name="alerts")
        self._alerts.add_done_callback(_log_crash)

    async def _stop_alerts(self, grace: float) -> None:
        """Sends under way get `grace` to finish; an entry cut short stays pending and is sent again."""
        self._alerts_stop.set()
        await asyncio.wait([self._alerts], timeout=grace)
        self._alerts.cancel()
        await asyncio.gather(self._alerts, return_exceptions=True)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        if not self.ready.is_set() or self.stop.is_set():
            log.warning("reload ignored: the daemon is starting or stopping")
        elif self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self.reload(), name="reload")
            self._reloading.add_done_callback(_log_crash)
        else:
            log.warning("reload ignored: one is under way")

    async def reload(self) -> None:
        """SIGHUP: re-read the config; new feeds, topics and notifiers apply (the alert sender starts
        again with them), a broken config changes nothing. Other sections need a restart."""
        systemd.reloading()
        try:
            new = config_mod.load(self.config_path)
            config = self.config.model_copy(update={"feeds": new.feeds, "sources": new.sources,
                                                    "topics": new.topics, "notifiers": new.notifiers})
            topics = TopicSet(config.topics)
            alerter = Alerter(self.redis, self.keys, config, self.alert_client, name=self.name)
            await alerter.setup()  # before the new topics can match
            added, removed = await self.schedule.sync(feed_sources(config))
        except Exception as exc:
            log.error("reload failed; keeping the running config", error=str(exc))
            systemd.ready("reload failed; running the previous config")
            return
        self.config = config
        self.stage.topics = topics
        await self._stop_alerts(config.server.shutdown_grace)
        if not self.stop.is_set():  # stopping meanwhile: no new sender
            self._start_alerts(alerter)
        systemd.ready(f"reloaded: {len(config.topics)} topics")
        log.info("reloaded", feeds_added=added, feeds_removed=removed, topics=len(config.topics))


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task failed", task=task.get_name(), error=repr(exc))


def run(config_path: str | Path) -> None:
    daemon = Daemon(config_path)
    asyncio.run(daemon.run())

