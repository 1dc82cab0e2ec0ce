"""Matching cost per article: 10,000 generated topics against real articles, presearch vs evaluating all.

    .venv/bin/python bench/match_bench.py [--topics 10000] [--baseline-articles 200]

Topics are built from the shared news corpus's own vocabulary (capitalised names as entities, frequent words,
adjacent word pairs as phrases, word stems as wildcards) in the shapes media-monitoring users write: entity
lists ANDed with keywords, phrases NEAR entities, title scopes, exclusions, lang:. Articles are the items of
../shared/news/ceasefire-dev.jsonl and the ECB+ documents.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ingester.config import TopicConfig
from ingester.topics import Doc, TopicSet, _Article

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "news"


def load_articles() -> list[Doc]:
    docs = []
    for line in (SHARED / "ceasefire-dev.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        docs.append(Doc(item["title"], item["text"], "en"))
    for line in (SHARED / "ecbplus" / "docs.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        first, _, rest = item["text"].partition("\n")
        docs.append(Doc(first, rest, "en"))
    return docs


def vocabulary(docs: list[Doc]) -> tuple[list[str], list[str], list[str]]:
    """Entities (capitalised mid-sentence words), keywords (frequent lower-case words), phrases (pairs)."""
    entities: Counter[str] = Counter()
    words: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    for doc in docs:
        entities.update(re.findall(r"(?<=[a-z,] )([A-Z][a-z]{3,})", doc.text))
        lower = re.findall(r"\b[a-z]{5,}\b", doc.text)
        words.update(lower)
        pairs.update(f"{a} {b}" for a, b in itertools.pairwise(lower))
    common = {w for w, _ in words.most_common(60)}
    keywords = [w for w, n in words.most_common(4000) if w not in common and n >= 3]
    phrases = [p for p, n in pairs.most_common(3000) if n >= 3]
    return [e for e, n in entities.most_common(3000) if n >= 2], keywords, phrases


def make_topics(count: int, seed: int, docs: list[Doc]) -> list[TopicConfig]:
    entities, keywords, phrases = vocabulary(docs)
    rnd = random.Random(seed)

    def ent() -> str:
        return rnd.choice(entities)

    def kw() -> str:
        word = rnd.choice(keywords)
        return f"{word[:-2]}*" if rnd.random() < 0.2 else word

    def phrase() -> str:
        return f'"{rnd.choice(phrases)}"'

    shapes: list[Callable[[], str]] = [
        lambda: f"({ent()} OR {ent()}) AND ({kw()} OR {phrase()} OR {kw()})",
        lambda: f"{phrase()} NEAR/5 ({ent()} OR {ent()})",
        lambda: f"title:({ent()} OR {ent()}) AND {kw()}",
        lambda: f"{ent()} AND ({kw()} OR {kw()}) NOT {kw()}",
        lambda: f"({kw()} OR {kw()}) NEAR/10 {ent()} lang:en",
        lambda: f'{ent()} {kw()} OR title:{phrase()}',
        lambda: f"({ent()} OR {ent()} OR {ent()}) AND ({phrase()} OR {phrase()})",
    ]
    return [TopicConfig(name=f"t{i}", query=rnd.choice(shapes)()) for i in range(count)]


def timed(fn: Callable[[Doc], object], docs: list[Doc]) -> list[float]:
    times = []
    for doc in docs:
        start = time.perf_counter()
        fn(doc)
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(times: list[float]) -> str:
    p95 = statistics.quantiles(times, n=20)[-1]
    median, mean = statistics.median(times), statistics.fmean(times)
    return f"median {median:.2f} ms, p95 {p95:.2f} ms, mean {mean:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=10_000)
    parser.add_argument("--baseline-articles", type=int, default=200)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    if not SHARED.exists():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 2
    docs = load_articles()
    start = time.perf_counter()
    topic_set = TopicSet(make_topics(args.topics, args.seed, docs))
    print(f"{args.topics} topics compiled in {time.perf_counter() - start:.1f} s; {len(docs)} articles")

    evaluated = [len(topic_set.candidates(_Article(d).vocabulary())) for d in docs]
    matched = [len(topic_set.match(d)) for d in docs]
    presearch = timed(topic_set.match, docs)
    print(f"presearch: {summary(presearch)}")
    print(f"  topics evaluated per article: median {statistics.median(evaluated):.0f}, "
          f"max {max(evaluated)}; topics matched per article: median {statistics.median(matched):.0f}")

    sample = random.Random(args.seed).sample(docs, min(args.baseline_articles, len(docs)))
    naive = timed(topic_set.match_all, sample)
    same = timed(topic_set.match, sample)
    print(f"naive (all topics) on {len(sample)} articles: {summary(naive)}")
    print(f"presearch on the same articles: {summary(same)}")
    print(f"speed-up (median): {statistics.median(naive) / statistics.median(same):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
