"""Three `ingester run` daemons on one Redis share the work with no duplicate poll, article or alert."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from ingester.keys import Keys
from ingester.record import Article

TOPIC = "ceasefire"
_WORDS = """minister council harbour river market budget school doctors farmers railway bridge winter
summer report museum festival court judge police union workers strike factory energy price water storm flood
forest mountain village city region province border election vote party leader senator mayor hospital
patients nurses teachers students airport flights tourists hotel restaurant football coach season league
stadium fans record album singer concert film director actor theatre novel author library science research
laboratory space rocket satellite climate carbon solar wind turbine battery engine vehicle traffic road tunnel
port ship cargo export import trade tariff bank loan interest inflation wages pension tax property housing
rent tenants landlord charity volunteers church mosque temple heritage castle garden park zoo wildlife
species ocean coast island fishing boat"""
VOCABULARY = _WORDS.split()


def paragraphs(name: str, *, topical: bool) -> list[str]:
    """Four distinct paragraphs of their own words (trafilatura drops repeated identical paragraphs)."""
    rng = random.Random(name)
    out = [" ".join(rng.choice(VOCABULARY) for _ in range(35)).capitalize() + "." for _ in range(4)]
    if topical:
        out[1] = f"The {TOPIC} was discussed again. " + out[1]
    return out


def page(title: str, paras: list[str]) -> str:
    body = "".join(f"<p>{p}</p>" for p in paras)
    return (f"<html lang='en'><head><title>{title}</title></head><body><article><h1>{title}</h1>{body}"
            "</article></body></html>")


class Newsroom:
    """Feeds /feed/<i> on 127.0.0.1, their story pages, and an alert receiver at /hook.

    Feed i lists two stories of its own, one it shares with its neighbour (same link), and for
    i < 2 x wire a wire story: the original on 127.0.0.1 for i < wire, a syndicated copy (new headline,
    dateline, footer) on localhost for the next `wire` feeds. Feeds stay empty until `daemons`
    distinct user agents have polled, so that every daemon is running when the stories appear.
    """

    def __init__(self, feeds: int, wire: int, daemons: int, *, feed_delay: float = 0.2,
                 page_delay: float = 0.1) -> None:
        self.feeds, self.wire, self.daemons = feeds, wire, daemons
        self.feed_delay, self.page_delay = feed_delay, page_delay
        self.port = 0
        self.in_flight: Counter[str] = Counter()
        self.max_overlap: Counter[str] = Counter()
        self.polls: Counter[str] = Counter()  # by user agent
        self.pages: Counter[str] = Counter()  # by user agent
        self.alerts: Counter[tuple[str, str]] = Counter()  # (topic, cluster id)
        self.alerts_by_agent: Counter[str] = Counter()

    def base(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def links(self, i: int) -> list[str]:
        links = [f"{self.base()}/story/own-{i}-{j}" for j in range(2)]
        links.append(f"{self.base()}/story/shared-{i // 2}")
        if i < self.wire:
            links.append(f"{self.base()}/story/wire-{i}")
        elif i < 2 * self.wire:
            links.append(f"{self.base('localhost')}/syn/wire-{i - self.wire}")
        return links

    def all_links(self) -> set[str]:
        return {link for i in range(self.feeds) for link in self.links(i)}

    @staticmethod
    def topical(name: str) -> bool:
        kind, _, rest = name.partition("-")
        if kind == "own":
            i, j = map(int, rest.split("-"))
            return (2 * i + j) % 3 == 0
        return kind == "wire" or (kind == "shared" and int(rest) % 3 == 0)

    def topical_stories(self) -> int:
        """Story clusters that match the topic (a wire story and its copy are one)."""
        names = {link.rsplit("/", 1)[1] for link in self.all_links()}
        return sum(self.topical(n) for n in names)

    async def feed(self, request: web.Request) -> web.Response:
        i = int(request.match_info["n"])
        self.polls[request.headers.get("User-Agent", "")] += 1
        self.in_flight[str(i)] += 1
        self.max_overlap[str(i)] = max(self.max_overlap[str(i)], self.in_flight[str(i)])
        try:
            await asyncio.sleep(self.feed_delay)
        finally:
            self.in_flight[str(i)] -= 1
        open_ = len(self.polls) >= self.daemons
        items = "".join(f"<item><title>{link.rsplit('/', 1)[1]}</title><link>{link}</link></item>"
                        for link in (self.links(i) if open_ else []))
        body = (f"<rss version='2.0'><channel><title>Feed {i}</title><link>{self.base()}/</link>{items}"
                "</channel></rss>")
        return web.Response(text=body, content_type="application/rss+xml")

    async def story(self, request: web.Request) -> web.Response:
        self.pages[request.headers.get("User-Agent", "")] += 1
        await asyncio.sleep(self.page_delay)
        name = request.match_info["name"]
        paras = paragraphs(name, topical=self.topical(name))
        if request.path.startswith("/syn/"):  # the same wire text, as another outlet prints it
            paras = [f"LONDON (Wire) - {paras[0]}", *paras[1:], "Copyright Wire. All rights reserved."]
            return web.Response(text=page(f"Outlet headline for {name}", paras), content_type="text/html")
        return web.Response(text=page(f"Story {name}", paras), content_type="text/html")

    async def hook(self, request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        self.alerts[(payload["topic"], payload["article"]["cluster_id"])] += 1
        self.alerts_by_agent[request.headers.get("User-Agent", "")] += 1
        return web.Response(text="ok")


async def serve(room: Newsroom) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/feed/{n}", room.feed)
    app.router.add_get("/story/{name}", room.story)
    app.router.add_get("/syn/{name}", room.story)
    app.router.add_post("/hook", room.hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    room.port = runner.addresses[0][1]
    return runner


@pytest.fixture
async def newsroom() -> AsyncIterator[Newsroom]:
    room = Newsroom(feeds=20, wire=4, daemons=3)
    runner = await serve(room)
    yield room
    await runner.cleanup()


def write_config(path: Path, room: Newsroom, *, namespace: str, agent: str) -> Path:
    lines = [
        "[redis]", f'namespace = "{namespace}"',
        # Two polls in flight per daemon: more feeds are due than one daemon takes, so all of them poll.
        # (With spare capacity, the daemon that polled a feed tends to claim it again: its reschedule
        # puts the next due time just before its own next tick.)
        "[polling]", 'default_interval = "1s"', 'min_interval = "1s"', 'max_interval = "2s"',
        "concurrency = 2",
        "[network]", 'allow_private = ["127.0.0.0/8", "::1/128"]', "host_min_gap = 0",
        "host_concurrency = 50", 'timeout = "2s"', f'user_agent = "{agent}"',
        "[articles]", "workers = 1", "concurrency = 4",
        "[server]", "port = 0", 'shutdown_grace = "5s"',
        "[[topics]]", f'name = "{TOPIC}"', f'query = "{TOPIC}"', 'notify = ["hook"]',
        "[[notifiers]]", 'name = "hook"', 'type = "webhook"', f'webhook_url = "{room.base()}/hook"',
        "rate = 100",
    ]
    for i in range(room.feeds):
        lines += ["[[feeds]]", f'url = "{room.base()}/feed/{i}"', 'interval = "1s"']
    path.write_text("\n".join(lines) + "\n")
    return path


def start(config: Path, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "ingester", "run", "--config", str(config)],
                                env={**os.environ, "INGESTER_REDIS_URL": redis_url},
                                stdout=subprocess.DEVNULL, stderr=out)


async def stop_all(processes: list[subprocess.Popen[bytes]], budget: float = 15.0) -> list[int | None]:
    """SIGTERM every daemon at once; the exit codes (None: still running after `budget` s)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline and any(p.poll() is None for p in processes):
        await asyncio.sleep(0.05)
    codes = [p.poll() for p in processes]
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
    return codes


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():
                await asyncio.sleep(0.2)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


async def articles(redis: aioredis.Redis, keys: Keys) -> list[Article]:
    return [Article.loads(fields["data"]) for _, fields in await redis.xrange(keys.articles)]


async def pending(redis: aioredis.Redis, stream: str, group: str) -> int:
    return int((await redis.xpending(stream, group))["pending"])


async def settled(redis: aioredis.Redis, keys: Keys, room: Newsroom, expected_articles: int) -> bool:
    """Every article written, every alert received, nothing pending or unread."""
    if await redis.xlen(keys.articles) < expected_articles or len(room.alerts) < room.topical_stories():
        return False
    for stream, group in ((keys.entries, "articles"), (keys.topic(TOPIC), "notify")):
        info = {g["name"]: g for g in await redis.xinfo_groups(stream)}
        if await pending(redis, stream, group) or info[group].get("lag"):
            return False
    return True


def check_once(room: Newsroom, written: list[Article]) -> None:
    """Each article once (by id and by URL), syndicated copies clustered, each story alerted once."""
    assert max(room.max_overlap.values()) == 1, "a feed was polled by two daemons at once"
    assert [k for k, n in Counter(a.id for a in written).items() if n > 1] == []
    assert [k for k, n in Counter(a.url for a in written).items() if n > 1] == []
    assert {a.url for a in written} == room.all_links()
    by_url = {a.url: a for a in written}
    wire_clusters = set()
    for k in range(room.wire):
        original = by_url[f"{room.base()}/story/wire-{k}"]
        copy = by_url[f"{room.base('localhost')}/syn/wire-{k}"]
        assert original.cluster_id == copy.cluster_id, f"wire story {k}: the copy is not clustered"
        wire_clusters.add(original.cluster_id)
    assert len(wire_clusters) == room.wire
    matching = {a.cluster_id for a in written if TOPIC in a.topics}
    assert len(matching) == room.topical_stories()
    assert set(room.alerts) == {(TOPIC, c) for c in matching}
    assert [k for k, n in room.alerts.items() if n > 1] == [], "a story was alerted twice"


async def test_three_daemons_share_one_redis_without_duplicates(  # type: ignore[no-untyped-def]
        newsroom: Newsroom, tmp_path: Path, redis_url: str, namespace: str, redis) -> None:
    keys = Keys(namespace)
    agents = [f"scale-test/daemon-{n}" for n in range(3)]
    daemons = [start(write_config(tmp_path / f"d{n}.toml", newsroom, namespace=namespace, agent=agent),
                     redis_url, tmp_path / f"d{n}.log") for n, agent in enumerate(agents)]
    expected = len(newsroom.all_links())
    try:
        await wait_for(lambda: settled(redis, keys, newsroom, expected), 120, "all articles and alerts")
        await asyncio.sleep(3)  # polls go on: give a late duplicate the time to show itself
        assert await settled(redis, keys, newsroom, expected)
        written = await articles(redis, keys)
    finally:
        codes = await stop_all(daemons)
    logs = "\n".join((tmp_path / f"d{n}.log").read_text()[-1500:] for n in range(3))
    assert all(p.returncode is not None for p in daemons)
    assert codes == [0, 0, 0], f"exit codes {codes} (None: not stopped within 15 s)\n{logs}"

    check_once(newsroom, written)
    assert await redis.xlen(keys.dead) == 0, logs
    # Every daemon polled feeds and fetched pages (feeds were empty until all three had polled).
    assert set(newsroom.polls) == set(agents), dict(newsroom.polls)
    assert set(newsroom.pages) == set(agents), f"pages fetched per daemon: {dict(newsroom.pages)}"
    consumers = {c["name"] for c in await redis.xinfo_consumers(keys.entries, "articles")}
    assert len(consumers) == 3
    assert len(newsroom.max_overlap) == newsroom.feeds  # every feed was polled
