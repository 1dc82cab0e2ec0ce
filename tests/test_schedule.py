"""The feed registry and schedule in Redis: add/sync by origin, claims with leases, shared by daemons."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from ingester.connection import connect
from ingester.keys import Keys
from ingester.schedule import FeedSource, Schedule, feed_id, jittered

LEASE = 0.3  # seconds


def sources(*names: str, interval: float | None = None) -> list[FeedSource]:
    return [FeedSource(f"https://{name}.example/feed.xml", interval) for name in names]


def ids(*names: str) -> set[str]:
    return {feed_id(f"https://{name}.example/feed.xml") for name in names}


@pytest.fixture
def schedule(redis: aioredis.Redis, keys: Keys) -> Schedule:
    return Schedule(redis, keys, lease=LEASE)


@pytest.fixture
async def other_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A second connection, as a second daemon would have."""
    client = connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# --- registry ---------------------------------------------------------------------------------------------

async def test_add_registers_feeds_due_at_once(schedule: Schedule, redis: aioredis.Redis, keys: Keys) -> None:
    feeds = [FeedSource("https://a.example/feed.xml", 120.0, "A news", "world"),
             FeedSource("https://b.example/feed.xml")]
    assert await schedule.add(feeds, origin="config") == 2
    assert await schedule.feeds() == {feed_id(f.url): f.url for f in feeds}
    state = await redis.hgetall(keys.feed(feed_id(feeds[0].url)))
    assert state["url"] == feeds[0].url and state["origin"] == "config"
    assert float(state["fixed_interval"]) == 120.0
    assert (state["title"], state["category"]) == ("A news", "world")
    assert (await redis.hgetall(keys.feed(feed_id(feeds[1].url))))["fixed_interval"] == ""
    assert set(await schedule.claim(10)) == {feed_id(f.url) for f in feeds}


async def test_add_counts_only_new_feeds(schedule: Schedule) -> None:
    assert await schedule.add(sources("a", "b"), origin="config") == 2
    assert await schedule.add(sources("b", "c"), origin="config") == 1
    assert await schedule.add([], origin="config") == 0
    assert set(await schedule.feeds()) == ids("a", "b", "c")


async def test_add_keeps_a_scheduled_feeds_due_time(schedule: Schedule, redis: aioredis.Redis,
                                                    keys: Keys) -> None:
    await schedule.add(sources("a"), origin="config")
    assert await schedule.claim(10) == list(ids("a"))
    await schedule.reschedule(feed_id("https://a.example/feed.xml"), 3600)
    await schedule.add(sources("a"), origin="config")  # e.g. a config reload
    assert await schedule.claim(10) == []


async def test_feed_id_is_stable_and_distinct() -> None:
    assert feed_id("https://a.example/f") == feed_id("https://a.example/f")
    assert feed_id("https://a.example/f") != feed_id("https://a.example/g")
    assert len(feed_id("https://a.example/f")) == 16


async def test_sync_removes_only_its_own_origin(schedule: Schedule, redis: aioredis.Redis,
                                                keys: Keys) -> None:
    await schedule.add(sources("a", "b", "c"), origin="config")
    await schedule.add(sources("imported"), origin="import")
    assert await schedule.sync(sources("b", "c", "d")) == (1, 1)  # d added, a removed
    assert set(await schedule.feeds()) == ids("b", "c", "d", "imported")
    gone = feed_id("https://a.example/feed.xml")
    assert await redis.exists(keys.feed(gone)) == 0
    assert await redis.zscore(keys.schedule, gone) is None
    assert await schedule.sync([]) == (0, 3)  # an empty config drops every config feed...
    assert set(await schedule.feeds()) == ids("imported")  # ...but not the imported one


async def test_import_leaves_registered_feeds_as_they_are(schedule: Schedule, redis: aioredis.Redis,
                                                          keys: Keys) -> None:
    await schedule.add(sources("a", interval=300.0), origin="config")
    await schedule.add([FeedSource("https://b.example/feed.xml", title="B")], origin="import")
    opml = [FeedSource("https://a.example/feed.xml", title="A"), FeedSource("https://b.example/feed.xml",
            title="B renamed"), FeedSource("https://c.example/feed.xml", title="C")]
    assert await schedule.add(opml, origin="import", replace=False) == 1
    declared = await redis.hgetall(keys.feed(feed_id("https://a.example/feed.xml")))
    assert (declared["origin"], declared["fixed_interval"]) == ("config", "300.0")
    assert (await redis.hgetall(keys.feed(feed_id("https://b.example/feed.xml"))))["title"] == "B"
    new = await redis.hgetall(keys.feed(feed_id("https://c.example/feed.xml")))
    assert (new["origin"], new["title"], new["fixed_interval"]) == ("import", "C", "")
    assert await schedule.sync([]) == (0, 1)  # the config feed is still the config's to remove
    assert set(await schedule.feeds()) == ids("b", "c")


async def test_removed_feed_stays_removed_after_reschedule(schedule: Schedule, redis: aioredis.Redis,
                                                           keys: Keys) -> None:
    await schedule.add(sources("a", "b"), origin="config")
    claimed = await schedule.claim(10)
    assert set(claimed) == ids("a", "b")
    await schedule.sync(sources("b"))  # a is dropped while being polled
    for fid in claimed:
        await schedule.reschedule(fid, 0)  # the polls end
    assert set(await redis.zrange(keys.schedule, 0, -1)) == ids("b")
    assert set(await schedule.claim(10)) == ids("b")


# --- claims and leases ------------------------------------------------------------------------------------

async def test_claim_leases_due_feeds(schedule: Schedule) -> None:
    await schedule.add(sources("a", "b", "c"), origin="config")
    first = await schedule.claim(2)
    assert len(first) == 2
    second = await schedule.claim(10)
    assert set(first) | set(second) == ids("a", "b", "c") and not set(first) & set(second)
    assert await schedule.claim(10) == []  # all leased
    assert await schedule.claim(0) == []


async def test_reschedule_sets_the_next_due_time(schedule: Schedule) -> None:
    await schedule.add(sources("a", "b"), origin="config")
    a, b = sorted(ids("a")), sorted(ids("b"))
    await schedule.claim(10)
    await schedule.reschedule(a[0], 0.2)
    await schedule.reschedule(b[0], 3600)
    assert await schedule.claim(10) == []
    await asyncio.sleep(0.3)
    assert await schedule.claim(10) == a  # b is an hour away, lease or not
    await asyncio.sleep(LEASE + 0.1)
    assert await schedule.claim(10) == a  # a's lease ran out; b is still not due


async def test_most_overdue_feed_is_claimed_first(schedule: Schedule, redis: aioredis.Redis,
                                                  keys: Keys) -> None:
    await schedule.add(sources("a", "b", "c"), origin="config")
    now_ms = int((await redis.time())[0]) * 1000
    order = [feed_id(s.url) for s in sources("c", "a", "b")]
    await redis.zadd(keys.schedule, {fid: now_ms - 10_000 * (3 - i) for i, fid in enumerate(order)})
    assert await schedule.claim(1) == order[:1]
    assert await schedule.claim(2) == order[1:]


async def test_dead_daemons_feeds_become_due_after_the_lease(schedule: Schedule, redis: aioredis.Redis,
                                                             keys: Keys) -> None:
    dead = Schedule(redis, keys, lease=LEASE)
    await schedule.add(sources("a", "b"), origin="config")
    held = await dead.claim(10)  # this daemon dies: never reschedules
    assert set(held) == ids("a", "b")
    assert await schedule.claim(10) == []
    await asyncio.sleep(LEASE + 0.15)
    assert set(await schedule.claim(10)) == ids("a", "b")


async def test_concurrent_claims_never_share_a_feed(redis: aioredis.Redis, other_client: aioredis.Redis,
                                                    keys: Keys) -> None:
    daemons = [Schedule(redis, keys, lease=60), Schedule(other_client, keys, lease=60)]
    names = [f"feed{i}" for i in range(300)]
    await daemons[0].add(sources(*names), origin="config")
    claims = [daemons[i % 2].claim(7) for i in range(80)]
    results = await asyncio.gather(*claims)
    counts = Counter(fid for result in results for fid in result)
    assert set(counts) == ids(*names)  # 80 × 7 > 300: everything handed out
    assert max(counts.values()) == 1  # and nothing twice within a lease
    assert await daemons[1].claim(10) == []


async def test_separate_namespaces_do_not_mix(redis: aioredis.Redis, keys: Keys) -> None:
    other = Keys(keys.namespace + "x")
    try:
        await Schedule(redis, keys, lease=60).add(sources("a"), origin="config")
        assert await Schedule(redis, other, lease=60).claim(10) == []
    finally:
        for key in (other.feeds, other.schedule):
            await redis.delete(key)


def test_jitter_stays_within_its_spread() -> None:
    values = [jittered(100.0) for _ in range(1000)]
    assert all(90.0 <= v <= 110.0 for v in values)
    assert len(set(values)) > 1
