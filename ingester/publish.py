"""Write an article once: dedup mark, URL aliases, the articles and topic streams, and the ack of the
entry it came from, in one atomic step, so a crash or a Redis restart neither loses nor doubles it."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from ingester import metrics
from ingester.keys import Keys
from ingester.neardup import LUA, NearDupIndex
from ingester.record import Article
from ingester.streams import Message

# KEYS: doc mark, articles stream, source stream, aliases..., topic streams..., then with a signature the
#       near-duplicate index's keys (NearDupIndex.script_parts).
# ARGV: ttl, id, record, group, entry id, number of aliases, number of topics, then the index's arguments.
_PUBLISH = LUA + """
local ttl, id, record = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local group, entry = ARGV[4], ARGV[5]
local n_alias, n_topic = tonumber(ARGV[6]), tonumber(ARGV[7])
local near = 4 + n_alias + n_topic  -- the signature key, when there is one
local cluster = id
local fresh = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ttl)
for i = 4, 3 + n_alias do
  redis.call('SET', KEYS[i], id, 'EX', ttl)
end
if fresh then
  if #KEYS >= near then
    local bands = #KEYS - near
    local buckets, tags, members = {}, {}, {}
    for b = 1, bands do
      buckets[b], tags[b], members[b] = KEYS[near + b], ARGV[11 + b], ARGV[11 + bands + b]
    end
    cluster = nearest(buckets, tags, ARGV[8], ARGV[9], tonumber(ARGV[10])) or id
    index(KEYS[near], ARGV[8] .. cluster, buckets, members, ttl, tonumber(ARGV[11]))
    if cluster ~= id then  -- the record was serialised as its own cluster
      local field = '"cluster_id":"' .. id .. '"'
      local s, e = record:find(field, 1, true)
      record = record:sub(1, s - 1) .. '"cluster_id":"' .. cluster .. '"' .. record:sub(e + 1)
    end
  end
  redis.call('XADD', KEYS[2], '*', 'data', record)
  for i = 4 + n_alias, 3 + n_alias + n_topic do
    redis.call('XADD', KEYS[i], '*', 'data', record)
  end
end
if entry ~= '' then
  redis.call('XACK', KEYS[3], group, entry)
end
return {fresh and 1 or 0, cluster}
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

        With a `signature`, the article first joins the cluster of its nearest indexed copy (in the same
        script, so two copies written at the same moment cannot both start a cluster).
        `aliases` are the URLs it was reached by (so later entries for them skip the fetch);
        `source` is the entry it came from, acknowledged in the same step.
        """
        aliases = list(dict.fromkeys(aliases))
        keys: list[str] = [self.keys.doc(article.id), self.keys.articles,
                           source.stream if source else self.keys.entries,
                           *(self.keys.url(u) for u in aliases),
                           *(self.keys.topic(t) for t in article.topics)]
        args: list[str | bytes | float] = [self.retention, article.id, article.dumps(), group,
                                           source.id if source else "", len(aliases), len(article.topics)]
        if self.near is not None and signature is not None:
            near_keys, near_args = self.near.script_parts(article.id, signature)
            keys, args = keys + near_keys, args + near_args
        fresh, cluster = await self._script(keys=keys, args=args)
        article.cluster_id = cluster if isinstance(cluster, str) else cluster.decode()
        self._count(article, bool(fresh))
        return bool(fresh)

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
