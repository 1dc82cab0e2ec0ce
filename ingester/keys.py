"""Every Redis key the daemon uses, in one place.

All keys begin with "<namespace>:". For Redis Cluster, make the namespace a hash tag (e.g. "{ingester}")
so that the multi-key scripts (dedup + stream writes) stay in one slot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def digest(text: str, size: int = 12) -> str:
    """A short stable hex id of `text` (size bytes of BLAKE2b)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=size).hexdigest()


@dataclass(frozen=True)
class Keys:
    namespace: str = "ingester"

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # Streams: the public contract.
    @property
    def articles(self) -> str:
        return self.key("articles")

    @property
    def dead(self) -> str:
        return self.key("dead")

    def topic(self, name: str) -> str:
        return self.key("topic", name)

    # Internal stream of new feed entries, consumed by the article stage.
    @property
    def entries(self) -> str:
        return self.key("entries")

    # Feed registry and schedule.
    @property
    def feeds(self) -> str:
        """Hash feed id -> feed URL."""
        return self.key("feeds")

    def feed(self, feed_id: str) -> str:
        """Hash of one feed's polling state (validators, interval, health)."""
        return self.key("feed", feed_id)

    @property
    def schedule(self) -> str:
        """Sorted set feed id -> next due time (ms); a claimed feed is pushed out by its lease."""
        return self.key("schedule")

    def gate(self, name: str) -> str:
        """Politeness/rate state of one host or one webhook, shared by all daemons."""
        return self.key("gate", name)

    def seen(self, entry_key: str) -> str:
        """Mark of a feed entry already queued (by normalized link or GUID)."""
        return self.key("seen", digest(entry_key))

    # Article dedup and near-duplicate index.
    def doc(self, article_id: str) -> str:
        return self.key("doc", article_id)

    def url(self, url: str) -> str:
        """Alias from any URL an article was reached by to its id."""
        return self.key("url", digest(url))

    def lsh(self, band: int, bucket: str) -> str:
        return self.key("lsh", str(band), bucket)

    def signature(self, handle: str) -> str:
        """Near-dup signature + cluster id, by `neardup.handle(article_id).hex()`."""
        return self.key("sig", handle)

    # Alerts: one per (notifier, topic, story cluster).
    def alerted(self, notifier: str, topic: str, cluster_id: str) -> str:
        """Mark written once the webhook accepted the alert."""
        return self.key("alerted", notifier, topic, cluster_id)

    def alert_claim(self, notifier: str, topic: str, cluster_id: str) -> str:
        """Short-lived claim of the entry being sent, so two copies do not both send."""
        return self.key("alert-claim", notifier, topic, cluster_id)

    def digest(self, notifier: str, topic: str, *, sending: bool = False) -> str:
        """Hash cluster id -> article JSON: stories collected for the next digest (or being sent)."""
        return self.key("digest-sending" if sending else "digest", notifier, topic)

    def digest_lock(self, notifier: str, topic: str) -> str:
        return self.key("digest-lock", notifier, topic)
