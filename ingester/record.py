"""The two records that flow between stages: a feed entry (internal) and an article (schema 1, public)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

SCHEMA_VERSION = 1


EARLIEST_PUBLISHED = datetime(1990, 1, 1, tzinfo=UTC)  # before the web: a placeholder, not a date


def utc_iso(moment: datetime | None = None) -> str:
    """ISO 8601 UTC with a Z, to the second: 2025-03-15T10:04:05Z (a four-digit year, always)."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def published_iso(moment: datetime) -> str | None:
    """A publication date as utc_iso, or None where it cannot be one: before EARLIEST_PUBLISHED (Hugo's
    0001-01-01 placeholder, Unix epoch zero) or more than a day ahead of now (a wrong time zone or a
    scheduled event); a naive moment is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if EARLIEST_PUBLISHED <= moment <= datetime.now(UTC) + timedelta(days=1):
        return utc_iso(moment)
    return None


@dataclass
class Entry:
    """One new feed item, as queued on <namespace>:entries for the article stage."""

    feed_url: str
    link: str  # absolute URL, as the feed links it
    guid: str | None = None
    title: str = ""
    summary: str = ""  # HTML or text, as the feed gives it
    content: str = ""  # content:encoded / atom content / JSON Feed content_html, as given
    published_at: str | None = None  # ISO 8601 UTC
    authors: list[str] = field(default_factory=list)
    language: str | None = None  # ISO 639-1, as the feed declares it (for the item, else the whole feed)

    def dumps(self) -> str:
        return orjson.dumps(self).decode()  # orjson serialises dataclasses field by field, natively

    @classmethod
    def loads(cls, data: str | bytes) -> Entry:
        raw = orjson.loads(data)
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


@dataclass
class Article:
    """The public record, field `data` of <namespace>:articles and <namespace>:topic:<name> entries.

    docs/record.schema.json is its JSON Schema.
    """

    id: str  # derived from canonical_url
    url: str  # as linked by the feed
    canonical_url: str
    feed_url: str
    source: str  # site host
    title: str
    text: str
    summary: str
    authors: list[str]
    language: str | None
    published_at: str | None
    fetched_at: str
    extraction: str  # "trafilatura" or "feed"
    cluster_id: str  # the id of the first copy of this story (its own id when it is the first)
    topics: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        return orjson.dumps(self).decode()

    @classmethod
    def loads(cls, data: str | bytes) -> Article:
        raw = orjson.loads(data)
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})
