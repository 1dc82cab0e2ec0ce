"""The notifier stage: topic stream entries -> Slack or webhook alerts, once per (notifier, topic, story).

At-least-once from the "notify" consumer group, deduplicated by story cluster:
- a short-lived claim key (SET NX, value = the entry id) is taken before sending, so two copies of
  one story never send together, and an entry reclaimed after a crash finds its own claim and resends
  (at most one duplicate per message in flight);
- the "already alerted" mark is written only after the webhook answered 2xx, with the dedup retention
  as TTL; the entry is acked when every notifier of its topic has sent, skipped or parked it.
Each notifier has its own queue and its own rate gate (shared by all daemons through Redis), so a 429
on one webhook does not hold up the others. 5xx and network errors retry with backoff and jitter;
other 4xx park the alert in <namespace>:dead (see docs/alerts.md); dlq.replay resends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal, TypeVar

import httpx
import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from structlog.contextvars import bind_contextvars, bound_contextvars

from ingester import logs, metrics, slack, webhook
from ingester.config import Config, NotifierConfig
from ingester.keys import Keys
from ingester.keys import digest as short_id
from ingester.politeness import Gate
from ingester.query import Near, Not, Phrase, Prefix, Query, Term, fold, parse
from ingester.record import Article
from ingester.safehttp import BadURL, BlockedAddress, FetchError, Response, SafeClient
from ingester.streams import Consumer, Message
from ingester.topics import Doc, TopicSet

log = structlog.get_logger("ingester.alerts")

GROUP = "notify"
EXPLAIN_CHARS = 20_000  # of the text, for matched_terms: ~1 ms to explain on the event loop
STAGE = "notify"
DIGEST_WEBHOOK_CHUNK = 100  # articles per generic digest payload
RETRY_AFTER_MAX = 3600.0
ERROR_BODY_CHARS = 200

Outcome = Literal["sent", "skipped", "busy", "parked"]
T = TypeVar("T")

# Claim: the mark wins; a free claim or our own claim (a reclaimed entry) is (re)taken.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'marked' end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 'busy' end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 'claimed'
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# A digest entry is added unless the story was already sent; HSETNX dedupes by cluster.
_COLLECT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
return redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
"""
# Start a flush: the collected stories become the batch being sent, unless one is still unsent.
_TAKE_DIGEST = """
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
end
return redis.call('HGETALL', KEYS[2])
"""


# --- keys (all under the namespace; see Keys) -------------------------------------------------------------

# --- secrets never shown ----------------------------------------------------------------------------------

def host_only(url: str) -> str:
    """What logs and errors may show of a webhook URL: its host."""
    try:
        return httpx.URL(url).host or "(webhook)"
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(webhook)"


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret (and the secret part of a webhook URL) replaced by ***."""
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _url_secrets(url: str) -> list[str]:
    """The URL, its path and query, and path segments that look like tokens (Slack's last one)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return [url]
    tail = parsed.raw_path.decode("ascii", "replace")
    segments = [p for p in parsed.path.split("/") if p]
    tokens = [p for p in segments if len(p) >= 16] + segments[-1:]
    query = parsed.query.decode("ascii", "replace")
    return [p for p in (url, tail, query, *tokens) if len(p) >= 6]


# --- matched terms ----------------------------------------------------------------------------------------

def positive_leaves(node: Query, negated: bool = False) -> list[Term | Phrase | Prefix]:
    """The terms, phrases and wildcards a match can rest on (none under a NOT)."""
    if isinstance(node, Term | Phrase | Prefix):
        return [] if negated else [node]
    if isinstance(node, Near):
        return positive_leaves(node.left, negated) + positive_leaves(node.right, negated)
    if isinstance(node, Not):
        return positive_leaves(node.child, not negated)
    children = getattr(node, "children", None)
    if children is not None:
        return [leaf for c in children for leaf in positive_leaves(c, negated)]
    child = getattr(node, "child", None)
    return positive_leaves(child, negated) if child is not None else []


def matched_terms(article: Article, topics: TopicSet, topic: str) -> list[str]:
    """The query's words and phrases that made the article match `topic`, clause by clause: each
    clause's own words, in the field its scope names, NEAR ones within their distance, none under
    a NOT. This runs on the event loop: only the start of the text is explained (~1 ms)."""
    doc = Doc(title=article.title, text=article.text[:EXPLAIN_CHARS], language=article.language)
    found: list[str] = []
    for fired in topics.explain(topic, doc).fired:
        spans = [f" {words} " for words in fired.words]
        tokens = {token for span in spans for token in span.split()}
        for leaf in _leaves(fired.clause):
            if isinstance(leaf, Term) and leaf.token in tokens:
                found.append(leaf.token)
            elif isinstance(leaf, Phrase) and any(f" {' '.join(leaf.tokens)} " in span for span in spans):
                found.append(" ".join(leaf.tokens))
            elif isinstance(leaf, Prefix):
                found += sorted(t for t in tokens if t.startswith(fold(leaf.prefix)))[:5]
    return list(dict.fromkeys(found))


@lru_cache(maxsize=4096)
def _leaves(clause: str) -> list[Term | Phrase | Prefix]:
    return positive_leaves(parse(clause))


# --- delivery ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    outcome: Outcome
    reason: str = ""


class Sender:
    """POSTs to one notifier through its rate gate: 2xx done, 429 waits, 5xx retries, 4xx parks."""

    def __init__(self, notifier: NotifierConfig, client: SafeClient, gate: Gate, *,
                 backoff: float = 1.0, backoff_max: float = 300.0) -> None:
        self.notifier = notifier
        self.name = notifier.name
        self.url = notifier.webhook_url.get_secret_value()
        self.secret = notifier.secret.get_secret_value() if notifier.secret else None
        self.host = host_only(self.url)
        self.secrets = _url_secrets(self.url) + ([self.secret] if self.secret else [])
        logs.register_secrets(self.secrets)  # belt and braces: the log processor redacts them too
        self._client = client
        self._gate = gate
        self._gate_name = f"notifier:{notifier.name}"
        self.backoff = backoff
        self.backoff_max = backoff_max

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    async def deliver(self, body: bytes, delivery: str | None = None,
                      attempts: int | None = None) -> str | None:
        """None once the webhook accepted `body`; else why it must be parked (no secret in it).

        Retries 429 (after Retry-After), 5xx and network errors forever, or `attempts` times.
        """
        headers = webhook.headers(body, self.secret if self.notifier.type == "webhook" else None,
                                  delivery)
        failures = 0
        while True:
            answer = await self._attempt(body, headers)
            if answer.reason is None or answer.retry == "no":
                return answer.reason
            failures += 1
            if attempts is not None and failures >= attempts:
                return f"gave up after {failures} attempts: {answer.reason}"
            metrics.ALERTS.labels(notifier=self.name, outcome="retried").inc()
            if answer.retry == "after":  # every daemon waits: the gate is shared
                log.info("alert rate-limited", notifier=self.name, host=self.host,
                         retry_after=answer.after)
                await self._gate.hold_off(self._gate_name, answer.after)
                continue
            wait = random.uniform(0, min(self.backoff_max, self.backoff * 2 ** min(failures, 30)))
            log.info("alert retry", notifier=self.name, host=self.host, reason=answer.reason,
                     wait=round(wait, 2))
            await asyncio.sleep(wait)  # exponential backoff with full jitter

    async def _attempt(self, body: bytes, headers: dict[str, str]) -> _Answer:
        async with self._gate.slot(self._gate_name):
            try:
                response = await self._client.post(self.url, body, headers, redact=host_only)
            except (BlockedAddress, BadURL) as exc:
                return _Answer(self.scrub(f"refused: {exc.reason}"))
            except FetchError as exc:
                return _Answer(self.scrub(f"{exc.kind}: {exc.reason}"), "backoff")
        if 200 <= response.status < 300:
            return _Answer(None)
        reason = self.scrub(_status_reason(response))
        if response.status == 429 or (response.status == 503 and "retry-after" in response.headers):
            return _Answer(reason, "after", retry_after(response))
        if response.status >= 500 or response.status == 408:
            return _Answer(reason, "backoff")
        return _Answer(reason)


@dataclass
class _Answer:
    reason: str | None  # None: accepted (2xx)
    retry: Literal["no", "backoff", "after"] = "no"  # "no" with a reason: park it
    after: float = 0.0  # Retry-After seconds


def _status_reason(response: Response) -> str:
    """`HTTP 404: channel_not_found` — the status and the start of the body, on one line."""
    text = response.content[:ERROR_BODY_CHARS].decode("utf-8", "replace")
    text = " ".join(text.split())
    return f"HTTP {response.status}: {text}" if text else f"HTTP {response.status}"


def retry_after(response: Response, default: float = 1.0) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    value = response.headers.get("retry-after", "").strip()
    seconds = default
    if value:
        try:
            seconds = float(value)
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                when = email.utils.parsedate_to_datetime(value)
                seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


class Lease:
    """A Redis key held by `owner`, its TTL extended while the holder works (so a crash frees it)."""

    def __init__(self, redis: aioredis.Redis, key: str, owner: str, ttl: float) -> None:
        self.redis, self.key, self.owner, self.ttl_ms = redis, key, owner, max(int(ttl * 1000), 100)

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._extend())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _extend(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            await self.redis.eval(_EXTEND, 1, self.key, self.owner, self.ttl_ms)

    async def release(self) -> None:
        await self.redis.eval(_RELEASE, 1, self.key, self.owner)


class Notifiers:
    """Delivery of alerts and digests with the claim/mark protocol; shared by the Alerter and the DLQ."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, config: Config, client: SafeClient, *,
                 claim_ttl: float = 60.0, backoff: float = 1.0, backoff_max: float = 300.0) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.claim_ttl = claim_ttl
        self.retention = max(int(config.articles.dedup_retention), 1)
        self.senders = {
            n.name: Sender(n, client, Gate(redis, keys, concurrency=1, min_gap=1.0 / n.rate),
                           backoff=backoff, backoff_max=backoff_max)
            for n in config.notifiers
        }

    def alert_body(self, notifier: str, topic: str, article: Article, terms: Sequence[str]) -> bytes:
        if self.senders[notifier].notifier.type == "slack":
            return orjson.dumps(slack.alert_message(article, topic, terms))
        return webhook.alert_payload(article, topic, terms)

    def digest_bodies(self, notifier: str, topic: str,
                      articles: Sequence[Article]) -> list[tuple[list[Article], bytes]]:
        """The digest as (stories, body) parts, split where Slack's limits (or size) require."""
        parts: list[tuple[list[Article], bytes]] = []
        if self.senders[notifier].notifier.type == "slack":
            start = 0
            for message, count in zip(slack.digest_messages(topic, articles),
                                      slack.digest_counts(topic, articles), strict=True):
                parts.append((list(articles[start: start + count]), orjson.dumps(message)))
                start += count
            return parts
        for i in range(0, len(articles), DIGEST_WEBHOOK_CHUNK):
            chunk = list(articles[i: i + DIGEST_WEBHOOK_CHUNK])
            parts.append((chunk, webhook.digest_payload(topic, chunk)))
        return parts

    async def alert(self, notifier: str, topic: str, article: Article, terms: Sequence[str],
                    owner: str, *, attempts: int | None = None) -> Result:
        """Send one story unless this (notifier, topic, cluster) was already alerted or is being sent."""
        sender = self.senders[notifier]
        mark = self.keys.alerted(notifier, topic, article.cluster_id)
        claim = Lease(self.redis, self.keys.alert_claim(notifier, topic, article.cluster_id), owner,
                      self.claim_ttl)
        state = await self.redis.eval(_CLAIM, 2, mark, claim.key, owner, claim.ttl_ms)
        if state == "marked":
            return Result("skipped")
        if state == "busy":
            return Result("busy")
        body = self.alert_body(notifier, topic, article, terms)
        delivery = short_id(f"{notifier}\n{topic}\n{article.cluster_id}", 16)
        async with claim.kept():
            reason = await sender.deliver(body, delivery, attempts)
        if reason is None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(mark, "1", ex=self.retention)
                pipe.delete(claim.key)
                await pipe.execute()
            return Result("sent")
        await claim.release()
        return Result("parked", reason)

    async def send_digest_part(self, notifier: str, topic: str, articles: Sequence[Article],
                               body: bytes, *, attempts: int | None = None) -> Result:
        """Send one digest message; on 2xx mark its stories as alerted."""
        reason = await self.senders[notifier].deliver(body, None, attempts)
        if reason is not None:
            return Result("parked", reason)
        async with self.redis.pipeline(transaction=True) as pipe:
            for article in articles:
                pipe.set(self.keys.alerted(notifier, topic, article.cluster_id), "1",
                         ex=self.retention)
            await pipe.execute()
        return Result("sent")

    async def park(self, notifier: str, topic: str, kind: Literal["alert", "digest"], reason: str,
                   data: str, extra: dict[str, str] | None = None) -> None:
        """Write a dead letter for a notifier (docs/alerts.md describes the fields)."""
        reason = self.senders[notifier].scrub(reason)
        fields = {"stage": STAGE, "kind": kind, "notifier": notifier, "topic": topic, "reason": reason,
                  "at": str(int(time.time())), **(extra or {}), "data": data}
        await self.redis.xadd(self.keys.dead, fields)
        metrics.DEAD_LETTERS.labels(stage=STAGE).inc()
        metrics.ALERTS.labels(notifier=notifier, outcome="parked").inc()
        log.warning("alert parked", notifier=notifier, topic=topic, kind=kind,
                    host=self.senders[notifier].host, reason=reason)


async def _unless_stopped(aw: Awaitable[T], stop: asyncio.Event) -> asyncio.Future[T] | None:
    """Wait for `aw`, or for `stop` (then `aw` is cancelled and None returned)."""
    task = asyncio.ensure_future(aw)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        return task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


# --- the stage --------------------------------------------------------------------------------------------

@dataclass
class _Pending:
    """A topic entry being handled by `remaining` notifiers; acked when that reaches zero."""

    msg: Message
    remaining: int


@dataclass
class _Job:
    pending: _Pending
    topic: str
    article: Article
    terms: list[str] = field(default_factory=list)


class Alerter:
    """Consumes the topic streams of every topic with `notify` and sends its alerts."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, config: Config, client: SafeClient, *,
                 name: str | None = None, reclaim_idle: float | None = None, claim_ttl: float = 60.0,
                 backoff: float = 1.0, backoff_max: float = 300.0, max_in_flight: int = 500,
                 batch: int = 50, block_ms: int = 1000, busy_wait: float = 0.5,
                 grace: float = 5.0) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.name = name or f"alerter-{uuid.uuid4().hex[:8]}"
        self.notifiers = Notifiers(redis, keys, config, client, claim_ttl=claim_ttl, backoff=backoff,
                                   backoff_max=backoff_max)
        self.topics = {keys.topic(t.name): t for t in config.topics if t.notify}
        self._matcher = TopicSet(list(self.topics.values()))
        self._reclaim_idle = reclaim_idle if reclaim_idle is not None else config.articles.reclaim_idle
        self._consumer = Consumer(redis, list(self.topics), GROUP, self.name, dead_stream=keys.dead,
                                  stage=STAGE, batch=batch, block_ms=block_ms,
                                  reclaim_idle=self._reclaim_idle,
                                  max_attempts=config.articles.max_attempts,
                                  new_group_at="$")  # a topic that gains a notifier: from now on
        self._queues: dict[str, asyncio.Queue[_Job]] = {n: asyncio.Queue() for n in self.notifiers.senders}
        self._in_flight: dict[tuple[str, str], _Pending] = {}
        self._max_in_flight = max_in_flight  # entries held in memory (a batch may overshoot it)
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._idle = asyncio.Event()
        self._busy_wait = busy_wait
        self._grace = grace

    async def setup(self) -> None:
        """Create the topics' consumer groups: before any article can match them, so that a new
        topic's first match is alerted (a topic that gains a notifier is alerted from then on)."""
        await self._consumer.setup()

    async def run(self, stop: asyncio.Event) -> None:
        with bound_contextvars(stage=STAGE):  # the tasks started here inherit it
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        if not self.topics:
            await stop.wait()
            return
        await self._consumer.setup()
        tasks = [asyncio.create_task(self._heartbeat(), name="alerts-heartbeat")]
        for sender in self.notifiers.senders.values():
            tasks.append(asyncio.create_task(self._worker(sender.notifier), name=f"alerts-{sender.name}"))
            if sender.notifier.digest > 0:
                tasks.append(asyncio.create_task(self._flusher(sender.notifier)))
        try:
            await self._read(stop)
            with contextlib.suppress(TimeoutError):  # let sends under way finish, then stop
                async with asyncio.timeout(self._grace):
                    await self._drained()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await _unless_stopped(self._has_room.wait(), stop) is None:
                return
            reading = await _unless_stopped(self._consumer.read(), stop)
            if reading is None:
                return
            try:
                messages = reading.result()
            except RedisError as exc:  # Redis away beyond the client's retries: wait, read again
                log.warning("reading topic streams failed", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            for msg in messages:
                await self._dispatch(msg)

    async def _drained(self) -> None:
        if self._in_flight:
            self._idle.clear()
            await self._idle.wait()

    async def _dispatch(self, msg: Message) -> None:
        if (msg.stream, msg.id) in self._in_flight:  # handed out again while we still hold it
            return
        topic = self.topics[msg.stream]
        try:
            article = Article.loads(msg.fields["data"])
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            await self._consumer.dead_letter(msg, f"unreadable article record: {type(exc).__name__}")
            return
        pending = _Pending(msg, len(topic.notify))
        self._in_flight[(msg.stream, msg.id)] = pending
        if len(self._in_flight) >= self._max_in_flight:  # read no more until some are done
            self._has_room.clear()
        terms = matched_terms(article, self._matcher, topic.name)
        for notifier in topic.notify:
            self._queues[notifier].put_nowait(_Job(pending, topic.name, article, terms))

    async def _finish(self, job: _Job, notifier: str, outcome: str) -> None:
        if outcome in ("sent", "skipped"):  # parked is counted with the dead letter, queued at the flush
            metrics.ALERTS.labels(notifier=notifier, outcome=outcome).inc()
        job.pending.remaining -= 1
        if job.pending.remaining == 0:
            await self._consumer.ack(job.pending.msg)
            self._in_flight.pop((job.pending.msg.stream, job.pending.msg.id), None)
            if len(self._in_flight) < self._max_in_flight:
                self._has_room.set()
            if not self._in_flight:
                self._idle.set()

    async def _worker(self, notifier: NotifierConfig) -> None:
        self._bind_notifier(notifier.name)
        queue = self._queues[notifier.name]
        loop = asyncio.get_running_loop()
        while True:
            job = await queue.get()
            try:
                with bound_contextvars(topic=job.topic):
                    if notifier.digest > 0:
                        outcome = await self._collect(notifier.name, job)
                    else:
                        outcome = await self._alert(notifier.name, job)
            except Exception:  # e.g. Redis away for longer than its retries: keep the job, try later
                log.exception("alert failed, will retry", notifier=notifier.name, topic=job.topic)
                outcome = "busy"
            if outcome == "busy":  # another copy of the story is being sent: look again shortly
                loop.call_later(self._busy_wait, queue.put_nowait, job)
                continue
            await self._finish(job, notifier.name, outcome)

    async def _alert(self, notifier: str, job: _Job) -> str:
        msg = job.pending.msg
        result = await self.notifiers.alert(notifier, job.topic, job.article, job.terms, msg.id)
        if result.outcome == "parked":
            await self.notifiers.park(notifier, job.topic, "alert", result.reason, job.article.dumps(), {
                "stream": msg.stream, "id": msg.id, "cluster_id": job.article.cluster_id,
                "terms": orjson.dumps(job.terms).decode()})
        elif result.outcome == "sent":
            log.info("alert sent", notifier=notifier, topic=job.topic, cluster=job.article.cluster_id)
        return result.outcome

    async def _collect(self, notifier: str, job: _Job) -> str:
        """Add the story to the (notifier, topic) digest, once per cluster."""
        added = await self.redis.eval(
            _COLLECT, 2, self.keys.alerted(notifier, job.topic, job.article.cluster_id),
            self.keys.digest(notifier, job.topic), job.article.cluster_id, job.article.dumps())
        return "queued" if added else "skipped"

    async def _heartbeat(self) -> None:
        """Keep our pending entries from looking idle while they wait for a slow webhook."""
        interval = max(self._reclaim_idle / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            by_stream: dict[str, list[str]] = {}
            for stream, entry_id in list(self._in_flight):
                by_stream.setdefault(stream, []).append(entry_id)
            for stream, ids in by_stream.items():
                await self.redis.xclaim(stream, GROUP, self.name, min_idle_time=0, message_ids=ids,
                                        justid=True)

    async def _flusher(self, notifier: NotifierConfig) -> None:
        self._bind_notifier(notifier.name)
        period = notifier.digest
        topics = [t.name for t in self.topics.values() if notifier.name in t.notify]
        while True:
            await asyncio.sleep(period - time.time() % period)  # periods aligned on the clock
            for topic in topics:
                try:
                    with bound_contextvars(topic=topic):
                        await self.flush_digest(notifier.name, topic)
                except Exception:  # a Redis blip must not end the flusher: the digest stays stored
                    log.exception("digest flush failed", notifier=notifier.name, topic=topic)

    def _bind_notifier(self, name: str) -> None:
        """Called first in a notifier's own task: its lines name the notifier and its host, not its URL."""
        bind_contextvars(notifier=name, host=self.notifiers.senders[name].host)

    async def flush_digest(self, notifier: str, topic: str) -> int:
        """Send the stories collected for (notifier, topic); one daemon per period does it."""
        period = self.notifiers.senders[notifier].notifier.digest
        lock = Lease(self.redis, self.keys.digest_lock(notifier, topic), self.name,
                     max(period / 2, 0.05))
        if not await lock.acquire():
            return 0
        async with lock.kept():
            return await self._send_digest(notifier, topic)

    async def _send_digest(self, notifier: str, topic: str) -> int:
        collected = self.keys.digest(notifier, topic)
        sending = self.keys.digest(notifier, topic, sending=True)
        flat = await self.redis.eval(_TAKE_DIGEST, 2, collected, sending)
        articles = sorted((Article.loads(flat[i + 1]) for i in range(0, len(flat), 2)),
                          key=lambda a: (a.published_at or a.fetched_at, a.id))
        sent = 0
        for chunk, body in self.notifiers.digest_bodies(notifier, topic, articles):
            result = await self.notifiers.send_digest_part(notifier, topic, chunk, body)
            if result.outcome == "parked":
                data = orjson.dumps([a.as_dict() for a in chunk]).decode()
                await self.notifiers.park(notifier, topic, "digest", result.reason, data)
            else:
                sent += len(chunk)
                metrics.ALERTS.labels(notifier=notifier, outcome="sent").inc()
            await self.redis.hdel(sending, *[a.cluster_id for a in chunk])
        if articles:
            log.info("digest sent", notifier=notifier, topic=topic, stories=sent, total=len(articles))
        return sent
