"""The shipped `ceasefire` topic on ../shared/news/ceasefire-dev.jsonl, against issue 4's bar.

Run with `-s` for the table. Besides the in-sample figure (min_score as shipped, whole file: what the
issue asks for and what is asserted), it prints a cross-validated one: min_score chosen on the other folds,
precision and recall measured on the held-out fold, so the figure does not credit the threshold's own fit.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from conftest import shared_path

from ingester.config import TopicConfig, load
from ingester.topics import Doc, TopicSet

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "example.toml"
CV_SEEDS = range(10)  # fixed: the figure is reproducible


def ceasefire_topic() -> TopicConfig:
    return next(t for t in load(EXAMPLE).topics if t.name == "ceasefire")


@dataclass
class Scored:
    score: float | None  # None: the boolean query does not match
    ceasefire: bool
    mention: bool


def counts(rows: list[Scored], threshold: float) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of delivering score >= threshold."""
    delivered = [r for r in rows if r.score is not None and r.score >= threshold]
    tp = sum(r.ceasefire for r in delivered)
    return tp, len(delivered) - tp, sum(r.ceasefire for r in rows) - tp


def precision_recall(tp: int, fp: int, fn: int) -> tuple[float, float]:
    return tp / max(1, tp + fp), tp / max(1, tp + fn)


def choose_threshold(rows: list[Scored]) -> float:
    """The min_score that maximises the worse of precision and recall on these rows."""
    candidates = sorted({r.score for r in rows if r.score is not None})
    return max(candidates, key=lambda t: min(precision_recall(*counts(rows, t))))


def cross_validated(rows: list[Scored], folds: int) -> tuple[float, float]:
    """Pooled held-out precision and recall, averaged over CV_SEEDS shuffles."""
    figures = []
    for seed in CV_SEEDS:
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        tp = fp = fn = 0
        for fold in range(folds):
            held = set(order[fold::folds])
            threshold = choose_threshold([r for i, r in enumerate(rows) if i not in held])
            a, b, c = counts([rows[i] for i in held], threshold)
            tp, fp, fn = tp + a, fp + b, fn + c
        figures.append(precision_recall(tp, fp, fn))
    return sum(p for p, _ in figures) / len(figures), sum(r for _, r in figures) / len(figures)


def test_ceasefire_topic_on_labelled_news() -> None:
    items = [json.loads(line) for line in shared_path("news", "ceasefire-dev.jsonl").read_text().splitlines()]
    topic = ceasefire_topic()
    unthresholded = TopicSet([topic.model_copy(update={"min_score": 0.0})])
    rows = [
        Scored(
            unthresholded.match(Doc(i["title"], i["text"], "en")).get("ceasefire"),
            "ceasefire" in i["labels"],
            "ceasefire_mention" in i["labels"],
        )
        for i in items
    ]
    mentions = [r for r in rows if r.mention]
    mention_recall = sum(r.score is not None for r in mentions) / len(mentions)
    positives = sum(r.ceasefire for r in rows)

    print(f"\nceasefire topic: {len(rows)} items, {positives} labelled ceasefire, {len(mentions)} mentions")
    print(f"boolean recall on ceasefire_mention: {mention_recall:.3f}")
    print("min_score  precision  recall  delivered")
    for threshold in sorted({0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.75, 1.0, topic.min_score}):
        tp, fp, fn = counts(rows, threshold)
        p, r = precision_recall(tp, fp, fn)
        mark = "  <- min_score" if threshold == topic.min_score else ""
        print(f"{threshold:9.3f}  {p:9.3f}  {r:6.3f}  {tp + fp:9d}{mark}")
    for folds in (2, 5):
        cv_p, cv_r = cross_validated(rows, folds)
        print(f"{folds}-fold cross-validated (min_score chosen on the others): P {cv_p:.3f}  R {cv_r:.3f}")
    precision, recall = precision_recall(*counts(rows, topic.min_score))

    assert mention_recall >= 0.98
    assert precision >= 0.90, f"precision {precision:.3f} at min_score {topic.min_score}"
    assert recall >= 0.90, f"recall {recall:.3f} at min_score {topic.min_score}"
    cv_p, cv_r = cross_validated(rows, 2)
    assert min(cv_p, cv_r) >= 0.85, f"2-fold CV P {cv_p:.3f} R {cv_r:.3f}: the score no longer generalises"


def test_the_seed_story_reaches_the_ceasefire_stream() -> None:
    story = shared_path("seed", "coalition-ceasefire-2025.txt").read_text(encoding="utf-8")
    topic = ceasefire_topic()
    explanation = TopicSet([topic]).explain("ceasefire", Doc("", story, "en"))
    print(f"\nseed story: score {explanation.score:.3f} (min_score {topic.min_score})")
    assert explanation.matched and explanation.passed
