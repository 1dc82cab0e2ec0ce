"""Every log line names its stage, and its feed and URL host where there is one; no secret is shown.

Real stages against loopback servers and a real Redis; lines are captured with structlog's
capture_logs through the processors logs.configure installs (the renderer aside), and the JSON
rendering itself is checked in a subprocess (configure is process-wide and caches loggers).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import structlog
from pytest_httpserver import HTTPServer
from structlog.testing import capture_logs
from test_alerts import (  # the loopback webhook receiver and its fixtures
    SLACK_TOKEN,
    Hook,
    Reply,
    Running,
    _acked_all,
    alerter,
    client,
    eventually,
    hook,
    make_article,
    make_config,
    publish,
)

from ingester import logs
from ingester.articles import ArticleStage
from ingester.config import from_dict
from ingester.extract import Extractor
from ingester.keys import Keys
from ingester.neardup import NearDupIndex
from ingester.poll import Poller
from ingester.pool import WorkerPool
from ingester.publish import Publisher
from ingester.record import Entry
from ingester.safehttp import SafeClient
from ingester.schedule import FeedSource, Schedule
from ingester.streams import Consumer
from ingester.topics import TopicSet
from workers.articles import GROUP, ArticleWorker
from workers.poller import PollWorker

__all__ = ["client", "hook"]  # fixtures used here

# 127.0.0.1 is allowed (the loopback servers); 127.0.0.2 is refused before anything is sent.
NETWORK = {"allow_private": ["127.0.0.1/32"], "host_min_gap": 0, "timeout": 10}
REFUSED = "http://127.0.0.2:9"


def test_url_host() -> None:
    assert logs.url_host("https://User:pw@News.Example:8443/a?b=c") == "news.example"
    assert logs.url_host("http://[::1]:80/feed") == "::1"
    assert logs.url_host("http://[::1/feed") == ""
    assert logs.url_host("not a url") == ""


def lines_with(captured: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    found = [line for line in captured if line["event"] == event]
    assert found, f"no {event!r} line in {captured}"
    return found


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(1, timeout=20)
    yield workers
    workers.close()


async def test_poll_lines_name_stage_feed_and_host(redis: aioredis.Redis, keys: Keys, pool: WorkerPool,
                                                   httpserver: HTTPServer) -> None:
    httpserver.expect_request("/html").respond_with_data("<html><body>not a feed</body></html>",
                                                         content_type="text/html")
    broken, refused = httpserver.url_for("/html"), f"{REFUSED}/feed"
    config = from_dict({"network": NETWORK})
    schedule = Schedule(redis, keys, lease=30)
    await schedule.add([FeedSource(broken), FeedSource(refused)], origin="config")
    async with SafeClient(config.network) as http:
        worker = PollWorker(Poller(redis, keys, config, http, pool, schedule), schedule, concurrency=4)
        with capture_logs(processors=logs.processors()) as captured:
            await worker.tick()  # the two feeds are due: one task each
            assert len(worker.tasks) == 2
            await worker.drain(30)
    assert {line["stage"] for line in captured} == {"poll"}
    [deep] = lines_with(captured, "fetch refused")  # logged inside safehttp, outside poll.py
    assert (deep["feed"], deep["host"]) == (refused, "127.0.0.2")
    failed = {line["feed"]: line for line in lines_with(captured, "feed poll failed")}
    assert failed.keys() == {broken, refused}
    assert (failed[broken]["outcome"], failed[broken]["host"]) == ("parse", "127.0.0.1")
    polled = {line["feed"]: line for line in lines_with(captured, "feed polled")}  # DEBUG level
    assert {feed: line["outcome"] for feed, line in polled.items()} == {broken: "parse", refused: "blocked"}
    assert {line["log_level"] for line in polled.values()} == {"debug"}


async def test_feed_binding_ends_with_the_poll(redis: aioredis.Redis, keys: Keys, pool: WorkerPool) -> None:
    """Poller.poll called outside a PollWorker task (a CLI, a test) leaves no context behind."""
    config = from_dict({"network": NETWORK})
    schedule = Schedule(redis, keys, lease=30)
    await schedule.add([FeedSource(f"{REFUSED}/feed")], origin="config")
    async with SafeClient(config.network) as http:
        [fid] = await schedule.claim(1)
        await Poller(redis, keys, config, http, pool, schedule).poll(fid)
    assert structlog.contextvars.get_contextvars() == {}


@pytest.fixture
async def stage(redis: aioredis.Redis, keys: Keys, pool: WorkerPool) -> AsyncIterator[ArticleStage]:
    config = from_dict({"network": NETWORK, "articles": {"max_attempts": 2},
                        "topics": [{"name": "ceasefire", "query": "ceasefire"}]})
    extractor = Extractor(workers=1, timeout=20)
    publisher = Publisher(redis, keys, retention=config.articles.dedup_retention,
                          near=NearDupIndex(redis, keys, retention=config.articles.dedup_retention))
    async with SafeClient(config.network) as http:
        yield ArticleStage(config, http, extractor, pool, publisher, TopicSet(config.topics))
    extractor.close()


async def test_article_lines_name_stage_feed_and_host(redis: aioredis.Redis, keys: Keys,
                                                      stage: ArticleStage, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/gone").respond_with_data("", status=404)
    gone, refused = httpserver.url_for("/gone"), f"{REFUSED}/story"
    text = "<p>The ceasefire held overnight, officials said, and talks resume on Monday.</p>"
    for link, feed in ((gone, "http://127.0.0.1/feed-a"), (refused, "http://127.0.0.1/feed-b")):
        await redis.xadd(keys.entries, {"data": Entry(feed_url=feed, link=link, title="Talks",
                                                      content=text).dumps()})
    consumer = Consumer(redis, [keys.entries], GROUP, "logs-test", dead_stream=keys.dead,
                        stage="articles", block_ms=100)
    worker, stop = ArticleWorker(stage, consumer, concurrency=4), asyncio.Event()
    with capture_logs(processors=logs.processors()) as captured:
        task = asyncio.create_task(worker.run(stop))
        await eventually(lambda: _written(redis, keys, 2))
        stop.set()
        await asyncio.wait_for(task, 10)
    assert {line["stage"] for line in captured} == {"articles"}
    [not_usable] = lines_with(captured, "page not usable")
    assert (not_usable["host"], not_usable["feed"]) == ("127.0.0.1", "http://127.0.0.1/feed-a")
    [deep] = lines_with(captured, "fetch refused")
    assert (deep["host"], deep["feed"]) == ("127.0.0.2", "http://127.0.0.1/feed-b")
    assert {line["host"] for line in lines_with(captured, "article")} == {"127.0.0.1", "127.0.0.2"}


async def _written(redis: aioredis.Redis, keys: Keys, count: int) -> bool:
    if await redis.xlen(keys.articles) < count:  # (the worker creates its group as it starts)
        return False
    return int((await redis.xpending(keys.entries, GROUP))["pending"]) == 0


async def test_notifier_lines_name_notifier_topic_and_host_never_the_webhook(
        redis: aioredis.Redis, keys: Keys, hook: Hook, client: SafeClient) -> None:
    webhook = hook.url(f"/hooks/{SLACK_TOKEN}?token={SLACK_TOKEN}")
    config = make_config(hook, [{"name": "hook", "type": "webhook", "webhook_url": webhook}])
    hook.on(f"/hooks/{SLACK_TOKEN}", Reply(500, f"echo {SLACK_TOKEN}"), Reply(404, "no such hook"))
    await publish(redis, keys, make_article(1))
    # Only the context merge: what is bound must be safe without the redaction processor.
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as captured:
        run = Running(alerter(redis, keys, config, client))
        await eventually(lambda: _acked_all(redis, keys, 1))
        await run.stop()
    assert {line["stage"] for line in captured} == {"notify"}
    sends = lines_with(captured, "alert retry") + lines_with(captured, "alert parked")
    for line in sends:
        assert (line["notifier"], line["topic"], line["host"]) == ("hook", "ceasefire", "127.0.0.1")
    assert SLACK_TOKEN not in repr(captured) and "/hooks/" not in repr(captured)


_JSON_SCRIPT = """
import structlog
from structlog.contextvars import bound_contextvars
from ingester import logs

logs.configure(json=True)
logs.register_secrets([{secret!r}])
log = structlog.get_logger("ingester.example")
with bound_contextvars(stage="notify", webhook="https://hooks.example/services/{secret}",
                       feed="https://reader:hunter22@news.example/rss"):
    log.warning("alert parked", reason="HTTP 404 from /services/{secret}")
log.info("unbound")
"""


def test_json_lines_carry_bound_fields_redacted() -> None:
    script = _JSON_SCRIPT.format(secret=SLACK_TOKEN)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert SLACK_TOKEN not in done.stderr and "hunter22" not in done.stderr
    parked, unbound = (json.loads(line) for line in done.stderr.splitlines())
    assert parked["stage"] == "notify" and parked["logger"] == "ingester.example"
    assert parked["feed"] == "https://***@news.example/rss"
    assert parked["webhook"] == "https://hooks.example/services/***"
    assert parked["level"] == "warning" and parked["timestamp"].endswith("Z")
    assert "stage" not in unbound and unbound["event"] == "unbound"


_LIBRARY_SCRIPT = """
import logging
from ingester import logs

logs.configure(json=True)
logs.register_secrets([{secret!r}])
logging.getLogger("apscheduler.scheduler").warning("job %s skipped, posting to %s", "tick",
                                                   "https://hooks.example/services/{secret}")
logging.getLogger("apscheduler.scheduler").info("below the libraries' level")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("asyncio").exception("task failed")
"""


def test_libraries_own_loggers_print_json_lines_too() -> None:
    """apscheduler, asyncio & co. log through the standard library: their lines must be JSON like ours
    (a plain "WARNING:apscheduler.scheduler:..." line breaks every consumer of the log)."""
    script = _LIBRARY_SCRIPT.format(secret=SLACK_TOKEN)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    skipped, failed = (json.loads(line) for line in done.stderr.splitlines())
    assert skipped["logger"] == "apscheduler.scheduler" and skipped["level"] == "warning"
    assert skipped["event"] == "job tick skipped, posting to https://hooks.example/services/***"
    assert failed["logger"] == "asyncio" and failed["level"] == "error"
    assert "ZeroDivisionError" in failed["exception"]
    assert SLACK_TOKEN not in done.stderr
