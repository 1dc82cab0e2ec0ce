"""Open the Redis client the daemon uses, from a redis://, rediss://, unix:// or Sentinel URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Ride out a Redis restart or failover: every command retries with backoff for ~30 s.
_RETRY: dict[str, Any] = {
    "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20),
    "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionResetError, OSError],
    "health_check_interval": 15,
}


def safe_url(url: str) -> str:
    """The URL with any password removed, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


def connect(url: str, *, retry: bool = True) -> aioredis.Redis:
    """A client with retries; `redis+sentinel://[:pw@]host:port[,host:port]/master[/db]` for Sentinel."""
    if url.startswith("redis+sentinel://"):
        return _sentinel(url)
    return aioredis.Redis.from_url(url, decode_responses=True, **(_RETRY if retry else {}))


def _sentinel(url: str) -> aioredis.Redis:
    from redis.asyncio.sentinel import Sentinel

    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.rpartition(":")
        nodes.append((host.strip("[]"), int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a Sentinel URL needs the master's name: redis+sentinel://host:26379/mymaster")
    password = unquote(parts.password) if parts.password else None
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(nodes, sentinel_kwargs={"password": password} if password else None)
    client: aioredis.Redis = sentinel.master_for(path[0], password=password, db=db,
                                                 decode_responses=True, **_RETRY)
    return client
