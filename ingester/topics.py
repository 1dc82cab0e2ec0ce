"""Match articles against many topic queries, score the matches, and explain them.

A presearcher (after Lucene Monitor / Luwak) indexes every topic by a set of terms at least one of which
a matching article must contain, so an article only evaluates the topics its own tokens can satisfy: the
cost grows with the article, not with the number of topics. Matching is CPU-bound: callers on an event
loop run it in an executor.

The score sums the mentions of the query's positive clauses, each weighted by its position and by whether
it is enough on its own or needs company (an OR alternative that is a conjunction counts half).
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from ingester import query as q

if TYPE_CHECKING:
    from ingester.config import TopicConfig

# Relevance: each mention of the query's positive clauses, weighted by how early it comes (the inverted
# pyramid of news writing). See docs/queries.md, "Relevance score".
LEAD_SCALE = 25  # tokens, about one sentence: a mention this far into the text counts 1/2, 4x as far 1/5
MENTION_GAP = 10  # matches this close together (one phrase or sentence) are one mention
TITLE_WEIGHT = 1.0  # a mention in the title counts as much as one at the very start of the text
HEADLINE_MIN = 4  # a text that opens with this many tokens of the title repeats the headline
CONDITIONAL_WEIGHT = 0.5  # an OR alternative that needs another positive clause is half the evidence

Spans: TypeAlias = list[tuple[int, int]]  # inclusive token ranges, sorted by start
Key: TypeAlias = tuple[object, ...]  # a position-free, hashable form of a positional leaf


@dataclass
class Doc:
    title: str
    text: str
    language: str | None = None


@dataclass
class Fired:
    """One clause that matched, in one field, at these token ranges."""

    clause: str
    field: str
    spans: Spans
    words: list[str]  # the matched tokens, one string per span

    def __str__(self) -> str:
        where = ", ".join(f"{s}" if s == e else f"{s}-{e}" for s, e in self.spans[:8])
        more = f" (+{len(self.spans) - 8} more)" if len(self.spans) > 8 else ""
        sample = "; ".join(dict.fromkeys(self.words[:4]))
        return f"{self.clause} in {self.field} at {where}{more}: {sample}"


@dataclass
class Explanation:
    query: str
    matched: bool  # the boolean query is true
    score: float  # relevance, 0 when not matched
    min_score: float = 0.0
    fired: list[Fired] = field(default_factory=list)  # positive clauses that matched (not those under NOT)
    language: str | None = None

    @property
    def passed(self) -> bool:
        """Matched and relevant enough: what reaches the topic stream."""
        return self.matched and self.score >= self.min_score

    def __str__(self) -> str:
        verdict = "MATCH" if self.passed else ("below min_score" if self.matched else "no match")
        lines = [f"{verdict}: score {self.score:.3f} (min_score {self.min_score:g})", f"query: {self.query}"]
        lines += [f"  {f}" for f in self.fired] or ["  no positive clause matched"]
        return "\n".join(lines)


# --- the analysed article --------------------------------------------------------------------------------

class _Article:
    """An article tokenized once, with per-field token -> positions maps and a per-article span cache."""

    def __init__(self, doc: Doc) -> None:
        self.tokens = {"title": q.tokenize(doc.title), "text": q.tokenize(doc.text)}
        self.length = len(self.tokens["title"]) + len(self.tokens["text"])
        self.language = (doc.language or "").replace("_", "-").split("-")[0].lower() or None
        self._vocab: dict[str, list[str]] = {}
        self._spans: dict[int, Spans] = {}
        self._headline: int | None = None

    @property
    def headline(self) -> int:
        """How many opening text tokens repeat the title (extracted pages and digests often do)."""
        if self._headline is None:
            self._headline = _repeated_headline(self.tokens["title"], self.tokens["text"])
        return self._headline

    def vocabulary(self) -> set[str]:
        return set(self.tokens["title"]).union(self.tokens["text"])

    @functools.cached_property
    def positions(self) -> dict[str, dict[str, list[int]]]:
        """Field -> token -> positions; built only for an article some topic could match."""
        maps: dict[str, dict[str, list[int]]] = {}
        for name, tokens in self.tokens.items():
            positions: dict[str, list[int]] = {}
            for i, token in enumerate(tokens):
                positions.setdefault(token, []).append(i)
            maps[name] = positions
        return maps

    def spans(self, key: Key, fieldname: str, slot: int | None = None) -> Spans:
        """The matches of a positional clause in one field, computed once per article."""
        if slot is None:
            slot = _slot(key, fieldname)
        cached = self._spans.get(slot)
        if cached is None:
            cached = self._spans[slot] = self._compute(key, fieldname)
        return cached

    def _compute(self, key: Key, fieldname: str) -> Spans:
        kind = key[0]
        positions = self.positions[fieldname]
        if kind == "t":
            return [(p, p) for p in positions.get(str(key[1]), ())]
        if kind == "w":
            return self._prefix(str(key[1]), fieldname)
        if kind == "p":
            return _phrase(key[1], bool(key[2]), self.tokens[fieldname], positions)  # type: ignore[arg-type]
        if kind == "or":
            merged = heapq.merge(*(self.spans(k, fieldname) for k in key[1]))  # type: ignore[attr-defined]
            return list(dict.fromkeys(merged))
        left, right, distance = key[1], key[2], key[3]
        return _near(self.spans(left, fieldname), self.spans(right, fieldname), distance)  # type: ignore[arg-type]

    def _prefix(self, prefix: str, fieldname: str) -> Spans:
        vocab = self._vocab.get(fieldname)
        if vocab is None:
            vocab = self._vocab[fieldname] = sorted(self.positions[fieldname])
        found: list[int] = []
        for token in vocab[bisect.bisect_left(vocab, prefix):]:
            if not token.startswith(prefix):
                break
            found += self.positions[fieldname][token]
        return [(p, p) for p in sorted(found)]


_SLOTS: dict[tuple[Key, str], int] = {}  # (clause, field) -> small int: cheap cache keys shared by all topics


def _slot(key: Key, fieldname: str) -> int:
    return _SLOTS.setdefault((key, fieldname), len(_SLOTS))


def _repeated_headline(title: list[str], text: list[str]) -> int:
    """The end of a run of title tokens that the text opens with (allowing a short label such as "Topic:")."""
    need = min(HEADLINE_MIN, len(title))
    end = 0
    for start in range(min(3, len(text))):
        for j, token in enumerate(title):
            if token != text[start]:
                continue
            size = 0
            limit = min(len(text) - start, len(title) - j)
            while size < limit and text[start + size] == title[j + size]:
                size += 1
            if size >= need:
                end = max(end, start + size)
    return end


def _phrase(
    words: tuple[str, ...], wildcard: bool, tokens: list[str], positions: dict[str, list[int]]
) -> Spans:
    exact = words[:-1] if wildcard else words
    if any(w not in positions for w in exact):
        return []
    size = len(words)
    if not wildcard:
        return [(p, p + size - 1) for p in positions[words[0]] if tokens[p : p + size] == list(words)]
    head, last, end = list(exact), words[-1], size - 1
    return [
        (p, p + end)
        for p in positions[words[0]]
        if tokens[p : p + end] == head and p + end < len(tokens) and tokens[p + end].startswith(last)
    ]


def _near(left: Spans, right: Spans, distance: int) -> Spans:
    """Pairs of non-overlapping matches with a gap of 1..distance tokens, in either order; each spans both."""
    if not left or not right:
        return []
    starts = [s for s, _ in right]
    longest = max(e - s for s, e in right)
    found: set[tuple[int, int]] = set()
    for ls, le in left:
        lo = bisect.bisect_left(starts, ls - distance - longest)
        hi = bisect.bisect_right(starts, le + distance)
        for rs, re_ in right[lo:hi]:
            if 1 <= rs - le <= distance or 1 <= ls - re_ <= distance:
                found.add((min(ls, rs), max(le, re_)))
    return sorted(found)


# --- compiled queries ------------------------------------------------------------------------------------

def _key(node: q.Query) -> Key:
    """A position-free key, so equal clauses of different topics share one cached evaluation."""
    if isinstance(node, q.Term):
        return ("t", node.token)
    if isinstance(node, q.Prefix):
        return ("w", node.prefix)
    if isinstance(node, q.Phrase):
        return ("p", node.tokens, node.wildcard)
    if isinstance(node, q.Or):
        return ("or", tuple(_key(c) for c in node.children))
    assert isinstance(node, q.Near)
    return ("n", _key(node.left), _key(node.right), node.distance)


def _needed_tokens(key: Key) -> tuple[str, ...]:
    """Tokens that every match of the clause contains (a cheap test before computing spans)."""
    kind = key[0]
    if kind == "t":
        return (str(key[1]),)
    if kind == "p":
        words: tuple[str, ...] = key[1]  # type: ignore[assignment]
        return words[:-1] if key[2] else words
    if kind == "n":
        return _needed_tokens(key[1]) + _needed_tokens(key[2])  # type: ignore[arg-type]
    return ()


def _describe(key: Key) -> str:
    kind = key[0]
    if kind == "t":
        return str(key[1])
    if kind == "w":
        return f"{key[1]}*"
    if kind == "p":
        return '"' + " ".join(key[1]) + ("*" if key[2] else "") + '"'  # type: ignore[arg-type]
    if kind == "or":
        return "(" + " OR ".join(_describe(k) for k in key[1]) + ")"  # type: ignore[attr-defined]
    return f"{_describe(key[1])} NEAR/{key[3]} {_describe(key[2])}"  # type: ignore[arg-type]


Hits: TypeAlias = list[tuple[str, int, float]]  # (field, start position, weight) of positive matches


class _Node:
    __slots__ = ()

    def true(self, art: _Article) -> bool:
        raise NotImplementedError

    def evidence(self, art: _Article, fired: list[Fired] | None) -> Hits | None:
        """The positive matches that make this node true; None when it carries none (NOT, lang:)."""
        raise NotImplementedError


class _Leaf(_Node):
    __slots__ = ("fields", "key", "needs", "slots")

    def __init__(self, key: Key, fields: tuple[str, ...]) -> None:
        self.key, self.fields = key, fields
        self.slots = [(f, _slot(key, f)) for f in fields]
        self.needs = _needed_tokens(key)  # all must occur in a field before its spans are worth computing

    def true(self, art: _Article) -> bool:
        for name, slot in self.slots:
            positions = art.positions[name]
            if all(t in positions for t in self.needs) and art.spans(self.key, name, slot):
                return True
        return False

    def evidence(self, art: _Article, fired: list[Fired] | None) -> Hits:
        hits: Hits = []
        for name, slot in self.slots:
            spans = art.spans(self.key, name, slot)
            hits += [(name, s, 1.0) for s, _ in spans]
            if fired is not None and spans:
                words = [" ".join(art.tokens[name][s : e + 1]) for s, e in spans]
                fired.append(Fired(_describe(self.key), name, spans, words))
        return hits


class _And(_Node):
    __slots__ = ("children", "conditional")

    def __init__(self, children: list[_Node]) -> None:
        self.children = children
        # two or more positive operands: each needs the other, so as an alternative it is weaker evidence
        self.conditional = sum(_positive(c) for c in children) >= 2

    def true(self, art: _Article) -> bool:
        return all(c.true(art) for c in self.children)

    def evidence(self, art: _Article, fired: list[Fired] | None) -> Hits | None:
        # the first positive operand is the subject; the others qualify it, like a filter
        subject: Hits | None = None
        for child in self.children:
            hits = child.evidence(art, fired)
            if subject is None:
                subject = hits
                if hits is not None and fired is None:
                    break  # the qualifiers' matches are only wanted for an explanation
        return subject


class _Or(_Node):
    __slots__ = ("children",)

    def __init__(self, children: list[_Node]) -> None:
        self.children = children

    def true(self, art: _Article) -> bool:
        return any(c.true(art) for c in self.children)

    def evidence(self, art: _Article, fired: list[Fired] | None) -> Hits | None:
        # alternatives pool their matches: two synonyms in one sentence are still one mention
        pooled: Hits | None = None
        for child in self.children:
            if child.true(art) and (hits := child.evidence(art, fired)) is not None:
                if isinstance(child, _And) and child.conditional:
                    hits = [(f, p, w * CONDITIONAL_WEIGHT) for f, p, w in hits]
                pooled = hits if pooled is None else pooled + hits
        return pooled


class _Not(_Node):
    __slots__ = ("child",)

    def __init__(self, child: _Node) -> None:
        self.child = child

    def true(self, art: _Article) -> bool:
        return not self.child.true(art)

    def evidence(self, art: _Article, fired: list[Fired] | None) -> None:
        return None  # an exclusion is a filter, not evidence


class _Lang(_Node):
    __slots__ = ("code",)

    def __init__(self, code: str) -> None:
        self.code = code

    def true(self, art: _Article) -> bool:
        return art.language == self.code

    def evidence(self, art: _Article, fired: list[Fired] | None) -> None:
        return None


def _positive(node: _Node) -> bool:
    """Whether the node can carry evidence: it has a term, phrase or NEAR outside any NOT."""
    if isinstance(node, _Leaf):
        return True
    if isinstance(node, _And | _Or):
        return any(_positive(c) for c in node.children)
    return False


def _compile(node: q.Query, fields: tuple[str, ...] = q.FIELDS) -> _Node:
    if isinstance(node, q.Field):
        return _compile(node.child, (node.field,))
    if isinstance(node, q.And):
        return _And([_compile(c, fields) for c in node.children])
    if isinstance(node, q.Or):
        return _Or([_compile(c, fields) for c in node.children])
    if isinstance(node, q.Not):
        return _Not(_compile(node.child, fields))
    if isinstance(node, q.Lang):
        return _Lang(node.code)
    return _Leaf(_key(node), fields)


def weigh(hits: Hits, art: _Article) -> float:
    """Sum over mentions of weight / (1 + position / LEAD_SCALE); title mentions count TITLE_WEIGHT each.

    A mention is a run of matches less than MENTION_GAP tokens apart, as strong as its strongest match.
    Text positions count from the end of a repeated headline, so a headline copied into the text is neither
    counted twice nor taken as the lead.
    """
    title = sorted((p, w) for f, p, w in hits if f == "title")
    skip = art.headline
    text = sorted((p - skip, w) for f, p, w in hits if f == "text" and p >= skip)
    return TITLE_WEIGHT * sum(w for _, w in _mentions(title)) + sum(
        w / (1 + p / LEAD_SCALE) for p, w in _mentions(text)
    )


def _mentions(hits: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """(first position, strongest weight) of each run of positions less than MENTION_GAP apart."""
    runs: list[tuple[int, float]] = []
    last = -MENTION_GAP - 1
    for p, w in hits:
        if p - last > MENTION_GAP:
            runs.append((p, w))
        elif w > runs[-1][1]:
            runs[-1] = (runs[-1][0], w)
        last = p
    return runs


def relevance(root: _Node, art: _Article, fired: list[Fired] | None = None) -> float:
    """The score of a matching article; 1.0 when the query has no positive clause (lang:-only, NOT-only)."""
    hits = root.evidence(art, fired)
    return 1.0 if hits is None else round(weigh(hits, art), 3)


# --- presearcher -----------------------------------------------------------------------------------------

_COMMON = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "he", "in", "is", "it",
    "its", "new", "of", "on", "or", "s", "said", "says", "she", "that", "the", "they", "this", "to", "was",
    "were", "will", "with",
})


def _weight(term: tuple[str, str]) -> float:
    """How selective an index term probably is: long words are rare, stop words and short prefixes are not."""
    kind, text = term
    if text in _COMMON:
        return 0.1
    base = min(len(text), 8) / 8
    return float(base * (0.6 if kind == "w" else 1.0))


def _strength(terms: frozenset[tuple[str, str]]) -> float:
    return min(_weight(t) for t in terms) / math.sqrt(len(terms))


def required_terms(node: q.Query) -> frozenset[tuple[str, str]] | None:
    """Terms ("t", token) or prefixes ("w", prefix) of which any match must contain one; None if none."""
    if isinstance(node, q.Term):
        return frozenset({("t", node.token)})
    if isinstance(node, q.Prefix):
        return frozenset({("w", node.prefix)})
    if isinstance(node, q.Phrase):
        words = [("t", t) for t in node.tokens[:-1]]
        words.append(("w" if node.wildcard else "t", node.tokens[-1]))
        return frozenset({max(words, key=_weight)})
    if isinstance(node, q.Field):
        return required_terms(node.child)
    if isinstance(node, q.Near):
        sides = [t for side in (node.left, node.right) if (t := required_terms(side))]
        return max(sides, key=_strength, default=None)
    if isinstance(node, q.Or):
        union: set[tuple[str, str]] = set()
        for child in node.children:
            terms = required_terms(child)
            if terms is None:
                return None
            union |= terms
        return frozenset(union)
    if isinstance(node, q.And):
        conjuncts = [t for c in node.children if (t := required_terms(c))]
        return max(conjuncts, key=_strength, default=None)
    return None  # NOT and lang: require nothing


Test: TypeAlias = Callable[[_Article, dict[str, list[int]], dict[str, list[int]], list[_Node]], bool]
_FIELD_VAR = {"title": "t", "text": "x"}


def _source(node: _Node, nodes: list[_Node]) -> str:
    """A Python expression for the node's truth: single-word leaves become dict lookups inline."""
    if isinstance(node, _Leaf) and node.key[0] == "t":
        return "(" + " or ".join(f"{node.key[1]!r} in {_FIELD_VAR[f]}" for f in node.fields) + ")"
    if isinstance(node, _And | _Or):
        glue = " and " if isinstance(node, _And) else " or "
        return "(" + glue.join(_source(c, nodes) for c in node.children) + ")"
    if isinstance(node, _Not):
        return f"(not {_source(node.child, nodes)})"
    nodes.append(node)
    return f"n[{len(nodes) - 1}].true(a)"


def _test(root: _Node) -> tuple[Test, list[_Node]]:
    """The query's truth as one compiled function: a tenth of the cost of walking the tree per article."""
    nodes: list[_Node] = []
    expression = _source(root, nodes)
    test: Test = eval(f"lambda a, t, x, n: {expression}", {"__builtins__": {}})
    return test, nodes


@dataclass
class _Topic:
    name: str
    query: str
    min_score: float
    root: _Node

    def __post_init__(self) -> None:
        self.test, self.nodes = _test(self.root)

    def true(self, art: _Article) -> bool:
        return self.test(art, art.positions["title"], art.positions["text"], self.nodes)


class TopicSet:
    """Compiled topics with a presearch index; match() returns topic -> score for the relevant ones."""

    def __init__(self, topics: Sequence[TopicConfig]) -> None:
        self.topics: list[_Topic] = []
        self._by_name: dict[str, _Topic] = {}
        self._terms: dict[str, list[int]] = {}
        self._prefixes: dict[str, list[int]] = {}
        self._always: list[int] = []
        for index, config in enumerate(topics):
            ast = q.parse(config.query)
            topic = _Topic(config.name, config.query, config.min_score, _compile(ast))
            self.topics.append(topic)
            self._by_name[config.name] = topic
            self._index(index, required_terms(ast))

    def _index(self, index: int, terms: frozenset[tuple[str, str]] | None) -> None:
        if terms is None:
            self._always.append(index)
            return
        for kind, text in terms:
            (self._prefixes if kind == "w" else self._terms).setdefault(text, []).append(index)

    def candidates(self, vocabulary: AbstractSet[str]) -> list[int]:
        """Indexes of the topics an article with these tokens could match, in configuration order."""
        found = set(self._always)
        for term in self._terms.keys() & vocabulary:
            found.update(self._terms[term])
        if self._prefixes:
            words = sorted(vocabulary)
            for prefix, hit in self._prefixes.items():
                at = bisect.bisect_left(words, prefix)
                if at < len(words) and words[at].startswith(prefix):
                    found.update(hit)
        return sorted(found)

    def match(self, doc: Doc) -> dict[str, float]:
        """Topic name -> score for every topic whose query matches and whose score reaches its min_score."""
        art = _Article(doc)
        result: dict[str, float] = {}
        for index in self.candidates(art.vocabulary()):
            topic = self.topics[index]
            if topic.true(art):
                score = relevance(topic.root, art)
                if score >= topic.min_score:
                    result[topic.name] = score
        return result

    def match_all(self, doc: Doc) -> dict[str, float]:
        """Like match(), but evaluating every topic: the presearcher's reference, for tests and benchmarks."""
        art = _Article(doc)
        result: dict[str, float] = {}
        for topic in self.topics:
            if topic.true(art):
                score = relevance(topic.root, art)
                if score >= topic.min_score:
                    result[topic.name] = score
        return result

    def explain(self, name: str, doc: Doc) -> Explanation:
        topic = self._by_name.get(name)
        if topic is None:
            raise KeyError(f"no topic named {name!r}")
        return _explain(topic.query, topic.root, doc, topic.min_score)


def _explain(text: str, root: _Node, doc: Doc, min_score: float) -> Explanation:
    art = _Article(doc)
    fired: list[Fired] = []
    matched = root.true(art)
    score = relevance(root, art, fired)
    if not matched:
        score = 0.0
    return Explanation(text, matched, score, min_score, fired, art.language)


def match_query(query: str, doc: Doc, min_score: float = 0.0) -> Explanation:
    """Match one query without a configuration (`ingester match --query`); raises QueryError."""
    return _explain(query, _compile(q.parse(query)), doc, min_score)
