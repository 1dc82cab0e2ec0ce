"""Extraction quality on trafilatura's own evaluation pages: ours must score at least plain trafilatura.

Scored as trafilatura's evaluation does: each page lists text segments that must ("with") and must not
("without") appear in the main text; precision, recall and F1 are over segments. The test takes a
deterministic sample; bench/extract_bench.py runs the whole corpus.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import trafilatura
from conftest import shared_path
from trafilatura.metadata import extract_author

from ingester.extract import (
    COMPARE_BELOW,
    Extractor,
    _body_text,
    _byline,
    _main_text,
)
from ingester.safehttp import decode_html

SAMPLE_EVERY = 5  # ~200 of the 990 pages


class Score:
    def __init__(self) -> None:
        self.tp = self.fn = self.fp = 0

    def add(self, text: str | None, item: dict[str, Any]) -> None:
        text = text or ""  # no result: every wanted segment missed, no unwanted one kept
        for segment in item["with"]:
            if segment in text:
                self.tp += 1
            else:
                self.fn += 1
        self.fp += sum(segment in text for segment in item["without"])

    def figures(self) -> tuple[float, float, float]:
        precision = self.tp / (self.tp + self.fp)
        recall = self.tp / (self.tp + self.fn)
        return precision, recall, 2 * precision * recall / (precision + recall)

    def __str__(self) -> str:
        return "precision {:.3f}  recall {:.3f}  F1 {:.3f}".format(*self.figures())


def load_sample(root: Path) -> list[tuple[str, str, dict[str, Any]]]:
    evaldata = json.loads((root / "evaldata.json").read_text(encoding="utf-8"))
    manifest = sorted(json.loads((root / "manifest.json").read_text(encoding="utf-8")),
                      key=lambda m: m["url"])
    return [(decode_html(gzip.decompress((root / m["file"]).read_bytes())), m["url"], evaldata[m["url"]])
            for m in manifest[::SAMPLE_EVERY]]


async def test_quality_at_least_plain_trafilatura() -> None:
    pages = load_sample(shared_path("pages", "trafilatura-eval"))
    pool = Extractor(timeout=120)
    try:
        ours = await asyncio.gather(*(pool.extract(html, url) for html, url, _ in pages))
        # plain trafilatura, default settings, on the same decoded text, in the same pool
        plain = await asyncio.gather(*(pool._pool.run(trafilatura.extract, html) for html, _, _ in pages))
    finally:
        pool.close()
    ours_score, plain_score = Score(), Score()
    for (_, _, item), result, baseline in zip(pages, ours, plain, strict=True):
        ours_score.add(result.text if result else None, item)
        plain_score.add(baseline, item)
    print(f"\n{len(pages)} pages\n  ours:               {ours_score}\n  trafilatura.extract: {plain_score}")
    assert ours_score.figures()[2] >= plain_score.figures()[2]


def test_comparison_with_readability_runs_where_trafilatura_finds_little() -> None:
    """Pages whose fast extraction is short get trafilatura's full cascade (and some change because of
    it); longer ones keep the fast result."""
    pages = load_sample(shared_path("pages", "trafilatura-eval"))[::2]
    short = changed = long = 0
    for html, url, _ in pages:
        tree = trafilatura.load_html(html)
        fast = _body_text(tree, url, fast=True)
        if len(fast) < COMPARE_BELOW:
            full = _body_text(tree, url, fast=False)
            assert _main_text(tree, url) == full
            short, changed = short + 1, changed + (full != fast)
        else:
            assert _main_text(tree, url) == fast
            long += 1
    assert long > short > 0 and changed > 0


def test_byline_search_gives_trafilaturas_result() -> None:
    """_byline skips trafilatura's copy of the tree only where no byline selector matches at all."""
    sample = load_sample(shared_path("pages", "trafilatura-eval"))
    pages = [trafilatura.load_html(html) for html, _, _ in sample]
    found = [_byline(tree) for tree in pages]
    assert found == [extract_author(tree) for tree in pages]
    assert 0 < sum(author is not None for author in found) < len(pages)
    # a byline only inside a region trafilatura discards (comments) is not the author's
    inside = trafilatura.load_html("<html><body><div class='comments'><span class='author'>A Reader</span>"
                                   "</div><p>Text of the article.</p></body></html>")
    assert _byline(inside) is None is extract_author(inside)
