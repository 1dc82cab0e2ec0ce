"""The article stage: one feed entry in, at most one article record out.

entry -> known URL? -> fetch page -> extract (process pool) -> canonical URL -> exact dedup ->
near-duplicate cluster -> topics -> publish (atomic with the ack of the entry).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from ingester import language as languages
from ingester import metrics
from ingester.canonical import article_id, canonical_url, normalize_url, source_host, without_credentials
from ingester.config import Config
from ingester.extract import Extracted, ExtractError, Extractor, describe_text, html_to_text
from ingester.pool import WorkerPool
from ingester.publish import Publisher
from ingester.record import Article, Entry, utc_iso
from ingester.safehttp import FetchError, Response, SafeClient, Timeout
from ingester.streams import Message
from ingester.topics import Doc, TopicSet

log = structlog.get_logger("ingester.articles")

_HTML_TYPES = ("text/html", "application/xhtml+xml", "")
# Answers that say "not now" rather than "no": the entry is retried before the feed's content is used,
# on its PAGE_ATTEMPTS-th attempt at most (with the default reclaim_idle, ~10 minutes after the first).
_PASSING_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
PAGE_ATTEMPTS = 3


class PageUnavailable(Exception):
    """The page could not be had for a passing reason: leave the entry pending, to be tried again."""


@dataclass
class Page:
    """What the article stage learned from the page itself (None fields: it could not)."""

    final_url: str
    extracted: Extracted | None


class ArticleStage:
    def __init__(self, config: Config, client: SafeClient, extractor: Extractor, hasher: WorkerPool,
                 publisher: Publisher, topics: TopicSet) -> None:
        self.config = config
        self.client = client
        self.extractor = extractor
        self.hasher = hasher
        self.publisher = publisher
        self.topics = topics

    async def process(self, entry: Entry, source: Message | None = None, group: str = "") -> str:
        """Handle one entry; returns "new", "duplicate" or "known" (skipped before fetching).

        Raises PageUnavailable when the page failed for a passing reason (a timeout, a 5xx or 429, a
        dropped connection) and the entry has attempts left: the entry stays pending and comes back
        after `articles.reclaim_idle`. Its last attempt (PAGE_ATTEMPTS, or `articles.max_attempts` if
        fewer) uses the feed's content instead; without a `source` message the first one does.
        """
        linked = normalize_url(entry.link)
        if await self.publisher.known(linked):
            if source is not None:  # already written from another feed or URL: just ack
                await self.publisher.redis.xack(source.stream, group, source.id)
            metrics.DUPLICATES.labels(kind="exact").inc()
            return "known"
        attempts = min(PAGE_ATTEMPTS, self.config.articles.max_attempts)
        last_try = source is None or source.deliveries >= attempts
        page = await self._page(entry, last_try)
        article, sig = await self._article(entry, page)
        aliases = [linked, normalize_url(page.final_url)]
        fresh = await self.publisher.publish(article, aliases, signature=sig, source=source, group=group)
        if fresh:
            log.info("article", id=article.id, source=article.source, extraction=article.extraction,
                     topics=article.topics, cluster=article.cluster_id)
        return "new" if fresh else "duplicate"

    async def _page(self, entry: Entry, last_try: bool) -> Page:
        """Fetch and extract the page; a page that cannot be had leaves the feed's own content."""
        try:
            response = await self.client.get(entry.link)  # network.max_bytes
        except FetchError as exc:
            if not last_try and _passing(exc):
                raise PageUnavailable(f"{exc.kind}: {exc.reason}") from None
            log.info("page fetch failed", url=entry.link, kind=exc.kind, reason=exc.reason)
            return Page(entry.link, None)
        if not last_try and response.status in _PASSING_STATUSES:
            raise PageUnavailable(f"HTTP {response.status}")
        if response.status != 200 or not _is_html(response):
            log.info("page not usable", url=entry.link, status=response.status,
                     content_type=response.headers.get("content-type"))
            return Page(response.url, None)
        return Page(response.url, await self._extract(response, entry))

    async def _extract(self, response: Response, entry: Entry) -> Extracted | None:
        """Extract in the pool; what the feed already gave (date, authors) is not searched for."""
        started = time.monotonic()
        try:
            extracted = await self.extractor.extract(response.content, response.url,
                                                     response.headers.get("content-type", ""),
                                                     want_date=entry.published_at is None,
                                                     want_authors=not entry.authors,
                                                     feed_language=entry.language)
        except ExtractError as exc:
            metrics.EXTRACT_FAILURES.labels(reason=type(exc).__name__).inc()
            log.warning("extraction failed", url=response.url, reason=str(exc))
            return None
        metrics.EXTRACT_SECONDS.observe(time.monotonic() - started)
        return extracted

    async def _article(self, entry: Entry, page: Page) -> tuple[Article, bytes | None]:
        """The record (its cluster is chosen when it is published) and its near-dup signature."""
        ex = page.extracted
        use_page = ex is not None and len(ex.text) >= self.config.articles.min_text_length
        text = ex.text if use_page and ex else html_to_text(entry.content or entry.summary)
        canonical = canonical_url(entry.link, page.final_url, ex.canonical if ex else None)
        aid = article_id(canonical)
        sig, language = await self._describe(text, ex if use_page else None,
                                             ex.language if ex else None, entry.language)
        title = (ex.title if ex and ex.title else "") or entry.title
        scores = self.topics.match(Doc(title=title, text=text, language=language))
        article = Article(
            id=aid, url=without_credentials(entry.link), canonical_url=canonical,
            feed_url=without_credentials(entry.feed_url),
            source=source_host(canonical), title=title, text=text,
            summary=html_to_text(entry.summary) if entry.summary else "",
            authors=(ex.authors if ex and ex.authors else entry.authors),
            language=language, published_at=entry.published_at or (ex.published_at if ex else None),
            fetched_at=utc_iso(), extraction="trafilatura" if use_page else "feed",
            cluster_id=aid, topics=sorted(scores), scores={t: round(s, 4) for t, s in scores.items()},
        )
        return article, sig

    async def _describe(self, text: str, page: Extracted | None,
                        *declared: str | None) -> tuple[bytes | None, str | None]:
        """The text's near-dup signature and language: a page's come with its extraction, feed text is
        described in the pool (a page too short to use still declares its language)."""
        if page is not None:
            return page.signature, page.language
        if not text:
            return None, languages.resolve(text, *declared)
        return await self.hasher.run(describe_text, text, *declared)


def _passing(exc: FetchError) -> bool:
    """A timeout (no politeness slot in time included), or a network error (refused, reset, DNS...)."""
    return isinstance(exc, Timeout) or type(exc) is FetchError


def _is_html(response: Response) -> bool:
    return response.headers.get("content-type", "").split(";")[0].strip().lower() in _HTML_TYPES
