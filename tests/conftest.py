"""Shared fixtures: a real redis-server for the session, a fresh key namespace per test, and shared data."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from ingester.connection import connect
from ingester.embedded import EmbeddedRedis
from ingester.keys import Keys

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/, or skip the test with the reason when the shared data is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (see ../shared/README.md)")
    return path


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """INGESTER_TEST_REDIS_URL, or a redis-server of our own on a free loopback port."""
    if url := os.environ.get("INGESTER_TEST_REDIS_URL"):
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False, tcp=True)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


@asynccontextmanager
async def namespaced_client(url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A client on `url` that deletes the test's `namespace` keys when done."""
    client = connect(url)
    try:
        yield client
    finally:
        async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            await client.delete(key)
        await client.aclose()


@pytest.fixture
async def redis(redis_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    async with namespaced_client(redis_url, namespace) as client:
        yield client


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    """pytest-httpserver on 127.0.0.1, so that http://localhost:PORT is another host for the same server."""
    return ("127.0.0.1", 0)
