"""Feed parsing cost on the shared corpus's 335 real feeds: median ms per parse, in one process.

    .venv/bin/python bench/parse_bench.py [--repeat 3] [--shared ../shared]

Prints, per variant, the median and p90 ms per feed (best of --repeat runs for each feed) and ms per entry:
- parse_feed as shipped (sanitize_html and resolve_relative_uris off, entries built);
- feedparser.parse alone with both off;
- feedparser.parse alone with feedparser's defaults (both on).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import feedparser

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingester.feedparse import FeedParseError, parse_feed


def load_real_feeds(shared: Path) -> list[tuple[str, bytes]]:
    feeds_dir = shared / "feeds"
    with (feeds_dir / "index.csv").open(encoding="utf-8") as index:
        rows = [r for r in csv.DictReader(index) if r["nature"] == "real-or-mixed"]
    feeds = []
    for row in rows:
        data = (feeds_dir / row["path"]).read_bytes()
        feeds.append((row["path"], gzip.decompress(data) if row["gzip"] == "True" else data))
    return feeds


def ours(data: bytes, url: str) -> int:
    try:
        return len(parse_feed(data, url).entries)
    except FeedParseError:
        return 0


def feedparser_only(sanitize: bool) -> Callable[[bytes, str], int]:
    def run(data: bytes, url: str) -> int:
        headers = {"content-location": url}
        parsed = feedparser.parse(io.BytesIO(data), response_headers=headers, sanitize_html=sanitize,
                                  resolve_relative_uris=sanitize)
        return len(parsed.entries)

    return run


def measure(fn: Callable[[bytes, str], int], feeds: list[tuple[str, bytes]], repeat: int) -> tuple[
        list[float], int]:
    per_feed, entries = [], 0
    for path, data in feeds:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            count = fn(data, "https://feeds.example.org/" + path)
            best = min(best, time.perf_counter() - start)
        per_feed.append(best * 1000)
        entries += count
    return per_feed, entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    feeds = load_real_feeds(args.shared)
    size = sum(len(d) for _, d in feeds)
    print(f"{len(feeds)} real feeds, {size / 1e6:.1f} MB, best of {args.repeat} per feed")
    variants = {
        "parse_feed (sanitize/resolve off)": ours,
        "feedparser.parse, sanitize/resolve off": feedparser_only(False),
        "feedparser.parse, sanitize/resolve on": feedparser_only(True),
    }
    print(f"{'variant':<40} {'median ms':>10} {'p90 ms':>8} {'total s':>8} {'entries':>8} {'ms/entry':>9}")
    for name, fn in variants.items():
        per_feed, entries = measure(fn, feeds, args.repeat)
        p90 = statistics.quantiles(per_feed, n=10)[-1]
        total, median = sum(per_feed), statistics.median(per_feed)
        print(f"{name:<40} {median:>10.2f} {p90:>8.2f} {total / 1000:>8.2f} {entries:>8} "
              f"{total / max(entries, 1):>9.3f}")


if __name__ == "__main__":
    main()
