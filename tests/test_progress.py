"""Progress for long CLI work: dlq.replay reports each item; `dlq replay` and `feeds poll-now` print their
counts when piped (the bar is drawn only on a terminal)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from ingester import dlq
from ingester.config import from_dict
from ingester.keys import Keys
from ingester.safehttp import SafeClient
from ingester.schedule import FeedSource, Schedule, feed_id

BAR = "━"  # what rich draws the bar with


def ingester(*args: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingester", *args],
                          env={**os.environ, "INGESTER_REDIS_URL": redis_url},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def config(tmp_path: Path, namespace: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[redis]\nnamespace = "{namespace}"\n')
    return path


async def park_entries(redis: aioredis.Redis, keys: Keys, count: int) -> list[str]:
    """Dead letters as streams.Consumer.dead_letter writes them."""
    return [await redis.xadd(keys.dead, {"stage": "articles", "stream": keys.entries, "id": f"1-{i}",
                                         "reason": "gave up", "at": "1750000000", "data": f"entry {i}"})
            for i in range(count)]


async def test_replay_reports_every_item_replayed_or_not(redis: aioredis.Redis, keys: Keys) -> None:
    ids = await park_entries(redis, keys, 3)
    seen: list[int] = []
    async with SafeClient(from_dict({}).network) as client:
        result = await dlq.replay(redis, keys, from_dict({}), client, [*ids, "9-9"],
                                  on_item=lambda: seen.append(len(seen)))
    assert result == (3, 1)  # the unknown id fails
    assert len(seen) == 4
    assert [f["data"] for _, f in await redis.xrange(keys.entries)] == ["entry 0", "entry 1", "entry 2"]


async def test_dlq_replay_piped_prints_counts_without_a_bar(redis: aioredis.Redis, keys: Keys,
                                                            config: Path, redis_url: str) -> None:
    await park_entries(redis, keys, 2)
    done = ingester("dlq", "replay", "--config", str(config), redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "replayed 2, failed 0"
    assert BAR not in done.stderr and "replaying" not in done.stderr
    assert await redis.xlen(keys.dead) == 0 and await redis.xlen(keys.entries) == 2


async def test_feeds_poll_now_makes_feeds_due(redis: aioredis.Redis, keys: Keys, config: Path,
                                              redis_url: str) -> None:
    urls = [f"https://news{i}.example/rss" for i in range(3)]
    schedule = Schedule(redis, keys, lease=600)
    await schedule.add([FeedSource(u) for u in urls], origin="import")
    assert len(await schedule.claim(10)) == 3  # polled: leased for ten minutes
    assert await schedule.claim(10) == []
    one = ingester("feeds", "poll-now", "--config", str(config), urls[1], "https://unknown.example/rss",
                   redis_url=redis_url)
    assert one.returncode == 1 and "not a known feed: https://unknown.example/rss" in one.stderr
    assert one.stdout.strip() == "1 feeds due now"
    assert await schedule.claim(10) == [feed_id(urls[1])]
    every = ingester("feeds", "poll-now", "--config", str(config), redis_url=redis_url)
    assert every.returncode == 0, every.stderr
    assert every.stdout.strip() == "3 feeds due now" and BAR not in every.stderr
    assert sorted(await schedule.claim(10)) == sorted(feed_id(u) for u in urls)
