"""Extraction benchmark on ../shared/pages/trafilatura-eval/ (990 real pages): quality, cost, pool throughput.

    .venv/bin/python bench/extract_bench.py [--sample N] [--no-options]

Prints, for the chosen pages:
- quality (precision/recall/F1 over the with/without segments, as trafilatura's evaluation scores it) of
  plain `trafilatura.extract` (on our decoded text and on raw bytes), of our extractor, and of the option
  variants our choice was made among;
- median single-core ms of `trafilatura.bare_extraction(html, with_metadata=True)` default settings, and
  of our `extract_sync`;
- pages/s through `Extractor` with os.cpu_count() workers.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import trafilatura

from ingester import speedups
from ingester.extract import Extractor, extract_sync
from ingester.safehttp import decode_html

ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "pages" / "trafilatura-eval"

VARIANTS: dict[str, dict[str, Any]] = {  # bare_extraction options, with_metadata=True throughout
    "bare defaults (comments kept apart)": {},
    "include_comments=False  [ours]": {"include_comments": False},
    "favor_precision": {"favor_precision": True},
    "favor_precision, no comments": {"favor_precision": True, "include_comments": False},
    "favor_recall, no comments": {"favor_recall": True, "include_comments": False},
    "no comments, no tables": {"include_comments": False, "include_tables": False},
    "no comments, deduplicate": {"include_comments": False, "deduplicate": True},
    "no comments, fast": {"include_comments": False, "fast": True},
}

Page = tuple[str, bytes, dict[str, Any]]  # url, raw bytes, annotations


def load(sample: int | None) -> list[Page]:
    evaldata = json.loads((ROOT / "evaldata.json").read_text(encoding="utf-8"))
    manifest = sorted(json.loads((ROOT / "manifest.json").read_text(encoding="utf-8")),
                      key=lambda m: m["url"])
    if sample:
        manifest = manifest[:: max(1, len(manifest) // sample)][:sample]
    return [(m["url"], gzip.decompress((ROOT / m["file"]).read_bytes()), evaldata[m["url"]])
            for m in manifest]


def score(texts: list[str | None], pages: list[Page]) -> str:
    tp = fn = fp = 0
    for text, (_, _, item) in zip(texts, pages, strict=True):
        text = text or ""
        hits = sum(s in text for s in item["with"])
        tp, fn = tp + hits, fn + len(item["with"]) - hits
        fp += sum(s in text for s in item["without"])
    p, r = tp / (tp + fp), tp / (tp + fn)
    return f"P {p:.4f}  R {r:.4f}  F1 {2 * p * r / (p + r):.4f}"


# ---- functions run in worker processes (module level: picklable)

def _quiet() -> None:
    for name in ("trafilatura", "htmldate", "courlan", "charset_normalizer"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def plain_text(page: Page) -> str | None:
    return trafilatura.extract(decode_html(page[1]))  # type: ignore[no-any-return]


def plain_bytes(page: Page) -> str | None:
    return trafilatura.extract(page[1])  # type: ignore[no-any-return]


def ours(page: Page) -> str | None:
    result = extract_sync(decode_html(page[1]), page[0])
    return result.text if result else None


def variant(args: tuple[str, Page]) -> str | None:
    name, page = args
    doc = trafilatura.bare_extraction(decode_html(page[1]), url=page[0], with_metadata=True, **VARIANTS[name])
    return doc.as_dict()["text"] if doc is not None else None


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - started) * 1000


def quality(pages: list[Page], with_variants: bool) -> None:
    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(workers, initializer=_quiet) as pool:
        print(f"quality over {len(pages)} pages (segments as trafilatura's evaluation scores them)")
        for label, fn in (("trafilatura.extract(decoded text), defaults", plain_text),
                          ("trafilatura.extract(raw bytes), defaults", plain_bytes),
                          ("ingester extract_sync", ours)):
            print(f"  {label:52s} {score(list(pool.map(fn, pages, chunksize=8)), pages)}", flush=True)
        for name in VARIANTS if with_variants else ():
            texts = list(pool.map(variant, [(name, p) for p in pages], chunksize=8))
            print(f"  bare_extraction {name:36s} {score(texts, pages)}", flush=True)


def single_core(pages: list[Page]) -> float:
    """Prints the medians; returns our mean ms/page (what the pool's throughput is bounded by)."""
    _quiet()
    html = [(decode_html(raw), url) for url, raw, _ in pages]
    extract_sync(*html[0])  # imports and warm-ups out of the measure
    default = [timed(trafilatura.bare_extraction, h, None, with_metadata=True) for h, _ in html]
    speedups.apply()  # as in the Extractor's workers; after the default run (same parser and selectors)
    mine = [timed(extract_sync, h, u) for h, u in html]
    print(f"single core, median ms/page over {len(pages)} pages:")
    for label, times in (("bare_extraction(html, with_metadata=True) defaults", default),
                         ("ingester extract_sync", mine)):
        print(f"  {label:52s} {statistics.median(times):6.1f} ms  (mean {statistics.fmean(times):.1f} ms)")
    ceiling = (os.cpu_count() or 1) * 1000 / statistics.median(default)
    print(f"  ceiling: {os.cpu_count()} CPUs / default median = {ceiling:.1f} pages/s")
    return statistics.fmean(mine)


async def throughput(pages: list[Page], mean_ms: float) -> None:
    html = [(decode_html(raw), url) for url, raw, _ in pages]
    pool = Extractor()
    try:
        await asyncio.gather(*(pool.extract(*h) for h in html[: pool.workers * 2]))  # workers up and warm
        started = time.perf_counter()
        results = await asyncio.gather(*(pool.extract(*h) for h in html))
        elapsed = time.perf_counter() - started
    finally:
        pool.close()
    print(f"pool: {pool.workers} workers, {len(html)} pages in {elapsed:.1f} s = "
          f"{len(html) / elapsed:.1f} pages/s ({sum(r is not None for r in results)} with text); "
          f"{len(html) / elapsed / (pool.workers * 1000 / mean_ms):.2f} of workers x 1000 / mean ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=None, help="only N pages, evenly spread")
    parser.add_argument("--no-options", action="store_true", help="skip the option variants")
    args = parser.parse_args()
    if not ROOT.exists():
        sys.exit(f"shared data not found at {ROOT} (see ../shared/README.md)")
    pages = load(args.sample)
    quality(pages, not args.no_options)
    asyncio.run(throughput(pages, single_core(pages)))


if __name__ == "__main__":
    main()
