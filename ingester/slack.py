"""Slack Block Kit messages for alerts and digests: pure functions, no I/O.

Every string that comes from a feed or a page goes through `escape`, so that no `<!channel>`,
`<@U123>`, `<#C123>` or `<https://evil|Reuters>` written by a third party can ping or mask a link.
The only links are built here, from an article URL that is http(s), percent-encoded so that it
cannot close the link early. Block Kit's length limits are respected by truncating, never by failing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import httpx

from ingester.record import Article

HEADER_MAX = 150
SECTION_MAX = 3000
CONTEXT_MAX = 2000  # per context element
BUTTON_TEXT_MAX = 75
URL_MAX = 3000
BLOCKS_MAX = 50
FALLBACK_MAX = 40_000
SNIPPET_CHARS = 300  # of untrusted text shown around the first matched term
DIGEST_TITLE_CHARS = 200
DIGEST_URL_MAX = 1000  # a longer link is shown without the link, it would crowd out the others
ELLIPSIS = "…"

_SPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")  # not encodable: the JSON body could not be written
_ENTITY_TAIL = re.compile(r"&[a-z]{0,3}$")  # a cut inside &amp; &lt; &gt;


def escape(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clean(text: str) -> str:
    """Whitespace collapsed to single spaces (newlines in a title would break the layout)."""
    return _SURROGATE.sub("\ufffd", _SPACE.sub(" ", text)).strip()


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, ending with an ellipsis when cut, never inside an entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - len(ELLIPSIS)]
    cut = _ENTITY_TAIL.sub("", cut)
    return cut + ELLIPSIS


def safe_text(text: str, limit: int) -> str:
    """Untrusted text made ready for any Slack text field: cleaned, escaped, within `limit`."""
    return truncate(escape(clean(text)), limit)


def link_url(url: str, limit: int = URL_MAX) -> str | None:
    """The URL normalized and percent-encoded when it is http(s) with a host and fits, else None."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    text = str(parsed)
    for char, code in (("|", "%7C"), ("<", "%3C"), (">", "%3E"), (" ", "%20"), ('"', "%22")):
        text = text.replace(char, code)
    return text if len(text) <= limit else None


def article_link(article: Article, limit: int = URL_MAX) -> str | None:
    return link_url(article.url, limit) or link_url(article.canonical_url, limit)


def highlight(text: str, terms: Sequence[str], limit: int = SNIPPET_CHARS) -> str:
    """An escaped mrkdwn snippet of `text` around the first matched term, the terms in *bold*."""
    text = clean(text)
    pattern = _terms_pattern(terms)
    first = pattern.search(text) if pattern else None
    start = 0
    if first and first.start() > limit // 3:
        start = text.rfind(" ", 0, first.start() - limit // 3) + 1
    window = text[start: start + limit]
    cut = start + limit < len(text)
    parts: list[str] = [ELLIPSIS] if start else []
    pos = 0
    for m in pattern.finditer(window) if pattern else ():
        parts.append(escape(window[pos: m.start()]))
        parts.append(f"*{escape(m.group(0))}*")
        pos = m.end()
    parts.append(escape(window[pos:]))
    if cut:
        parts.append(ELLIPSIS)
    return truncate("".join(parts), SECTION_MAX)


def _terms_pattern(terms: Sequence[str]) -> re.Pattern[str] | None:
    """Terms (possibly phrases) matched case-insensitively on word boundaries, longest first."""
    alternatives = []
    for term in sorted({t for t in terms if t.strip()}, key=len, reverse=True):
        words = [re.escape(w) for w in re.findall(r"[^\W_]+", term)]
        if words:
            alternatives.append(r"[\W_]+".join(words))
    if not alternatives:
        return None
    return re.compile(r"(?<![^\W_])(?:" + "|".join(alternatives) + r")(?![^\W_])", re.IGNORECASE)


def alert_message(article: Article, topic: str, matched_terms: Sequence[str]) -> dict[str, Any]:
    """One story as a Block Kit message: header, source and time, snippet, link button."""
    title = clean(article.title) or article.source or "(untitled)"
    meta = [f"*{safe_text(article.source, 200)}*"]
    if article.published_at:
        meta.append(safe_text(article.published_at, 40))
    meta.append(f"topic {safe_text(topic, 100)}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": safe_text(title, HEADER_MAX),
                                    "emoji": False}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(" · ".join(meta),
                                                                            CONTEXT_MAX)}]},
    ]
    snippet = highlight(article.summary or article.text, matched_terms)
    if snippet:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": snippet}})
    if url := article_link(article):
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "text": {"type": "plain_text", "text": "Read the story", "emoji": False},
            "url": url, "action_id": "open_story"}]})
    fallback = f"{safe_text(title, 500)} ({safe_text(article.source, 200)}) [{safe_text(topic, 100)}]"
    return {"text": truncate(fallback, FALLBACK_MAX), "blocks": blocks[:BLOCKS_MAX],
            "unfurl_links": False, "unfurl_media": False}


def digest_line(article: Article) -> str:
    """One story of a digest: `• <url|title> · source`, every untrusted part escaped."""
    title = safe_text(clean(article.title) or "(untitled)", DIGEST_TITLE_CHARS)
    source = safe_text(article.source, 100)
    url = article_link(article, DIGEST_URL_MAX)
    shown = f"<{url}|{title}>" if url else title
    return f"• {shown} · {source}"


def digest_messages(topic: str, articles: Sequence[Article]) -> list[dict[str, Any]]:
    """The period's stories for one topic, packed into as few messages as Block Kit's limits allow."""
    groups = _pack([digest_line(a) for a in articles], SECTION_MAX, BLOCKS_MAX - 1)
    messages = []
    for number, sections in enumerate(groups, 1):
        count = sum(len(s) for s in sections)
        part = f" ({number}/{len(groups)})" if len(groups) > 1 else ""
        heading = safe_text(f"{topic}: {count} new {'story' if count == 1 else 'stories'}{part}",
                            HEADER_MAX)
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": heading, "emoji": False}}]
        blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}
                   for lines in sections]
        messages.append({"text": heading, "blocks": blocks, "unfurl_links": False,
                         "unfurl_media": False})
    return messages


def digest_counts(topic: str, articles: Sequence[Article]) -> list[int]:
    """How many of `articles` (in order) each message of `digest_messages` carries."""
    groups = _pack([digest_line(a) for a in articles], SECTION_MAX, BLOCKS_MAX - 1)
    return [sum(len(s) for s in sections) for sections in groups]


def _pack(lines: list[str], section_max: int, sections_max: int) -> list[list[list[str]]]:
    """Lines into sections of at most `section_max` chars, sections into messages of `sections_max`."""
    sections: list[list[str]] = []
    size = 0
    for line in lines:
        line = truncate(line, section_max)
        if sections and size + 1 + len(line) <= section_max:
            sections[-1].append(line)
            size += 1 + len(line)
        else:
            sections.append([line])
            size = len(line)
    return [sections[i: i + sections_max] for i in range(0, len(sections), sections_max)]
