"""Poll benchmark: N feeds on loopback, mostly answering 304, polled by the daemon's polling stage.

Prints feeds polled per hour and peak RSS, and, in the same process, a baseline: a plain httpx loop
doing conditional GETs of the same feeds with the same concurrency (no Redis, no schedule, no
politeness, no guard), and the ratio.

    .venv/bin/python bench/poll_bench.py --feeds 10000 --seconds 60

The feed server runs in a child process on HOSTS loopback addresses (127.0.0.1..127.0.0.HOSTS),
so per-host politeness (2 in flight per host) applies as it would on the open web.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bench.loopback import run_app
from ingester import metrics
from ingester.config import from_dict
from ingester.connection import connect
from ingester.embedded import EmbeddedRedis, free_port
from ingester.keys import Keys
from ingester.politeness import Gate
from ingester.poll import Poller
from ingester.pool import WorkerPool
from ingester.safehttp import SafeClient
from ingester.schedule import FeedSource, Schedule
from workers.poller import TICK_SECONDS, PollWorker

FEED = (b"<?xml version='1.0'?><rss version='2.0'><channel><title>Bench</title><link>http://x/</link>"
        b"<item><title>Only item</title><link>http://news.example/%d</link></item></channel></rss>")


def serve(port: int, hosts: int, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    from aiohttp import web

    async def feed(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304)
        body = FEED % int(request.match_info["n"])
        return web.Response(body=body, content_type="application/rss+xml", headers={"ETag": '"v1"'})

    app = web.Application()
    app.router.add_get("/feed/{n}", feed)
    run_app(app, port, hosts, ready)


def feed_urls(port: int, feeds: int, hosts: int) -> list[str]:
    return [f"http://127.0.0.{1 + i % hosts}:{port}/feed/{i}" for i in range(feeds)]


def polls_done() -> float:
    return sum(s.value for m in metrics.FEED_POLLS.collect() for s in m.samples
               if s.name.endswith("_total"))


async def daemon_run(urls: list[str], seconds: float, concurrency: int, redis_url: str) -> float:
    config = from_dict({
        "network": {"allow_private": ["127.0.0.0/8"], "host_min_gap": 0, "timeout": 10},
        "polling": {"min_interval": "1s", "default_interval": "10s", "concurrency": concurrency},
    })
    redis = connect(redis_url)
    keys = Keys("bench")
    gate = Gate(redis, keys, concurrency=config.network.host_concurrency, min_gap=0)
    client = SafeClient(config.network, gate=gate)
    parser = WorkerPool(1, timeout=20)
    schedule = Schedule(redis, keys, lease=60)
    await schedule.add((FeedSource(u, interval=1.0) for u in urls), origin="config")
    worker = PollWorker(Poller(redis, keys, config, client, parser, schedule), schedule,
                        concurrency)
    scheduler = AsyncIOScheduler()
    scheduler.add_job(worker.tick, "interval", seconds=TICK_SECONDS, max_instances=1, coalesce=True,
                      misfire_grace_time=None)
    scheduler.start()
    # Warm-up: every feed answers 200 once (parsed, one new entry each), then mostly 304.
    while polls_done() < len(urls):
        await asyncio.sleep(0.5)
    start_polls, start = polls_done(), time.perf_counter()
    await asyncio.sleep(seconds)
    rate = (polls_done() - start_polls) / (time.perf_counter() - start) * 3600
    scheduler.shutdown(wait=False)
    await worker.drain(5)
    await client.aclose()
    parser.close()
    await redis.flushdb()
    await redis.aclose()
    return rate


async def baseline_run(urls: list[str], seconds: float, concurrency: int) -> float:
    """A plain httpx loop: one client, conditional GETs round-robin, no Redis at all."""
    etags: dict[str, str] = {}
    done = 0
    stop = time.perf_counter() + seconds
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                url = await queue.get()
                headers = {"If-None-Match": etags[url]} if url in etags else {}
                response = await client.get(url, headers=headers)
                if response.status_code == 200:
                    etags[url] = response.headers.get("etag", "")
                done += 1
                queue.put_nowait(url)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done / seconds * 3600


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--feeds", type=int, default=10_000)
    args.add_argument("--hosts", type=int, default=50)
    args.add_argument("--seconds", type=float, default=60)
    args.add_argument("--concurrency", type=int, default=100)
    opts = args.parse_args()
    port = free_port()
    ready = multiprocessing.get_context("spawn").Event()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(port, opts.hosts, ready),
                                                          daemon=True)
    server.start()
    ready.wait(30)
    urls = feed_urls(port, opts.feeds, opts.hosts)
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = EmbeddedRedis(Path(tmp), persist=False, tcp=True)
        redis_server.start()
        try:
            daemon = asyncio.run(daemon_run(urls, opts.seconds, opts.concurrency, redis_server.url))
        finally:
            redis_server.stop()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    baseline = asyncio.run(baseline_run(urls, opts.seconds, opts.concurrency))
    server.terminate()
    print(f"feeds={opts.feeds} hosts={opts.hosts} concurrency={opts.concurrency} cpus={os.cpu_count()}")
    print(f"daemon:   {daemon:,.0f} feeds polled/hour (target >= 300,000)")
    print(f"peak RSS: {rss_mb:.0f} MB daemon process (target <= 300), {children_mb:.0f} MB largest child")
    print(f"baseline: {baseline:,.0f} polls/hour (plain httpx loop, no Redis, no politeness)")
    print(f"ratio daemon/baseline: {daemon / baseline:.2f}")


if __name__ == "__main__":
    main()
