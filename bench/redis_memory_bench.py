"""Redis memory per article and per feed, measured on a private redis-server.

    .venv/bin/python bench/redis_memory_bench.py [--articles 20000] [--feeds 5000] [--topic-share 0.1]

Articles: real news sentences from ../shared/news/ shuffled into 3-10 KB texts (so no two are copies).
Each one goes the daemon's way: queued by the poller's script (seen mark + `entries` entry), read
through the consumer group, then `Publisher.publish` with its MinHash signature (dedup mark, URL alias,
`articles` entry, a topic entry for --topic-share of them, near-duplicate signature and LSH members,
ack of the entry). Feeds: registered with `Schedule.sync` and given the state a poll leaves.

Reported: used_memory (INFO) delta per item, and MEMORY USAGE summed per kind of key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingester.connection import connect
from ingester.embedded import EmbeddedRedis
from ingester.keys import Keys
from ingester.neardup import NearDupIndex, signature
from ingester.poll import QUEUE_NEW
from ingester.publish import Publisher
from ingester.record import Article, Entry
from ingester.schedule import FeedSource, Schedule, feed_id
from ingester.streams import Consumer

NEWS = Path(__file__).resolve().parent.parent.parent / "shared" / "news"
RETENTION = 30 * 86400
GROUP = "articles"
BATCH = 200
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences() -> list[str]:
    if not NEWS.exists():
        sys.exit(f"shared news data not found at {NEWS} (see ../shared/README.md)")
    texts = [json.loads(line)["text"] for line in (NEWS / "ecbplus" / "docs.jsonl").open(encoding="utf-8")]
    texts += [json.loads(line)["text"] for line in (NEWS / "ceasefire-dev.jsonl").open(encoding="utf-8")]
    return [s for t in texts for s in _SENTENCE.split(t) if len(s) > 40]


def make_text(rng: random.Random, pool: list[str]) -> str:
    """Random sentences up to a random size between 3 and 10 KB, in paragraphs of four."""
    size, parts = rng.randint(3000, 10000), []
    while sum(len(p) + 1 for p in parts) < size:
        parts.append(rng.choice(pool))
    return "\n\n".join(" ".join(parts[i:i + 4]) for i in range(0, len(parts), 4))


def make_pair(n: int, text: str, topical: bool) -> tuple[Entry, Article]:
    host = f"site{n % 500}.example.com"
    url = f"https://{host}/news/2025/06/10/story-{n}-{'-'.join(text.split()[:6]).lower()[:60]}"
    feed = f"https://{host}/rss/world.xml"
    title = text.split(".")[0][:120]
    summary = text[:300]
    entry = Entry(feed_url=feed, link=url, guid=url, title=title, summary=summary,
                  published_at="2025-06-10T08:00:00Z", authors=["A. Reporter"])
    aid = f"{n:024x}"
    article = Article(id=aid, url=url, canonical_url=url, feed_url=feed, source=host, title=title,
                      text=text, summary=summary, authors=["A. Reporter"], language="en",
                      published_at="2025-06-10T08:00:00Z", fetched_at="2025-06-10T08:01:00Z",
                      extraction="trafilatura", cluster_id=aid, topics=["ceasefire"] if topical else [],
                      scores={"ceasefire": 0.42} if topical else {})
    return entry, article


async def used(redis: aioredis.Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def usage_by_kind(redis: aioredis.Redis, keys: Keys) -> dict[str, int]:
    """MEMORY USAGE summed over every key, by kind (the part after the namespace)."""
    totals: dict[str, int] = {}
    cursor = 0
    while True:
        cursor, found = await redis.scan(cursor, match=f"{keys.namespace}:*", count=5000)
        async with redis.pipeline(transaction=False) as pipe:
            for key in found:
                pipe.memory_usage(key, samples=0)
            sizes = await pipe.execute()
        for key, size in zip(found, sizes, strict=True):
            kind = key[len(keys.namespace) + 1:].split(":")[0]
            totals[kind] = totals.get(kind, 0) + int(size or 0)
        if cursor == 0:
            return totals


async def bench_articles(redis: aioredis.Redis, keys: Keys, count: int, topic_share: float) -> None:
    pool, rng = sentences(), random.Random(1)
    queue = redis.register_script(QUEUE_NEW)  # the poller's: seen marks and entries in one step
    near = NearDupIndex(redis, keys, retention=RETENTION)
    publisher = Publisher(redis, keys, retention=RETENTION, near=near)
    consumer = Consumer(redis, [keys.entries], GROUP, "bench", dead_stream=keys.dead, stage="articles",
                        batch=BATCH, block_ms=100)
    await consumer.setup()
    before, started, record_bytes, text_bytes = await used(redis), time.perf_counter(), 0, 0
    for start in range(0, count, BATCH):
        pairs = [make_pair(n, make_text(rng, pool), rng.random() < topic_share)
                 for n in range(start, min(start + BATCH, count))]
        await queue(keys=[keys.entries, *(keys.seen(e.link) for e, _ in pairs)],
                    args=[RETENTION, *(e.dumps() for e, _ in pairs)])
        messages = await consumer.read()
        for (_, article), msg in zip(pairs, messages, strict=True):
            record_bytes += len(article.dumps().encode())
            text_bytes += len(article.text.encode())
            await publisher.publish(article, [article.url], signature=signature(article.text), source=msg,
                                    group=GROUP)
    elapsed = time.perf_counter() - started
    delta = await used(redis) - before
    kinds = await usage_by_kind(redis, keys)
    print(f"articles: {count} in {elapsed:.1f} s; mean record {record_bytes / count:,.0f} B "
          f"(text {text_bytes / count:,.0f} B); topic share {topic_share:.0%}")
    print(f"  used_memory delta: {delta / count:,.0f} B per article")
    labels = {"entries": "entries stream (7 d)", "articles": "articles stream (7 d)",
              "topic": "topic stream(s) (7 d)", "doc": "dedup marks (30 d)", "url": "URL aliases (30 d)",
              "sig": "near-dup signatures (30 d)", "lsh": "LSH buckets (30 d)", "seen": "seen marks (30 d)"}
    for kind, total in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {labels.get(kind, kind):28} {total / count:9,.0f} B per article")
    streams = sum(v for k, v in kinds.items() if k in ("entries", "articles", "topic"))
    print(f"  MEMORY USAGE total {sum(kinds.values()) / count:,.0f} B per article: streams "
          f"{streams / count:,.0f}, dedup and index {(sum(kinds.values()) - streams) / count:,.0f}")


async def bench_feeds(redis: aioredis.Redis, keys: Keys, count: int) -> None:
    before = await used(redis)
    schedule = Schedule(redis, keys, lease=60)
    urls = [f"https://news{n % 2000}.example.org/feeds/{n}/rss.xml" for n in range(count)]
    await schedule.sync([FeedSource(u) for u in urls])
    async with redis.pipeline(transaction=False) as pipe:
        for url in urls:  # the fields a successful poll leaves (ingester/poll.py)
            pipe.hset(keys.feed(feed_id(url)), mapping={
                "etag": '"5f8e3c2a-1b2c"', "last_modified": "Tue, 10 Jun 2025 08:00:00 GMT",
                "body_hash": "0123456789abcdef0123456789abcdef", "title": "World news | Example Times",
                "last_success": time.time(), "last_status": "200", "failures": 0, "rate": 0.00123456789,
                "interval": 407.123, "last_poll": time.time(), "polls": 1234, "new_items": 321,
                "not_modified": 900})
        await pipe.execute()
    delta = await used(redis) - before
    kinds = await usage_by_kind(redis, keys)
    feed_keys = {k: v for k, v in kinds.items() if k in ("feeds", "feed", "schedule")}
    print(f"feeds: {count}; used_memory delta {delta / count:,.0f} B per feed; MEMORY USAGE "
          + ", ".join(f"{k} {v / count:,.0f} B" for k, v in feed_keys.items()))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp), persist=False, tcp=True) as server:
        redis = connect(server.url)
        try:
            version = (await redis.info("server"))["redis_version"]
            print(f"redis-server {version}, fresh instance")
            await bench_feeds(redis, Keys("feedbench"), args.feeds)
            await bench_articles(redis, Keys("bench"), args.articles, args.topic_share)
        finally:
            await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=20000)
    parser.add_argument("--feeds", type=int, default=5000)
    parser.add_argument("--topic-share", type=float, default=0.1)
    asyncio.run(main(parser.parse_args()))
