"""`ingester` command line: run, check, demo, feeds, match, dlq, stats."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ingester import logs
from ingester.config import Config, ConfigError, load

if TYPE_CHECKING:  # the commands import what they need when they run: a fast --help
    from ingester.schedule import Schedule

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(level=args.log_level)
    structlog.contextvars.bind_contextvars(stage="cli")  # the daemon's stages bind their own
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingester", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if config:
            p.add_argument("--config", "-c", required=True, type=Path, help="the TOML config file")
        p.set_defaults(handler=handler)
        return p

    command("run", _run, "run the daemon in the foreground until SIGTERM/SIGINT")
    command("check", _check, "validate the config and reach Redis")
    stats = command("stats", _stats, "per-feed health and per-topic counts, from Redis")
    stats.add_argument("--limit", type=int, help="show only the first N feeds (failing feeds come first)")
    demo = command("demo", _demo, "run the whole pipeline offline on a bundled local feed", config=False)
    demo.add_argument("--seconds", type=float, default=60, help="give up after this long")

    feeds = sub.add_parser("feeds", help="import or export the feeds in Redis (OPML), or make them due now")
    feeds_sub = feeds.add_subparsers(required=True, metavar="ACTION")
    imp = feeds_sub.add_parser("import", help="add the feeds of an OPML file")
    imp.add_argument("file", type=Path)
    imp.set_defaults(handler=_feeds_import)
    exp = feeds_sub.add_parser("export", help="print every feed as OPML")
    exp.set_defaults(handler=_feeds_export)
    now = feeds_sub.add_parser("poll-now", help="make the listed feeds (default: all) due at once")
    now.add_argument("urls", nargs="*", metavar="URL", help="feed URLs as configured or imported")
    now.set_defaults(handler=_feeds_poll_now)

    dlq = sub.add_parser("dlq", help="show or resend what was parked in <namespace>:dead")
    dlq_sub = dlq.add_subparsers(required=True, metavar="ACTION")
    dlq_list = dlq_sub.add_parser("list", help="list parked items with their reasons")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.set_defaults(handler=_dlq_list)
    dlq_replay = dlq_sub.add_parser("replay", help="resend parked alerts, re-queue parked entries")
    dlq_replay.add_argument("ids", nargs="*", help="dead-stream entry ids (default: all)")
    dlq_replay.set_defaults(handler=_dlq_replay)
    for p in (imp, exp, now, dlq_list, dlq_replay):
        p.add_argument("--config", "-c", required=True, type=Path)

    match = sub.add_parser("match", help="test a topic or a query against an article",
                           description="Extract (or read) an article and explain whether it matches.")
    match.add_argument("--config", "-c", type=Path)
    target = match.add_mutually_exclusive_group(required=True)
    target.add_argument("--topic", help="a topic of the config")
    target.add_argument("--query", help="a query, no config needed")
    match.add_argument("article", help="an http(s) URL, a file (HTML or text), or - for stdin")
    match.set_defaults(handler=_match)
    return parser


def _run(args: argparse.Namespace) -> int:
    from workers.daemon import RedisUnreachable, run

    load(args.config)  # config errors before anything starts
    structlog.contextvars.bind_contextvars(stage="daemon")
    try:
        run(args.config)
    except RedisUnreachable as exc:
        print(f"redis: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    config = load(args.config)
    from ingester.connection import connect, safe_url
    from ingester.embedded import EmbeddedRedisError, find_server_binary

    url = config.redis_url
    if url is None:
        try:
            binary = find_server_binary()
        except EmbeddedRedisError as exc:
            print(f"redis: {exc}", file=sys.stderr)
            return 1
        print(f"ok: config valid; no Redis URL, the daemon will run {binary}")
        return 0

    from ingester.connection import namespace_problem

    if problem := namespace_problem(url, config.redis.namespace):  # INGESTER_REDIS_URL may be a cluster
        print(f"config error: redis.namespace: {problem}", file=sys.stderr)
        return 2

    async def ping() -> None:
        client = connect(url, retry=False)  # say why at once, not after retrying
        try:
            async with asyncio.timeout(5):
                await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        print(f"redis: cannot reach {safe_url(url)}: {reason}", file=sys.stderr)
        return 1
    print(f"ok: config valid; Redis reachable at {safe_url(url)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ingester.demo import run_demo

    return run_demo(args.seconds)


def _with_redis(config: Config, work: Callable[[Any], Awaitable[int]]) -> int:
    from workers.daemon import RedisUnreachable, open_redis

    async def go() -> int:
        async with open_redis(config, attach=True, wait=0) as redis:  # say so at once: no waiting
            return await work(redis)

    try:
        return asyncio.run(go())
    except RedisUnreachable as exc:
        print(f"redis: {exc}", file=sys.stderr)
        return 1


async def _registry(redis: Any, config: Config) -> Schedule:
    """The feed registry (ingester.schedule), with the config's own feeds in it, as a daemon registers
    them when it starts: so that the feeds commands know them before any daemon has run."""
    from ingester.keys import Keys
    from ingester.schedule import Schedule
    from workers.daemon import feed_sources

    schedule = Schedule(redis, Keys(config.redis.namespace), lease=60)
    await schedule.add(feed_sources(config), origin="config")  # never removes: another config may run
    return schedule


def _feeds_import(args: argparse.Namespace) -> int:
    from ingester.opml import read_opml
    from ingester.schedule import FeedSource
    from ingester.stats import progress

    config = load(args.config)
    feeds = [FeedSource(f.url, None, f.title, f.category) for f in read_opml(args.file.read_bytes())]

    async def work(redis: Any) -> int:
        schedule = await _registry(redis, config)
        added = 0
        with progress(transient=True) as bar:
            task = bar.add_task(f"importing {args.file.name}", total=len(feeds))
            for start in range(0, len(feeds), 500):  # one pipeline per 500 feeds
                chunk = feeds[start:start + 500]
                added += await schedule.add(chunk, origin="import", replace=False)
                bar.advance(task, len(chunk))
        print(f"{added} new feeds of {len(feeds)} in {args.file}")
        return 0

    return _with_redis(config, work)


def _feeds_poll_now(args: argparse.Namespace) -> int:
    """A running daemon polls them at its next tick (a feed being polled right now may be polled twice)."""
    from ingester.schedule import feed_id
    from ingester.stats import progress

    config = load(args.config)

    async def work(redis: Any) -> int:
        schedule = await _registry(redis, config)
        known = await schedule.feeds()
        wanted = {feed_id(url): url for url in args.urls} if args.urls else known
        unknown = [url for fid, url in wanted.items() if fid not in known]
        for url in unknown:
            print(f"not a known feed: {url}", file=sys.stderr)
        due = [fid for fid in wanted if fid in known]
        with progress(transient=True) as bar:
            task = bar.add_task("rescheduling", total=len(due))
            for fid in due:
                await schedule.reschedule(fid, 0)
                bar.advance(task)
        print(f"{len(due)} feeds due now")
        return 1 if unknown else 0

    return _with_redis(config, work)


def _stats(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ingester import stats
    from ingester.keys import Keys

    config = load(args.config)
    keys = Keys(config.redis.namespace)

    async def work(redis: Any) -> int:
        feeds = await stats.feed_stats(redis, keys)
        topics = await stats.topic_stats(redis, keys, [t.name for t in config.topics])
        streams = await stats.pipeline_stats(redis, keys)
        Console().print(stats.render(feeds, topics, streams=streams, limit=args.limit))
        return 0

    return _with_redis(config, work)


def _feeds_export(args: argparse.Namespace) -> int:
    from ingester.keys import Keys
    from ingester.opml import OpmlFeed, write_opml

    config = load(args.config)
    keys = Keys(config.redis.namespace)

    async def work(redis: Any) -> int:
        await _registry(redis, config)
        feeds = []
        for fid in sorted(await redis.hkeys(keys.feeds)):
            state = await redis.hgetall(keys.feed(fid))
            if state.get("url"):
                feeds.append(OpmlFeed(state["url"], state.get("title") or None,
                                      state.get("category") or None))
        sys.stdout.buffer.write(write_opml(feeds))
        return 0

    return _with_redis(config, work)


def _match(args: argparse.Namespace) -> int:
    from ingester.matchcli import run_match

    return int(run_match(args))


def _dlq_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ingester.dlq import list_dead
    from ingester.keys import Keys

    config = load(args.config)

    async def work(redis: Any) -> int:
        items = await list_dead(redis, Keys(config.redis.namespace), args.limit)
        for item in items:
            when = datetime.fromtimestamp(item.at, UTC).strftime("%Y-%m-%d %H:%M:%S") if item.at else "?"
            what = f"{item.kind} {item.notifier}/{item.topic}" if item.notifier else item.stream or ""
            print(f"{item.id}  {when}  {item.stage}  {what}  {item.reason}")
        print(f"{len(items)} parked item(s)")
        return 0

    return _with_redis(config, work)


def _dlq_replay(args: argparse.Namespace) -> int:
    from ingester.dlq import replay
    from ingester.keys import Keys
    from ingester.safehttp import SafeClient
    from ingester.stats import progress

    config = load(args.config)
    keys = Keys(config.redis.namespace)

    async def work(redis: Any) -> int:
        total = len(args.ids) if args.ids else await redis.xlen(keys.dead)
        async with SafeClient(config.network) as client:
            with progress(transient=True) as bar:  # drawn only on a terminal; the counts always print
                task = bar.add_task("replaying", total=total)
                replayed, failed = await replay(redis, keys, config, client, args.ids or None,
                                                on_item=lambda: bar.advance(task))
        print(f"replayed {replayed}, failed {failed}")
        return 1 if failed else 0

    return _with_redis(config, work)
