"""Write an article once: dedup mark, URL aliases, the articles and topic streams, and the ack of the
entry it came from, in one atomic step, so a crash or a Redis restart neither loses nor doubles it."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from ingester import metrics
from ingester.keys import Keys
from ingester.neardup import NearDupIndex
from ingester.record import Article
from ingester.streams import Message

# KEYS: doc mark, articles stream, source stream, aliases..., topic streams...
# ARGV: ttl, id, record, group, entry id, number of aliases
_PUBLISH = """
local ttl, id, record = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local group, entry, n = ARGV[4], ARGV[5], tonumber(ARGV[6])
local fresh = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ttl)
for i = 4, 3 + n do
  redis.call('SET', KEYS[i], id, 'EX', ttl)
end
if fresh then
  redis.call('XADD', KEYS[2], '*', 'data', record)
  for i = 4 + n, #KEYS do
    redis.call('XADD', KEYS[i], '*', 'data', record)
  end
end
if entry ~= '' then
  redis.call('XACK', KEYS[3], group, entry)
end
return fresh and 1 or 0
"""


class Publisher:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, retention: float,
                 near: NearDupIndex | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.retention = int(retention)
        self.near = near
        self._script = redis.register_script(_PUBLISH)

    async def known(self, url: str) -> str | None:
        """The id of the article already written from this URL, if any."""
        found = await self.redis.get(self.keys.url(url))
        return str(found) if found else None

    async def publish(self, article: Article, aliases: Sequence[str], *, signature: bytes | None = None,
                      source: Message | None = None, group: str = "") -> bool:
        """Write `article` unless its id is already written; True when it was new.

        `aliases` are the URLs it was reached by (so later entries for them skip the fetch);
        `source` is the entry it came from, acknowledged in the same transaction.
        """
        keys = [self.keys.doc(article.id), self.keys.articles,
                source.stream if source else self.keys.entries,
                *(self.keys.url(u) for u in dict.fromkeys(aliases)),
                *(self.keys.topic(t) for t in article.topics)]
        args = [self.retention, article.id, article.dumps(), group, source.id if source else "",
                len(dict.fromkeys(aliases))]
        async with self.redis.pipeline(transaction=True) as pipe:
            await self._script(keys=keys, args=args, client=pipe)
            if self.near is not None and signature is not None:
                self.near.add(pipe, article.id, article.cluster_id, signature)
            results = await pipe.execute()
        fresh = bool(results[0])
        if fresh:
            metrics.ARTICLES.labels(extraction=article.extraction).inc()
            for topic in article.topics:
                metrics.MATCHES.labels(topic=topic).inc()
        else:
            metrics.DUPLICATES.labels(kind="exact").inc()
        return fresh
