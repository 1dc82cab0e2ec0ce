"""Per-host politeness shared by every daemon on one Redis: a concurrency cap and a minimum gap.

State of one name (a host, or a webhook) is one sorted set, `keys.gate(name)`: each holder of a slot
is a member scored by its lease expiry, and the member "~next" is scored by the earliest time the
next request may start (min_gap after the last start, or a server's Retry-After). Scores are Redis
server milliseconds: daemons run on different machines and their clocks disagree. Expired scores are
simply dropped, so a daemon that died holding a slot stops blocking after `lease`, and the key
expires once nothing in it matters any more.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from ingester.config import NetworkConfig
from ingester.keys import Keys

log = structlog.get_logger("ingester.politeness")

_MAX_HOLD_OFF = 86400.0  # a hostile Retry-After of ten years must not silence a host for good
_POLL_MS = 200  # recheck interval when every slot is taken (a release is not announced)
_JITTER = 0.1  # up to 10 % more, so that waiters do not all retry at the same instant

# Lua: KEYS[1] gate; ARGV token, concurrency, min_gap ms, lease ms, poll ms.
# Returns 0 with the slot taken, or how many ms to wait before trying again.
_ACQUIRE = """
if redis.replicate_commands then redis.replicate_commands() end  -- TIME before writes (Redis < 5)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local next_at = tonumber(redis.call('ZSCORE', KEYS[1], '~next'))
if next_at then
  return next_at - now
end
local holders = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return math.max(1, math.min(tonumber(holders[2]) - now, tonumber(ARGV[5])))
end
local lease_end = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], lease_end, ARGV[1])
local gap = tonumber(ARGV[3])
if gap > 0 then
  redis.call('ZADD', KEYS[1], now + gap, '~next')
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(last[2]) - now, 1) + 1000)
return 0
"""

# Lua: KEYS[1] gate; ARGV hold ms. Pushes "~next" to at least now + hold.
_HOLD_OFF = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local next_at = tonumber(redis.call('ZSCORE', KEYS[1], '~next'))
if not next_at or next_at < until_ms then
  redis.call('ZADD', KEYS[1], until_ms, '~next')
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) + 1000 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 1000)
end
return 0
"""


class Gate:
    """At most `concurrency` requests in flight per name, at least `min_gap` seconds between two starts,
    shared by every daemon on the Redis."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, concurrency: int = 2,
                 min_gap: float = 1.0, lease: float = 120.0) -> None:
        if concurrency < 1 or min_gap < 0 or lease <= 0:
            raise ValueError("need concurrency >= 1, min_gap >= 0 and lease > 0")
        self.redis = redis
        self.keys = keys
        self.concurrency = concurrency
        self.min_gap = min_gap
        self.lease = lease
        self._acquire = redis.register_script(_ACQUIRE)
        self._hold_off = redis.register_script(_HOLD_OFF)

    @classmethod
    def from_config(cls, redis: aioredis.Redis, keys: Keys, network: NetworkConfig) -> Gate:
        return cls(redis, keys, concurrency=network.host_concurrency, min_gap=network.host_min_gap,
                   lease=max(120.0, 4 * network.timeout))

    def slot(self, name: str) -> AbstractAsyncContextManager[None]:
        """Waits its turn; the slot is released on exit (a dead holder's slot expires after `lease`)."""
        return self._slot(name)

    @asynccontextmanager
    async def _slot(self, name: str) -> AsyncIterator[None]:
        key, token = self.keys.gate(name), uuid.uuid4().hex
        await self._take(key, token)
        try:
            yield
        finally:
            await _shielded(self._release(key, token))

    async def _take(self, key: str, token: str) -> None:
        args = [token, self.concurrency, round(self.min_gap * 1000), round(self.lease * 1000), _POLL_MS]
        while True:
            try:
                wait_ms = int(await self._acquire(keys=[key], args=args))
            except BaseException:
                # Cancelled (or cut off) after the script may have run: do not leave a phantom holder.
                await _shielded(self._release(key, token))
                raise
            if wait_ms <= 0:
                return
            await asyncio.sleep(wait_ms / 1000 * (1 + random.uniform(0, _JITTER)))

    async def _release(self, key: str, token: str) -> None:
        try:
            await self.redis.zrem(key, token)
        except RedisError as exc:  # the lease runs out by itself; the request itself went fine
            log.warning("politeness slot not released", key=key, error=str(exc))

    async def hold_off(self, name: str, seconds: float) -> None:
        """Nobody starts a request to `name` before now + seconds (429/503 Retry-After; at most a day)."""
        if seconds > 0:
            hold_ms = round(min(seconds, _MAX_HOLD_OFF) * 1000)
            await self._hold_off(keys=[self.keys.gate(name)], args=[hold_ms])


_PENDING: set[asyncio.Future[None]] = set()  # cleanups outliving their cancelled caller


async def _shielded(aw: Awaitable[None]) -> None:
    """Run `aw` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)
        raise
