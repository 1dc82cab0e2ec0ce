"""The feed registry and its schedule, kept in Redis so any number of daemons share them.

`<ns>:feeds` maps feed id -> URL; `<ns>:schedule` is a sorted set of feed id -> next due time (ms,
Redis server clock). Claiming a due feed pushes its due time out by a lease: the daemon that claimed
it reschedules it when the poll ends, and a feed held by a daemon that died is due again once the
lease runs out. Polls are bounded by the HTTP deadline, which is shorter than the lease, so two
daemons never poll one feed at once.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from ingester.keys import Keys, digest

_CLAIM = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), id)
end
return due
"""

_RESCHEDULE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
"""


def feed_id(url: str) -> str:
    return digest(url, 8)


@dataclass(frozen=True)
class FeedSource:
    url: str
    interval: float | None = None  # fixed interval; None = adaptive
    title: str | None = None
    category: str | None = None


class Schedule:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, lease: float) -> None:
        self.redis = redis
        self.keys = keys
        self.lease_ms = int(lease * 1000)
        self._claim = redis.register_script(_CLAIM)
        self._reschedule = redis.register_script(_RESCHEDULE)

    async def add(self, feeds: Iterable[FeedSource], *, origin: str, replace: bool = True) -> int:
        """Register feeds (new ones are due at once); returns how many were new.

        replace=False (an import) leaves the settings of feeds already registered as they are: a feed
        the configuration declares keeps its origin and fixed interval.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            news = []
            for feed in feeds:
                fid = feed_id(feed.url)
                news.append(len(pipe))
                pipe.hsetnx(self.keys.feeds, fid, feed.url)
                fields = {"url": feed.url, "origin": origin, "fixed_interval": feed.interval or ""}
                if feed.title:
                    fields["title"] = feed.title
                if feed.category:
                    fields["category"] = feed.category
                if replace:
                    pipe.hset(self.keys.feed(fid), mapping=fields)
                else:
                    for name, value in fields.items():
                        pipe.hsetnx(self.keys.feed(fid), name, value)
                pipe.zadd(self.keys.schedule, {fid: 0}, nx=True)
            results = await pipe.execute()
        return sum(1 for i in news if results[i])

    async def sync(self, feeds: Iterable[FeedSource], *, origin: str = "config") -> tuple[int, int]:
        """Make the feeds of `origin` exactly `feeds` (config reload); feeds imported by hand stay."""
        feeds = list(feeds)
        wanted = {feed_id(f.url) for f in feeds}
        added = await self.add(feeds, origin=origin)
        removed = 0
        for fid, _url in (await self.redis.hgetall(self.keys.feeds)).items():
            if fid not in wanted and await self.redis.hget(self.keys.feed(fid), "origin") == origin:
                await self.remove(fid)
                removed += 1
        return added, removed

    async def remove(self, fid: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.feeds, fid)
            pipe.zrem(self.keys.schedule, fid)
            pipe.delete(self.keys.feed(fid))
            await pipe.execute()

    async def claim(self, limit: int) -> list[str]:
        """Up to `limit` feed ids that are due, leased to the caller."""
        if limit <= 0:
            return []
        return list(await self._claim(keys=[self.keys.schedule], args=[self.lease_ms, limit]))

    async def reschedule(self, fid: str, delay: float) -> None:
        """Due again `delay` seconds from now (a removed feed stays removed)."""
        await self._reschedule(keys=[self.keys.schedule], args=[int(delay * 1000), fid])

    async def feeds(self) -> dict[str, str]:
        return dict(await self.redis.hgetall(self.keys.feeds))


def jittered(seconds: float, spread: float = 0.1) -> float:
    """Spread polls out so that feeds added together do not stay in lockstep."""
    return seconds * (1 + random.uniform(-spread, spread))
