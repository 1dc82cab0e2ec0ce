"""Article extraction with trafilatura, run in a pool of worker processes.

Each page runs in a pebble worker under a per-document timeout: a page that hangs or explodes the parser
is cut and its worker replaced, and the event loop only awaits a future. Workers are capped in memory
(RLIMIT_AS) and warmed up (dateparser compiles its locale regexes on first use, a multi-second stall).

Options were chosen by measuring on the 990 pages of ../shared/pages/trafilatura-eval/ with
bench/extract_bench.py: include_comments=False scores F1 0.9227, against 0.9185 for plain
trafilatura.extract and 0.9206 for bare_extraction's defaults; favor_precision (0.918), favor_recall
(0.917), no tables (0.918), deduplicate (0.919; it also drops repeated documents across pages) and
fast (0.917) all score lower. Fast mode first, and the full cascade only where its text comes out under
COMPARE_BELOW characters (12 % of those pages), scores 0.9226 in 86 % of the full cascade's time.
"""

from __future__ import annotations

import logging
import re
import resource
from contextlib import suppress
from copy import copy, deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urljoin

import lxml.etree  # type: ignore[import-untyped, unused-ignore]
import lxml.html  # type: ignore[import-untyped, unused-ignore]
import trafilatura
from htmldate import find_date
from trafilatura import metadata as tm
from trafilatura.htmlprocessing import prune_unwanted_nodes
from trafilatura.json_metadata import normalize_authors
from trafilatura.settings import Document, set_date_params
from trafilatura.settings import Extractor as Options
from trafilatura.xpaths import AUTHOR_DISCARD_XPATHS, AUTHOR_XPATHS

from ingester import language as languages
from ingester import speedups
from ingester.neardup import signature
from ingester.pool import TaskFailed, TaskTimeout, WorkerPool
from ingester.record import published_iso
from ingester.safehttp import decode_html

MAX_HTML_CHARS = 5_000_000  # longer pages are cut here; lxml recovers from the truncated markup
MAX_TEXT_CHARS = 300_000  # an "article" longer than this is not one we want whole in a stream record
MEMORY_LIMIT = 2 * 1024**3  # address space per worker process
# Metadata comes from _metadata(), which runs only the steps a news record needs.
# The comparison with readability and justext (trafilatura's default, 30 % of its time) changes
# the text only where trafilatura's own extractor finds little: it runs on pages under this length.
COMPARE_BELOW = 1000  # characters
# Built once per mode (reading trafilatura's settings costs ~0.5 ms), copied for each page's URL.
_OPTIONS = {fast: Options(fast=fast, comments=False, with_metadata=False, output_format="python")
            for fast in (True, False)}

_QUIET_LOGGERS = ("trafilatura", "htmldate", "courlan", "charset_normalizer", "dateparser", "justext")
# Polish month name: htmldate hands it to dateparser, which then loads all its locales (the slow path).
_WARMUP_HTML = (
    "<html><head><title>Warm-up</title></head><body><article>"
    "<p class='date'>Opublikowano: 3 marca 2021</p>"
    f"<p>{'Some text for the extractor to keep. ' * 12}</p></article></body></html>"
)


@dataclass
class Extracted:
    title: str
    text: str
    authors: list[str] = field(default_factory=list)
    published_at: str | None = None  # ISO 8601 UTC, "YYYY-MM-DDTHH:MM:SSZ"
    language: str | None = None  # ISO 639-1, lowercase (ingester.language: the text's, else declared)
    canonical: str | None = None  # <link rel=canonical> or og:url as found, made absolute
    sitename: str | None = None
    signature: bytes | None = None  # near-duplicate fingerprint of `text` (ingester.neardup)


# The worker failed on a page: it crashed, ran out of memory, raised, or (ExtractTimeout) ran past the
# per-document timeout and was replaced.
ExtractError = TaskFailed
ExtractTimeout = TaskTimeout


# ---------------------------------------------------------------- in the worker process


def extract_sync(html: str | bytes, url: str, content_type: str = "", want_date: bool = True,
                 want_authors: bool = True, feed_language: str | None = None) -> Extracted | None:
    """Extract one page, and fingerprint its text; None when it has no main text (or is not HTML).

    want_date/want_authors=False skip the costly searches for a date or a byline the page does not
    declare in its metadata (because the feed gave them). feed_language is the feed's declaration,
    which comes after the page's (ingester.language).

    Bytes (a fetched body, already inflated within the size cap) are decoded here, in the worker:
    trafilatura itself only ever gets text.
    """
    if isinstance(html, bytes):
        html = decode_html(html, content_type)
    if not html or _looks_binary(html):
        return None
    try:
        tree = trafilatura.load_html(html[:MAX_HTML_CHARS])
        if tree is None:
            return None
        page_language, canonical, meta_date = _page_meta(tree, url)
        text = _main_text(tree, url)[:MAX_TEXT_CHARS]
        if not text:
            return None
        meta = _metadata(tree, url, find_day=want_date and not meta_date, find_byline=want_authors)
    except (RecursionError, ValueError, lxml.etree.LxmlError):
        return None
    return Extracted(
        title=(meta.title or "").strip(),
        text=text,
        authors=_authors(meta.author),
        published_at=meta_date or _day_iso(meta.date),
        language=languages.resolve(text, page_language, feed_language),
        canonical=canonical,
        sitename=meta.sitename or None,
        signature=signature(text),
    )


def describe_text(text: str, *declared: str | None) -> tuple[bytes | None, str | None]:
    """Feed text's near-duplicate signature and language (CPU work, for a pool)."""
    return signature(text), languages.resolve(text, *declared)


def _main_text(tree: lxml.html.HtmlElement, url: str) -> str:
    """trafilatura's main text: its own extractor first, then, only when that comes out short, again
    with the comparison against readability and justext that its default mode runs on every page."""
    text = _body_text(tree, url, fast=True)
    if len(text) < COMPARE_BELOW:
        text = _body_text(tree, url, fast=False)
    return text


def _body_text(tree: lxml.html.HtmlElement, url: str, *, fast: bool) -> str:
    options = copy(_OPTIONS[fast])
    options.url = options.source = url
    document = trafilatura.bare_extraction(tree, options=options)
    return ((document.text if isinstance(document, Document) else None) or "").strip()


def _metadata(tree: lxml.html.HtmlElement, url: str, *, find_day: bool, find_byline: bool) -> Document:
    """trafilatura's metadata steps that a news record uses, in its order: meta tags, then JSON-LD,
    then the page's own headline and byline. Categories, tags and licence are not searched for; the
    byline search (a copy of the whole tree) and htmldate run only when the feed did not give an
    author or a date: together they are most of trafilatura's metadata time on news pages."""
    meta = tm.examine_meta(tree)
    if meta.author and " " not in meta.author:  # a handle, not a name (trafilatura's rule)
        meta.author = None
    with suppress(Exception):  # trafilatura guards this step the same way
        meta = tm.extract_meta_json(tree, meta)
    meta.title = meta.title or tm.extract_title(tree)
    if find_byline and not meta.author:
        meta.author = _byline(tree)
    meta.sitename = meta.sitename or tm.extract_sitename(tree)
    meta.date = find_date(tree, url=url, **set_date_params(True)) if find_day else None
    return meta


def _byline(tree: lxml.html.HtmlElement) -> str | None:
    """trafilatura's byline search (metadata.extract_author), without its copy of the whole tree on
    pages where no byline selector matches at all: pruning the copy can only remove candidates."""
    first = next((k for k, selector in enumerate(AUTHOR_XPATHS) if selector(tree)), None)
    if first is None:
        return None
    subtree = prune_unwanted_nodes(deepcopy(tree), AUTHOR_DISCARD_XPATHS)
    author = tm.extract_metainfo(subtree, AUTHOR_XPATHS[first:], len_limit=120)
    return normalize_authors(None, author) if author else None


def _looks_binary(html: str) -> bool:
    """Compressed or binary bytes decoded as text: a magic number, or control characters real HTML lacks."""
    head = html[:4096]
    start = head.lstrip(" \t\r\n\f\ufeff")[:1]  # not str.lstrip(): it takes 0x1c-0x1f for spaces
    if start and start < " ":  # gzip begins with 0x1f; no markup begins with a control character
        return True
    bad = sum(1 for c in head if (c < " " and c not in "\t\n\r\f") or c == "\ufffd")
    return bad > len(head) * 0.02


def _page_meta(tree: lxml.html.HtmlElement, url: str) -> tuple[str | None, str | None, str | None]:
    """Declared language, canonical URL and a full publication timestamp, from the root and <head>."""
    language = languages.code(tree.get("lang") or tree.get("xml:lang"))
    canonical = og_url = published = None
    head = tree.find("head")
    for el in head.iter("link", "meta") if head is not None else ():
        if el.tag == "link":
            if canonical is None and "canonical" in (el.get("rel") or "").lower().split():
                canonical = _absolute(el.get("href"), url)
            continue
        key = (el.get("property") or el.get("name") or el.get("itemprop") or "").lower()
        content = el.get("content")
        if key == "og:url" and og_url is None:
            og_url = _absolute(content, url)
        elif key in ("og:locale", "language") or (el.get("http-equiv") or "").lower() == "content-language":
            language = language or languages.code(content)
        elif key in ("article:published_time", "datepublished", "og:published_time") and published is None:
            published = _timestamp(content)
    return language, canonical or og_url, published


def _absolute(href: str | None, base: str) -> str | None:
    href = (href or "").strip()
    if not href:
        return None
    try:
        return urljoin(base, href)
    except ValueError:
        return None


def _timestamp(value: str | None) -> str | None:
    """An ISO 8601 timestamp with a time of day, as UTC; None if absent, date-only or implausible."""
    if not value or "T" not in value:
        return None
    try:
        return published_iso(datetime.fromisoformat(value.strip()))
    except ValueError:
        return None


def _day_iso(value: str | None) -> str | None:
    """trafilatura's date (YYYY-MM-DD, from htmldate) as midnight UTC."""
    try:
        return published_iso(datetime.strptime(value or "", "%Y-%m-%d"))
    except ValueError:
        return None


def _authors(value: str | None) -> list[str]:
    return [a.strip() for a in (value or "").split(";") if a.strip()]


def warm_up() -> None:
    """Silence library logging, speed up trafilatura (ingester.speedups), and pay dateparser's warm-up
    and the language model's loading now.

    The pools' forkserver runs this once (ingester.extract_preload), so workers forked from it start
    warm, a replacement for a worker cut at its timeout included; each worker runs it again, which
    then costs a few milliseconds (or the whole warm-up, where the forkserver was started without it).
    """
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    speedups.apply()
    languages.warm_up()
    with suppress(Exception):  # a failed warm-up only costs time later
        extract_sync(_WARMUP_HTML, "https://warmup.invalid/warm-up")


def _init_worker(memory_limit: int) -> None:
    """Cap the worker's memory, and make sure it is warm."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = memory_limit if hard == resource.RLIM_INFINITY else min(memory_limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    warm_up()


# ---------------------------------------------------------------- in the daemon


class Extractor:
    """A process pool of extractors (see ingester.pool); `extract` never blocks the event loop."""

    def __init__(self, workers: int | None = None, timeout: float = 30.0,
                 memory_limit: int = MEMORY_LIMIT) -> None:
        self._pool = WorkerPool(workers, timeout=timeout, initializer=_init_worker,
                                initargs=(memory_limit,), preload=["ingester.extract_preload"])
        self.workers, self.timeout = self._pool.workers, timeout

    async def start(self) -> None:
        """Start the workers (warm) now, rather than with the first page."""
        await self._pool.start()

    async def extract(self, html: str | bytes, url: str, content_type: str = "", *,
                      want_date: bool = True, want_authors: bool = True,
                      feed_language: str | None = None) -> Extracted | None:
        """The page's article, or None when it has no main text.

        Raises ExtractTimeout past the per-document timeout, ExtractError when the worker died or failed.
        Cancelling the call stops the worker running the page.
        """
        try:
            return await self._pool.run(extract_sync, html, url, content_type, want_date, want_authors,
                                        feed_language)
        except TaskFailed:
            raise
        except Exception as exc:  # raised in the worker (MemoryError under the cap, a parser bug...)
            raise ExtractError(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        """Stop the workers (pending pages are cancelled)."""
        self._pool.close()


# ---------------------------------------------------------------- feed HTML


_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure",
    "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section",
    "table", "td", "th", "tr", "ul",
})
_DROP = ("script", "style", "noscript", "template", "iframe", "object", "embed")
_SPACES = re.compile(r"[ \t\f\v\xa0\u200b]+")


def html_to_text(fragment: str) -> str:
    """Plain text of a feed's HTML summary or content: blocks become lines, scripts and styles go."""
    if not fragment or not fragment.strip():
        return ""
    try:
        root = lxml.html.fragment_fromstring(_strip_xml_declaration(fragment), create_parent="div")
    except (lxml.etree.ParserError, ValueError):
        return _squash(fragment)
    for el in list(root.iter(*_DROP)):
        el.drop_tree()
    for el in root.iter(*_BLOCKS):
        el.tail = "\n" + (el.tail or "")
        if el.tag != "br":
            el.text = "\n" + (el.text or "")
    return _squash(root.text_content())


def _strip_xml_declaration(fragment: str) -> str:
    """lxml refuses str input that declares an encoding."""
    return re.sub(r"^\s*<\?xml[^>]*\?>", "", fragment)


def _squash(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)
