"""`ingester stats` figures from state written by the real Schedule and Poller, on a real Redis."""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from pytest_httpserver import HTTPServer
from rich.console import Console
from werkzeug import Request, Response

from ingester import stats
from ingester.config import from_dict
from ingester.keys import Keys
from ingester.poll import Poller
from ingester.pool import WorkerPool
from ingester.safehttp import SafeClient
from ingester.schedule import FeedSource, Schedule, feed_id
from ingester.stats import FeedStat, GroupStat, TopicStat


def rss(title: str, *items: str) -> str:
    body = "".join(f"<item><title>{i}</title><link>http://news.example/{i}</link><guid>{i}</guid></item>"
                   for i in items)
    return f"<?xml version='1.0'?><rss version='2.0'><channel><title>{title}</title>{body}</channel></rss>"


@pytest.fixture(scope="module")
def parser() -> Iterator[WorkerPool]:
    pool = WorkerPool(1, timeout=20)
    yield pool
    pool.close()


@pytest.fixture
async def poller(redis: aioredis.Redis, keys: Keys, parser: WorkerPool) -> AsyncIterator[Poller]:
    config = from_dict({"network": {"allow_private": ["127.0.0.0/8"], "host_min_gap": 0, "timeout": 5},
                        "polling": {"default_interval": "5m", "min_interval": "1m", "max_interval": "6h"}})
    client = SafeClient(config.network)
    yield Poller(redis, keys, config, client, parser, Schedule(redis, keys, lease=30))
    await client.aclose()


async def test_feed_stats_from_real_polls(poller: Poller, httpserver: HTTPServer, redis: aioredis.Redis,
                                          keys: Keys) -> None:
    def conditional(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304)
        return Response(rss("Good news", "a", "b", "c"), content_type="application/rss+xml",
                        headers={"ETag": '"v1"'})

    httpserver.expect_request("/good").respond_with_handler(conditional)
    httpserver.expect_request("/gone").respond_with_data("no", status=404)
    good, gone = httpserver.url_for("/good"), httpserver.url_for("/gone")
    await poller.schedule.add([FeedSource(good), FeedSource(gone)], origin="config")
    for _ in range(4):  # one 200, then three 304
        await poller.poll(feed_id(good))
    for _ in range(2):
        await poller.poll(feed_id(gone))

    failing, healthy = await stats.feed_stats(redis, keys)  # failing feeds come first

    assert failing.url == gone and failing.failures == 2 and failing.last_success is None
    assert failing.last_error.startswith("http_404") and failing.last_error_at is not None
    assert failing.name == gone.removeprefix("http://")  # no title: the address
    assert failing.items_per_day() is None  # never fetched: nothing to count
    assert healthy.name == "Good news" and healthy.failures == 0 and not healthy.failing
    assert healthy.polls == 4 and healthy.not_modified == 3 and healthy.not_modified_ratio == 0.75
    assert healthy.new_items == 3 and healthy.last_status == "304"
    assert healthy.last_success is not None and abs(healthy.last_success - time.time()) < 60
    assert healthy.interval is not None and 60 <= healthy.interval <= 6 * 3600
    assert healthy.items_per_day() == 0.0  # its three items were there before it was followed


async def test_items_per_day_are_counted_and_the_304_ratio_is_304s(
        poller: Poller, httpserver: HTTPServer, redis: aioredis.Redis, keys: Keys) -> None:
    polls = itertools.count(2)
    httpserver.expect_request("/growing").respond_with_handler(  # one more item at each poll
        lambda request: Response(rss("Growing", *(f"g{i}" for i in range(next(polls)))),
                                 content_type="application/rss+xml"))
    httpserver.expect_request("/same").respond_with_data(rss("Same", "a"), content_type="application/rss+xml")
    growing, same = httpserver.url_for("/growing"), httpserver.url_for("/same")
    await poller.schedule.add([FeedSource(growing), FeedSource(same)], origin="config")
    for _ in range(3):
        await poller.poll(feed_id(growing))
        await poller.poll(feed_id(same))
    by_url = {feed.url: feed for feed in await stats.feed_stats(redis, keys)}
    assert by_url[growing].backlog == 2 and by_url[growing].new_items == 4
    assert by_url[growing].items_per_day() == pytest.approx(2 / 3600 * 86400)  # 2 new in under an hour
    assert by_url[same].last_status == "unchanged"  # no validators, the same bytes: not a 304
    assert by_url[same].not_modified == 0 and by_url[same].not_modified_ratio == 0.0


async def test_a_feed_never_polled_is_listed(redis: aioredis.Redis, keys: Keys) -> None:
    await Schedule(redis, keys, lease=30).add([FeedSource("https://quiet.example/rss")], origin="import")
    (feed,) = await stats.feed_stats(redis, keys)
    assert feed.name == "quiet.example/rss" and feed.polls == 0 and feed.not_modified_ratio is None
    assert feed.interval is None and feed.last_success is None


async def test_feed_stats_of_thousands_of_feeds(redis: aioredis.Redis, keys: Keys) -> None:
    urls = [f"https://feeds{i}.example/rss" for i in range(1234)]  # more than one pipeline batch
    await Schedule(redis, keys, lease=30).add([FeedSource(u) for u in urls], origin="import")
    assert sorted(f.url for f in await stats.feed_stats(redis, keys)) == sorted(urls)


async def test_topic_stats_count_the_last_day_and_the_groups(redis: aioredis.Redis, keys: Keys) -> None:
    seconds, _ = await redis.time()
    now_ms = int(seconds) * 1000
    stream = keys.topic("ceasefire")
    await redis.xadd(stream, {"a": "old"}, id=f"{now_ms - 2 * 86400_000}-0")
    await redis.xadd(stream, {"a": "old"}, id=f"{now_ms - 86400_000 - 60_000}-0")
    for _ in range(3):
        await redis.xadd(stream, {"a": "new"})
    await redis.xgroup_create(stream, "notify", id="0")
    await redis.xreadgroup("notify", "me", {stream: ">"}, count=2)

    ceasefire, empty = await stats.topic_stats(redis, keys, ["ceasefire", "nothing-yet"])

    assert (ceasefire.length, ceasefire.last_day) == (5, 3)
    (group,) = ceasefire.groups
    assert (group.name, group.consumers, group.pending) == ("notify", 1, 2)
    assert group.lag in (3, None)  # None on Redis < 7
    assert (empty.length, empty.last_day, empty.groups) == (0, 0, [])


async def test_counting_pages_through_long_streams(redis: aioredis.Redis, keys: Keys) -> None:
    stream = keys.topic("busy")
    async with redis.pipeline(transaction=False) as pipe:
        for _ in range(2500):
            pipe.xadd(stream, {"a": "1"})
        await pipe.execute()
    (busy,) = await stats.topic_stats(redis, keys, ["busy"])
    assert busy.last_day == 2500


def text_of(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_puts_failing_feeds_first() -> None:
    now = 1_750_000_000.0
    feeds = [
        FeedStat("1", "https://ok.example/rss", "Fine Feed", last_success=now - 120, interval=300,
                 polls=10, not_modified=4, first_success=now - 2 * 86400, backlog=5, new_items=25),
        FeedStat("2", "https://broken.example/rss", "", last_success=now - 3 * 86400,
                 last_error="timeout: no response within 30 s from the server at broken.example",
                 last_error_at=now - 60, interval=3600, polls=5, failures=3),
    ]
    topics = [TopicStat("ceasefire", "ns:topic:ceasefire", 42, 7, [GroupStat("notify", 2, 1, 0)])]
    text = text_of(stats.render(feeds, topics, now=now))
    assert text.index("broken.example") < text.index("Fine Feed")
    assert "Feeds: 2, failing: 1" in text
    assert "2.0m ago" in text and "3.0d ago" in text and "never" not in text
    assert "timeout: no response" in text and "(1.0m ago)" in text
    assert "10.0" in text and "40%" in text  # items/day and the 304 ratio
    assert "ceasefire" in text and "42" in text and "notify" in text
    short = text_of(stats.render(feeds, topics, limit=1, now=now))
    assert "broken.example" in short and "Fine Feed" not in short and "1 more feeds not shown" in short


def test_duration_and_ago() -> None:
    assert stats.duration(42) == "42s"
    assert stats.duration(90) == "1.5m"
    assert stats.duration(6 * 3600) == "6.0h"
    assert stats.duration(12 * 86400) == "12d"
    assert stats.ago(None, 0) == "never"


def test_progress_bar_counts() -> None:
    out = io.StringIO()
    with stats.progress(console=Console(file=out, width=120, force_terminal=False)) as bar:
        task = bar.add_task("importing", total=3000)
        for _ in range(3):
            bar.advance(task, 1000)
        assert bar.tasks[0].completed == 3000 and bar.finished
    assert "3000/3000" in out.getvalue()


async def test_pipeline_stats_show_the_entries_backlog_and_dead_letters(redis: aioredis.Redis,
                                                                       keys: Keys) -> None:
    for _ in range(4):
        await redis.xadd(keys.entries, {"data": "{}"})
    await redis.xgroup_create(keys.entries, "articles", id="0")
    await redis.xadd(keys.dead, {"reason": "unreadable"})
    entries, articles, dead = await stats.pipeline_stats(redis, keys)
    assert (entries.name, entries.length, entries.last_day) == ("entries", 4, 4)
    (group,) = entries.groups
    assert group.name == "articles" and group.pending == 0 and group.lag in (4, None)
    assert (articles.length, dead.length) == (0, 1)
    text = text_of(stats.render([], [], streams=[entries, articles, dead]))
    assert "Streams: 3" in text and "Feeds: 0, failing: 0" in text
