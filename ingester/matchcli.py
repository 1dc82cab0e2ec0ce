"""`ingester match`: does this article match a topic or a query, and which clauses fired?

Exit status: 0 when it matches (and passes min_score), 1 when it does not, 2 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ingester import language as languages
from ingester.config import NetworkConfig, load
from ingester.extract import extract_sync, html_to_text
from ingester.query import QueryError
from ingester.safehttp import FetchError, SafeClient
from ingester.topics import Doc, Explanation, TopicSet, match_query


def run_match(args: argparse.Namespace) -> int:
    network = NetworkConfig()
    topics = None
    if args.topic and not args.config:
        print("--topic needs --config", file=sys.stderr)
        return 2
    if args.config:  # its [network] (allow_private...) applies to a URL, with --query too
        config = load(args.config)
        network, topics = config.network, TopicSet(config.topics)
    try:
        doc = read_article(args.article, network)
        explanation = explain(doc, topics, args.topic, args.query)
    except (FetchError, OSError, KeyError, QueryError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # no repr quotes
        print(f"error: {reason}", file=sys.stderr)
        return 2
    print(f"title: {doc.title}\nlanguage: {doc.language or 'unknown'}\n{explanation}")
    return 0 if explanation.passed else 1


def explain(doc: Doc, topics: TopicSet | None, topic: str | None, query: str | None) -> Explanation:
    if topics is not None and topic:
        return topics.explain(topic, doc)
    assert query is not None
    return match_query(query, doc)


def read_article(source: str, network: NetworkConfig) -> Doc:
    """An article from a URL (fetched through the guarded client and extracted), a file, or stdin."""
    if source.startswith(("http://", "https://")):
        response = asyncio.run(_fetch(source, network))
        return _from_html(response[0], response[1])
    raw = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8", errors="replace")
    if raw.lstrip()[:1] == "<":
        return _from_html(raw, "file:///" + source)
    title, _, text = raw.strip().partition("\n")  # plain text: the first line is the title
    return Doc(title=title.strip(), text=text.strip(), language=languages.resolve(text.strip()))


async def _fetch(url: str, network: NetworkConfig) -> tuple[str, str]:
    async with SafeClient(network) as client:
        response = await client.get(url)
    if response.status != 200:
        raise FetchError(url, f"HTTP {response.status}")
    return response.text(), response.url


def _from_html(html: str, url: str) -> Doc:
    extracted = extract_sync(html, url)
    if extracted is None:
        text = html_to_text(html)
        return Doc(title="", text=text, language=languages.resolve(text))
    return Doc(title=extracted.title, text=extracted.text, language=extracted.language)
