"""The daemon as a user runs it: `ingester run` in a subprocess, real Redis, a real loopback feed server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import pytest
from aiohttp import web
from apscheduler.events import EVENT_JOB_MAX_INSTANCES

from ingester.connection import connect
from ingester.embedded import EmbeddedRedis
from ingester.keys import Keys
from workers.daemon import TICK_JOB, make_scheduler

STORY = ("<html lang='en'><head><title>Story {n}</title></head><body><article><h1>Story {n}</h1>"
         + "".join(f"<p>Paragraph {i} of story {{n}}, long enough to be kept by the extractor, with "
                   f"words of its own: {' '.join(['alpha', 'beta', 'gamma', 'delta'][:i + 1])}.</p>"
                   for i in range(4))
         + "</article></body></html>")


class FeedServer:
    """Feeds /feed/<i> (each with one story); records how many polls of each feed overlap."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.in_flight: Counter[str] = Counter()
        self.max_overlap: Counter[str] = Counter()
        self.polls: dict[str, list[float]] = defaultdict(list)
        self.alerts: list[dict[str, object]] = []  # webhook bodies received on /hook
        self.port = 0

    async def feed(self, request: web.Request) -> web.Response:
        name = request.match_info["n"]
        self.in_flight[name] += 1
        self.max_overlap[name] = max(self.max_overlap[name], self.in_flight[name])
        self.polls[name].append(time.monotonic())
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight[name] -= 1
        base = f"http://127.0.0.1:{self.port}"
        body = (f"<rss version='2.0'><channel><title>Feed {name}</title><link>{base}/</link>"
                f"<item><title>Story {name}</title><link>{base}/story/{name}</link></item></channel></rss>")
        return web.Response(text=body, content_type="application/rss+xml")

    async def story(self, request: web.Request) -> web.Response:
        return web.Response(text=STORY.format(n=request.match_info["n"]), content_type="text/html")

    async def hook(self, request: web.Request) -> web.Response:
        self.alerts.append(await request.json())
        return web.Response(text="ok")


@pytest.fixture
async def feeds() -> AsyncIterator[FeedServer]:
    server = FeedServer(delay=0.3)
    app = web.Application()
    app.router.add_get("/feed/{n}", server.feed)
    app.router.add_get("/story/{n}", server.story)
    app.router.add_post("/hook", server.hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    yield server
    await runner.cleanup()


def write_config(path: Path, feeds: FeedServer, count: int, *, namespace: str,
                 data_dir: Path | None = None, extra: str = "") -> Path:
    lines = [
        "[redis]", f'namespace = "{namespace}"',
        *([f'data_dir = "{data_dir}"'] if data_dir else []),
        "[polling]", 'default_interval = "1s"', 'min_interval = "1s"', 'max_interval = "2s"',
        # timeout 2 s: a killed daemon's feeds are leased for 3 x 2 + 5 s
        "[network]", 'allow_private = ["127.0.0.0/8"]', "host_min_gap = 0", "host_concurrency = 50",
        'timeout = "2s"',
        "[server]", "port = 0",
    ]
    for i in range(count):
        lines += ["[[feeds]]", f'url = "http://127.0.0.1:{feeds.port}/feed/{i}"', 'interval = "1s"']
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def start(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ingester", "run", "--config", str(config)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)


async def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    process.send_signal(sig)
    started = time.monotonic()
    while process.poll() is None:
        assert time.monotonic() - started < 15, "the daemon did not exit within 15 s"
        await asyncio.sleep(0.05)
    return process.returncode


async def test_run_ingests_and_exits_0_on_sigterm_with_the_embedded_redis(feeds, tmp_path):  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    config = write_config(tmp_path / "c.toml", feeds, 3, namespace="e2e", data_dir=data)
    env = {"INGESTER_REDIS_URL": ""}
    daemon = start(config, env)
    try:
        await wait_for(lambda: _async(all(feeds.polls[str(i)] for i in range(3))))
        await asyncio.sleep(3)  # let the stories through the article stage
    finally:
        code = await stop(daemon)
    assert code == 0, daemon.stderr.read().decode()[-2000:] if daemon.stderr else ""
    # Its Redis kept the data: start it again on the same directory and read the stream.
    with EmbeddedRedis(data) as server:
        client = connect(server.url)
        titles = sorted([f["data"] for _, f in await client.xrange(Keys("e2e").articles)])
        await client.aclose()
    assert len(titles) == 3


async def test_two_daemons_never_poll_a_feed_at_once_and_take_over_a_killed_ones_feeds(  # type: ignore[no-untyped-def]
        feeds, tmp_path, redis_url, namespace):
    config = write_config(tmp_path / "c.toml", feeds, 12, namespace=namespace)
    env = {"INGESTER_REDIS_URL": redis_url}
    first, second = start(config, env), start(config, env)
    try:
        # each feed is due every second and each poll takes 0.3 s: plenty of chances to overlap
        await wait_for(lambda: _async(all(len(feeds.polls[str(i)]) >= 3 for i in range(12))), 60)
        assert max(feeds.max_overlap.values()) == 1
        await stop(first, signal.SIGKILL)
        killed_at = time.monotonic()
        # the killed daemon's leases (3 x 2 s + 5 s) run out and the survivor polls every feed
        await wait_for(lambda: _async(all(any(t > killed_at + 1 for t in feeds.polls[str(i)])
                                          for i in range(12))), 40)
        assert max(feeds.max_overlap.values()) == 1
    finally:
        for process in (first, second):
            if process.poll() is None:
                await stop(process)
    assert second.returncode == 0


async def test_sighup_adds_feeds_topics_and_notifiers_without_rematching_old_articles(  # type: ignore[no-untyped-def]
        feeds, tmp_path, redis_url, namespace, redis):
    keys = Keys(namespace)
    config = write_config(tmp_path / "c.toml", feeds, 1, namespace=namespace)
    daemon = start(config, {"INGESTER_REDIS_URL": redis_url})
    try:
        await wait_for(lambda: _has(redis, keys.articles, 1), 60)
        hook = f"http://127.0.0.1:{feeds.port}/hook"
        write_config(config, feeds, 2, namespace=namespace,
                     extra=f'[[topics]]\nname = "stories"\nquery = "paragraph"\nnotify = ["hook"]\n'
                           f'[[notifiers]]\nname = "hook"\ntype = "webhook"\nwebhook_url = "{hook}"\n')
        daemon.send_signal(signal.SIGHUP)
        await wait_for(lambda: _has(redis, keys.articles, 2), 60)
        await wait_for(lambda: _has(redis, keys.topic("stories"), 1), 10)
        [(_, fields)] = await redis.xrange(keys.topic("stories"))
        assert "Story 1" in fields["data"]  # the new feed's story; story 0 is not matched again
        await wait_for(lambda: _async(len(feeds.alerts) == 1), 10)  # the new topic's new notifier alerts
        assert feeds.alerts[0]["topic"] == "stories"
        write_config(config, feeds, 2, namespace=namespace, extra='[[topics]]\nname = "x"\nquery = "(("\n')
        daemon.send_signal(signal.SIGHUP)  # a broken config is refused; the daemon keeps running
        await asyncio.sleep(1)
        assert daemon.poll() is None
    finally:
        assert await stop(daemon) == 0


async def _has(redis, stream: str, count: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await redis.xlen(stream) >= count)


async def test_a_killed_daemon_takes_its_embedded_redis_with_it(feeds, tmp_path):  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    config = write_config(tmp_path / "c.toml", feeds, 1, namespace="k", data_dir=data)
    daemon = start(config, {"INGESTER_REDIS_URL": ""})
    await wait_for(lambda: _async(bool(feeds.polls["0"])))
    assert processes_using(data), "the embedded redis-server should be running"
    await stop(daemon, signal.SIGKILL)
    await wait_for(lambda: _async(not processes_using(data)), timeout=10)


def processes_using(path: Path) -> list[int]:
    """Pids whose command line names `path` (the embedded redis-server is started with --dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


async def _async(value: bool) -> bool:
    return value


class StderrLines:
    """The lines a subprocess writes to its stderr, collected by a thread as they come."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        assert process.stderr is not None
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.append(line.decode(errors="replace"))

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "".join(self.lines)


async def waiting_for_redis(tmp_path: Path, feeds: FeedServer,
                            ) -> tuple[subprocess.Popen[bytes], StderrLines, str]:
    """A daemon configured with a Redis nobody listens for (with a password), once it says it waits."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(tmp_path / "c.toml", feeds, 1, namespace="unreachable")
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    config.write_text(config.read_text().replace("[redis]", f'[redis]\nurl = "{url}"'))
    daemon = start(config, {"INGESTER_REDIS_URL": ""})
    errors = StderrLines(daemon)
    await wait_for(lambda: _async("redis not answering yet" in "".join(errors.lines)), 10)
    return daemon, errors, f"redis://:***@127.0.0.1:{port}/0"


async def test_without_redis_the_daemon_says_so_then_exits_1_in_one_line(feeds, tmp_path):  # type: ignore[no-untyped-def]
    daemon, errors, shown = await waiting_for_redis(tmp_path, feeds)
    started = time.monotonic()
    while daemon.poll() is None:
        assert time.monotonic() - started < 30, "the daemon kept waiting for Redis"
        await asyncio.sleep(0.2)
    output = errors.text()
    assert daemon.returncode == 1
    assert output.strip().splitlines()[-1].startswith(f"redis: cannot reach {shown}: ")
    assert "Traceback" not in output and "s3cret-pw" not in output


async def test_a_stop_while_waiting_for_redis_is_a_clean_stop(feeds, tmp_path):  # type: ignore[no-untyped-def]
    daemon, errors, _ = await waiting_for_redis(tmp_path, feeds)
    started = time.monotonic()
    assert await stop(daemon) == 0
    assert time.monotonic() - started < 5  # not after STARTUP_WAIT (15 s)
    assert "Traceback" not in errors.text()


async def test_a_tick_still_going_when_the_next_is_due_is_skipped_without_a_warning(caplog) -> None:  # type: ignore[no-untyped-def]
    scheduler = make_scheduler()
    release, skipped = asyncio.Event(), Counter[str]()
    scheduler.add_listener(lambda event: skipped.update([event.job_id]), EVENT_JOB_MAX_INSTANCES)

    async def slow() -> None:
        await release.wait()

    tick = scheduler.add_job(slow, "interval", seconds=0.05, name=TICK_JOB)
    other = scheduler.add_job(slow, "interval", seconds=0.05, name="maintenance")
    with caplog.at_level(logging.WARNING, logger="apscheduler"):
        scheduler.start()
        try:
            await wait_for(lambda: _async(skipped[tick.id] >= 3 and skipped[other.id] >= 3), 10)
        finally:
            release.set()
            scheduler.shutdown(wait=False)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned and all(m.startswith('Execution of job "maintenance (') for m in warned)
