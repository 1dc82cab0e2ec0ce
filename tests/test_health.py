"""The health server over real HTTP on loopback, against a real Redis (and a dead port for /readyz)."""

from __future__ import annotations

import asyncio
import mmap
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter

from ingester import metrics
from ingester.connection import connect
from ingester.health import MAX_HEAD_BYTES, HealthServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def server(redis: aioredis.Redis, clock: Clock) -> AsyncIterator[HealthServer]:
    health = HealthServer(redis, "127.0.0.1", 0, stale_after=30.0, request_timeout=0.5, clock=clock)
    await health.start()
    yield health
    await health.stop()


@pytest.fixture
async def http(server: HealthServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client:
        yield client


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_healthz_follows_the_scheduler_ticks(server: HealthServer, http: httpx.AsyncClient,
                                                   clock: Clock) -> None:
    first = await http.get("/healthz")
    assert first.status_code == 200 and first.json()["status"] == "ok"
    clock.now += 31  # no tick for longer than stale_after
    stale = await http.get("/healthz")
    assert stale.status_code == 503 and stale.json()["status"] == "stale"
    server.tick()
    assert (await http.get("/healthz")).status_code == 200


async def test_healthz_does_not_need_redis(clock: Clock) -> None:
    client = connect(f"redis://127.0.0.1:{dead_port()}/0")
    health = HealthServer(client, "127.0.0.1", 0, clock=clock)
    await health.start()
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            reply = await http.get(f"http://127.0.0.1:{health.port}/healthz")
        assert reply.status_code == 200
    finally:
        await health.stop()
        await client.aclose()


async def test_readyz_is_200_with_redis(http: httpx.AsyncClient) -> None:
    reply = await http.get("/readyz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok", "redis": "ok"}


async def test_readyz_is_503_when_redis_is_unreachable() -> None:
    client = connect(f"redis://127.0.0.1:{dead_port()}/0")  # retries for ~30 s: the 1 s cap must win
    health = HealthServer(client, "127.0.0.1", 0)
    await health.start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(f"http://127.0.0.1:{health.port}/readyz")
        assert reply.status_code == 503
        assert reply.json() == {"status": "unavailable", "redis": "no answer within 1 s"}
    finally:
        await health.stop()
        await client.aclose()


async def test_metrics_exposes_the_default_registry(http: httpx.AsyncClient) -> None:
    metrics.FEED_POLLS.labels(outcome="304").inc()
    reply = await http.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'ingester_feed_polls_total{outcome="304"}' in reply.text
    assert "ingester_poll_seconds_bucket" in reply.text


async def test_resident_memory_is_read_at_each_scrape(http: httpx.AsyncClient) -> None:
    async def resident() -> float:
        reply = await http.get("/metrics")
        [line] = [x for x in reply.text.splitlines() if x.startswith("ingester_process_rss_bytes ")]
        return float(line.split()[1])

    before = await resident()
    with mmap.mmap(-1, 64 * 1024**2) as ballast:  # fresh pages, not the allocator's spare ones
        ballast.write(b"x" * len(ballast))  # written, so resident
        after = await resident()
    assert before > 10 * 1024**2  # this test process: tens of megabytes, never 0
    assert after - before > 48 * 1024**2


async def test_metrics_speaks_openmetrics_when_asked(http: httpx.AsyncClient) -> None:
    reply = await http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    assert reply.text.endswith("# EOF\n")


async def test_a_private_registry_can_be_served(redis: aioredis.Redis) -> None:
    registry = CollectorRegistry()
    Counter("only_here", "a counter of a private registry", registry=registry).inc()
    health = HealthServer(redis, "127.0.0.1", 0, registry=registry)
    await health.start()
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            body = (await http.get(f"http://127.0.0.1:{health.port}/metrics")).text
        assert "only_here_total 1.0" in body and "ingester_feed_polls_total" not in body
    finally:
        await health.stop()


async def test_head_unknown_paths_and_methods(http: httpx.AsyncClient) -> None:
    head = await http.head("/healthz")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    assert (await http.get("/healthz?verbose=1")).status_code == 200
    assert (await http.get("/nope")).status_code == 404
    assert (await http.post("/healthz", content=b"x")).status_code == 405


async def raw(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True when the server closed the connection without a reply (a FIN, or a reset when it closed
    with our bytes unread)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def test_garbage_and_oversized_requests_are_refused(server: HealthServer) -> None:
    assert (await raw(server.port, b"HELLO\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    huge = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES * 2) + b"\r\n\r\n"
    assert (await raw(server.port, huge)).startswith(b"HTTP/1.1 431 ")


async def test_a_slow_client_is_dropped_and_does_not_block_others(server: HealthServer,
                                                                  http: httpx.AsyncClient) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # and never the end of the head
    await writer.drain()
    assert (await http.get("/healthz")).status_code == 200  # served while the slow one hangs
    assert await closed_by_server(reader)  # after request_timeout, with no reply
    writer.close()


async def test_connections_beyond_the_cap_are_closed(redis: aioredis.Redis) -> None:
    health = HealthServer(redis, "127.0.0.1", 0, max_connections=2, request_timeout=5)
    await health.start()
    held = [await asyncio.open_connection("127.0.0.1", health.port) for _ in range(2)]
    try:
        for _, writer in held:
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            await writer.drain()
        for _ in range(500):  # until the server has accepted both
            if len(health._connections) == 2:
                break
            await asyncio.sleep(0.01)
        try:
            refused = await raw(health.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        except ConnectionResetError:  # closed with our request unread: a reset, not a FIN
            refused = b""
        assert refused == b""
    finally:
        for _, writer in held:
            writer.close()
        await health.stop()


async def test_stop_closes_the_port(redis: aioredis.Redis) -> None:
    health = HealthServer(redis, "127.0.0.1", 0)
    await health.start()
    port = health.port
    await health.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(RuntimeError):
        _ = health.port


async def test_stop_ends_connections_in_flight(redis: aioredis.Redis) -> None:
    health = HealthServer(redis, "127.0.0.1", 0, request_timeout=30)
    await health.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()
    for _ in range(500):
        if health._connections:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(health.stop(), 5)  # does not wait out the 30 s request timeout
    assert await closed_by_server(reader)
    writer.close()
