"""The query language: parsing, errors with positions, and every operator against a brute-force reference."""

from __future__ import annotations

import itertools
import re
import sys
import unicodedata
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingester.query import (
    And,
    Field,
    Lang,
    Near,
    Not,
    Or,
    Phrase,
    Prefix,
    QueryError,
    Term,
    fold,
    parse,
    tokenize,
)
from ingester.topics import Doc, match_query

# --- tokenizer -------------------------------------------------------------------------------------------


def test_tokenize_folds_case_accents_and_compatibility_forms() -> None:
    assert tokenize("Zürich ÉTÉ ﬁne Straße") == ["zurich", "ete", "fine", "strasse"]


def test_tokenize_splits_on_every_non_alphanumeric_character() -> None:
    assert tokenize("cease-fire, Putin’s U.S. 30-day snake_case") == [
        "cease", "fire", "putin", "s", "u", "s", "30", "day", "snake", "case"
    ]


def test_tokenize_keeps_non_latin_letters_and_digits() -> None:
    assert tokenize("Київ 東京 ٣") == ["киів", "東京", "٣"]


def _fold_whole(text: str) -> str:
    """The definition: NFKD of the case-folded text, combining marks dropped, case-folded again."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def test_folding_each_character_equals_folding_the_whole_text() -> None:
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    assert fold(every) == _fold_whole(every)
    assert fold("Zu\u0308rich") == "zurich"  # a combining mark after its letter, not precomposed


@given(st.text())
def test_folding_text_equals_the_definition(text: str) -> None:
    assert fold(text) == (text.lower() if text.isascii() else _fold_whole(text))


@given(st.text())
def test_tokens_are_the_alphanumeric_runs_of_the_folded_text(text: str) -> None:
    for token in tokenize(text):
        assert token and all(c.isalnum() for c in token)


# --- parsing ---------------------------------------------------------------------------------------------


def test_terms_phrases_and_wildcards() -> None:
    assert parse("Ceasefire") == Term("ceasefire", 0)
    assert parse('"Peace  Talks"') == Phrase(("peace", "talks"), 1)
    assert parse("negotiat*") == Prefix("negotiat", 0)
    assert parse('"humanitarian pause*"') == Phrase(("humanitarian", "pause"), 1, wildcard=True)


def test_a_word_with_inner_punctuation_is_the_phrase_of_its_tokens() -> None:
    assert parse("cease-fire") == Phrase(("cease", "fire"), 0)
    assert parse("Putin’s") == Phrase(("putin", "s"), 0)


def test_lowercase_operators_are_terms() -> None:
    assert parse("war and peace or not") == And(
        (Term("war", 0), Term("and", 4), Term("peace", 8), Term("or", 14), Term("not", 17)), 0
    )


def test_precedence_near_binds_tighter_than_not_than_and_than_or() -> None:
    tree = parse("a OR NOT b c NEAR/2 d OR e")
    assert tree == Or(
        (
            Term("a", 0),
            And((Not(Term("b", 9), 5), Near(Term("c", 11), Term("d", 20), 2, 11)), 5),
            Term("e", 25),
        ),
        0,
    )


def test_near_is_left_associative_and_takes_or_groups() -> None:
    tree = parse("(a OR b) NEAR/2 c NEAR/3 d")
    assert isinstance(tree, Near) and tree.distance == 3 and tree.right == Term("d", 25)
    assert isinstance(tree.left, Near) and tree.left.left == Or((Term("a", 1), Term("b", 6)), 1)


def test_field_scopes_and_lang() -> None:
    assert parse('title:(a OR "b c")') == Field("title", Or((Term("a", 7), Phrase(("b", "c"), 13)), 7), 0)
    assert parse("text:war") == Field("text", Term("war", 5), 0)
    assert parse("lang:PT") == Lang("pt", 0)


def test_field_scope_binds_tighter_than_and() -> None:
    assert parse("title:a b") == And((Field("title", Term("a", 6), 0), Term("b", 8)), 0)


@pytest.mark.parametrize(
    ("query", "position", "reason"),
    [
        ("", 0, "empty"),
        ("   ", 0, "empty"),
        ("(a OR b", 0, "never closed"),
        ("a (b (c)", 2, "never closed"),
        ("a OR b)", 6, "no matching '('"),
        ("a AND", 5, "dangling"),
        ("OR a", 0, "OR needs a term"),
        ("a OR OR b", 5, "OR needs a term"),
        ("a NOT", 5, "dangling"),
        ("a NEAR/3", 8, "dangling"),
        ("a NEAR b", 2, "distance"),
        ("a NEAR/0 b", 2, "distance"),
        ("a NEAR/x b", 2, "distance"),
        ("(a AND b) NEAR/3 c", 1, "not AND"),
        ("a NEAR/3 (b AND NOT c)", 10, "not AND"),
        ("a NEAR/3 NOT b", 9, "NOT cannot follow NEAR"),
        ("title:a NEAR/3 b", 0, "field scope"),
        ("a NEAR/3 lang:en", 9, "lang:"),
        ("lang:", 0, "primary language subtag"),
        ("lang:pt-BR", 0, "primary language subtag"),
        ("lang:e1", 0, "primary language subtag"),
        ('"peace talks', 0, "closing quote"),
        ("a*b", 1, "only allowed at the end"),
        ("*", 0, "no letters or digits"),
        ("—", 0, "no letters or digits"),
        ('""', 1, "no letters or digits"),
        ("a () b", 3, "a term is expected"),
        ("title:(text:a)", 7, "nested"),
    ],
)
def test_malformed_queries_report_position_and_reason(query: str, position: int, reason: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse(query)
    assert caught.value.position == position
    assert f"at position {position}:" in str(caught.value)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


# --- evaluation: hand-written cases ----------------------------------------------------------------------


def _matches(query: str, title: str = "", text: str = "", language: str | None = None) -> bool:
    return match_query(query, Doc(title, text, language)).matched


def test_unicode_folding_applies_to_queries_and_documents() -> None:
    assert _matches("zurich", text="Talks in ZÜRICH")
    assert _matches('"Zürich talks"', text="zurich talks")


def test_near_distance_counts_the_gap_in_either_order_without_overlap() -> None:
    assert _matches("a NEAR/1 b", text="a b") and _matches("a NEAR/1 b", text="b a")
    assert not _matches("a NEAR/1 b", text="a x b") and _matches("a NEAR/2 b", text="a x b")
    assert not _matches('"a b" NEAR/3 b', text="a b")  # the only b is inside the phrase
    assert _matches('"a b" NEAR/1 c', text="a b c")  # distance from the end of the phrase


def test_a_near_match_spans_both_operands() -> None:
    assert _matches("a NEAR/1 b NEAR/1 c", text="a b c")
    assert _matches("a NEAR/1 b NEAR/1 c", text="c a b")
    assert not _matches("a NEAR/1 b NEAR/1 c", text="a b x c")


def test_no_match_crosses_from_title_into_text() -> None:
    assert not _matches('"peace talks"', title="Peace", text="talks resume")
    assert not _matches("peace NEAR/5 talks", title="Peace", text="talks resume")
    assert _matches("peace AND talks", title="Peace", text="talks resume")


def test_field_scopes_restrict_leaves_and_combine_document_level() -> None:
    assert _matches("title:peace", title="Peace now", text="war")
    assert not _matches("title:war", title="Peace now", text="war")
    assert _matches("text:(war AND NOT peace)", title="Peace now", text="war")
    assert _matches('title:"peace now"', title="Peace now")


def test_lang_matches_the_primary_subtag_case_insensitively() -> None:
    assert _matches("lang:pt", text="x", language="pt-BR")
    assert _matches("lang:PT", text="x", language="pt_br")
    assert not _matches("lang:pt", text="x", language="es")
    assert not _matches("lang:pt", text="x", language=None)


def test_lowercase_and_is_an_ordinary_term() -> None:
    assert _matches("war and peace", text="war and peace")
    assert not _matches("war and peace", text="war peace")


# --- property-based: every operator against a brute-force reference --------------------------------------

VOCAB = ["a", "b", "ab", "ba", "c", "and", "or"]
WORDS = st.sampled_from(VOCAB)


@dataclass(frozen=True)
class R:
    """A reference query node: op in term/phrase/prefix/near/or/and/not/field/lang."""

    op: str
    args: tuple[object, ...]


def spans(node: R, tokens: list[str]) -> set[tuple[int, int]]:
    """Brute force: every (start, end) at which a span node matches."""
    n = len(tokens)
    if node.op == "term":
        return {(i, i) for i in range(n) if tokens[i] == node.args[0]}
    if node.op == "prefix":
        return {(i, i) for i in range(n) if tokens[i].startswith(str(node.args[0]))}
    if node.op == "phrase":
        words = list(node.args)
        return {(i, i + len(words) - 1) for i in range(n) if tokens[i : i + len(words)] == words}
    if node.op == "or":
        return set().union(*(spans(c, tokens) for c in node.args))  # type: ignore[arg-type]
    left, right, distance = node.args
    found = set()
    for (s1, e1), (s2, e2) in itertools.product(spans(left, tokens), spans(right, tokens)):  # type: ignore[arg-type]
        gap = s2 - e1 if s2 > e1 else s1 - e2
        overlap = not (e1 < s2 or e2 < s1)
        if not overlap and 1 <= gap <= distance:  # type: ignore[operator]
            found.add((min(s1, s2), max(e1, e2)))
    return found


def holds(node: R, doc: dict[str, list[str]], lang: str | None, fields: tuple[str, ...]) -> bool:
    if node.op == "and":
        return all(holds(c, doc, lang, fields) for c in node.args)  # type: ignore[arg-type]
    if node.op == "or" and not is_span(node):
        return any(holds(c, doc, lang, fields) for c in node.args)  # type: ignore[arg-type]
    if node.op == "not":
        return not holds(node.args[0], doc, lang, fields)  # type: ignore[arg-type]
    if node.op == "field":
        return holds(node.args[1], doc, lang, (str(node.args[0]),))  # type: ignore[arg-type]
    if node.op == "lang":
        return lang is not None and lang.split("-")[0].lower() == node.args[0]
    return any(spans(node, doc[f]) for f in fields)


def is_span(node: R) -> bool:
    if node.op in ("term", "prefix", "phrase", "near"):
        return True
    return node.op == "or" and all(is_span(c) for c in node.args)  # type: ignore[arg-type]


LEVEL = {"or": 1, "and": 2, "not": 3, "near": 4}


def render(node: R, rnd: st.DrawFn) -> str:
    """Query text with as few parentheses as the precedence allows (plus some redundant ones)."""
    text = _render(node, rnd)
    return f"({text})" if rnd(st.booleans()) and rnd(st.booleans()) else text


def _child(node: R, need: int, rnd: st.DrawFn) -> str:
    text = render(node, rnd)
    return f"({text})" if LEVEL.get(node.op, 5) < need else text


def _render(node: R, rnd: st.DrawFn) -> str:
    op, args = node.op, node.args
    if op == "term":
        return str(args[0]).upper() if args[0] not in ("and", "or") and rnd(st.booleans()) else str(args[0])
    if op == "prefix":
        return f"{args[0]}*"
    if op == "phrase":
        words = list(map(str, args))
        return "-".join(words) if rnd(st.booleans()) else '"' + " ".join(words) + '"'
    if op == "near":
        left, right = args[0], args[1]
        return f"{_child(left, 4, rnd)} NEAR/{args[2]} {_child(right, 5, rnd)}"  # type: ignore[arg-type]
    if op == "or":
        return " OR ".join(_child(c, 2, rnd) for c in args)  # type: ignore[arg-type]
    if op == "and":
        glue = " AND " if rnd(st.booleans()) else " "
        return glue.join(_child(c, 3, rnd) for c in args)  # type: ignore[arg-type]
    if op == "not":
        return "NOT " + _child(args[0], 3, rnd)  # type: ignore[arg-type]
    if op == "field":
        return f"{args[0]}:" + _child(args[1], 5, rnd)  # type: ignore[arg-type]
    return f"lang:{args[0]}"


leaf = st.one_of(
    WORDS.map(lambda w: R("term", (w,))),
    st.sampled_from(["a", "b", "c"]).map(lambda w: R("prefix", (w,))),
    st.lists(WORDS, min_size=2, max_size=3).map(lambda ws: R("phrase", tuple(ws))),
)
span_query = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.tuples(inner, inner, st.integers(1, 4)).map(lambda t: R("near", t)),
        st.lists(inner, min_size=2, max_size=3).map(lambda cs: R("or", tuple(cs))),
    ),
    max_leaves=4,
)


def _bool_query(scoped: bool) -> st.SearchStrategy[R]:
    base = st.one_of(span_query, st.sampled_from(["en", "pt"]).map(lambda c: R("lang", (c,))))
    if not scoped:
        base = st.one_of(base, st.tuples(st.sampled_from(["title", "text"]), _bool_query(True)).map(
            lambda t: R("field", t)))
    return st.recursive(
        base,
        lambda inner: st.one_of(
            st.lists(inner, min_size=2, max_size=3).map(lambda cs: R("and", tuple(cs))),
            st.lists(inner, min_size=2, max_size=3).map(lambda cs: R("or", tuple(cs))),
            inner.map(lambda c: R("not", (c,))),
        ),
        max_leaves=5,
    )


query_strategy = st.deferred(lambda: _bool_query(False))
token_lists = st.lists(WORDS, max_size=8)


@settings(max_examples=600, deadline=None)
@given(query_strategy, token_lists, token_lists, st.sampled_from([None, "en", "EN-gb", "pt-BR"]), st.data())
def test_every_operator_agrees_with_the_reference(
    node: R, title: list[str], text: list[str], language: str | None, data: st.DataObject
) -> None:
    query = render(node, data.draw)
    expected = holds(node, {"title": title, "text": text}, language, ("title", "text"))
    got = match_query(query, Doc(" ".join(title), " ".join(text), language)).matched
    assert got == expected, query


@settings(max_examples=300, deadline=None)
@given(span_query, token_lists, st.data())
def test_near_and_phrases_agree_with_the_reference_in_one_field(
    node: R, text: list[str], data: st.DataObject
) -> None:
    query = render(node, data.draw)
    assert match_query(query, Doc("", " ".join(text))).matched == bool(spans(node, text)), query


@settings(max_examples=300, deadline=None)
@given(query_strategy, st.data())
def test_redundant_parentheses_do_not_change_the_parse(node: R, data: st.DataObject) -> None:
    query = render(node, data.draw)
    assert _strip_positions(parse(query)) == _strip_positions(parse(f"({query})"))


def _strip_positions(tree: object) -> str:
    return re.sub(r"pos=\d+", "", repr(tree))
