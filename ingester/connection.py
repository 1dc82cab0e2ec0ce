"""Open the Redis client the daemon uses, from a redis://, rediss://, unix://, Sentinel or Cluster URL."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
MAX_CONNECTIONS = 100  # per client (per node on a Cluster); the daemon sizes its own from its concurrency
POOL_WAIT = 30.0  # seconds a command waits for a free connection before failing


def _retry() -> dict[str, Any]:
    """Ride out a Redis restart or failover: every command retries with backoff for ~30 s."""
    return {
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionResetError, OSError],
        "health_check_interval": 15,
    }


def safe_url(url: str) -> str:
    """The URL with any password removed (redis-py also reads one from ?password=), for logs and errors."""
    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        parts = parts._replace(netloc=user + netloc)
    if "password" in parts.query.lower():
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
        parts = parts._replace(query=query)
    return parts.geturl()


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def is_hash_tag(namespace: str) -> bool:
    """True when every "<namespace>:..." key hashes to one Cluster slot: a non-empty {tag} inside it."""
    start = namespace.find("{")
    end = namespace.find("}", start + 1)
    return start >= 0 and end > start + 1


def namespace_problem(url: str | None, namespace: str) -> str | None:
    """Why `namespace` cannot be used with `url` (a Cluster needs a hash tag), or None."""
    if url and is_cluster(url) and not is_hash_tag(namespace):
        return (f"a Redis Cluster needs a hash-tagged namespace so that every script's keys share one "
                f"slot: use namespace = \"{{{namespace}}}\", not \"{namespace}\"")
    return None


def connect(url: str, *, retry: bool = True, namespace: str | None = None,
            max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    """A client with retries, and at most `max_connections` connections.

    `redis+sentinel://[:pw@]host:port[,host:port]/master[/db]` for Sentinel,
    `redis+cluster://[[user]:pw@]host:port[,host:port][/?option=value]` (or `rediss+cluster://`) for
    Redis Cluster; with a `namespace`, a Cluster URL is refused unless the namespace is a hash tag.
    On a plain URL a command waits (up to POOL_WAIT) for a free connection when all are busy; the
    Sentinel and Cluster pools of redis-py have no such wait and fail at once.
    """
    if namespace is not None and (problem := namespace_problem(url, namespace)):
        raise ValueError(problem)
    if url.startswith("redis+sentinel://"):
        return _sentinel(url, max_connections)
    if is_cluster(url):
        return _cluster(url, retry, max_connections)
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=POOL_WAIT,
                                           decode_responses=True, **(_retry() if retry else {}))
    return aioredis.Redis.from_pool(pool)


def _nodes(hosts: str, default_port: int) -> list[tuple[str, int]]:
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.rpartition(":") if not node.endswith("]") else (node, "", "")
        nodes.append((host.strip("[]"), int(port or default_port)))
    return nodes


def _sentinel(url: str, max_connections: int) -> aioredis.Redis:
    from redis.asyncio.sentinel import Sentinel

    parts = urlsplit(url)
    nodes = _nodes(parts.netloc.rsplit("@", 1)[-1], 26379)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a Sentinel URL needs the master's name: redis+sentinel://host:26379/mymaster")
    password = unquote(parts.password) if parts.password else None
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(nodes, sentinel_kwargs={"password": password} if password else None)
    client: aioredis.Redis = sentinel.master_for(path[0], password=password, db=db,
                                                 max_connections=max_connections,
                                                 decode_responses=True, **_retry())
    return client


def _cluster(url: str, retry: bool, max_connections: int) -> aioredis.Redis:
    """A RedisCluster seeded with every listed node (any one that answers is enough).

    Typed as Redis: it offers the commands the daemon uses, routed by key slot.
    """
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = _nodes(hosts, 6379)
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0: drop the /db from the URL")
    host, port = nodes[0]
    first = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme = "rediss" if url.startswith("rediss+") else "redis"
    # RedisCluster.from_url parses credentials, TLS and ?options; the other nodes are extra seeds.
    single = urlunsplit((scheme, f"{userinfo}@{first}" if userinfo else first, "", parts.query, ""))
    client = RedisCluster.from_url(single, startup_nodes=[ClusterNode(h, p) for h, p in nodes[1:]],
                                   max_connections=max_connections, decode_responses=True,
                                   **(_retry() if retry else {}))
    return cast(aioredis.Redis, client)
