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

from ingester.extract import Extractor
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
