"""Write an article once: dedup mark, URL aliases, the articles and topic streams, and the ack of the
entry it came from, in one atomic step, so a crash or a Redis restart neither loses nor doubles it."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import WatchError

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

        With a `signature`, the article joins the cluster of its nearest indexed copy first. The index
        buckets are WATCHed while the cluster is chosen, so two copies written at the same moment
        cannot both start a cluster: the second transaction fails and looks again.
        `aliases` are the URLs it was reached by (so later entries for them skip the fetch);
        `source` is the entry it came from, acknowledged in the same transaction.
        """
        near = self.near if signature is not None else None
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                if near is not None and signature is not None:
                    await pipe.watch(*near.bucket_keys(signature))
                    article.cluster_id = await near.find(signature) or article.id
                pipe.multi()
                await self._script(keys=self._keys(article, aliases, source),
                                   args=self._args(article, aliases, source, group), client=pipe)
                if near is not None and signature is not None:
                    near.add(pipe, article.id, article.cluster_id, signature)
                try:
                    results = await pipe.execute()
                    break
                except WatchError:
                    continue
        fresh = bool(results[0])
        self._count(article, fresh)
        return fresh

    def _keys(self, article: Article, aliases: Sequence[str], source: Message | None) -> list[str]:
        return [self.keys.doc(article.id), self.keys.articles,
                source.stream if source else self.keys.entries,
                *(self.keys.url(u) for u in dict.fromkeys(aliases)),
                *(self.keys.topic(t) for t in article.topics)]

    def _args(self, article: Article, aliases: Sequence[str], source: Message | None,
              group: str) -> list[str | int]:
        return [self.retention, article.id, article.dumps(), group, source.id if source else "",
                len(dict.fromkeys(aliases))]

    @staticmethod
    def _count(article: Article, fresh: bool) -> None:
        if not fresh:
            metrics.DUPLICATES.labels(kind="exact").inc()
            return
        metrics.ARTICLES.labels(extraction=article.extraction).inc()
        if article.cluster_id != article.id:
            metrics.DUPLICATES.labels(kind="near").inc()
        for topic in article.topics:
            metrics.MATCHES.labels(topic=topic).inc()
