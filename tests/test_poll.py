"""Polling one feed against a real loopback server and a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from ingester.config import Config, from_dict
from ingester.keys import Keys
from ingester.poll import Poller, adaptive_interval, initial_rate
from ingester.pool import WorkerPool
from ingester.record import Entry
from ingester.safehttp import SafeClient
from ingester.schedule import FeedSource, Schedule, feed_id

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"


def rss(*items: str, ttl: int | None = None) -> str:
    body = "".join(f"<item><title>{i}</title><link>http://news.example/{i}</link><guid>{i}</guid>"
                   f"<description>about {i}</description></item>" for i in items)
    ttl_tag = f"<ttl>{ttl}</ttl>" if ttl else ""
    return (f"<?xml version='1.0'?><rss version='2.0'><channel><title>T</title>"
            f"<link>http://news.example/</link>{ttl_tag}{body}</channel></rss>")


def make_config(**polling: object) -> Config:
    return from_dict({
        "network": {"allow_private": ["127.0.0.0/8"], "host_min_gap": 0, "timeout": 5},
        "polling": {"default_interval": "5m", "min_interval": "1m", "max_interval": "6h", **polling},
    })


@pytest.fixture(scope="module")
def parser() -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(1, timeout=20)
    yield pool  # type: ignore[misc]
    pool.close()


@pytest.fixture
async def env(redis, keys: Keys, parser: WorkerPool):  # type: ignore[no-untyped-def]
    config = make_config()
    client = SafeClient(config.network)
    schedule = Schedule(redis, keys, lease=30)
    poller = Poller(redis, keys, config, client, parser, schedule)
    yield poller, schedule
    await client.aclose()


async def register(schedule: Schedule, url: str) -> str:
    await schedule.add([FeedSource(url)], origin="config")
    return feed_id(url)


async def queued(redis, keys: Keys) -> list[Entry]:  # type: ignore[no-untyped-def]
    return [Entry.loads(f["data"]) for _, f in await redis.xrange(keys.entries)]


async def test_conditional_get_gives_304_and_no_entries(env, httpserver: HTTPServer, redis, keys):  # type: ignore[no-untyped-def]
    poller, schedule = env
    seen_headers: list[dict[str, str]] = []

    def handler(request: Request) -> Response:
        seen_headers.append(dict(request.headers))
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304)
        return Response(rss("a", "b"), content_type="application/rss+xml",
                        headers={"ETag": '"v1"', "Last-Modified": "Tue, 10 Jun 2025 08:00:00 GMT"})

    httpserver.expect_request("/feed").respond_with_handler(handler)
    fid = await register(schedule, httpserver.url_for("/feed"))
    first = await poller.poll(fid)
    second = await poller.poll(fid)
    assert (first.outcome, first.new_entries) == ("200", 2)
    assert (second.outcome, second.new_entries) == ("304", 0)
    assert seen_headers[1]["If-None-Match"] == '"v1"'
    assert seen_headers[1]["If-Modified-Since"] == "Tue, 10 Jun 2025 08:00:00 GMT"
    assert len(await queued(redis, keys)) == 2


async def test_unchanged_body_without_validators_is_not_parsed_again(env, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    poller, schedule = env
    httpserver.expect_request("/feed").respond_with_data(rss("a"), content_type="application/rss+xml")
    fid = await register(schedule, httpserver.url_for("/feed"))
    assert (await poller.poll(fid)).outcome == "200"
    assert (await poller.poll(fid)).outcome == "unchanged"
    state = await redis.hgetall(keys.feed(fid))
    assert state.get("not_modified", "0") == "0" and state["polls"] == "2"  # not a 304 (stats' ratio)


async def test_only_new_items_are_queued_and_a_returning_item_is_not_new(env, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    poller, schedule = env
    bodies = [rss("a", "b"), rss("b", "c"), rss("a", "c", "d")]  # "a" vanishes, then comes back
    fid = await register(schedule, httpserver.url_for("/feed"))
    counts = []
    for body in bodies:
        httpserver.clear()
        httpserver.expect_request("/feed").respond_with_data(body, content_type="application/rss+xml")
        counts.append((await poller.poll(fid)).new_entries)
    assert counts == [2, 1, 1]
    assert [e.link.rsplit("/", 1)[1] for e in await queued(redis, keys)] == ["a", "b", "c", "d"]


async def test_an_item_still_listed_keeps_its_seen_mark(env, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    poller, schedule = env
    fid = await register(schedule, httpserver.url_for("/feed"))
    for body in (rss("a"), rss("a", "b")):  # the body changes, so it is parsed again
        httpserver.clear()
        httpserver.expect_request("/feed").respond_with_data(body, content_type="application/rss+xml")
        await poller.poll(fid)
        seen = keys.seen("http://news.example/a")
        await redis.expire(seen, 60)  # as if the item had been listed for most of the retention
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data(rss("a", "b", "c"), content_type="text/xml")
    assert (await poller.poll(fid)).new_entries == 1  # only "c"
    assert await redis.ttl(keys.seen("http://news.example/a")) > 3600  # refreshed by the sighting


async def test_the_same_link_from_two_feeds_is_queued_once(env, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    poller, schedule = env
    httpserver.expect_request("/one").respond_with_data(rss("a"), content_type="application/rss+xml")
    tracked = rss("a").replace("http://news.example/a<", "http://NEWS.example/a?utm_source=x#top<")
    httpserver.expect_request("/two").respond_with_data(tracked, content_type="application/rss+xml")
    one = await register(schedule, httpserver.url_for("/one"))
    two = await register(schedule, httpserver.url_for("/two"))
    assert (await poller.poll(one)).new_entries == 1
    assert (await poller.poll(two)).new_entries == 0


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_a_floor(env, httpserver, redis, keys, status: int):  # type: ignore[no-untyped-def]
    poller, schedule = env
    httpserver.expect_request("/feed").respond_with_data("slow down", status=status,
                                                         headers={"Retry-After": "7200"})
    fid = await register(schedule, httpserver.url_for("/feed"))
    result = await poller.poll(fid)
    assert result.outcome == str(status)
    assert result.delay >= 7200
    score = await redis.zscore(keys.schedule, fid)
    now_ms = (await redis.time())[0] * 1000
    assert score - now_ms >= 7190 * 1000


async def test_retry_after_as_http_date(env, httpserver):  # type: ignore[no-untyped-def]
    poller, schedule = env
    later = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 3 * 3600, UTC)
    httpserver.expect_request("/feed").respond_with_data(
        "", status=503, headers={"Retry-After": format_datetime(later, usegmt=True)})
    fid = await register(schedule, httpserver.url_for("/feed"))
    assert (await poller.poll(fid)).delay >= 3 * 3600 - 60


async def test_ttl_and_max_age_are_floors_capped_by_max_interval(env, httpserver):  # type: ignore[no-untyped-def]
    poller, schedule = env
    httpserver.expect_request("/ttl").respond_with_data(rss("a", ttl=90), content_type="text/xml")
    httpserver.expect_request("/age").respond_with_data(rss("b"), content_type="text/xml",
                                                        headers={"Cache-Control": "max-age=7200"})
    httpserver.expect_request("/huge").respond_with_data(rss("c", ttl=100000), content_type="text/xml")
    ttl = await poller.poll(await register(schedule, httpserver.url_for("/ttl")))
    age = await poller.poll(await register(schedule, httpserver.url_for("/age")))
    huge = await poller.poll(await register(schedule, httpserver.url_for("/huge")))
    assert ttl.delay >= 90 * 60 * 0.9  # jitter is +-10 %
    assert age.delay >= 7200 * 0.9
    assert huge.delay <= 6 * 3600 * 1.1


async def test_the_feeds_ttl_still_counts_when_it_answers_304_or_the_same_bytes(env, httpserver):  # type: ignore[no-untyped-def]
    poller, schedule = env

    def conditional(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304)
        return Response(rss("a", ttl=90), content_type="text/xml", headers={"ETag": '"v1"'})

    httpserver.expect_request("/etag").respond_with_handler(conditional)
    httpserver.expect_request("/same").respond_with_data(rss("b", ttl=90), content_type="text/xml")
    for path, outcome in (("/etag", "304"), ("/same", "unchanged")):
        fid = await register(schedule, httpserver.url_for(path))
        assert (await poller.poll(fid)).outcome == "200"
        again = await poller.poll(fid)
        assert again.outcome == outcome
        assert again.delay >= 90 * 60 * 0.9  # the <ttl> of the last body, not the adaptive guess


async def test_failures_back_off_but_never_give_up(env, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    poller, schedule = env
    httpserver.expect_request("/feed").respond_with_data("gone", status=500)
    fid = await register(schedule, httpserver.url_for("/feed"))
    delays = [(await poller.poll(fid)).delay for _ in range(12)]
    assert max(delays) <= 6 * 3600  # capped at max_interval: the feed is still polled
    assert await redis.zscore(keys.schedule, fid) is not None
    assert (await redis.hgetall(keys.feed(fid)))["failures"] == "12"
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data(rss("a"), content_type="text/xml")
    assert (await poller.poll(fid)).outcome == "200"  # a dead feed comes back
    assert (await redis.hgetall(keys.feed(fid)))["failures"] == "0"


async def test_a_feed_over_network_max_bytes_is_refused(redis, keys, parser, httpserver):  # type: ignore[no-untyped-def]
    config = from_dict({"network": {"allow_private": ["127.0.0.0/8"], "host_min_gap": 0, "max_bytes": 4096}})
    small, large = rss("a"), rss(*(f"item-{i}" for i in range(100)))
    assert len(small) < 4096 < len(large)
    httpserver.expect_request("/small").respond_with_data(small, content_type="application/rss+xml")
    httpserver.expect_request("/large").respond_with_data(large, content_type="application/rss+xml")
    schedule = Schedule(redis, keys, lease=30)
    async with SafeClient(config.network) as client:
        poller = Poller(redis, keys, config, client, parser, schedule)
        fitting = await poller.poll(await register(schedule, httpserver.url_for("/small")))
        over = await poller.poll(await register(schedule, httpserver.url_for("/large")))
    assert (fitting.outcome, over.outcome) == ("200", "too_large")


async def test_unreachable_and_broken_feeds_are_errors_not_crashes(env, httpserver):  # type: ignore[no-untyped-def]
    poller, schedule = env
    httpserver.expect_request("/html").respond_with_data("<html><body>not a feed</body></html>",
                                                         content_type="text/html")
    broken = await poller.poll(await register(schedule, httpserver.url_for("/html")))
    refused = await poller.poll(await register(schedule, "http://127.0.0.1:9/feed"))
    assert broken.outcome == "parse"
    assert refused.outcome == "network"


@pytest.mark.parametrize("name,content_type", [
    ("rss091.xml", "application/rss+xml"), ("rss092.xml", "text/xml"), ("rss10.rdf", "application/rdf+xml"),
    ("rss20.xml", "application/rss+xml"), ("atom03.xml", "application/atom+xml"),
    ("atom10.xml", "application/atom+xml"), ("feed11.json", "application/feed+json"),
    ("news-sitemap.xml", "application/xml"),
])
async def test_every_feed_format_is_polled(env, httpserver, redis, keys, name: str, content_type: str):  # type: ignore[no-untyped-def]
    poller, schedule = env
    httpserver.expect_request(f"/{name}").respond_with_data((FIXTURES / name).read_bytes(),
                                                            content_type=content_type)
    result = await poller.poll(await register(schedule, httpserver.url_for(f"/{name}")))
    assert result.outcome == "200"
    assert result.new_entries >= 1
    assert all(e.link.startswith("http") for e in await queued(redis, keys))


def test_adaptive_interval_follows_the_item_rate() -> None:
    hourly = adaptive_interval(1 / 3600, low=60, high=6 * 3600)
    busy = adaptive_interval(1 / 60, low=60, high=6 * 3600)
    idle = adaptive_interval(0, low=60, high=6 * 3600)
    assert busy == 60  # clamped at min_interval
    assert busy < hourly < idle == 6 * 3600


async def test_busy_feed_is_polled_more_often_than_a_quiet_one(env, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    poller, schedule = env
    busy_id = await register(schedule, httpserver.url_for("/busy"))
    quiet_id = await register(schedule, httpserver.url_for("/quiet"))
    httpserver.expect_request("/quiet").respond_with_data(rss("q"), content_type="text/xml")
    busy_delay = quiet_delay = 0.0
    for round_ in range(4):
        httpserver.clear()
        httpserver.expect_request("/busy").respond_with_data(
            rss(*(f"b{round_}-{i}" for i in range(10))), content_type="text/xml")
        httpserver.expect_request("/quiet").respond_with_data(rss("q"), content_type="text/xml")
        # pretend a minute passed since the last poll
        for fid in (busy_id, quiet_id):
            last = await redis.hget(keys.feed(fid), "last_poll")
            if last:
                await redis.hset(keys.feed(fid), "last_poll", float(last) - 60)
        busy_delay = (await poller.poll(busy_id)).delay
        quiet_delay = (await poller.poll(quiet_id)).delay
    assert busy_delay < quiet_delay


async def test_a_feed_with_placeholder_dates_is_polled_and_recorded(env, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    """Hugo's 0001-01-01 made every poll of such a feed crash before its state was saved."""
    poller, schedule = env
    dates = [("about", "Mon, 01 Jan 0001 00:00:00 +0000"), ("a", "Tue, 10 Jun 2025 08:00:00 GMT"),
             ("b", "Tue, 10 Jun 2025 09:00:00 GMT"), ("c", "Tue, 10 Jun 2025 10:00:00 GMT")]
    items = "".join(f"<item><title>{n}</title><link>http://news.example/{n}</link><pubDate>{d}</pubDate></item>"
                    for n, d in dates)
    httpserver.expect_request("/hugo").respond_with_data(
        f"<rss version='2.0'><channel><title>Hugo</title>{items}</channel></rss>",
        content_type="application/rss+xml", headers={"ETag": '"h1"'})
    fid = await register(schedule, httpserver.url_for("/hugo"))
    assert (await poller.poll(fid)).outcome == "200"
    assert (await redis.hgetall(keys.feed(fid)))["etag"] == '"h1"'
    published = {e.title: e.published_at for e in await queued(redis, keys)}
    assert published == {"about": None, "a": "2025-06-10T08:00:00Z", "b": "2025-06-10T09:00:00Z",
                     "c": "2025-06-10T10:00:00Z"}


async def test_an_unexpected_error_on_a_feed_counts_against_it(env, httpserver, redis, keys, monkeypatch):  # type: ignore[no-untyped-def]
    """A bug met on one feed is logged and recorded on that feed (ingester stats shows it), and the feed
    backs off and is polled again, instead of being downloaded in full at every tick."""
    poller, schedule = env

    def broken(*_: object) -> float:
        raise ValueError("a bug")

    monkeypatch.setattr("ingester.poll.initial_rate", broken)
    httpserver.expect_request("/feed").respond_with_data(rss("a"), content_type="text/xml")
    fid = await register(schedule, httpserver.url_for("/feed"))
    result = await poller.poll(fid)
    state = await redis.hgetall(keys.feed(fid))
    assert result.outcome == "error" and result.delay > 0
    assert state["failures"] == "1" and "a bug" in state["last_error"]
    assert await redis.zscore(keys.schedule, fid) is not None


def test_initial_rate_uses_publication_dates() -> None:
    from ingester.feedparse import ParsedFeed

    entries = [Entry("f", f"http://x/{i}", published_at=f"2025-06-10T0{i}:00:00Z") for i in range(5)]
    assert initial_rate(ParsedFeed("t", entries, None, None), 300) == pytest.approx(1 / 3600)
    assert initial_rate(ParsedFeed("t", entries[:1], None, None), 300) == pytest.approx(0.5 / 300)
