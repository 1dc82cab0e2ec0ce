"""The matcher: presearch soundness, min_score, scores and explanations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingester.config import ConfigError, TopicConfig, from_dict
from ingester.query import parse
from ingester.topics import Doc, TopicSet, match_query, required_terms


def topics(*pairs: tuple[str, str], min_score: float = 0.0) -> TopicSet:
    return TopicSet([TopicConfig(name=n, query=q, min_score=min_score) for n, q in pairs])


def test_match_returns_scores_of_matching_topics_only() -> None:
    ts = topics(("cf", "ceasefire OR truce"), ("quake", "earthquake*"), ("pt", "lang:pt"))
    result = ts.match(Doc("Truce holds", "The ceasefire agreed on Monday held.", "en"))
    assert set(result) == {"cf"} and result["cf"] > 0


def test_not_only_and_lang_only_topics_are_always_checked() -> None:
    ts = topics(("no-sport", "NOT football"), ("pt", "lang:pt"))
    assert set(ts.match(Doc("x", "y", "pt-BR"))) == {"no-sport", "pt"}
    assert set(ts.match(Doc("football", "y", "en"))) == set()


def test_presearch_skips_topics_whose_required_terms_are_absent() -> None:
    ts = topics(("a", "alpha AND beta"), ("b", "gamma NEAR/2 delta"), ("c", "negotiat*"))
    art_tokens = {"alpha", "negotiations"}
    assert ts.candidates(art_tokens) == [0, 2]


def test_required_terms_pick_one_conjunct_and_union_disjuncts() -> None:
    assert required_terms(parse("a OR b*")) == {("t", "a"), ("w", "b")}
    assert required_terms(parse("the AND ceasefire")) == {("t", "ceasefire")}
    assert required_terms(parse("NOT a")) is None
    assert required_terms(parse("a OR NOT b")) is None
    assert required_terms(parse('"peace of the brave"')) in ({("t", "peace")}, {("t", "brave")})


def test_min_score_drops_passing_mentions() -> None:
    filler = "The minister spoke about the budget, schools and roads. " * 12
    lead = Doc("Ceasefire agreed in the north", "A ceasefire began at noon. " + filler)
    passing = Doc("Budget approved", filler + "He also mentioned the ceasefire.")
    ts = topics(("cf", "ceasefire"), min_score=0.5)
    assert "cf" in ts.match(lead)
    assert "cf" not in ts.match(passing)
    assert ts.explain("cf", passing).matched and not ts.explain("cf", passing).passed


def test_score_rises_with_prominence_and_repetition() -> None:
    filler = "word " * 200

    def score(title: str, text: str) -> float:
        return match_query("truce", Doc(title, text)).score

    assert score("Truce", filler) == pytest.approx(1.0)  # one title mention
    assert score("", "truce " + filler) == pytest.approx(1.0)  # the very first word
    assert score("", "word " * 25 + "truce") == pytest.approx(0.5)  # a sentence in
    assert score("", filler + "truce") < 0.15  # a passing mention late on
    assert score("Truce", "truce " + filler + " truce") > score("Truce", filler)


def test_matches_close_together_are_one_mention() -> None:
    assert match_query("truce OR ceasefire", Doc("", "truce and ceasefire")).score == pytest.approx(1.0)
    far = match_query("truce OR ceasefire", Doc("", "truce " + "x " * 20 + "ceasefire")).score
    assert far > 1.0


def test_and_scores_its_first_clause_and_not_adds_nothing() -> None:
    doc = Doc("", "truce " + "x " * 50 + "gaza")
    assert match_query("truce AND gaza", doc).score == match_query("truce", doc).score
    assert match_query("gaza AND truce", doc).score == match_query("gaza", doc).score
    assert match_query("NOT football AND truce", doc).score == match_query("truce", doc).score
    assert match_query("truce AND NOT football", doc).score == match_query("truce", doc).score
    assert match_query("lang:en", Doc("", "x", "en")).score == 1.0
    explained = {f.clause for f in match_query("truce AND gaza", doc).fired}
    assert explained == {"truce", "gaza"}  # the qualifier still shows in the explanation


def test_an_alternative_that_needs_company_counts_half() -> None:
    doc = Doc("", "peace talks " + "x " * 50 + "war")
    alone = match_query('"peace talks"', doc).score
    assert match_query('truce OR ("peace talks" AND war)', doc).score == pytest.approx(alone / 2)
    assert match_query('"peace talks" AND war', doc).score == alone  # not an alternative: nothing to weigh
    assert match_query('truce OR ("peace talks" NOT football)', doc).score == alone  # a filter, not company
    both = Doc("", "truce peace talks " + "x " * 50 + "war")  # one mention, as strong as its strongest match
    assert match_query('truce OR ("peace talks" AND war)', both).score == pytest.approx(1.0)


def test_a_headline_repeated_at_the_start_of_the_text_is_not_counted_twice() -> None:
    title = "Truce agreed in Gaza talks"
    once = match_query("truce", Doc(title, "Officials said the deal was reached overnight.")).score
    twice = match_query("truce", Doc(title, title + "\nOfficials said the deal was reached overnight.")).score
    assert twice == once == pytest.approx(1.0)


def test_explain_lists_fired_clauses_with_fields_and_positions() -> None:
    ts = topics(("cf", 'title:truce OR "peace talks" NOT football'))
    explanation = ts.explain("cf", Doc("Truce holds", "Peace talks resume; peace talks stall."))
    assert explanation.matched and explanation.passed
    fired = {(f.clause, f.field): f.spans for f in explanation.fired}
    assert fired == {("truce", "title"): [(0, 0)], ('"peace talks"', "text"): [(0, 1), (3, 4)]}
    printed = str(explanation)
    assert printed.startswith("MATCH: score") and '"peace talks" in text at 0-1, 3-4' in printed
    with pytest.raises(KeyError):
        ts.explain("nope", Doc("", ""))


def test_an_unmatched_explanation_says_so() -> None:
    explanation = match_query("truce AND gaza", Doc("", "a truce in Sudan"))
    assert not explanation.matched and explanation.score == 0.0
    assert str(explanation).startswith("no match")


def test_a_malformed_topic_query_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"topics\[0\]\.query: invalid query at position 6"):
        from_dict({"topics": [{"name": "x", "query": "a AND (b"}]})
    with pytest.raises(ConfigError, match=r"position 2"):
        from_dict({"topics": [{"name": "x", "query": "a NEAR/0 b"}]})


VOCAB = ["alpha", "beta", "gamma", "delta", "gam", "and"]
WORDS = st.sampled_from(VOCAB)
ATOMS = st.one_of(WORDS, st.sampled_from(["gam*", "al*", '"alpha beta"', "lang:en"]))


@st.composite
def queries(draw: st.DrawFn) -> str:
    parts = [draw(ATOMS) for _ in range(draw(st.integers(1, 4)))]
    ops = [draw(st.sampled_from([" AND ", " OR ", " NOT ", " ", " NEAR/2 "])) for _ in parts[1:]]
    text = parts[0]
    for op, part in zip(ops, parts[1:], strict=True):
        if op == " NEAR/2 " and ("lang" in text or "lang" in part or any(o != " NEAR/2 " for o in ops)):
            op = " OR "
        text += op + part
    return text


@settings(max_examples=150, deadline=None)
@given(
    st.lists(queries(), min_size=1, max_size=12),
    st.lists(WORDS, max_size=6),
    st.lists(WORDS, max_size=12),
    st.sampled_from([None, "en", "pt"]),
)
def test_presearch_never_loses_a_match(
    qs: list[str], title: list[str], text: list[str], lang: str | None
) -> None:
    ts = topics(*[(f"t{i}", q) for i, q in enumerate(qs)])
    doc = Doc(" ".join(title), " ".join(text), lang)
    assert ts.match(doc) == ts.match_all(doc)
