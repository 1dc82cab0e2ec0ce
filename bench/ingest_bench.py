"""Ingest benchmark: a backlog of real article pages behind feeds on loopback, ingested end to end.

    .venv/bin/python bench/ingest_bench.py [--pages N] [--feeds N] [--hosts N] [--profile]

The pages are the gzipped HTML files of ../shared/pages/trafilatura-eval/ (all 990 distinct pages by
default), read at run time and served by an aiohttp child process on 127.0.0.1..127.0.0.HOSTS, behind
FEEDS RSS feeds that list them. The daemon (workers.daemon.Daemon, built from a generated TOML config with
the topics of deploy/example.toml) polls the feeds, queues the entries, fetches and extracts every page in
its Extractor pool (os.cpu_count() workers), dedups, clusters, matches topics and writes the articles to a
redis-server of its own. Prints, in one run:

1. articles/s end to end (scheduler start, the first poll tick, to last article), and steady state (first
   to last article, which leaves out the pools' start-up and warm-up); the ratios use steady state;
2. the ceiling = os.cpu_count() / median single-core time of trafilatura.bare_extraction(html,
   with_metadata=True) on the same pages' decoded text, and the ratio; each page is timed before and after
   the ingest and the two averaged, so a drift of the machine's speed during the run cancels out; also
   the bound the mean time gives (the pages' times are skewed: mean ~1.5 x median);
3. the daemon's Extractor alone on the same pages (in memory, nothing else running): how much of the
   ceiling extraction itself reaches, and how much of that the pipeline around it keeps;
4. a naive sequential loop in this process (feedparser -> httpx -> bare_extraction, one page at a time),
   and the ratio to it;
and where the CPU went during the ingest (by process role) and the Redis commands per entry.

--profile runs cProfile on the daemon's (main) process during the ingest and prints its top costs; it
slows that process, so the rates of a profiled run are not the benchmark's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gzip
import io
import json
import logging
import multiprocessing
import os
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import feedparser
import httpx
import trafilatura

from bench.loopback import run_app
from ingester import logs
from ingester.connection import connect
from ingester.embedded import EmbeddedRedis, free_port
from ingester.extract import Extractor
from ingester.keys import Keys
from ingester.safehttp import decode_html
from workers.daemon import Daemon

REPO = Path(__file__).resolve().parent.parent
PAGES = REPO.parent / "shared" / "pages" / "trafilatura-eval"
NAMESPACE = "bench"
QUIET_LOGGERS = ("trafilatura", "htmldate", "courlan", "charset_normalizer", "dateparser", "justext")
# A Polish date sends htmldate to dateparser, which compiles its locales' regexes once (seconds).
WARMUP_HTML = ("<html><body><article><p>Opublikowano: 3 marca 2021</p>"
               f"<p>{'Some text for the extractor to keep. ' * 12}</p></article></body></html>")
TOPICS_BEGIN, TOPICS_END = "# --- topics: begin ---", "# --- topics: end ---"


# ---------------------------------------------------------------- the loopback site (child process)


def page_url(port: int, hosts: int, n: int) -> str:
    return f"http://127.0.0.{1 + n % hosts}:{port}/page/{n}"


def feed_url(port: int, hosts: int, k: int) -> str:
    return f"http://127.0.0.{1 + k % hosts}:{port}/feed/{k}"


def rss(port: int, hosts: int, feeds: int, k: int, metas: list[tuple[str | None, str | None]]) -> bytes:
    """Feed k lists pages k, k + feeds, k + 2 * feeds, ... with a one-line summary each, and, as news
    feeds do, a pubDate and a dc:creator where the page's labelled data knows them."""
    def extra(date: str | None, author: str | None) -> str:
        out = ""
        if day := feed_date(date):
            out += f"<pubDate>{format_datetime(day, usegmt=True)}</pubDate>"
        if author:
            out += f"<dc:creator>{escape(author)}</dc:creator>"
        return out

    items = "".join(
        f"<item><title>Article {n}</title><link>{escape(page_url(port, hosts, n))}</link>"
        f"<guid>{escape(page_url(port, hosts, n))}</guid>{extra(*metas[n])}"
        f"<description>Summary of article {n}, as the feed gives it.</description></item>"
        for n in range(k, len(metas), feeds))
    return ("<?xml version='1.0' encoding='utf-8'?><rss version='2.0' "
            "xmlns:dc='http://purl.org/dc/elements/1.1/'><channel>"
            f"<title>Bench {k}</title><link>http://127.0.0.1/</link>{items}</channel></rss>").encode()


def feed_date(label: str | None) -> datetime | None:
    """The pubDate a feed item gets; the labels hold a few malformed dates: an item without a date, then."""
    try:
        return datetime.strptime((label or "")[:10], "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def serve(files: list[Path], metas: list[tuple[str | None, str | None]], port: int, hosts: int,
          feeds: int, ready: Any) -> None:
    """The pages (sent gzipped, as most sites do, when the client accepts it) and their feeds."""
    from aiohttp import web

    bodies = [f.read_bytes() for f in files]
    plain = [gzip.decompress(b) for b in bodies]
    channels = [rss(port, hosts, feeds, k, metas) for k in range(feeds)]

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=bodies[n], headers={"Content-Type": "text/html",
                                                         "Content-Encoding": "gzip"})
        return web.Response(body=plain[n], headers={"Content-Type": "text/html"})

    async def feed(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304)
        return web.Response(body=channels[int(request.match_info["k"])],
                            headers={"Content-Type": "application/rss+xml", "ETag": '"v1"'})

    app = web.Application()
    app.router.add_get("/page/{n}", page)
    app.router.add_get("/feed/{k}", feed)
    run_app(app, port, hosts, ready)


# ---------------------------------------------------------------- the daemon run


@dataclass
class Ingest:
    entries: int
    articles: int
    dead: int
    fallbacks: int  # extraction == "feed": the page gave under min_text_length characters
    clustered: int  # written with the cluster of an earlier near-duplicate
    matched: int  # with at least one topic
    start: float  # the daemon's scheduler started (first poll tick TICK_SECONDS later)
    first_entry: float
    first_article: float
    last_article: float
    main_cpu: float  # CPU seconds of this (the daemon's) process during the ingest
    cpu: dict[str, float]  # CPU seconds during the ingest, by process role
    busy: float  # share of all cores busy machine-wide during the ingest (other users included)
    log_lines: dict[str, int]  # log level -> lines the daemon wrote
    commands: dict[str, int]  # Redis command -> calls during the whole run

    @property
    def end_to_end(self) -> float:
        return self.entries / (self.last_article - self.start)

    @property
    def steady(self) -> float:
        return (self.articles - 1) / (self.last_article - self.first_article)


def write_config(path: Path, redis_url: str, feeds: list[str]) -> None:
    example = (REPO / "deploy" / "example.toml").read_text(encoding="utf-8")
    topics = example[example.index(TOPICS_BEGIN):example.index(TOPICS_END)]
    feed_tables = "".join(f'[[feeds]]\nurl = "{u}"\n\n' for u in feeds)
    path.write_text(f"""
[redis]
url = "{redis_url}"
namespace = "{NAMESPACE}"

[network]
allow_private = ["127.0.0.0/8"]
host_min_gap = 0
host_concurrency = 64

[server]
port = 0

{feed_tables}
{topics}
""", encoding="utf-8")


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_cpu() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            found[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return found


def pool_pids(pool: Any) -> set[int]:
    """The worker pids of a pool wrapping a pebble pool (private attributes: a diagnostic only)."""
    while not hasattr(pool, "_pool_manager") and hasattr(pool, "_pool"):
        pool = pool._pool
    with contextlib.suppress(AttributeError):
        return set(pool._pool_manager.worker_manager.workers)
    return set()


def cpu_by_role(before: dict[int, tuple[int, float]], after: dict[int, tuple[int, float]],
                daemon: Daemon) -> dict[str, float]:
    """CPU seconds spent between the snapshots by this process and its descendants, by role."""
    ours, grew = {os.getpid()}, True
    while grew:
        kids = {pid for pid, (ppid, _) in after.items() if ppid in ours} - ours
        ours, grew = ours | kids, bool(kids)
    stage = getattr(daemon, "stage", None)
    extractors = pool_pids(getattr(stage, "extractor", None))
    hashers = pool_pids(getattr(stage, "hasher", None))
    roles: dict[str, float] = {}
    for pid in ours:
        comm = ""
        with contextlib.suppress(OSError):
            comm = Path(f"/proc/{pid}/comm").read_text()
        role = ("daemon (main process)" if pid == os.getpid() else "extraction workers" if pid in extractors
                else "feed parse + minhash worker" if pid in hashers else "redis-server" if "redis" in comm
                else "page server (bench) + forkserver")
        used = after[pid][1] - (before[pid][1] if pid in before else 0.0)
        roles[role] = roles.get(role, 0.0) + used
    return roles


def stream_time(entry_id: str) -> float:
    return int(entry_id.split("-")[0]) / 1000


async def ingest(config: Path, redis_url: str, pages: int, log_file: Path,
                 profiler: cProfile.Profile | None, limit: float) -> Ingest:
    with log_file.open("w") as sink, contextlib.redirect_stderr(sink):
        logs.configure("INFO", json=True)  # as the daemon logs in production, into a file
        return await _ingest(config, redis_url, pages, log_file, profiler, limit)


async def _ingest(config: Path, redis_url: str, pages: int, log_file: Path,
                  profiler: cProfile.Profile | None, limit: float) -> Ingest:
    daemon = Daemon(config, consumer_name="bench")
    keys = Keys(NAMESPACE)
    redis = connect(redis_url)
    await redis.flushdb()
    await redis.config_resetstat()
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 60)
    start, cpu0, (busy0, total0) = time.time(), time.process_time(), cpu_times()
    procs0 = process_cpu()
    if profiler:
        profiler.enable()
    try:
        await wait_done(redis, keys, pages, start + limit)
    finally:
        if profiler:
            profiler.disable()
        main_cpu, (busy1, total1) = time.process_time() - cpu0, cpu_times()
        by_role = cpu_by_role(procs0, process_cpu(), daemon)
        daemon.stop.set()
        await task
    result = await summarize(redis, keys, start, main_cpu, (busy1 - busy0) / (total1 - total0), log_file)
    result.cpu = by_role
    await redis.aclose()
    return result


async def wait_done(redis: Any, keys: Keys, pages: int, deadline: float) -> None:
    """Until every entry is queued, read and acknowledged (written, a duplicate, or dead-lettered).

    Checked twice a second: the rates come from the stream entries' own times, and a closer watch
    would take CPU from the daemon it shares this process with."""
    while True:
        groups = await redis.xinfo_groups(keys.entries) if await redis.exists(keys.entries) else []
        group = groups[0] if groups else {}
        if (await redis.xlen(keys.entries) == pages and group.get("lag") == 0
                and group.get("pending") == 0):
            return
        if time.time() > deadline:
            raise SystemExit(f"not done in time: {await redis.xlen(keys.articles)} articles, group {group}")
        await asyncio.sleep(0.5)


async def summarize(redis: Any, keys: Keys, start: float, main_cpu: float, busy: float,
                    log_file: Path) -> Ingest:
    written = await redis.xrange(keys.articles)
    records = [json.loads(fields["data"]) for _, fields in written]
    first_entry = await redis.xrange(keys.entries, count=1)
    return Ingest(
        entries=await redis.xlen(keys.entries), articles=len(records), dead=await redis.xlen(keys.dead),
        fallbacks=sum(r["extraction"] == "feed" for r in records),
        clustered=sum(r["cluster_id"] != r["id"] for r in records),
        matched=sum(bool(r["topics"]) for r in records),
        cpu={}, start=start, first_entry=stream_time(first_entry[0][0]),
        first_article=stream_time(written[0][0]), last_article=stream_time(written[-1][0]),
        main_cpu=main_cpu, busy=busy, log_lines=log_levels(log_file), commands=await command_calls(redis))


async def command_calls(redis: Any) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def log_levels(log_file: Path) -> dict[str, int]:
    levels: dict[str, int] = {}
    for line in log_file.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            level = json.loads(line).get("level", "?")
            levels[level] = levels.get(level, 0) + 1
    return levels


# ---------------------------------------------------------------- ceiling and baseline (this process)


def quiet() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    trafilatura.bare_extraction(WARMUP_HTML, with_metadata=True)


def extraction_times(files: list[Path]) -> list[float]:
    """Seconds of one bare_extraction (defaults, with metadata) on each page's decoded text."""
    times = []
    for f in files:
        html = decode_html(gzip.decompress(f.read_bytes()), "text/html")
        started = time.perf_counter()
        trafilatura.bare_extraction(html, with_metadata=True)
        times.append(time.perf_counter() - started)
    return times


@dataclass
class Alone:
    """The Extractor on its own: pages/s, and its workers' CPU seconds per page."""

    rate: float
    cpu_per_page: float


async def extraction_alone(files: list[Path], metas: list[tuple[str | None, str | None]]) -> Alone:
    """The daemon's Extractor on its own (os.cpu_count() workers, the pages in memory, the same date and
    byline searches as in the ingest): what the pipeline around it leaves of it."""
    pages = [gzip.decompress(f.read_bytes()) for f in files]
    extractor = Extractor()
    try:
        await asyncio.gather(*(extractor.extract(p, "http://127.0.0.1/warm-up", "text/html")
                               for p in pages[:extractor.workers]))
        before, started = process_cpu(), time.perf_counter()
        await asyncio.gather(*(
            extractor.extract(page, f"http://127.0.0.1/page/{n}", "text/html",
                              want_date=feed_date(date) is None, want_authors=author is None)
            for n, (page, (date, author)) in enumerate(zip(pages, metas, strict=True))))
        elapsed, after = time.perf_counter() - started, process_cpu()
        workers = pool_pids(extractor)
        cpu = sum(after[pid][1] - before.get(pid, (0, 0.0))[1] for pid in workers if pid in after)
        return Alone(len(pages) / elapsed, cpu / len(pages))
    finally:
        extractor.close()


def naive(feeds: list[str]) -> tuple[float, int]:
    """feedparser -> httpx -> bare_extraction, one page at a time (one keep-alive client); pages/s."""
    done = 0
    started = time.perf_counter()
    with httpx.Client(timeout=30) as client:
        for url in feeds:
            for entry in feedparser.parse(client.get(url).content).entries:
                trafilatura.bare_extraction(client.get(entry.link).text, with_metadata=True)
                done += 1
    return done / (time.perf_counter() - started), done


# ---------------------------------------------------------------- main


def start_site(files: list[Path], port: int, hosts: int, feeds: int) -> BaseProcess:
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    server = spawn.Process(target=serve, args=(files, page_metas(files), port, hosts, feeds, ready),
                           daemon=True)
    server.start()
    if not ready.wait(60):
        raise SystemExit("the page server did not start")
    return server


def page_metas(files: list[Path]) -> list[tuple[str | None, str | None]]:
    """(date, author) of each page from evaldata.json, for the feed items."""
    by_file = {m["file"]: m["url"] for m in json.loads((PAGES / "manifest.json").read_text(encoding="utf-8"))}
    evaldata = json.loads((PAGES / "evaldata.json").read_text(encoding="utf-8"))
    labels = [evaldata.get(by_file.get(str(f.relative_to(PAGES)), ""), {}) for f in files]
    def author(value: object) -> str | None:  # a name, or a list of names
        names = value if isinstance(value, list) else [value]
        return "; ".join(str(n) for n in names if n) or None

    return [(str(e["date"]) if e.get("date") else None, author(e.get("author"))) for e in labels]


def page_files(limit: int | None) -> list[Path]:
    if not PAGES.is_dir():
        raise SystemExit(f"{PAGES} is absent: the benchmark needs ../shared/pages/trafilatura-eval/")
    manifest = sorted(json.loads((PAGES / "manifest.json").read_text(encoding="utf-8")),
                      key=lambda m: m["url"])
    if limit:  # an even sample across the sites, not the first few alphabetically
        manifest = manifest[::max(1, len(manifest) // limit)][:limit]
    return [PAGES / m["file"] for m in manifest]


def print_profile(profiler: cProfile.Profile) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    print(out.getvalue())


@dataclass
class Timings:
    """Each page's single-core bare_extraction time, measured before and after the ingest."""

    before: list[float]
    after: list[float]

    def per_page(self) -> list[float]:
        return [(a + b) / 2 for a, b in zip(self.before, self.after, strict=True)]


def report(run: Ingest, timings: Timings, alone: Alone, base: float, base_pages: int, cpus: int,
           load: str) -> None:
    times = timings.per_page()
    median, mean = statistics.median(times), statistics.mean(times)
    ceiling = cpus / median
    print(f"pages={run.entries} cpus={cpus} load before: {load}")
    print(f"entries: {run.entries} = {run.articles} articles written "
          f"({run.fallbacks} from feed content: page text < min_text_length; {run.clustered} near-dup "
          f"clustered; {run.matched} matched a topic) + {run.entries - run.articles - run.dead} "
          f"duplicates + {run.dead} dead-lettered")
    print(f"timeline: first entry queued {run.first_entry - run.start:.2f} s after start, first article "
          f"{run.first_article - run.start:.2f} s, last {run.last_article - run.start:.2f} s")
    print(f"end to end:   {run.end_to_end:6.2f} articles/s  (scheduler start to last article)")
    print(f"steady state: {run.steady:6.2f} articles/s  (first to last article; excludes pool warm-up)")
    print(f"ceiling:      {ceiling:6.2f} articles/s  ({cpus} cpus / median bare_extraction "
          f"{median * 1000:.1f} ms; {statistics.median(timings.before) * 1000:.1f} ms before the ingest, "
          f"{statistics.median(timings.after) * 1000:.1f} ms after)")
    print(f"ratio steady/ceiling: {run.steady / ceiling:.3f}   (end-to-end/ceiling "
          f"{run.end_to_end / ceiling:.3f}; target >= 0.9)")
    print(f"(mean bare_extraction {mean * 1000:.1f} ms: with every core extracting and nothing else, "
          f"{cpus / mean:.2f} articles/s at most; steady state is {run.steady * mean / cpus:.3f} of that)")
    print(f"extraction alone: {alone.rate:6.2f} pages/s  (the daemon's Extractor, nothing else running) = "
          f"{alone.rate / ceiling:.3f} of the ceiling; steady state is {run.steady / alone.rate:.3f} of it")
    print(f"extraction workers' CPU per page: {alone.cpu_per_page * 1000:.1f} ms alone, "
          f"{run.cpu.get('extraction workers', 0.0) / run.entries * 1000:.1f} ms in the ingest")
    print(f"naive loop:   {base:6.2f} articles/s  ({base_pages} pages, sequential)")
    print(f"ratio steady/naive: {run.steady / base:.2f}x   (end-to-end/naive {run.end_to_end / base:.2f}x; "
          f"target >= 1.8x)")
    print(f"daemon process CPU: {run.main_cpu:.1f} s ({run.main_cpu / run.entries * 1000:.1f} ms per "
          f"entry); machine busy {run.busy:.0%} of all cores during the ingest")
    print("CPU seconds during the ingest: " + ", ".join(f"{role} {secs:.1f}" for role, secs in
                                                        sorted(run.cpu.items(), key=lambda kv: -kv[1])))
    top = sorted(run.commands.items(), key=lambda kv: -kv[1])[:8]
    print(f"redis commands per entry: {sum(run.commands.values()) / run.entries:.1f} ("
          + ", ".join(f"{name} {calls / run.entries:.1f}" for name, calls in top) + ")")
    print(f"daemon log lines by level: {run.log_lines}")


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    args.add_argument("--pages", type=int, default=None, help="how many pages (default: all 990)")
    args.add_argument("--feeds", type=int, default=15)
    args.add_argument("--hosts", type=int, default=4)
    args.add_argument("--limit", type=float, default=900, help="seconds the ingest may take")
    args.add_argument("--profile", action="store_true", help="cProfile the daemon process")
    opts = args.parse_args()
    files = page_files(opts.pages)
    cpus = os.cpu_count() or 1
    load = Path("/proc/loadavg").read_text().strip()
    port = free_port()
    server = start_site(files, port, opts.hosts, opts.feeds)
    feeds = [feed_url(port, opts.hosts, k) for k in range(opts.feeds)]
    profiler = cProfile.Profile(time.process_time) if opts.profile else None  # CPU, not waits
    try:
        quiet()
        before = extraction_times(files)  # the ceiling's timings, before and after the ingest
        with tempfile.TemporaryDirectory() as tmp:
            redis_server = EmbeddedRedis(Path(tmp), persist=False, tcp=True)
            redis_url = redis_server.start()
            try:
                write_config(Path(tmp) / "bench.toml", redis_url, feeds)
                run = asyncio.run(ingest(Path(tmp) / "bench.toml", redis_url, len(files),
                                         Path(tmp) / "daemon.log", profiler, opts.limit))
            finally:
                redis_server.stop()
        alone = asyncio.run(extraction_alone(files, page_metas(files)))
        times = Timings(before, extraction_times(files))
        base, base_pages = naive(feeds)
    finally:
        server.terminate()
    report(run, times, alone, base, base_pages, cpus, load)
    if profiler:
        print_profile(profiler)


if __name__ == "__main__":
    main()
