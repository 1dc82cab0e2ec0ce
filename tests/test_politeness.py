"""Per-host politeness shared through a real Redis, seen from a real loopback server."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from pytest_httpserver import HTTPServer

from ingester.config import NetworkConfig
from ingester.connection import connect
from ingester.keys import Keys
from ingester.politeness import Gate
from ingester.safehttp import GateBusy, HostGate, SafeClient

NETWORK = NetworkConfig(allow_private=["127.0.0.1/32"])  # type: ignore[list-item]
HOST = "127.0.0.1"


@dataclass
class Site:
    """Counts requests in flight and stamps every start (the server's clock, not the clients')."""

    delay: float = 0.0
    in_flight: int = 0
    peak: int = 0
    starts: list[float] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.starts.append(time.monotonic())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return web.Response(text="ok")

    def gaps(self) -> list[float]:
        starts = sorted(self.starts)
        return [b - a for a, b in itertools.pairwise(starts)]


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    site = Site()
    app = web.Application()
    app.router.add_get("/{name}", site.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, HOST, 0)
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    site.url = f"http://{HOST}:{port}"
    yield site
    await runner.cleanup()


@pytest.fixture
async def other_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A second connection, as a second daemon would have."""
    client = connect(redis_url)
    yield client
    await client.aclose()


def test_gate_is_a_host_gate(redis: aioredis.Redis, keys: Keys) -> None:
    gate: HostGate = Gate(redis, keys)
    assert callable(gate.slot)


async def test_concurrency_cap_holds_across_two_daemons(site: Site, redis: aioredis.Redis,
                                                        other_redis: aioredis.Redis, keys: Keys) -> None:
    site.delay = 0.3
    gates = [Gate(r, keys, concurrency=2, min_gap=0) for r in (redis, other_redis)]
    async with SafeClient(NETWORK, gate=gates[0]) as one, SafeClient(NETWORK, gate=gates[1]) as two:
        responses = await asyncio.gather(*(c.get(f"{site.url}/{i}") for i in range(5) for c in (one, two)))
    assert all(r.status == 200 for r in responses)
    assert len(site.starts) == 10
    assert site.peak == 2  # never more, and the cap is reached (the gate does not just serialize)


async def test_without_gate_the_site_sees_more(site: Site) -> None:
    """The control for the test above: the server does count concurrency."""
    site.delay = 0.3
    async with SafeClient(NETWORK) as client:
        await asyncio.gather(*(client.get(f"{site.url}/{i}") for i in range(6)))
    assert site.peak > 2


async def test_min_gap_between_starts(site: Site, redis: aioredis.Redis, other_redis: aioredis.Redis,
                                      keys: Keys) -> None:
    gates = [Gate(r, keys, concurrency=2, min_gap=0.4) for r in (redis, other_redis)]
    async with SafeClient(NETWORK, gate=gates[0]) as one, SafeClient(NETWORK, gate=gates[1]) as two:
        await asyncio.gather(*(c.get(f"{site.url}/{i}") for i in range(2) for c in (one, two)))
    assert len(site.starts) == 4
    assert min(site.gaps()) >= 0.3  # 0.4 s between starts, less a generous margin for clocks


async def test_hold_off_delays_the_next_start(site: Site, redis: aioredis.Redis,
                                              other_redis: aioredis.Redis, keys: Keys) -> None:
    await Gate(other_redis, keys, min_gap=0).hold_off(HOST, 1.5)  # another daemon got a 429
    asked = time.monotonic()
    async with SafeClient(NETWORK, gate=Gate(redis, keys, min_gap=0)) as client:
        response = await client.get(f"{site.url}/feed", timeout=5)
    assert response.status == 200
    assert site.starts[0] - asked >= 1.2


@pytest.mark.parametrize("status", [429, 503])
async def test_a_retry_after_answer_holds_the_host_off_for_every_request(
        httpserver: HTTPServer, redis: aioredis.Redis, keys: Keys, status: int) -> None:
    httpserver.expect_request("/page").respond_with_data("slow down", status=status,
                                                         headers={"Retry-After": "30"})
    gate = Gate(redis, keys, min_gap=0)
    async with SafeClient(NETWORK, gate=gate) as client:
        assert (await client.get(httpserver.url_for("/page"))).status == status  # an article page
        with pytest.raises(GateBusy):  # the next request to that host, a feed's say, waits its turn
            await client.get(httpserver.url_for("/feed"), timeout=0.5)
    assert await redis.pttl(keys.gate(HOST)) > 29_000
    assert [request.path for request, _ in httpserver.log] == ["/page"]


async def test_hold_off_never_shortens_a_longer_one(redis: aioredis.Redis, keys: Keys) -> None:
    gate = Gate(redis, keys)
    await gate.hold_off("example.org", 600)
    await gate.hold_off("example.org", 5)
    assert await redis.zscore(keys.gate("example.org"), "~next") is not None
    assert await redis.pttl(keys.gate("example.org")) > 590_000
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5), gate.slot("example.org"):
            pass
    await gate.hold_off("example.org", 10 * 365 * 86400)  # a hostile Retry-After is capped at a day
    assert 0 < await redis.pttl(keys.gate("example.org")) <= 86_401_000


async def test_gate_wait_past_the_deadline_is_busy_and_sends_nothing(
        site: Site, redis: aioredis.Redis, keys: Keys) -> None:
    gate = Gate(redis, keys)
    await gate.hold_off(HOST, 30)
    async with SafeClient(NETWORK, gate=gate) as client:
        with pytest.raises(GateBusy) as caught:
            await client.get(f"{site.url}/feed", timeout=0.5)
    assert caught.value.kind == "busy"
    assert site.starts == []


async def test_gate_wait_does_not_eat_the_request_deadline(site: Site, redis: aioredis.Redis,
                                                           keys: Keys) -> None:
    """Two requests, one slot, 0.7 s each, 1 s deadline: the second waits 0.7 s, then still has 1 s."""
    site.delay = 0.7
    async with SafeClient(NETWORK, gate=Gate(redis, keys, concurrency=1, min_gap=0)) as client:
        responses = await asyncio.gather(*(client.get(f"{site.url}/{i}", timeout=1.0) for i in range(2)))
    assert [r.status for r in responses] == [200, 200]
    assert site.peak == 1


DEAD_DAEMON = """
import asyncio, sys
from ingester.connection import connect
from ingester.keys import Keys
from ingester.politeness import Gate

async def main():
    gate = Gate(connect(sys.argv[1]), Keys(sys.argv[2]), concurrency=1, min_gap=0, lease=4)
    held = gate.slot("example.org")  # referenced: if collected, its cleanup would release the slot
    await held.__aenter__()
    print("held", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_dead_holder_stops_blocking_after_lease(redis: aioredis.Redis, redis_url: str,
                                                      keys: Keys) -> None:
    daemon = await asyncio.create_subprocess_exec(sys.executable, "-c", DEAD_DAEMON, redis_url,
                                                  keys.namespace, stdout=asyncio.subprocess.PIPE)
    assert daemon.stdout is not None
    try:
        assert await asyncio.wait_for(daemon.stdout.readline(), 30) == b"held\n"
    finally:
        daemon.kill()  # SIGKILL: it never releases its slot
        await daemon.wait()
    alive = Gate(redis, keys, concurrency=1, min_gap=0, lease=4)
    assert await redis.zcard(keys.gate("example.org")) == 1
    started = time.monotonic()
    async with asyncio.timeout(20), alive.slot("example.org"):
        waited = time.monotonic() - started
    assert 0.5 < waited < 10  # blocked until the dead daemon's lease (4 s) ran out, not for good


async def test_slot_is_released_on_exit_and_on_error(redis: aioredis.Redis, keys: Keys) -> None:
    gate = Gate(redis, keys, concurrency=1, min_gap=0)
    key = keys.gate("example.org")
    async with gate.slot("example.org"):
        assert await redis.zcard(key) == 1
    assert await redis.zcard(key) == 0
    with pytest.raises(RuntimeError):
        async with gate.slot("example.org"):
            raise RuntimeError("the fetch failed")
    assert await redis.zcard(key) == 0


async def test_cancelled_waiter_leaves_no_holder(redis: aioredis.Redis, keys: Keys) -> None:
    gate = Gate(redis, keys, concurrency=1, min_gap=0)
    key = keys.gate("example.org")
    async with gate.slot("example.org"):
        waiter = asyncio.create_task(gate.slot("example.org").__aenter__())
        await asyncio.sleep(0.3)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert await redis.zcard(key) == 0


async def test_gate_keys_expire(redis: aioredis.Redis, keys: Keys) -> None:
    gate = Gate(redis, keys, concurrency=2, min_gap=0.2, lease=0.5)
    key = keys.gate("idle.example.org")
    async with gate.slot("idle.example.org"):
        ttl = await redis.pttl(key)
        assert 0 < ttl <= 1500  # the lease and the gap, plus a second
    await asyncio.sleep(2)
    assert await redis.exists(key) == 0
    await gate.hold_off("idle.example.org", 1)
    assert 0 < await redis.pttl(key) <= 2000


def test_gate_from_config(redis: aioredis.Redis, keys: Keys) -> None:
    gate = Gate.from_config(redis, keys, NetworkConfig(host_concurrency=3, host_min_gap=2.5))
    assert (gate.concurrency, gate.min_gap) == (3, 2.5)
    assert gate.lease >= 4 * NetworkConfig().timeout
    with pytest.raises(ValueError):
        Gate(redis, keys, concurrency=0)
