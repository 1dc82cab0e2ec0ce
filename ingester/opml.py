"""OPML subscription lists: read (listparser, from bytes only: given a URL string it fetches it) and write."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import listparser
import lxml.etree  # type: ignore[import-untyped, unused-ignore]


@dataclass(frozen=True)
class OpmlFeed:
    url: str
    title: str | None = None
    category: str | None = None  # the parent outlines' titles joined by "/", e.g. "News/World"


class OpmlError(ValueError):
    """Not a readable OPML document; the message says why."""


# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def read_opml(content: bytes) -> list[OpmlFeed]:
    """The http(s) feeds of an OPML document, once per URL, in document order."""
    root = _parse(content)
    # listparser's lenient HTML parser ignores the XML encoding declaration: hand it UTF-8 always.
    result = listparser.parse(lxml.etree.tostring(root, encoding="utf-8", xml_declaration=True))
    feeds = []
    for item in result.feeds:
        url = str(item.get("url") or "").strip()
        if _is_http(url):
            feeds.append(OpmlFeed(url=url, title=item.get("title") or None, category=_category(item)))
    return feeds


def write_opml(feeds: Iterable[OpmlFeed], title: str = "ingester feeds") -> bytes:
    """OPML 2.0, feeds nested in one outline per category path segment (so grouped by category)."""
    root = lxml.etree.Element("opml", version="2.0")
    head = lxml.etree.SubElement(root, "head")
    lxml.etree.SubElement(head, "title").text = _xml_text(title)
    lxml.etree.SubElement(head, "dateCreated").text = format_datetime(datetime.now(UTC), usegmt=True)
    body = lxml.etree.SubElement(root, "body")
    groups: dict[tuple[str, ...], Any] = {(): body}
    for feed in feeds:
        parent = _group(groups, _segments(feed.category))
        name = _xml_text(feed.title or "")  # text is required; "" reads back as no title
        url = _xml_text(feed.url)
        lxml.etree.SubElement(parent, "outline", type="rss", text=name, title=name, xmlUrl=url)
    return bytes(lxml.etree.tostring(root, encoding="UTF-8", xml_declaration=True, pretty_print=True))


def _parse(content: bytes) -> Any:
    if not content.strip():
        raise OpmlError("empty document")
    # No entity expansion, DTD or network access, no huge trees: the file may come from anywhere.
    parser = lxml.etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    try:
        root = lxml.etree.fromstring(content, parser=parser)
    except lxml.etree.XMLSyntaxError as exc:
        raise OpmlError(f"malformed OPML: {exc}") from exc
    if not isinstance(root.tag, str) or lxml.etree.QName(root).localname.lower() != "opml":
        raise OpmlError(f"not OPML: the root element is <{root.tag}>")
    return root


def _category(item: Any) -> str | None:
    # listparser lists the `category` attribute's paths first, then the enclosing outlines' titles
    # (with "" for untitled or feed-bearing ancestors); the last one is where the outline sits.
    paths = [[part for part in path if part] for path in item.get("categories") or []]
    return "/".join(paths[-1]) if paths and paths[-1] else None


def _is_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _segments(category: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (category or "").split("/") if s.strip())


def _group(groups: dict[tuple[str, ...], Any], path: tuple[str, ...]) -> Any:
    """The outline element for a category path, created (with its parents) on first use."""
    if path not in groups:
        parent = _group(groups, path[:-1])
        name = _xml_text(path[-1])
        groups[path] = lxml.etree.SubElement(parent, "outline", text=name, title=name)
    return groups[path]


def _xml_text(value: str) -> str:
    return _NOT_XML.sub("", value)
