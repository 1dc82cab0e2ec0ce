"""Feed bytes -> entries: RSS 0.9x/1.0/2.0 and Atom (feedparser), JSON Feed (orjson), sitemaps (lxml).

`parse_feed` is pure, synchronous and picklable: the poller runs it in a process pool, not on the event loop.
It raises nothing but FeedParseError, whatever the bytes.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import feedparser
import lxml.etree  # type: ignore[import-untyped, unused-ignore]
import lxml.html  # type: ignore[import-untyped, unused-ignore]
import orjson
from courlan import normalize_url
from feedparser.datetimes import _parse_date as feedparser_date  # its tolerant multi-format date parser

from ingester.language import code as language_code
from ingester.record import Entry, published_iso

_UPDATE_PERIODS = {"hourly": 3600.0, "daily": 86400.0, "weekly": 604800.0, "monthly": 2592000.0,
                   "yearly": 31536000.0}
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
# The root element's local name: the XML declaration and DOCTYPE do not match, comments are cut first.
_ROOT = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]*)")
_COMMENT = re.compile(rb"<!--.*?(?:-->|$)", re.DOTALL)
_SNIFF_BYTES = 4096
_SPACES = re.compile(r"\s+")
# DTD entity declarations, quoted values skipped whole; the "safe" ones are short literals or one
# character reference (feedparser's own rule, plus a length cap), so nothing can nest or amplify.
_ENTITY_DECL = re.compile(rb"""<!ENTITY(?:"[^"]*"|'[^']*'|[^>"'])*>""")
_SAFE_ENTITY = re.compile(
    rb"""<!ENTITY\s+\w+\s+(?:"(?:&#\w+;|[^&%"<]{0,64})"|'(?:&#\w+;|[^&%'<]{0,64})')\s*>"""
)


@dataclass
class ParsedFeed:
    title: str | None
    entries: list[Entry]  # feed_url = the url argument; link absolute http(s) or "" (then guid is set)
    ttl: float | None  # seconds, from RSS <ttl> (minutes) or sy:updatePeriod/sy:updateFrequency
    warning: str | None  # why the parser complained while still finding a feed (feedparser's bozo)


class FeedParseError(ValueError):
    """Nothing usable in the document; the message says why."""


def parse_feed(content: bytes, url: str, content_type: str = "") -> ParsedFeed:
    """Parse a feed body already decoded from its transfer/content encoding (gzip, br)."""
    try:
        return _dispatch(content, url, content_type)
    except FeedParseError:
        raise
    except Exception as exc:  # the contract with the pool: a hostile document is a parse error, not a crash
        raise FeedParseError(f"parser failure: {type(exc).__name__}: {exc}") from exc


def entry_key(entry: Entry) -> str:
    """The dedup key: the normalized link, or "guid:<feed_url>:<guid>" for an entry without a link."""
    if entry.link:
        return normalize_link(entry.link)
    return f"guid:{entry.feed_url}:{entry.guid or ''}"


def normalize_link(link: str) -> str:
    """Scheme and host lowercased, default port, fragment and tracking parameters (utm_*, fbclid…) dropped."""
    link = urldefrag(link.strip())[0]
    try:
        return str(normalize_url(link))
    except ValueError:  # a URL urllib cannot split (e.g. a broken IPv6 literal): keep it as given
        return link


def _dispatch(content: bytes, url: str, content_type: str) -> ParsedFeed:
    head = _strip_bom(content[:_SNIFF_BYTES]).lstrip()
    if not head:
        raise FeedParseError("empty document")
    if head.startswith((b"{", b"[")) or ("json" in content_type.lower() and not head.startswith(b"<")):
        return _parse_json_feed(content, url)
    content = _defuse_entities(content)
    if _root_name(head) in ("urlset", "sitemapindex"):
        return _parse_sitemap(content, url)
    return _parse_xml_feed(content, url, content_type)


def _defuse_entities(content: bytes) -> bytes:
    """Drop entity declarations that could nest or amplify (billion laughs) before any parser sees them.

    feedparser strips them only at the start of a line, and expat expands up to its 8 MiB amplification
    threshold before it stops: a one-line bomb would cost ~0.5 s and megabytes per document.
    """
    if b"<!ENTITY" in content:
        # Safe ones go on a line of their own, as does the DOCTYPE: feedparser only finds them there.
        content = _ENTITY_DECL.sub(lambda m: b"\n" + m[0] if _SAFE_ENTITY.fullmatch(m[0]) else b"", content)
        return re.sub(rb"(?<=.)<!DOCTYPE", b"\n<!DOCTYPE", content, count=1)
    if b"\x00" in content[:4] and b"<!ENTITY" in content.replace(b"\x00", b""):
        # UTF-16/32, where the bytes pattern cannot see them; no real feed declares entities there.
        raise FeedParseError("refused: DTD entity declarations in a UTF-16/32 document")
    return content


def _strip_bom(data: bytes) -> bytes:
    for bom in _BOMS:
        if data.startswith(bom):
            return data[len(bom):]
    return data


def _root_name(head: bytes) -> str | None:
    m = _ROOT.search(_COMMENT.sub(b"", head))
    return m.group(1).decode("ascii", "replace").lower() if m else None


# --- RSS / Atom via feedparser ---------------------------------------------------------------------------


def _parse_xml_feed(content: bytes, url: str, content_type: str) -> ParsedFeed:
    # BytesIO, never bytes or str: feedparser would fetch a URL or open a local path given as a string.
    # Sanitizing and resolving URIs inside HTML is skipped: later stages only want the text.
    parsed = feedparser.parse(
        io.BytesIO(content),
        response_headers={"content-type": content_type or "application/xml", "content-location": url},
        sanitize_html=False,
        resolve_relative_uris=False,
    )
    problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
    language = language_code(parsed.feed.get("language"))
    entries = [e for raw in parsed.entries if (e := _feedparser_entry(raw, url, language)) is not None]
    # A broken document with nothing usable (often a truncated body) is an error; a well-formed feed
    # whose items lack links is merely empty. Encoding/content-type notices do not make a feed broken.
    broken = problem is not None and not isinstance(problem, feedparser.ThingsNobodyCaresAboutButMe)
    if (not entries and broken) or (not parsed.entries and not parsed.get("version")):
        raise FeedParseError(_why_unusable(content, problem))
    notes = [f"{type(problem).__name__}: {problem}"] if problem is not None else []
    feed = parsed.feed
    return ParsedFeed(
        title=_text(feed.get("title"), feed.get("title_detail")),
        entries=entries,
        ttl=_ttl(feed),
        warning=_warning(notes, len(parsed.entries) - len(entries)),
    )


def _warning(notes: list[str], dropped: int) -> str | None:
    if dropped:
        notes.append(f"dropped {dropped} entries without an http(s) link or a guid")
    return "; ".join(notes) or None


def _why_unusable(content: bytes, problem: object) -> str:
    if re.search(rb"<html[\s>]|<!doctype\s+html", content[:_SNIFF_BYTES], re.IGNORECASE):
        return "not a feed: HTML page"
    if problem is not None:
        return f"malformed XML: {problem}"
    root = _root_name(_strip_bom(content[:_SNIFF_BYTES]))
    return f"not a feed: unrecognized document (root element <{root}>)" if root else "not a feed"


def _feedparser_entry(raw: Any, feed_url: str, feed_language: str | None) -> Entry | None:
    link = _entry_link(raw, feed_url)
    guid = raw.get("id") or None
    if not link and not guid:
        return None
    content = raw.get("content") or []
    return Entry(
        feed_url=feed_url,
        link=link,
        guid=str(guid) if guid else None,
        title=_text(raw.get("title"), raw.get("title_detail")) or "",
        summary=raw.get("summary") or "",
        content=_best_content(content),
        published_at=_struct_iso(_first_date(raw)),
        authors=_authors(raw),
        language=_entry_language(raw, content) or feed_language,
    )


def _entry_language(raw: Any, content: list[Any]) -> str | None:
    """An item's dc:language, or an Atom entry's xml:lang, which feedparser gives its text parts
    (RSS <language> is the feed's)."""
    details = [*content, raw.get("summary_detail"), raw.get("title_detail")]
    tags = [raw.get("language"), *(d.get("language") for d in details if isinstance(d, dict))]
    return next((c for c in map(language_code, tags) if c), None)


def _entry_link(raw: Any, feed_url: str) -> str:
    """The first http(s) rel=alternate link, else feedparser's `link` (feedparser 6.0 lets a later
    rel=enclosure link given as element text override the alternate one)."""
    for candidate in raw.get("links") or []:
        alternate = isinstance(candidate, dict) and candidate.get("rel", "alternate") == "alternate"
        if alternate and (link := _absolute_http(candidate.get("href"), feed_url)):
            return link
    return _absolute_http(raw.get("link"), feed_url)


def _first_date(raw: Any) -> time.struct_time | None:
    # dict.get: FeedParserDict.get("updated_parsed") falls back to published_parsed with a DeprecationWarning
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        if value := dict.get(raw, key):
            return value  # type: ignore[no-any-return]
    return None


def _best_content(content: list[Any]) -> str:
    """content:encoded / atom:content: the HTML version when several are given."""
    for item in content:
        if "html" in (item.get("type") or ""):
            return str(item.get("value") or "")
    return str(content[0].get("value") or "") if content else ""


def _authors(raw: Any) -> list[str]:
    names = [str(a.get("name") or "").strip() for a in raw.get("authors") or [] if isinstance(a, dict)]
    if not any(names) and raw.get("author"):
        names = [str(raw["author"]).strip()]
    return list(dict.fromkeys(n for n in names if n))


def _text(value: object, detail: Any = None) -> str | None:
    """Plain text: tags stripped and entities unescaped when the feed says (or feedparser saw) HTML."""
    if not value:
        return None
    text = str(value)
    kind = (detail or {}).get("type", "") if isinstance(detail, dict) else ""
    if "html" in kind and ("<" in text or "&" in text):
        text = _html_text(text)
    return _SPACES.sub(" ", text).strip() or None


def _html_text(fragment: str) -> str:
    try:
        return str(lxml.html.fragment_fromstring(fragment, create_parent="div").text_content())
    except (lxml.etree.ParserError, ValueError):
        return re.sub(r"<[^>]*>", " ", fragment)


def _struct_iso(value: time.struct_time | None) -> str | None:
    """feedparser's *_parsed struct_time, which is UTC."""
    if not value:
        return None
    try:
        return published_iso(datetime(*value[:6], tzinfo=UTC))
    except (ValueError, TypeError, OverflowError):
        return None


def _ttl(feed: Any) -> float | None:
    """The larger of RSS <ttl> and sy:updatePeriod/updateFrequency: both are the publisher's polling floor."""
    floors = []
    if (minutes := _positive(feed.get("ttl"))) is not None:
        floors.append(minutes * 60.0)
    period = _UPDATE_PERIODS.get(str(feed.get("sy_updateperiod") or "").strip().lower())
    if period is not None:
        floors.append(period / (_positive(feed.get("sy_updatefrequency")) or 1.0))
    return max(floors) if floors else None


def _positive(value: object) -> float | None:
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if 0 < number < float("inf") else None


def _absolute_http(link: object, base: str) -> str:
    """The link made absolute against the feed URL; "" unless it is http(s) with a host."""
    if not isinstance(link, str) or not link.strip():
        return ""
    try:
        absolute = urljoin(base, link.strip())
        parts = urlsplit(absolute)
    except ValueError:
        return ""
    return absolute if parts.scheme in ("http", "https") and parts.hostname else ""


# --- JSON Feed -------------------------------------------------------------------------------------------


def _parse_json_feed(content: bytes, url: str) -> ParsedFeed:
    try:
        doc = orjson.loads(_json_bytes(content))
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeedParseError(f"malformed JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise FeedParseError("not a feed: JSON without a JSON Feed items list")
    language = language_code(_string(doc.get("language")))
    items = [item for item in doc["items"] if isinstance(item, dict)]
    entries = [e for item in items if (e := _json_entry(item, url, language)) is not None]
    warning = _warning([], len(doc["items"]) - len(entries))
    return ParsedFeed(title=_plain(doc.get("title")), entries=entries, ttl=None, warning=warning)


def _json_bytes(content: bytes) -> bytes:
    """orjson reads UTF-8 only: drop a UTF-8 BOM, transcode UTF-16 (which has one)."""
    if content.startswith(b"\xef\xbb\xbf"):
        return content[3:]
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        return content.decode("utf-16").encode("utf-8")
    return content


def _json_entry(item: dict[str, Any], feed_url: str, feed_language: str | None) -> Entry | None:
    link = _absolute_http(item.get("url") or item.get("external_url"), feed_url)
    raw_id = item.get("id")
    guid = str(raw_id) if isinstance(raw_id, str | int | float) and str(raw_id) else None
    if not link and not guid:
        return None
    return Entry(
        feed_url=feed_url,
        link=link,
        guid=guid,
        title=_plain(item.get("title")) or "",
        summary=_string(item.get("summary")),
        content=_string(item.get("content_html")) or _string(item.get("content_text")),
        published_at=_date_iso(item.get("date_published") or item.get("date_modified")),
        authors=_json_authors(item),
        language=language_code(_string(item.get("language"))) or feed_language,  # JSON Feed 1.1
    )


def _json_authors(item: dict[str, Any]) -> list[str]:
    """JSON Feed 1.1 `authors` (a list), or 1.0 `author` (one object)."""
    people = item.get("authors")
    if not isinstance(people, list):
        people = [item.get("author")]
    names = (str(p.get("name")).strip() for p in people if isinstance(p, dict) and p.get("name"))
    return list(dict.fromkeys(n for n in names if n))


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _plain(value: object) -> str | None:
    return (_SPACES.sub(" ", value).strip() or None) if isinstance(value, str) else None


def _date_iso(value: object) -> str | None:
    """ISO 8601 (RFC 3339) first, then feedparser's tolerant parser (RFC 822 and friends); else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return _struct_iso(feedparser_date(value.strip()))
    return published_iso(moment)


# --- sitemaps --------------------------------------------------------------------------------------------


def _safe_xml_parser() -> lxml.etree.XMLParser:
    # No entity expansion (billion laughs), no DTD or network access, no huge trees.
    return lxml.etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)


def _parse_sitemap(content: bytes, url: str) -> ParsedFeed:
    try:
        root = lxml.etree.fromstring(content, parser=_safe_xml_parser())
    except lxml.etree.XMLSyntaxError as exc:
        raise FeedParseError(f"malformed XML: {exc}") from exc
    if lxml.etree.QName(root).localname == "sitemapindex":
        raise FeedParseError("not a feed: a sitemap index (it lists sitemaps, not articles)")
    entries = [e for node in root.iter("{*}url") if (e := _sitemap_entry(node, url)) is not None]
    return ParsedFeed(title=None, entries=entries, ttl=None, warning=None)


def _sitemap_entry(node: lxml.etree._Element, feed_url: str) -> Entry | None:
    link = _absolute_http(node.findtext("{*}loc"), feed_url)
    if not link:
        return None
    news = node.find("{*}news")
    title = news.findtext("{*}title") if news is not None else None
    published = news.findtext("{*}publication_date") if news is not None else None
    language = news.findtext("{*}publication/{*}language") if news is not None else None
    return Entry(
        feed_url=feed_url,
        link=link,
        title=_plain(title) or "",
        published_at=_date_iso(published or node.findtext("{*}lastmod")),
        language=language_code(language),
    )
