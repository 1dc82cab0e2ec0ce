"""CPU per request: SafeClient.get vs plain httpx against a loopback server answering 304.

The server runs in a child process, so only the client's CPU is counted (time.process_time()).
Usage: .venv/bin/python bench/safehttp_bench.py [requests] [concurrency]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import sys
import time

import httpx

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent.parent))

from ingester.config import NetworkConfig
from ingester.safehttp import SafeClient

HOSTS = [f"127.0.0.{i}" for i in range(1, 17)]
KEEP = b'HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\nContent-Length: 0\r\n\r\n'
CLOSE = b'HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'


def report(client: str, path: str, concurrency: int, ms: float, rate: float) -> None:
    print(f"{client}  {path:10} c={concurrency:3}: {ms:.3f} ms CPU/request, {rate:,.0f} req/s")


class _Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\r\n\r\n")
        if b"/close" in data:
            self.t.write(CLOSE)  # type: ignore[attr-defined]
            self.t.close()
        else:
            self.t.write(KEEP * n)  # type: ignore[attr-defined]


def _serve(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(_Answer, HOSTS, port, backlog=1024)
        await asyncio.sleep(3600)

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(get, urls: list[str], concurrency: int) -> tuple[float, float]:
    queue = list(urls)

    async def worker() -> None:
        while queue:
            await get(queue.pop())

    for u in urls[:concurrency]:  # warm the pools
        await get(u)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu) * 1000 / len(urls), len(urls) / (time.perf_counter() - wall)


async def main(n: int, concurrency: int) -> None:
    port = free_port()
    server = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    server.start()
    await asyncio.sleep(1)
    network = NetworkConfig(allow_private=["127.0.0.0/8"])  # type: ignore[list-item]
    for path in ("/feed.xml", "/close"):
        urls = [f"http://{HOSTS[i % len(HOSTS)]}:{port}{path}?{i}" for i in range(n)]
        count = n if path == "/feed.xml" else n // 5
        async with SafeClient(network) as safe:
            ms, rate = await run(lambda u: safe.get(u, {"If-None-Match": '"abc"'}), urls[:count], concurrency)
        report("SafeClient (4 pools x 10)", path, concurrency, ms, rate)
        limits = httpx.Limits(max_connections=10, max_keepalive_connections=10)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as plain:
            ms, rate = await run(lambda u: plain.get(u, headers={"If-None-Match": '"abc"'}), urls[:count],
                                 concurrency)
        report("plain httpx (1 pool x 10)", path, concurrency, ms, rate)
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as plain:
            ms, rate = await run(lambda u: plain.get(u, headers={"If-None-Match": '"abc"'}), urls[:count],
                                 concurrency)
        report("plain httpx (1 pool x 40)", path, concurrency, ms, rate)
    import tempfile

    from ingester.connection import connect
    from ingester.embedded import EmbeddedRedis
    from ingester.keys import Keys
    from ingester.politeness import Gate

    with tempfile.TemporaryDirectory() as tmp:
        redis_server = EmbeddedRedis(__import__("pathlib").Path(tmp), persist=False, tcp=True)
        redis_server.start()
        try:
            redis = connect(redis_server.url)
            gate = Gate(redis, Keys("bench"), concurrency=4, min_gap=0)
            urls = [f"http://{HOSTS[i % len(HOSTS)]}:{port}/feed.xml?{i}" for i in range(n)]
            async with SafeClient(network, gate=gate) as safe:
                ms, rate = await run(lambda u: safe.get(u, {"If-None-Match": '"abc"'}), urls, concurrency)
            print(f"SafeClient + Redis Gate    /feed.xml  c={concurrency:3}: {ms:.3f} ms CPU/request, "
                  f"{rate:,.0f} req/s")
            await redis.aclose()
        finally:
            redis_server.stop()
    server.kill()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000,
                     int(sys.argv[2]) if len(sys.argv) > 2 else 40))
