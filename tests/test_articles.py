"""The article stage end to end: real Redis, real loopback pages, real extraction pool."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jsonschema
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from pytest_httpserver import HTTPServer

from ingester.articles import PAGE_ATTEMPTS, ArticleStage
from ingester.config import Config, from_dict
from ingester.extract import Extractor
from ingester.keys import Keys
from ingester.neardup import NearDupIndex
from ingester.pool import WorkerPool
from ingester.publish import Publisher
from ingester.record import Article, Entry
from ingester.safehttp import SafeClient
from ingester.streams import Consumer
from ingester.topics import TopicSet
from workers.articles import GROUP, ArticleWorker

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "record.schema.json").read_text())

STORY = [
    "Negotiators from both sides met for a third day on Tuesday as diplomats pressed for a ceasefire "
    "that would halt the fighting in Ukraine before the winter sets in, officials said.",
    "The draft agreement seen by reporters provides for a thirty-day truce, an exchange of prisoners "
    "and a joint commission to monitor violations, according to two officials familiar with the talks.",
    "Humanitarian agencies said a pause in the shelling would let convoys reach towns that have been "
    "cut off from food and medicine for weeks, and urged both delegations to sign without delay.",
    "The mediators said the remaining disputes concern the withdrawal of heavy weapons and the "
    "sequencing of the prisoner exchange, and that they hoped to announce a deal by the weekend.",
    "Russia's foreign ministry said it was studying the text, while Kyiv said any pause must be "
    "verified by international monitors before troops pull back from the line of contact.",
]
OTHER = [
    "The city council voted on Monday to build twelve kilometres of protected bike lanes across the "
    "centre, after a year of consultation with residents, shop owners and cycling groups.",
    "Construction is due to start in the spring and the first corridor, along the river, should open "
    "before the summer holidays, the transport department said in a statement on its website.",
    "Opponents argued that the plan removes too many parking spaces, while supporters pointed to a "
    "rise in cycling since the pandemic and to the safety record of similar schemes elsewhere.",
]


def page(title: str, paragraphs: list[str], head: str = "") -> str:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<html lang='en'><head><meta charset='utf-8'><title>{title}</title>{head}</head><body>"
            f"<nav><a href='/'>Home</a></nav><article><h1>{title}</h1>{body}</article>"
            f"<footer>Copyright Example News</footer></body></html>")


def make_config(max_bytes: int = 10 * 1024 * 1024, **articles: object) -> Config:
    return from_dict({
        "network": {"allow_private": ["127.0.0.0/8"], "host_min_gap": 0, "timeout": 10,
                    "max_bytes": max_bytes},
        "articles": {"reclaim_idle": "200ms", "max_attempts": 2, **articles},
        "topics": [{"name": "ceasefire", "query": "(ceasefire OR truce) AND (Ukraine OR Russia)"}],
    })


@pytest.fixture(scope="module")
def pools() -> Iterator[tuple[Extractor, WorkerPool]]:
    extractor = Extractor(workers=1, timeout=20)
    hasher = WorkerPool(1)
    yield extractor, hasher
    extractor.close()
    hasher.close()


@pytest.fixture
async def stage(redis, keys: Keys, pools) -> AsyncIterator[ArticleStage]:  # type: ignore[no-untyped-def]
    async with make_stage(make_config(), redis, keys, pools) as built:
        yield built


@contextlib.asynccontextmanager
async def make_stage(config: Config, redis, keys: Keys, pools) -> AsyncIterator[ArticleStage]:  # type: ignore[no-untyped-def]
    extractor, hasher = pools
    client = SafeClient(config.network)
    near = NearDupIndex(redis, keys, retention=config.articles.dedup_retention)
    publisher = Publisher(redis, keys, retention=config.articles.dedup_retention, near=near)
    try:
        yield ArticleStage(config, client, extractor, hasher, publisher, TopicSet(config.topics))
    finally:
        await client.aclose()


async def articles(redis, keys: Keys, stream: str | None = None) -> list[Article]:  # type: ignore[no-untyped-def]
    entries = await redis.xrange(stream or keys.articles)
    return [Article.loads(fields["data"]) for _, fields in entries]


def entry(url: str, feed: str = "http://127.0.0.1/feed", **fields: str) -> Entry:
    return Entry(feed_url=feed, link=url, title=fields.pop("title", "Feed title"), **fields)


async def test_record_is_complete_and_valid(stage, httpserver: HTTPServer, redis, keys):  # type: ignore[no-untyped-def]
    httpserver.expect_request("/story").respond_with_data(page("Ceasefire talks", STORY),
                                                          content_type="text/html")
    url = httpserver.url_for("/story")
    assert await stage.process(entry(url, published_at="2025-06-10T08:00:00Z")) == "new"
    [record] = await articles(redis, keys)
    jsonschema.validate(record.as_dict(), SCHEMA)
    assert record.extraction == "trafilatura"
    assert record.title == "Ceasefire talks"
    assert "thirty-day truce" in record.text and "Copyright" not in record.text
    assert record.url == url and record.canonical_url == url
    assert record.source == "127.0.0.1"
    assert record.language == "en"
    assert record.published_at == "2025-06-10T08:00:00Z"
    assert record.cluster_id == record.id
    assert record.topics == ["ceasefire"] and record.scores["ceasefire"] > 0
    [(_, fields)] = await redis.xrange(keys.topic("ceasefire"))
    assert json.loads(fields["data"]) == record.as_dict()


async def test_same_article_through_feeds_tracking_params_redirects_and_canonical(  # type: ignore[no-untyped-def]
        stage, httpserver: HTTPServer, redis, keys):
    canonical = httpserver.url_for("/story")
    httpserver.expect_request("/story").respond_with_data(page("Talks", STORY), content_type="text/html")
    httpserver.expect_request("/r/1").respond_with_data("", status=302, headers={"Location": "/story"})
    amp = page("Talks", STORY, head=f"<link rel='canonical' href='{canonical}'>")
    httpserver.expect_request("/amp/story").respond_with_data(amp, content_type="text/html")
    outcomes = [
        await stage.process(entry(canonical, feed="http://127.0.0.1/a")),
        await stage.process(entry(canonical, feed="http://127.0.0.1/b")),
        await stage.process(entry(canonical + "?utm_source=rss&utm_medium=feed")),
        await stage.process(entry(httpserver.url_for("/r/1"))),
        await stage.process(entry(httpserver.url_for("/amp/story"))),
    ]
    assert outcomes[0] == "new"
    assert all(o in ("known", "duplicate") for o in outcomes[1:])
    assert len(await articles(redis, keys)) == 1
    assert await stage.process(entry(httpserver.url_for("/r/1"))) == "known"  # alias now, no fetch


async def test_fallback_to_feed_content_when_the_page_fails_or_is_thin(stage, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    httpserver.expect_request("/gone").respond_with_data("", status=404)
    httpserver.expect_request("/thin").respond_with_data(page("Thin", ["Subscribe to read."]),
                                                         content_type="text/html")
    content = "<p>" + " ".join(STORY) + "</p>"
    await stage.process(entry(httpserver.url_for("/gone"), title="Gone story", content=content))
    await stage.process(entry(httpserver.url_for("/thin"), title="Thin story", summary=content))
    gone, thin = await articles(redis, keys)
    assert gone.extraction == thin.extraction == "feed"
    assert gone.title == "Gone story" and "thirty-day truce" in gone.text and "<p>" not in gone.text
    assert "thirty-day truce" in thin.text
    for record in (gone, thin):
        jsonschema.validate(record.as_dict(), SCHEMA)


GERMAN = [
    "Die Unterhändler beider Seiten trafen sich am Dienstag zum dritten Tag, während Diplomaten auf eine "
    "Waffenruhe drängten, die die Kämpfe in der Ukraine noch vor dem Winter beenden soll.",
    "Der Entwurf sieht nach Angaben von zwei Beamten eine dreißigtägige Feuerpause, einen Austausch von "
    "Gefangenen und eine gemeinsame Kommission zur Überwachung von Verstößen vor.",
]


async def test_language_is_the_texts_else_the_pages_else_the_feeds(  # type: ignore[no-untyped-def]
        stage, httpserver, redis, keys):
    httpserver.expect_request("/de").respond_with_data(page("Waffenruhe", GERMAN), content_type="text/html")
    httpserver.expect_request("/en").respond_with_data(page("Truce", STORY).replace(" lang='en'", ""),
                                                       content_type="text/html")
    httpserver.expect_request("/gone").respond_with_data("", status=404)
    german = "<p>" + " ".join(GERMAN) + "</p>"
    await stage.process(entry(httpserver.url_for("/de"), language="en"))  # page lang='en', German text
    await stage.process(entry(httpserver.url_for("/en"), language="de"))  # no page lang, English text
    await stage.process(entry(httpserver.url_for("/gone"), content=german, language="en"))
    await stage.process(entry(httpserver.url_for("/missing"), summary="Kurz.", language="fr"))
    records = await articles(redis, keys)
    assert [(r.extraction, r.language) for r in records] == [
        ("trafilatura", "de"), ("trafilatura", "en"), ("feed", "de"), ("feed", "fr")]


async def test_records_never_show_credentials(stage, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    httpserver.expect_request("/story").respond_with_data(page("Ceasefire talks", STORY),
                                                          content_type="text/html")
    secret_feed = httpserver.url_for("/feed").replace("://", "://reader:Feed-s3cret@")
    secret_link = httpserver.url_for("/story").replace("://", "://reader:Link-s3cret@")
    await stage.process(entry(secret_link, feed=secret_feed))
    await stage.process(entry(httpserver.url_for("/bad-port").replace(":" + str(httpserver.port), ":99999"),
                              content="<p>" + " ".join(OTHER) + "</p>"))  # no crash: the feed's text
    story, bad_port = await articles(redis, keys)
    assert (story.feed_url, story.url) == (httpserver.url_for("/feed"), httpserver.url_for("/story"))
    assert "s3cret" not in story.dumps() and story.extraction == "trafilatura"
    assert bad_port.extraction == "feed"


async def test_a_page_over_network_max_bytes_falls_back_to_the_feed(  # type: ignore[no-untyped-def]
        redis, keys, pools, httpserver):
    small = page("Small", STORY)
    large = page("Large", STORY + ["Filler paragraph that makes the page too long. " * 40] * 10)
    assert len(small) < 8192 < len(large)
    httpserver.expect_request("/small").respond_with_data(small, content_type="text/html")
    httpserver.expect_request("/large").respond_with_data(large, content_type="text/html")
    content = "<p>" + " ".join(STORY) + "</p>"
    async with make_stage(make_config(max_bytes=8192), redis, keys, pools) as capped:
        await capped.process(entry(httpserver.url_for("/small"), content=content))
        await capped.process(entry(httpserver.url_for("/large"), content=content))
    fitting, over = await articles(redis, keys)
    assert (fitting.extraction, over.extraction) == ("trafilatura", "feed")
    assert "thirty-day truce" in over.text


async def test_syndicated_copy_clusters_with_the_first_and_other_stories_do_not(  # type: ignore[no-untyped-def]
        stage, httpserver, redis, keys):
    wire = STORY[:2] + STORY[3:]  # a dropped paragraph
    wire[0] = "KYIV (Wire) - " + wire[0]
    httpserver.expect_request("/original").respond_with_data(page("Ceasefire talks", STORY),
                                                             content_type="text/html")
    httpserver.expect_request("/copy").respond_with_data(page("Truce deal near, diplomats say", wire),
                                                         content_type="text/html")
    httpserver.expect_request("/other").respond_with_data(page("Bike lanes", OTHER),
                                                          content_type="text/html")
    await stage.process(entry(httpserver.url_for("/original")))
    await stage.process(entry(httpserver.url_for("/copy").replace("127.0.0.1", "localhost")))
    await stage.process(entry(httpserver.url_for("/other")))
    original, copy, other = await articles(redis, keys)
    assert copy.source == "localhost" and copy.id != original.id
    assert copy.cluster_id == original.id
    assert other.cluster_id == other.id


async def test_concurrent_copies_still_cluster(stage, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    for i in range(4):
        httpserver.expect_request(f"/copy{i}").respond_with_data(
            page(f"Version {i}", [f"SITE{i} (Wire) - ", *STORY]), content_type="text/html")
    await asyncio.gather(*(stage.process(entry(httpserver.url_for(f"/copy{i}"))) for i in range(4)))
    records = await articles(redis, keys)
    assert len(records) == 4
    first = records[0]
    assert {r.cluster_id for r in records} == {first.id}


@pytest.mark.parametrize("name,body,headers", [
    ("nested", "<html><body>" + "<div>" * 5000 + "deep" + "</div>" * 5000 + "</body></html>", {}),
    ("gzip-in-html", gzip.compress(page("Zipped", STORY).encode()), {}),
    ("wrong-charset", page("Café crème", STORY).encode("latin-1"),
     {"Content-Type": "text/html; charset=utf-8"}),
    ("huge", b"<html><body>" + b"<p>spam</p>" * 600_000 + b"</body></html>", {}),
    ("binary", bytes(range(256)) * 100, {}),
])
async def test_hostile_pages_are_survived(stage, httpserver, redis, keys, name, body, headers):  # type: ignore[no-untyped-def]
    httpserver.expect_request(f"/{name}").respond_with_data(
        body, headers={"Content-Type": "text/html", **headers})
    content = "<p>" + " ".join(STORY) + "</p>"
    assert await stage.process(entry(httpserver.url_for(f"/{name}"), content=content)) == "new"
    [record] = await articles(redis, keys)
    jsonschema.validate(record.as_dict(), SCHEMA)
    assert record.text  # extracted, or the feed's content when the page was unusable
    if name == "wrong-charset":
        assert "Café" in record.title or record.extraction == "feed"


# --- the worker: at-least-once through the consumer group -------------------------------------------


def consumer(redis, keys: Keys, name: str, config: Config) -> Consumer:  # type: ignore[no-untyped-def]
    return Consumer(redis, [keys.entries], GROUP, name, dead_stream=keys.dead, stage="articles",
                    reclaim_idle=config.articles.reclaim_idle, max_attempts=config.articles.max_attempts,
                    block_ms=100)


async def run_worker(stage: ArticleStage, cons: Consumer, until) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    worker = ArticleWorker(stage, cons, concurrency=4)
    task = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(30):
            while not await until():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.drain(1)


async def test_entries_left_by_a_dead_consumer_are_reclaimed_and_written_once(  # type: ignore[no-untyped-def]
        stage, httpserver, redis, keys):
    for i in range(5):
        httpserver.expect_request(f"/s{i}").respond_with_data(page(f"Story {i}", [f"Item {i}.", *OTHER]),
                                                              content_type="text/html")
        await redis.xadd(keys.entries, {"data": entry(httpserver.url_for(f"/s{i}")).dumps()})
    dead = consumer(redis, keys, "dead-daemon", stage.config)
    await dead.setup()
    assert len(await dead.read()) == 5  # read, then the daemon "dies" without acknowledging

    async def all_written() -> bool:
        pending = await redis.xpending(keys.entries, GROUP)
        return await redis.xlen(keys.articles) == 5 and pending["pending"] == 0

    await run_worker(stage, consumer(redis, keys, "survivor", stage.config), all_written)
    assert sorted(a.title for a in await articles(redis, keys)) == [f"Story {i}" for i in range(5)]


class FailingStage(ArticleStage):
    async def process(self, entry: Entry, source=None, group: str = "") -> str:  # type: ignore[no-untyped-def]
        if entry.link.endswith("/poison"):
            raise RuntimeError("cannot handle this one")
        return await super().process(entry, source, group)


async def test_an_entry_failing_n_times_goes_to_the_dead_stream(stage, httpserver, redis, keys):  # type: ignore[no-untyped-def]
    failing = FailingStage(stage.config, stage.client, stage.extractor, stage.hasher, stage.publisher,
                           stage.topics)
    httpserver.expect_request("/fine").respond_with_data(page("Fine", OTHER), content_type="text/html")
    await redis.xadd(keys.entries, {"data": entry(httpserver.url_for("/poison")).dumps()})
    await redis.xadd(keys.entries, {"data": entry(httpserver.url_for("/fine")).dumps()})
    await redis.xadd(keys.entries, {"data": "{not json"})

    async def settled() -> bool:
        return await redis.xlen(keys.dead) == 2 and await redis.xlen(keys.articles) == 1

    await run_worker(failing, consumer(redis, keys, "c1", stage.config), settled)
    dead = [fields for _, fields in await redis.xrange(keys.dead)]
    [poison] = [f for f in dead if "/poison" in f["data"]]
    assert poison["stage"] == "articles" and "attempts" in poison["reason"]
    assert any("unreadable" in f["reason"] for f in dead)
    assert (await redis.xpending(keys.entries, GROUP))["pending"] == 0


async def test_a_page_failing_for_a_passing_reason_is_retried_then_the_feed_is_used(  # type: ignore[no-untyped-def]
        pools, httpserver, redis, keys):
    # Entries are retried after reclaim_idle: long enough here that none is taken over while in flight.
    config = make_config(reclaim_idle="3s", max_attempts=5)  # PAGE_ATTEMPTS (3) comes first
    async with make_stage(config, redis, keys, pools) as stage:
        await asyncio.gather(stage.extractor.start(), stage.hasher.start())  # as the daemon does
        with socket.socket() as closed:  # bound, not listening: connections are refused
            closed.bind(("127.0.0.1", 0))
            await retried_then_feed(stage, httpserver, redis, keys,
                                    refused=f"http://127.0.0.1:{closed.getsockname()[1]}/story")


async def retried_then_feed(stage: ArticleStage, httpserver: HTTPServer, redis: aioredis.Redis,
                            keys: Keys, refused: str) -> None:
    httpserver.expect_oneshot_request("/flaky").respond_with_data("busy", status=503)
    httpserver.expect_request("/flaky").respond_with_data(page("Flaky", STORY), content_type="text/html")
    httpserver.expect_request("/down").respond_with_data("down", status=503)
    httpserver.expect_request("/gone").respond_with_data("gone", status=404)
    httpserver.expect_request("/corrupt").respond_with_data(b"not gzip at all", content_type="text/html",
                                                            headers={"Content-Encoding": "gzip"})
    content = "<p>" + " ".join(OTHER) + "</p>"
    urls = [httpserver.url_for(path) for path in ("/flaky", "/down", "/gone", "/corrupt")] + [refused]
    for url in urls:
        await redis.xadd(keys.entries, {"data": entry(url, content=content).dumps()})

    async def settled() -> bool:
        written = await redis.xlen(keys.articles) == len(urls)
        return written and (await redis.xpending(keys.entries, GROUP))["pending"] == 0

    await run_worker(stage, consumer(redis, keys, "c1", stage.config), settled)
    by_url = {a.url: a for a in await articles(redis, keys)}
    assert by_url[httpserver.url_for("/flaky")].extraction == "trafilatura"  # the second try got the page
    assert "thirty-day truce" in by_url[httpserver.url_for("/flaky")].text
    for url in urls[1:]:
        assert by_url[url].extraction == "feed" and "bike lanes" in by_url[url].text
    tries = Counter(request.path for request, _ in httpserver.log)
    assert tries == {"/flaky": 2, "/down": PAGE_ATTEMPTS, "/gone": 1, "/corrupt": 1}  # final at once
    assert await redis.xlen(keys.dead) == 0


async def test_one_sites_backlog_does_not_hold_up_the_others(pools, redis, keys):  # type: ignore[no-untyped-def]
    """Site A's six entries come first in the stream, then site B's two: at most two of A's run at
    once (network.host_concurrency), and B's start at once rather than after A's backlog."""
    starts: list[tuple[str, float]] = []
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()

    async def story(request: web.Request) -> web.Response:
        host = request.host.split(":")[0]
        starts.append((host, time.monotonic()))
        running[host] += 1
        peak[host] = max(peak[host], running[host])
        await asyncio.sleep(0.5)
        running[host] -= 1
        return web.Response(text=page(f"Story {request.path}", STORY), content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", story)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sites = {}
    for host in ("127.0.0.1", "127.0.0.2"):
        site = web.TCPSite(runner, host, 0)
        await site.start()
        sites[host] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with make_stage(make_config(), redis, keys, pools) as stage:
            urls = [f"http://127.0.0.1:{sites['127.0.0.1']}/a{i}" for i in range(6)]
            urls += [f"http://127.0.0.2:{sites['127.0.0.2']}/b{i}" for i in range(2)]
            for url in urls:
                await redis.xadd(keys.entries, {"data": entry(url).dumps()})

            async def all_written() -> bool:
                return bool(await redis.xlen(keys.articles) == len(urls))

            await run_worker(stage, consumer(redis, keys, "c1", stage.config), all_written)
    finally:
        await runner.cleanup()
    assert peak["127.0.0.1"] <= 2  # make_config's network: host_concurrency 2 (the default)
    first_b = min(t for host, t in starts if host == "127.0.0.2")
    third_a = sorted(t for host, t in starts if host == "127.0.0.1")[2]
    assert first_b < third_a
