"""`ingester stats`: per-feed health and per-topic counts read from Redis, rendered with rich.

Feed figures come from the state hash each poll writes (ingester.poll); topic figures from the topic
streams and their consumer groups. Stream ids begin with the Redis server's clock in ms, so "last 24 h"
is counted from the server's TIME, whatever the clock of the machine running the command.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ingester.keys import Keys

DAY = 86400.0
_BATCH = 500  # feed hashes fetched per pipeline round trip
_PAGE = 1000  # stream entries per XRANGE page when counting


@dataclass(frozen=True)
class FeedStat:
    id: str
    url: str
    title: str = ""
    last_success: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    last_status: str = ""
    interval: float | None = None
    polls: int = 0
    not_modified: int = 0
    failures: int = 0
    new_items: int = 0
    first_success: float | None = None
    backlog: int = 0  # the items of that first successful poll: there before the feed was followed

    @property
    def name(self) -> str:
        """The feed's title; its address (less the scheme) until it has one: a host alone cannot tell
        apart the feeds of one site that never parsed."""
        return self.title or self.url.split("://", 1)[-1]

    def items_per_day(self, now: float | None = None) -> float | None:
        """New items since the first successful poll (its backlog left out), per day of following, the
        first hour counted as a whole hour; None until a poll succeeded."""
        if self.first_success is None:
            return None
        following = max((now or time.time()) - self.first_success, 3600.0)
        return max(0, self.new_items - self.backlog) / following * DAY

    @property
    def not_modified_ratio(self) -> float | None:
        return self.not_modified / self.polls if self.polls else None

    @property
    def failing(self) -> bool:
        return self.failures > 0


@dataclass(frozen=True)
class GroupStat:
    name: str
    consumers: int
    pending: int  # delivered, not yet acknowledged
    lag: int | None  # not yet delivered; None when Redis cannot tell (< 7, or after deletions)


@dataclass(frozen=True)
class TopicStat:
    name: str
    stream: str
    length: int
    last_day: int  # entries added in the last 24 h
    groups: list[GroupStat] = field(default_factory=list)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def feed_from_state(fid: str, url: str, state: dict[str, str]) -> FeedStat:
    return FeedStat(
        id=fid, url=state.get("url") or url, title=state.get("title", ""),
        last_success=_float(state.get("last_success")), last_error=state.get("last_error", ""),
        last_error_at=_float(state.get("last_error_at")), last_status=state.get("last_status", ""),
        interval=_float(state.get("interval")),
        polls=_int(state.get("polls")), not_modified=_int(state.get("not_modified")),
        failures=_int(state.get("failures")), new_items=_int(state.get("new_items")),
        first_success=_float(state.get("first_success")), backlog=_int(state.get("backlog")))


def sort_key(feed: FeedStat) -> tuple[bool, int, str]:
    """Failing feeds first, the longest-failing at the top; then by name."""
    return (not feed.failing, -feed.failures, feed.name.lower())


async def feed_stats(redis: aioredis.Redis, keys: Keys) -> list[FeedStat]:
    registry = await redis.hgetall(keys.feeds)
    ids = sorted(registry)
    feeds: list[FeedStat] = []
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start:start + _BATCH]
        async with redis.pipeline(transaction=False) as pipe:
            for fid in chunk:
                pipe.hgetall(keys.feed(fid))
            states = await pipe.execute()
        feeds.extend(feed_from_state(fid, registry[fid], state)
                     for fid, state in zip(chunk, states, strict=True))
    return sorted(feeds, key=sort_key)


async def topic_stats(redis: aioredis.Redis, keys: Keys, topics: Iterable[str]) -> list[TopicStat]:
    since_ms = await _day_ago_ms(redis)
    return [await stream_stat(redis, name, keys.topic(name), since_ms) for name in topics]


async def pipeline_stats(redis: aioredis.Redis, keys: Keys) -> list[TopicStat]:
    """The internal streams: entries waiting for extraction, articles written, dead letters."""
    since_ms = await _day_ago_ms(redis)
    return [await stream_stat(redis, name, stream, since_ms)
            for name, stream in (("entries", keys.entries), ("articles", keys.articles), ("dead", keys.dead))]


async def _day_ago_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()  # the clock stream ids are made from
    return int(seconds) * 1000 + int(micros) // 1000 - int(DAY * 1000)


async def stream_stat(redis: aioredis.Redis, name: str, stream: str, since_ms: int) -> TopicStat:
    length = int(await redis.xlen(stream))
    try:
        groups = [GroupStat(str(g["name"]), int(g.get("consumers") or 0), int(g.get("pending") or 0),
                            None if g.get("lag") is None else int(g["lag"]))
                  for g in await redis.xinfo_groups(stream)]
    except ResponseError:  # no such stream yet
        groups = []
    return TopicStat(name, stream, length, await count_since(redis, stream, since_ms), groups)


async def count_since(redis: aioredis.Redis, stream: str, since_ms: int) -> int:
    """Entries whose id time is at or after `since_ms` (Redis has no XCOUNT: page through ids)."""
    count, start = 0, f"{max(0, since_ms)}-0"
    while True:
        page = await redis.xrange(stream, min=start, max="+", count=_PAGE)
        count += len(page)
        if len(page) < _PAGE:
            return count
        start = "(" + page[-1][0]  # exclusive range start (Redis >= 6.2)


def ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    return f"{duration(max(0.0, now - then))} ago"


def duration(seconds: float) -> str:
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}" if seconds >= 10 * size else f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _feed_row(feed: FeedStat, now: float) -> list[RenderableType]:
    error = Text("")
    if feed.last_error and feed.failing:
        short = feed.last_error if len(feed.last_error) <= 40 else feed.last_error[:39] + "…"
        error = Text(f"{short} ({ago(feed.last_error_at, now)})", style="red")
    ratio, per_day = feed.not_modified_ratio, feed.items_per_day(now)
    return [
        Text(feed.name, style="bold red" if feed.failing else ""),
        ago(feed.last_success, now),
        error,
        duration(feed.interval) if feed.interval is not None else "-",
        f"{per_day:.1f}" if per_day is not None else "-",
        f"{ratio:.0%}" if ratio is not None else "-",
        Text(str(feed.failures), style="red" if feed.failing else "dim"),
    ]


def feed_table(feeds: list[FeedStat], now: float, limit: int | None = None) -> Table:
    failing = sum(f.failing for f in feeds)
    shown = feeds if limit is None else feeds[:limit]
    caption = f"{len(feeds) - len(shown)} more feeds not shown" if len(shown) < len(feeds) else None
    table = Table(title=f"Feeds: {len(feeds)}, failing: {failing}", title_justify="left",
                  caption=caption, caption_justify="left")
    table.add_column("Feed", overflow="fold", max_width=48)
    table.add_column("Last success")
    table.add_column("Last error", overflow="fold", max_width=56)
    table.add_column("Interval", justify="right")
    table.add_column("Items/day", justify="right")
    table.add_column("304 ratio", justify="right")
    table.add_column("Failures", justify="right")
    for feed in shown:
        table.add_row(*_feed_row(feed, now))
    return table


def topic_table(topics: list[TopicStat], title: str = "Topics") -> Table:
    table = Table(title=f"{title}: {len(topics)}", title_justify="left")
    table.add_column(title.rstrip("s"))
    for name in ("Entries", "Last 24 h"):
        table.add_column(name, justify="right")
    table.add_column("Group")
    for name in ("Pending", "Lag"):
        table.add_column(name, justify="right")
    for topic in topics:
        groups: list[GroupStat | None] = [*topic.groups] or [None]
        for i, group in enumerate(groups):
            first = i == 0
            table.add_row(topic.name if first else "", str(topic.length) if first else "",
                          str(topic.last_day) if first else "", group.name if group else "-",
                          str(group.pending) if group else "-",
                          "-" if group is None else "?" if group.lag is None else str(group.lag))
    return table


def render(feeds: list[FeedStat], topics: list[TopicStat], *, streams: list[TopicStat] | None = None,
           limit: int | None = None, now: float | None = None) -> RenderableType:
    """The health tables, failing feeds first (only the first `limit` feeds when given);
    `streams` (pipeline_stats) adds the internal streams."""
    now = time.time() if now is None else now
    tables: list[RenderableType] = [feed_table(sorted(feeds, key=sort_key), now, limit),
                                    topic_table(topics)]
    if streams is not None:
        tables.append(topic_table(streams, "Streams"))
    return Group(*tables)


def progress(*, console: Console | None = None, transient: bool = False) -> Progress:
    """A progress bar for long CLI work (OPML import, backfill, replay), drawn on stderr.

    Use as `with progress() as bar: task = bar.add_task("importing", total=n); bar.advance(task, k)`.
    """
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console or Console(stderr=True), transient=transient)
