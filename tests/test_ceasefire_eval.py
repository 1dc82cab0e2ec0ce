"""The shipped `ceasefire` topic on ../shared/news/ceasefire-dev.jsonl, against issue 4's bar."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import shared_path

from ingester.config import TopicConfig, load
from ingester.topics import Doc, TopicSet

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "example.toml"


def ceasefire_topic() -> TopicConfig:
    return next(t for t in load(EXAMPLE).topics if t.name == "ceasefire")


def test_ceasefire_topic_on_labelled_news() -> None:
    items = [json.loads(line) for line in shared_path("news", "ceasefire-dev.jsonl").read_text().splitlines()]
    topic = ceasefire_topic()
    unthresholded = TopicSet([topic.model_copy(update={"min_score": 0.0})])
    scores = [unthresholded.match(Doc(i["title"], i["text"], "en")).get("ceasefire") for i in items]

    mentions = [s for i, s in zip(items, scores, strict=True) if "ceasefire_mention" in i["labels"]]
    mention_recall = sum(s is not None for s in mentions) / len(mentions)
    positives = sum("ceasefire" in i["labels"] for i in items)

    def precision_recall(threshold: float) -> tuple[float, float, int]:
        chosen = [i for i, s in zip(items, scores, strict=True) if s is not None and s >= threshold]
        hits = sum("ceasefire" in i["labels"] for i in chosen)
        return hits / max(1, len(chosen)), hits / positives, len(chosen)

    print(f"\nceasefire topic: {len(items)} items, {positives} labelled ceasefire, {len(mentions)} mentions")
    print(f"boolean recall on ceasefire_mention: {mention_recall:.3f}")
    print("min_score  precision  recall  delivered")
    for threshold in sorted({0.0, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.8, 1.0, topic.min_score}):
        p, r, n = precision_recall(threshold)
        mark = "  <- min_score" if threshold == topic.min_score else ""
        print(f"{threshold:9.2f}  {p:9.3f}  {r:6.3f}  {n:9d}{mark}")
    precision, recall, _ = precision_recall(topic.min_score)

    assert mention_recall >= 0.98
    assert precision >= 0.90, f"precision {precision:.3f} at min_score {topic.min_score}"
    assert recall >= 0.90, f"recall {recall:.3f} at min_score {topic.min_score}"


def test_the_seed_story_reaches_the_ceasefire_stream() -> None:
    story = shared_path("seed", "coalition-ceasefire-2025.txt").read_text(encoding="utf-8")
    topic = ceasefire_topic()
    explanation = TopicSet([topic]).explain("ceasefire", Doc("", story, "en"))
    print(f"\nseed story: score {explanation.score:.3f} (min_score {topic.min_score})")
    assert explanation.matched and explanation.passed
