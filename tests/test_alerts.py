"""The notifier stage against a real Redis and a real loopback HTTP server standing in for Slack."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from ingester import metrics
from ingester.alerts import GROUP, Alerter
from ingester.config import Config, from_dict
from ingester.keys import Keys
from ingester.record import Article
from ingester.safehttp import SafeClient
from ingester.streams import ensure_group

SLACK_TOKEN = "XyZsecretTokenAbc123456789"
HMAC_SECRET = "hmac-secret-value-42"


# --- a loopback server standing in for Slack and webhook receivers ----------------------------------------

@dataclass
class Received:
    path: str
    body: bytes
    headers: dict[str, str]
    at: float  # time.monotonic() when the request arrived

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    hold: asyncio.Event | None = None  # answer only once this is set
    delay: float = 0.0


class Hook:
    """Records every request; answers each path from its script of replies, then 200 "ok"."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: dict[str, list[Reply]] = {}
        self.port = 0
        self.delay = 0.0  # before every default reply
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, *replies: Reply) -> None:
        self.script.setdefault(path, []).extend(replies)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, await request.read(), dict(request.headers),
                                      time.monotonic()))
        script = self.script.get(request.path)
        reply = script.pop(0) if script else Reply(delay=self.delay)
        await asyncio.sleep(reply.delay)
        if reply.hold is not None:
            await reply.hold.wait()
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    server = Hook()
    await server.start()
    yield server
    await server.stop()


def slack_path(name: str = "newsroom") -> str:
    return f"/services/T000/B{name}/{SLACK_TOKEN}"


def make_config(hook: Hook, notifiers: list[dict[str, Any]],
                topics: list[dict[str, Any]] | None = None) -> Config:
    names = [n["name"] for n in notifiers]
    for n in notifiers:
        n.setdefault("type", "slack")
        n.setdefault("webhook_url", hook.url(slack_path(n["name"])))
        n.setdefault("rate", 50.0)
    return from_dict({
        "network": {"allow_private": ["127.0.0.0/8"], "timeout": 10},
        "topics": topics or [{"name": "ceasefire", "query": "ceasefire OR truce", "notify": names}],
        "notifiers": notifiers,
    })


def make_article(n: int | str, cluster: int | str | None = None, **overrides: Any) -> Article:
    fields: dict[str, Any] = {
        "id": f"a{n}", "url": f"https://news.example/story/{n}",
        "canonical_url": f"https://news.example/story/{n}", "feed_url": "https://news.example/feed",
        "source": "news.example", "title": f"Ceasefire story {n}",
        "text": "The ceasefire held overnight.", "summary": "A truce and a ceasefire.",
        "authors": [], "language": "en", "published_at": "2025-03-15T10:04:05Z",
        "fetched_at": "2025-03-15T10:05:00Z", "extraction": "trafilatura",
        "cluster_id": f"a{cluster if cluster is not None else n}", "topics": ["ceasefire"],
    }
    fields.update(overrides)
    return Article(**fields)


async def publish(redis: aioredis.Redis, keys: Keys, *articles: Article, topic: str = "ceasefire") -> None:
    """Matches written to the topic stream, as in a daemon whose alert sender was set up first."""
    await ensure_group(redis, keys.topic(topic), GROUP)
    for a in articles:
        await redis.xadd(keys.topic(topic), {"data": a.dumps()})


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Running:
    """An Alerter running in a task; `stop()` is a clean stop, `crash()` a cancel."""

    def __init__(self, alerter: Alerter) -> None:
        self.alerter = alerter
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(alerter.run(self.stop_event))

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 15)

    async def crash(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def client() -> AsyncIterator[SafeClient]:
    async with SafeClient(from_dict({"network": {"allow_private": ["127.0.0.0/8"]}}).network) as c:
        yield c


def alerter(redis: aioredis.Redis, keys: Keys, config: Config, client: SafeClient,
            **kwargs: Any) -> Alerter:
    kwargs.setdefault("backoff", 0.05)
    kwargs.setdefault("block_ms", 100)
    return Alerter(redis, keys, config, client, **kwargs)


async def pending(redis: aioredis.Redis, keys: Keys, topic: str = "ceasefire") -> int:
    return int((await redis.xpending(keys.topic(topic), "notify"))["pending"])


async def dead(redis: aioredis.Redis, keys: Keys) -> list[dict[str, str]]:
    return [fields for _, fields in await redis.xrange(keys.dead)]


def counter(notifier: str, outcome: str) -> float:
    return metrics.ALERTS.labels(notifier=notifier, outcome=outcome)._value.get()


# --- once per story -------------------------------------------------------------------------------------

async def test_one_alert_per_cluster(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                     client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom"}])
    await publish(redis, keys, make_article(1), make_article(2, cluster=1), make_article(3),
                  make_article(4, cluster=1), make_article(5, cluster=3))
    skipped = counter("newsroom", "skipped")
    run = Running(alerter(redis, keys, config, client))
    await eventually(lambda: _acked_all(redis, keys, 5))
    await run.stop()
    assert len(hook.received) == 2
    titles = sorted(r.json()["blocks"][0]["text"]["text"] for r in hook.received)
    assert titles == ["Ceasefire story 1", "Ceasefire story 3"]
    assert counter("newsroom", "skipped") - skipped == 3
    assert await redis.exists(keys.alerted("newsroom", "ceasefire", "a1"))
    ttl = await redis.ttl(keys.alerted("newsroom", "ceasefire", "a3"))
    assert 29 * 86400 < ttl <= 30 * 86400  # the dedup retention
    assert not await redis.exists(keys.alert_claim("newsroom", "ceasefire", "a1"))
    assert await pending(redis, keys) == 0


async def test_a_topic_that_gains_a_notifier_is_alerted_from_then_on(redis: aioredis.Redis, keys: Keys,
                                                                    hook: Hook, client: SafeClient) -> None:
    for n in range(3):  # matches of a topic that had no notifier yet: no alerter group on its stream
        await redis.xadd(keys.topic("ceasefire"), {"data": make_article(n).dumps()})
    sender = alerter(redis, keys, make_config(hook, [{"name": "newsroom"}]), client)
    await sender.setup()
    await redis.xadd(keys.topic("ceasefire"), {"data": make_article("new").dumps()})
    run = Running(sender)
    await eventually(lambda: len(hook.received) == 1)
    await asyncio.sleep(0.3)  # time enough for any other send
    await run.stop()
    assert [r.json()["blocks"][0]["text"]["text"] for r in hook.received] == ["Ceasefire story new"]


async def test_a_new_topics_first_match_is_alerted(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                   client: SafeClient) -> None:
    sender = alerter(redis, keys, make_config(hook, [{"name": "newsroom"}]), client)
    await sender.setup()  # as the daemon does before articles flow: the stream does not exist yet
    await redis.xadd(keys.topic("ceasefire"), {"data": make_article(1).dumps()})
    run = Running(sender)
    await eventually(lambda: len(hook.received) == 1)
    await run.stop()


async def _acked_all(redis: aioredis.Redis, keys: Keys, count: int, topic: str = "ceasefire") -> bool:
    groups = await redis.xinfo_groups(keys.topic(topic))
    return bool(groups) and groups[0]["pending"] == 0 and groups[0]["entries-read"] == count


async def test_two_daemons_still_one_alert_per_cluster(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                       client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom"}])
    hook.delay = 0.2  # slow answers: the copies' claims overlap
    await publish(redis, keys, *[make_article(i, cluster=i % 3) for i in range(12)])
    runs = [Running(alerter(redis, keys, config, client, name=f"d{i}", busy_wait=0.05, batch=1))
            for i in range(3)]
    await eventually(lambda: _acked_all(redis, keys, 12))
    for run in runs:
        await run.stop()
    stories = [int(r.json()["blocks"][0]["text"]["text"].split()[-1]) for r in hook.received]
    assert sorted(n % 3 for n in stories) == [0, 1, 2], stories
    consumers = await redis.xinfo_consumers(keys.topic("ceasefire"), "notify")
    assert len(consumers) == 3


async def test_each_notifier_alerts_once_per_cluster(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                     client: SafeClient) -> None:
    config = make_config(hook, [{"name": "a"}, {"name": "b"}])
    await publish(redis, keys, make_article(1), make_article(2, cluster=1))
    run = Running(alerter(redis, keys, config, client))
    await eventually(lambda: _acked_all(redis, keys, 2))
    await run.stop()
    assert len(hook.at(slack_path("a"))) == 1 and len(hook.at(slack_path("b"))) == 1


# --- failures ---------------------------------------------------------------------------------------------

async def test_429_retry_after_honoured_while_other_notifier_sends(
        redis: aioredis.Redis, keys: Keys, hook: Hook, client: SafeClient) -> None:
    config = make_config(hook, [{"name": "slow"}, {"name": "fast"}])
    hook.on(slack_path("slow"), Reply(429, "rate_limited", {"Retry-After": "2"}))
    await publish(redis, keys, *[make_article(i) for i in range(3)])
    run = Running(alerter(redis, keys, config, client))
    await eventually(lambda: len(hook.at(slack_path("slow"))) == 4)
    await run.stop()
    slow, fast = hook.at(slack_path("slow")), hook.at(slack_path("fast"))
    assert slow[1].at - slow[0].at >= 1.9  # nothing before Retry-After
    assert slow[1].body == slow[0].body  # the same alert, resent
    assert len(fast) == 3 and all(f.at < slow[1].at for f in fast)  # the other webhook went on
    assert await dead(redis, keys) == []


async def test_5xx_and_network_errors_retried_then_sent(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                        client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom"}])
    hook.on(slack_path(), Reply(500, "boom"), Reply(503, "busy"), Reply(502))
    retried = counter("newsroom", "retried")
    await publish(redis, keys, make_article(1))
    run = Running(alerter(redis, keys, config, client))
    await eventually(lambda: _acked_all(redis, keys, 1))
    await run.stop()
    assert len(hook.received) == 4
    assert len({r.body for r in hook.received}) == 1
    assert counter("newsroom", "retried") - retried == 3
    assert await dead(redis, keys) == []
    assert await redis.exists(keys.alerted("newsroom", "ceasefire", "a1"))


async def test_unreachable_webhook_retried_not_dropped(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                       client: SafeClient) -> None:
    port = hook.port
    await hook.stop()  # connection refused for a while
    config = make_config(hook, [{"name": "newsroom"}])
    await publish(redis, keys, make_article(1))
    run = Running(alerter(redis, keys, config, client, backoff=0.1, backoff_max=0.3))
    await asyncio.sleep(1.0)
    assert await pending(redis, keys) == 1  # kept, not dropped nor parked
    assert await dead(redis, keys) == []
    await hook.start(port)  # back up: the alert goes out
    await eventually(lambda: _acked_all(redis, keys, 1))
    await run.stop()
    assert len(hook.received) == 1
    assert await dead(redis, keys) == []


@pytest.mark.parametrize(("status", "error"), [(404, "channel_not_found"), (410, "channel_is_archived"),
                                              (400, "invalid_payload"), (403, "action_prohibited")])
async def test_other_4xx_parked_with_reason(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                            client: SafeClient, status: int, error: str) -> None:
    config = make_config(hook, [{"name": "newsroom"}])
    hook.on(slack_path(), Reply(status, error))
    parked = counter("newsroom", "parked")
    await publish(redis, keys, make_article(1), make_article(2, cluster=1))
    run = Running(alerter(redis, keys, config, client))
    await eventually(lambda: _acked_all(redis, keys, 2))
    await run.stop()
    # the first copy is parked; the second copy, no longer blocked by a claim, goes out
    letters = await dead(redis, keys)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["reason"] == f"HTTP {status}: {error}"
    assert (letter["stage"], letter["kind"], letter["notifier"], letter["topic"]) == (
        "notify", "alert", "newsroom", "ceasefire")
    assert Article.loads(letter["data"]).id == "a1"
    assert letter["stream"] == keys.topic("ceasefire")
    assert counter("newsroom", "parked") - parked == 1
    assert len(hook.received) == 2


# --- crash between send and mark -------------------------------------------------------------------------

async def test_crash_between_send_and_mark_gives_at_most_one_duplicate(
        redis: aioredis.Redis, keys: Keys, hook: Hook, client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom"}])
    never = asyncio.Event()
    hook.on(slack_path(), Reply(hold=never))  # accepted (received), but the answer never comes
    await publish(redis, keys, make_article(1), make_article(2, cluster=1))
    first = Running(alerter(redis, keys, config, client, name="first", reclaim_idle=0.5))
    await eventually(lambda: len(hook.received) == 1)
    await first.crash()
    assert not await redis.exists(keys.alerted("newsroom", "ceasefire", "a1"))
    assert await redis.get(keys.alert_claim("newsroom", "ceasefire", "a1"))
    second = Running(alerter(redis, keys, config, client, name="second", reclaim_idle=0.5,
                             busy_wait=0.05))
    await eventually(lambda: _acked_all(redis, keys, 2))
    await asyncio.sleep(1.0)  # anything else that would still be sent
    await second.stop()
    never.set()
    assert len(hook.received) == 2  # one duplicate, not more, not none
    assert hook.received[0].body == hook.received[1].body
    assert await redis.exists(keys.alerted("newsroom", "ceasefire", "a1"))


# --- rate -------------------------------------------------------------------------------------------------

async def test_rate_holds_across_daemons(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                         client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom", "rate": 4.0}])  # one per 0.25 s
    await publish(redis, keys, *[make_article(i) for i in range(8)])
    runs = [Running(alerter(redis, keys, config, client, name=f"d{i}")) for i in range(2)]
    await eventually(lambda: _acked_all(redis, keys, 8))
    for run in runs:
        await run.stop()
    times = sorted(r.at for r in hook.received)
    assert len(times) == 8
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.2, gaps


# --- digest -----------------------------------------------------------------------------------------------

async def test_digest_collects_once_per_cluster_then_sends(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                           client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom", "digest": "1h"}])
    await publish(redis, keys, make_article(1), make_article(2, cluster=1), make_article(3))
    a = alerter(redis, keys, config, client)
    run = Running(a)
    await eventually(lambda: _acked_all(redis, keys, 3))  # acked once stored, before any send
    assert hook.received == []
    assert await redis.hlen(keys.digest("newsroom", "ceasefire")) == 2
    assert await a.flush_digest("newsroom", "ceasefire") == 2
    await run.stop()
    (message,) = [r.json() for r in hook.received]
    assert message["blocks"][0]["text"]["text"] == "ceasefire: 2 new stories"
    text = message["blocks"][1]["text"]["text"]
    assert "Ceasefire story 1" in text and "Ceasefire story 3" in text
    assert not await redis.exists(keys.digest("newsroom", "ceasefire", sending=True))
    # a late syndicated copy of an alerted story is not listed again
    await publish(redis, keys, make_article(4, cluster=1))
    run = Running(a)
    await eventually(lambda: _acked_all(redis, keys, 4))
    await run.stop()
    assert await redis.hlen(keys.digest("newsroom", "ceasefire")) == 0


async def test_digest_flushes_every_period_and_splits(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                      client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom", "digest": "1s", "rate": 20.0}])
    stories = [make_article(i, title=f"Ceasefire {i} " + "x" * 180,
                            url=f"https://news.example/{i}/" + "p" * 600) for i in range(300)]
    await publish(redis, keys, *stories)
    run = Running(alerter(redis, keys, config, client))
    await eventually(lambda: _acked_all(redis, keys, 300))
    await eventually(lambda: len(hook.received) > 0)
    await eventually(lambda: _digest_done(redis, keys))
    await run.stop()
    messages = [r.json() for r in hook.received]
    assert len(messages) > 1
    listed = []
    for m in messages:
        assert len(m["blocks"]) <= 50
        for block in m["blocks"][1:]:
            assert len(block["text"]["text"]) <= 3000
            listed += block["text"]["text"].split("\n")
    assert len(listed) == 300 and len(set(listed)) == 300


async def _digest_done(redis: aioredis.Redis, keys: Keys) -> bool:
    return not await redis.exists(keys.digest("newsroom", "ceasefire"),
                                  keys.digest("newsroom", "ceasefire", sending=True))


# --- secrets ----------------------------------------------------------------------------------------------

async def test_no_secret_in_logs_or_dead_letters(
        redis: aioredis.Redis, keys: Keys, hook: Hook, client: SafeClient,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    caplog.set_level(logging.DEBUG, logger="ingester")
    url = hook.url(f"/hooks/{SLACK_TOKEN}?token={SLACK_TOKEN}")
    config = make_config(hook, [{"name": "newsroom"},
                                {"name": "hook", "type": "webhook", "webhook_url": url,
                                 "secret": HMAC_SECRET}])
    hook.on(slack_path(), Reply(500, f"echo {SLACK_TOKEN}"), Reply(404, "channel_not_found"))
    hook.on(f"/hooks/{SLACK_TOKEN}", Reply(429, "slow", {"Retry-After": "0.2"}), Reply(410, "gone"))
    await publish(redis, keys, make_article(1))
    with structlog.testing.capture_logs() as captured:
        run = Running(alerter(redis, keys, config, client))
        await eventually(lambda: _acked_all(redis, keys, 1))
        await run.stop()
    letters = await dead(redis, keys)
    assert len(letters) == 2
    assert "HTTP 500: echo ***" in repr(captured)
    everything = repr(captured) + caplog.text + repr(letters)
    assert "alert parked" in repr(captured) and "alert retry" in repr(captured)
    for secret in (SLACK_TOKEN, HMAC_SECRET, "/services/T000", "/hooks/"):
        assert secret not in everything, secret
    assert "127.0.0.1" in repr(captured)  # the host is shown


async def test_stop_leaves_unsent_entries_pending(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                  client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom"}])
    hook.on(slack_path(), Reply(429, "slow", {"Retry-After": "30"}))
    await publish(redis, keys, make_article(1), make_article(2), make_article(3))
    run = Running(alerter(redis, keys, config, client, grace=0.2, max_in_flight=1, batch=1))
    await eventually(lambda: len(hook.received) == 1)
    await asyncio.sleep(0.3)
    assert await pending(redis, keys) == 1  # no more read while the one held waits
    await run.stop()
    assert await pending(redis, keys) == 1
    assert await dead(redis, keys) == []


def terms(query: str, title: str, text: str) -> list[str]:
    from ingester.alerts import matched_terms
    from ingester.config import TopicConfig
    from ingester.topics import TopicSet

    story = make_article(1, title=title, text=text, summary="Truce, truce everywhere")
    return matched_terms(story, TopicSet([TopicConfig(name="t", query=query)]), "t")


def test_matched_terms_are_those_that_made_the_article_match() -> None:
    assert terms('(ceasefire OR "cease-fire" OR truce) AND negotiat* AND NOT (war OR famine) '
                 'AND ("peace talks" NEAR/5 kremlin) AND title:(android OR python) AND NOT title:pipeline',
                 "Kremlin talks on Python",
                 "Negotiators negotiated a cease-fire. No truce yet. Android phones. Peace talks continue, "
                 "said the Kremlin.") == ["cease fire", "truce", "negotiated", "negotiators", "peace talks",
                                          "kremlin", "python"]
    # android is only in the text, where title:(...) does not look; the summary is not matched at all


def test_matched_terms_keep_each_clause_to_its_own_words() -> None:
    # "said" lies inside the NEAR's span, but its own clause is scoped to the title
    assert terms('("peace talks" NEAR/5 kremlin) AND title:(android OR said)', "Android news",
                 "Peace talks continue, said the Kremlin.") == ["peace talks", "kremlin", "android"]
    assert terms("(peace NEAR/5 kremlin) AND (title:deal* OR russia)", "Talks",
                 "Peace deal talks in the Kremlin, Russia says.") == ["peace", "kremlin", "russia"]


def test_retry_after_seconds_and_dates() -> None:
    import email.utils

    import httpx

    from ingester.alerts import retry_after
    from ingester.safehttp import Response

    def answer(value: str | None) -> Response:
        headers = httpx.Headers({"Retry-After": value} if value is not None else {})
        return Response("http://127.0.0.1/", 429, headers, b"")

    assert retry_after(answer("7")) == 7.0
    assert retry_after(answer(None)) == 1.0 and retry_after(answer("soon")) == 1.0
    assert retry_after(answer("-5")) == 0.0 and retry_after(answer("99999")) == 3600.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after(answer(later)) <= 31


def test_host_only_and_scrub() -> None:
    from ingester.alerts import _url_secrets, host_only, scrub

    url = f"https://hooks.slack.com/services/T000/B000/{SLACK_TOKEN}"
    assert host_only(url) == "hooks.slack.com"
    assert host_only("not a url") == "(webhook)"
    text = scrub(f"failed {url} and {SLACK_TOKEN} but services stays", _url_secrets(url))
    assert SLACK_TOKEN not in text and "hooks.slack.com" not in text and "services stays" in text
