"""Publishing is atomic: dedup mark, streams and the ack go together, through races and Redis restarts."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import pytest

from ingester.connection import connect
from ingester.embedded import EmbeddedRedis, free_port
from ingester.keys import Keys
from ingester.neardup import NearDupIndex, signature
from ingester.publish import Publisher
from ingester.record import Article
from ingester.streams import Consumer, Message

GROUP = "articles"
WORDS = ["ceasefire", "talks", "capital", "negotiators", "draft", "pause", "fighting", "thirty", "days",
         "exchange", "prisoners", "corridors", "aid", "convoys", "towns", "weeks", "monitors", "front"]


def story(seed: int, words: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(words))


def article(n: int, text: str, topics: list[str] | None = None) -> Article:
    aid = f"{n:024x}"
    return Article(id=aid, url=f"http://site{n}.example/a", canonical_url=f"http://site{n}.example/a",
                   feed_url="http://feeds.example/f", source=f"site{n}.example", title=f"Story {n}",
                   text=text, summary="", authors=[], language="en", published_at=None,
                   fetched_at="2025-06-10T08:00:00Z", extraction="trafilatura", cluster_id=aid,
                   topics=topics or [])


async def test_racing_copies_join_one_cluster(redis, keys: Keys) -> None:
    near = NearDupIndex(redis, keys)
    publisher = Publisher(redis, keys, retention=3600, near=near)
    text = story(1)
    copies = [article(i, f"CITY{i} (Wire) - {text}") for i in range(8)]
    await asyncio.gather(*(publisher.publish(a, [a.url], signature=signature(a.text)) for a in copies))
    written = [Article.loads(f["data"]) for _, f in await redis.xrange(keys.articles)]
    assert len(written) == 8
    first = written[0]
    assert first.cluster_id == first.id
    assert {a.cluster_id for a in written} == {first.id}


async def test_different_stories_do_not_cluster(redis, keys: Keys) -> None:
    publisher = Publisher(redis, keys, retention=3600, near=NearDupIndex(redis, keys))
    stories = [article(i, story(100 + i)) for i in range(5)]
    for a in stories:
        await publisher.publish(a, [a.url], signature=signature(a.text))
    written = [Article.loads(f["data"]) for _, f in await redis.xrange(keys.articles)]
    assert all(a.cluster_id == a.id for a in written)


async def test_the_article_the_topic_streams_and_the_ack_are_one_step(redis, keys: Keys) -> None:
    publisher = Publisher(redis, keys, retention=3600)
    consumer = Consumer(redis, [keys.entries], GROUP, "c", dead_stream=keys.dead, stage="articles")
    await consumer.setup()
    for _ in range(2):
        await redis.xadd(keys.entries, {"data": "{}"})
    first, second = await consumer.read()
    a = article(1, story(1), topics=["ceasefire", "ukraine"])
    assert await publisher.publish(a, [a.url, "http://alias.example/x"], source=first, group=GROUP)
    assert not await publisher.publish(a, [a.url], source=second, group=GROUP)  # the same id again
    assert await redis.xlen(keys.articles) == 1
    assert await redis.xlen(keys.topic("ceasefire")) == await redis.xlen(keys.topic("ukraine")) == 1
    assert (await redis.xpending(keys.entries, GROUP))["pending"] == 0
    assert await publisher.known("http://alias.example/x") == a.id
    ttl = await redis.ttl(keys.doc(a.id))
    assert 0 < ttl <= 3600
    # Dedup marks stay small.
    assert await redis.memory_usage(keys.doc(a.id)) < 200
    assert await redis.memory_usage(keys.url(a.url)) < 200


async def test_a_redis_restart_mid_batch_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, persist=True, tcp=True, port=free_port())
    server.start()
    redis = connect(server.url)
    keys = Keys("restart")
    total = 150
    try:
        for i in range(total):
            await redis.xadd(keys.entries, {"data": str(i)})
        publisher = Publisher(redis, keys, retention=3600, near=NearDupIndex(redis, keys))
        consumer = Consumer(redis, [keys.entries], GROUP, "c", dead_stream=keys.dead, stage="articles",
                            reclaim_idle=0.01, batch=total)
        await consumer.setup()

        done = 0
        halfway = asyncio.Event()

        async def handle(msg: Message) -> None:
            nonlocal done
            n = int(msg.fields["data"])
            a = article(n, story(n))
            with contextlib.suppress(Exception):  # left pending: reclaimed below, as a survivor would
                await publisher.publish(a, [a.url], signature=signature(a.text), source=msg, group=GROUP)
            done += 1
            if done == total // 3:
                halfway.set()

        async def restart() -> None:
            await halfway.wait()
            await asyncio.to_thread(server.stop)  # SIGTERM: redis-server flushes its append-only file
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.start)

        messages = await consumer.read()
        restarted = asyncio.create_task(restart())
        for chunk in range(0, total, 10):  # ten at a time, so the restart lands mid-batch
            await asyncio.gather(*(handle(m) for m in messages[chunk:chunk + 10]))
        await restarted
        for _ in range(20):  # reclaim whatever was left pending, until nothing is
            if (await redis.xpending(keys.entries, GROUP))["pending"] == 0:
                break
            await asyncio.sleep(0.05)
            for msg in await consumer.read():
                await handle(msg)
        written = [Article.loads(f["data"]).id for _, f in await redis.xrange(keys.articles)]
        assert (await redis.xpending(keys.entries, GROUP))["pending"] == 0
        assert len(written) == len(set(written)) == total
    finally:
        await redis.aclose()
        server.stop()


@pytest.mark.parametrize("aliases", [[], ["http://a.example/1", "http://a.example/1"]])
async def test_aliases_are_optional_and_deduplicated(redis, keys: Keys, aliases: list[str]) -> None:
    publisher = Publisher(redis, keys, retention=60)
    a = article(7, story(7))
    assert await publisher.publish(a, aliases)
    assert await redis.xlen(keys.articles) == 1
