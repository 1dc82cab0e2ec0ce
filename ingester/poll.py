"""Poll one feed: conditional GET, parse in the pool, queue new entries, choose when to poll again."""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from datetime import datetime

import httpx
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from ingester import logs, metrics
from ingester.config import Config
from ingester.feedparse import FeedParseError, ParsedFeed, entry_key, parse_feed
from ingester.keys import Keys
from ingester.pool import TaskFailed, WorkerPool
from ingester.safehttp import FetchError, GateBusy, SafeClient, retry_after
from ingester.schedule import Schedule, feed_id, jittered

log = structlog.get_logger("ingester.poll")

RATE_SMOOTHING = 0.3  # weight of the latest poll in the items-per-second average
BUSY_RETRY = 5.0  # seconds, when the host's politeness slots stayed taken
NEW_ITEMS_PER_POLL = 0.5  # aim: a new item every other poll, so news waits ~half an item gap

# Queue entries not seen before; the seen marks and the stream write are one atomic step.
QUEUE_NEW = """
local added = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', tonumber(ARGV[1])) then
    redis.call('XADD', KEYS[1], '*', 'data', ARGV[i])
    added = added + 1
  else
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[1]))  -- still listed: keep the mark while the feed shows it
  end
end
return added
"""


@dataclass
class PollResult:
    outcome: str  # "200", "304", "unchanged", "429", "http_404", or an error kind
    new_entries: int
    delay: float  # seconds until the next poll


def max_age(headers: httpx.Headers) -> float | None:
    for directive in headers.get("cache-control", "").split(","):
        name, _, value = directive.strip().partition("=")
        if name.lower() == "max-age" and value.strip().isdigit():
            return float(value)
    return None


def adaptive_interval(rate: float, *, low: float, high: float) -> float:
    """Poll about twice per expected new item (rate in items/s), within [low, high]."""
    if rate <= 0:
        return high
    return min(high, max(low, NEW_ITEMS_PER_POLL / rate))


def initial_rate(parsed: ParsedFeed | None, default_interval: float) -> float:
    """Items/s from the spacing of the feed's publication dates, else one item per default interval."""
    dates = sorted(datetime.fromisoformat(e.published_at.replace("Z", "+00:00")).timestamp()
                   for e in (parsed.entries if parsed else []) if e.published_at)
    if len(dates) >= 3 and dates[-1] > dates[0]:
        return (len(dates) - 1) / (dates[-1] - dates[0])
    return NEW_ITEMS_PER_POLL / default_interval


class Poller:
    def __init__(self, redis: aioredis.Redis, keys: Keys, config: Config, client: SafeClient,
                 parser: WorkerPool, schedule: Schedule) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.client = client
        self.parser = parser
        self.schedule = schedule
        self._queue_new = redis.register_script(QUEUE_NEW)

    async def poll(self, fid: str) -> PollResult:
        state = await self.redis.hgetall(self.keys.feed(fid))
        if not state.get("url"):
            return PollResult("removed", 0, 0)
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(feed=state["url"], host=logs.url_host(state["url"])):
            try:
                result = await self._poll(state)  # its lines, and safehttp's, name the feed
            except RedisError:
                raise  # not the feed's fault: the poll worker logs it and the lease brings the feed back
            except Exception as exc:  # a bug met on this feed: count it against the feed, back off
                log.exception("feed poll crashed", error=repr(exc))
                result = await self._failed(state, "error", repr(exc))
            log.debug("feed polled", outcome=result.outcome, new=result.new_entries,
                      next_in=round(result.delay, 1))  # one per poll: --log-level DEBUG only
        metrics.POLL_SECONDS.observe(time.monotonic() - started)
        metrics.FEED_POLLS.labels(outcome=result.outcome).inc()
        await self.schedule.reschedule(fid, result.delay)
        return result

    async def _poll(self, state: dict[str, str]) -> PollResult:
        url = state["url"]
        try:
            response = await self.client.get(url, self._validators(state))  # network.max_bytes
        except GateBusy:  # nothing was sent: the host is just busy with other feeds
            return PollResult("busy", 0, jittered(BUSY_RETRY))
        except FetchError as exc:
            return await self._failed(state, exc.kind, exc.reason)
        if response.status == 304:
            return await self._unchanged(state, "304", response.headers)
        if response.status in (429, 503) and (wait := retry_after(response.headers)) is not None:
            return await self._failed(state, str(response.status), "Retry-After", floor=wait)
        if response.status != 200:
            return await self._failed(state, f"http_{response.status}", f"HTTP {response.status}")
        body_hash = hashlib.blake2b(response.content, digest_size=16).hexdigest()
        if body_hash == state.get("body_hash"):  # validators missing or lying: same bytes as last time
            return await self._unchanged(state, "unchanged", response.headers)
        try:
            parsed: ParsedFeed = await self.parser.run(
                parse_feed, response.content, response.url, response.headers.get("content-type", ""))
        except (FeedParseError, TaskFailed) as exc:
            metrics.FEED_PARSE_ERRORS.inc()
            return await self._failed(state, "parse", str(exc))
        new = await self._queue(url, parsed)
        return await self._succeeded(state, response.headers, parsed, new, body_hash)

    @staticmethod
    def _validators(state: dict[str, str]) -> dict[str, str]:
        headers = {}
        if etag := state.get("etag"):
            headers["If-None-Match"] = etag
        if modified := state.get("last_modified"):
            headers["If-Modified-Since"] = modified
        return headers

    async def _queue(self, feed_url: str, parsed: ParsedFeed) -> int:
        entries = [e for e in parsed.entries if e.link]  # an article needs a page address
        for entry in entries:  # the feed as configured, not where its redirects led today
            entry.feed_url = feed_url
        if not entries:
            return 0
        keys = [self.keys.entries, *(self.keys.seen(entry_key(e)) for e in entries)]
        args = [int(self.config.articles.dedup_retention), *(e.dumps() for e in entries)]
        added = int(await self._queue_new(keys=keys, args=args))
        metrics.NEW_ENTRIES.inc(added)
        return added

    def _next(self, state: dict[str, str], rate: float, floor: float | None = None) -> float:
        polling = self.config.polling
        if state.get("fixed_interval"):
            interval = float(state["fixed_interval"])
        else:
            interval = adaptive_interval(rate, low=polling.min_interval, high=polling.max_interval)
        if floor:  # the server's own hints (ttl, max-age) count, but never past our ceiling
            interval = max(interval, min(floor, polling.max_interval))
        return interval

    def _rate(self, state: dict[str, str], new: int, parsed: ParsedFeed | None = None) -> float:
        """New items per second, smoothed over polls.

        The first poll has no history (and its whole backlog is "new"): start from the spacing of
        the feed's own publication dates, or from the default interval.
        """
        if "rate" not in state:
            return initial_rate(parsed, self.config.polling.default_interval)
        elapsed = max(1.0, time.time() - float(state.get("last_poll") or 0))
        return RATE_SMOOTHING * (new / elapsed) + (1 - RATE_SMOOTHING) * float(state["rate"])

    async def _succeeded(self, state: dict[str, str], headers: httpx.Headers, parsed: ParsedFeed,
                         new: int, body_hash: str) -> PollResult:
        rate = self._rate(state, new, parsed)
        delay = self._next(state, rate, max(parsed.ttl or 0, max_age(headers) or 0))
        fields = {"etag": headers.get("etag", ""), "last_modified": headers.get("last-modified", ""),
                  "body_hash": body_hash, "title": parsed.title or state.get("title", ""),
                  "ttl": parsed.ttl or "",  # the feed's own floor, kept for the polls that get no body
                  "last_success": time.time(), "last_status": "200", "failures": 0}
        if "first_success" not in state:  # its items were there before the feed was followed (stats)
            fields.update(first_success=time.time(), backlog=new)
        await self._record(state, fields, rate, delay, new=new)
        return PollResult("200", new, jittered(delay))

    async def _unchanged(self, state: dict[str, str], outcome: str, headers: httpx.Headers) -> PollResult:
        rate = self._rate(state, 0)
        delay = self._next(state, rate, max(float(state.get("ttl") or 0), max_age(headers) or 0))
        fields = {"last_success": time.time(), "last_status": outcome, "failures": 0}
        await self._record(state, fields, rate, delay, not_modified=outcome == "304")
        return PollResult(outcome, 0, jittered(delay))

    async def _failed(self, state: dict[str, str], outcome: str, reason: str,
                      floor: float | None = None) -> PollResult:
        """Back off exponentially, capped at max_interval: a feed is never given up for good."""
        failures = int(state.get("failures") or 0) + 1
        rate = float(state["rate"]) if "rate" in state else 1 / self.config.polling.default_interval
        base = self._next(state, rate)
        delay = min(base * 2 ** min(failures, 16), self.config.polling.max_interval)
        delay = max(delay * random.uniform(0.5, 1.0), floor or 0)  # full jitter, but honour Retry-After
        fields = {"last_error": f"{outcome}: {reason}"[:500], "last_error_at": time.time(),
                  "last_status": outcome, "failures": failures}
        await self._record(state, fields, rate, delay)
        log.info("feed poll failed", outcome=outcome, reason=reason, failures=failures,
                 retry_in=round(delay))
        return PollResult(outcome, 0, delay)

    async def _record(self, state: dict[str, str], fields: dict[str, object], rate: float,
                      delay: float, *, new: int = 0, not_modified: bool = False) -> None:
        key = self.keys.feed(feed_id(state["url"]))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={**fields, "rate": rate, "interval": round(delay, 3),
                                    "last_poll": time.time()})
            pipe.hincrby(key, "polls", 1)
            if new:
                pipe.hincrby(key, "new_items", new)
            if not_modified:
                pipe.hincrby(key, "not_modified", 1)
            await pipe.execute()

