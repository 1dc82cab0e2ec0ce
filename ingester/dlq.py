"""The dead-letter stream <namespace>:dead: list what was parked, and replay it.

Two kinds of dead letters share the stream (docs/alerts.md describes the fields):
- parked alerts (`stage` = "notify" with a `notifier`): replay resends them through the same
  claim/mark protocol as the notifier stage, so a story alerted meanwhile is not sent twice;
- entries a stage gave up on (written by streams.Consumer.dead_letter: `stage`, `stream`, `id`,
  `reason`, `at` plus the entry's own fields): replay puts the entry's fields back on `stream`.
A replayed entry is removed from the dead stream; one that fails again stays, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
import structlog
from structlog.contextvars import bound_contextvars

from ingester.alerts import Notifiers
from ingester.config import Config
from ingester.keys import Keys
from ingester.record import Article
from ingester.safehttp import SafeClient

log = structlog.get_logger("ingester.dlq")

STAGE = "dlq"  # the `stage` of this module's log lines
# Fields Consumer.dead_letter adds around the original entry's own fields.
CONSUMER_META = frozenset({"stage", "stream", "id", "reason", "at"})
_PAGE = 100


@dataclass
class DeadItem:
    id: str  # entry id in the dead stream
    stage: str
    reason: str
    at: int | None  # Unix seconds it was parked
    notifier: str | None  # set for parked alerts
    topic: str | None
    kind: str | None  # "alert" or "digest" for parked alerts
    stream: str | None  # the stream the entry came from
    fields: dict[str, str]

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> DeadItem:
        at = fields.get("at", "")
        return cls(entry_id, fields.get("stage", "?"), fields.get("reason", ""),
                   int(at) if at.isdigit() else None, fields.get("notifier"), fields.get("topic"),
                   fields.get("kind"), fields.get("stream"), fields)

    @property
    def is_alert(self) -> bool:
        return self.notifier is not None


async def list_dead(redis: aioredis.Redis, keys: Keys, limit: int = 100) -> list[DeadItem]:
    """The oldest `limit` dead letters."""
    entries = await redis.xrange(keys.dead, count=limit)
    return [DeadItem.from_entry(entry_id, fields) for entry_id, fields in entries]


async def _entries(redis: aioredis.Redis, keys: Keys,
                   ids: Sequence[str] | None) -> list[tuple[str, dict[str, str] | None]]:
    if ids is not None:
        found = []
        for entry_id in ids:
            rows = await redis.xrange(keys.dead, min=entry_id, max=entry_id)
            found.append((entry_id, rows[0][1] if rows else None))
        return found
    everything: list[tuple[str, dict[str, str] | None]] = []
    start = "-"
    while rows := await redis.xrange(keys.dead, min=start, count=_PAGE):
        everything += rows
        start = f"({rows[-1][0]}"
    return everything


async def replay(redis: aioredis.Redis, keys: Keys, config: Config, client: SafeClient,
                 ids: Sequence[str] | None = None, *, attempts: int = 3, backoff: float = 1.0,
                 on_item: Callable[[], None] | None = None) -> tuple[int, int]:
    """Resend parked alerts and re-queue other dead entries; returns (replayed, failed).

    `ids` limits the replay to those dead-stream entries (all of them when None). A send is tried
    `attempts` times (429 waits count as attempts) before the item is left where it is.
    `on_item` is called after each item, replayed or not (a progress bar).
    """
    notifiers = Notifiers(redis, keys, config, client, backoff=backoff)
    replayed = failed = 0
    with bound_contextvars(stage=STAGE):
        for entry_id, fields in await _entries(redis, keys, ids):
            if await _replay_one(redis, keys, notifiers, entry_id, fields, attempts):
                replayed += 1
            else:
                failed += 1
            if on_item:
                on_item()
    return replayed, failed


async def _replay_one(redis: aioredis.Redis, keys: Keys, notifiers: Notifiers, entry_id: str,
                      fields: dict[str, str] | None, attempts: int) -> bool:
    if fields is None:
        log.warning("no such dead letter", id=entry_id)
        return False
    item = DeadItem.from_entry(entry_id, fields)
    return await (_resend(notifiers, item, attempts) if item.is_alert else _requeue(redis, keys, item))


async def _requeue(redis: aioredis.Redis, keys: Keys, item: DeadItem) -> bool:
    """Put a stage's entry back on its stream, and drop the dead letter, in one transaction."""
    if not item.stream:
        log.warning("dead letter without a stream, cannot replay", id=item.id, from_stage=item.stage)
        return False
    original = {k: v for k, v in item.fields.items() if k not in CONSUMER_META}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(item.stream, original)
        pipe.xdel(keys.dead, item.id)
        await pipe.execute()
    log.info("dead letter re-queued", id=item.id, from_stage=item.stage, stream=item.stream)
    return True


async def _resend(notifiers: Notifiers, item: DeadItem, attempts: int) -> bool:
    notifier, topic = item.notifier or "", item.topic or ""
    if notifier not in notifiers.senders:
        log.warning("parked alert for a notifier no longer configured", id=item.id, notifier=notifier)
        return False
    try:
        if item.kind == "digest":
            ok, reason = await _resend_digest(notifiers, notifier, topic, item, attempts)
        else:
            article = Article.loads(item.fields["data"])
            terms = orjson.loads(item.fields.get("terms", "[]"))
            result = await notifiers.alert(notifier, topic, article, terms, f"replay:{item.id}",
                                           attempts=attempts)
            ok, reason = result.outcome in ("sent", "skipped"), result.reason or result.outcome
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        ok, reason = False, f"unreadable dead letter: {type(exc).__name__}"
    if ok:
        await notifiers.redis.xdel(notifiers.keys.dead, item.id)
        log.info("parked alert replayed", id=item.id, notifier=notifier, topic=topic)
    else:
        log.warning("parked alert not replayed", id=item.id, notifier=notifier, topic=topic,
                    reason=notifiers.senders[notifier].scrub(reason))
    return ok


async def _resend_digest(notifiers: Notifiers, notifier: str, topic: str, item: DeadItem,
                         attempts: int) -> tuple[bool, str]:
    articles = [Article(**a) for a in orjson.loads(item.fields["data"])]
    unsent = []
    for article in articles:  # a part that went out on an earlier try is not sent again
        if not await notifiers.redis.exists(notifiers.keys.alerted(notifier, topic, article.cluster_id)):
            unsent.append(article)
    for chunk, body in notifiers.digest_bodies(notifier, topic, unsent):
        result = await notifiers.send_digest_part(notifier, topic, chunk, body, attempts=attempts)
        if result.outcome != "sent":
            return False, result.reason
    return True, ""
