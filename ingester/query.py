"""The topic query language: tokenizer, AST and a lark parser that reports errors by position.

The grammar's precedence, tightest first: field scope and grouping, NEAR, NOT, AND (explicit or
implicit), OR. docs/queries.md is the user-facing description; this module is its contract.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import TypeAlias

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

FIELDS = ("title", "text")


class QueryError(ValueError):
    """A malformed query; `position` is the 0-based character offset of the problem."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"invalid query at position {position}: {reason}")
        self.position = position
        self.reason = reason


# --- tokenizer -------------------------------------------------------------------------------------------

class _Folded(dict[int, str]):
    """A str.translate table from each character to its folded form, filled lazily so translate stays in C.

    Folding character by character equals folding the whole text: case folding and NFKD decomposition
    work per character, and the only characters NFKD reorders are the combining marks dropped here.
    """

    def __missing__(self, codepoint: int) -> str:
        decomposed = unicodedata.normalize("NFKD", chr(codepoint).casefold())
        value = "".join(c for c in decomposed if not unicodedata.combining(c))
        value = self[codepoint] = value.casefold()  # NFKD can expose compatibility capitals (ℌ -> H)
        return value


_FOLDED = _Folded()
_ALNUM_RUN = re.compile(r"[^\W_]+")  # \w is exactly str.isalnum() plus "_", so this is runs of isalnum


def fold(text: str) -> str:
    """Case-fold, NFKD-decompose and drop combining marks (Zürich -> zurich)."""
    return text.lower() if text.isascii() else text.translate(_FOLDED)


def tokenize(text: str) -> list[str]:
    """The tokens of `text`: folded, split on every character that is not alphanumeric."""
    return _ALNUM_RUN.findall(fold(text))


# --- AST -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Term:
    token: str
    pos: int = 0


@dataclass(frozen=True, slots=True)
class Phrase:
    tokens: tuple[str, ...]  # two or more consecutive tokens
    pos: int = 0
    wildcard: bool = False  # the last token is a prefix: "humanitarian pause*"


@dataclass(frozen=True, slots=True)
class Prefix:
    prefix: str  # matches any token starting with it
    pos: int = 0


@dataclass(frozen=True, slots=True)
class Near:
    left: Span
    right: Span
    distance: int  # gap between the matches: adjacent tokens are 1
    pos: int = 0


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Query, ...]
    pos: int = 0


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Query, ...]
    pos: int = 0


@dataclass(frozen=True, slots=True)
class Not:
    child: Query
    pos: int = 0


@dataclass(frozen=True, slots=True)
class Field:
    field: str  # "title" or "text"
    child: Query
    pos: int = 0


@dataclass(frozen=True, slots=True)
class Lang:
    code: str  # primary subtag, lower case
    pos: int = 0


Leaf: TypeAlias = Term | Phrase | Prefix
Span: TypeAlias = "Leaf | Near | Or"  # what NEAR accepts: Or here holds only spans
Query: TypeAlias = "Term | Phrase | Prefix | Near | Or | And | Not | Field | Lang"


def is_span(node: Query) -> bool:
    """True for what has token positions: terms, phrases, wildcards, NEARs and OR-groups of those."""
    if isinstance(node, Term | Phrase | Prefix | Near):
        return True
    return isinstance(node, Or) and all(is_span(c) for c in node.children)


# --- parser ----------------------------------------------------------------------------------------------

_GRAMMAR = r"""
start: or_expr
?or_expr: and_expr (OR and_expr)*
?and_expr: not_expr (AND? not_expr)*
?not_expr: NOT not_expr -> not_
         | near_expr
?near_expr: near_expr NEAR primary -> near
          | primary
?primary: LPAR or_expr RPAR -> group
        | FIELD primary -> field
        | LANG -> lang
        | PHRASE -> phrase
        | WORD -> word

OR.3: /OR(?![^\s()"“”])/
AND.3: /AND(?![^\s()"“”])/
NOT.3: /NOT(?![^\s()"“”])/
NEAR.3: /NEAR(\/[^\s()"“”]*)?(?![^\s()"“”])/
FIELD.3: /(title|text):/
LANG.3: /lang:[^\s()"“”]*/
LPAR: "("
RPAR: ")"
PHRASE: /"[^"]*"|“[^”]*”/
WORD: /[^\s()"“”]+/
%ignore /\s+/
"""

# the basic lexer: an operator is an operator wherever it stands, so "OR a" is an error, not the term "or"
_PARSER = Lark(_GRAMMAR, parser="lalr", lexer="basic", maybe_placeholders=False)
_LANG_CODE = re.compile(r"[A-Za-z]{2,3}")


def parse(text: str) -> Query:
    """The AST of `text`; QueryError (a ValueError) names the position and reason of any fault."""
    if not text.strip():
        raise QueryError(0, "the query is empty")
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None
    try:
        node: Query = _Build().transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, QueryError):
            raise exc.orig_exc from None
        raise
    return node


def _syntax_error(text: str, exc: UnexpectedInput) -> QueryError:
    if isinstance(exc, UnexpectedCharacters):  # the only character the lexer cannot start on is a quote
        return QueryError(exc.pos_in_stream or 0, "unterminated phrase: the closing quote is missing")
    if not isinstance(exc, UnexpectedToken):
        return QueryError(len(text), "unexpected end of query")
    token = exc.token
    if token.type == "$END":
        if (open_at := _unclosed_paren(text)) is not None:
            return QueryError(open_at, "unbalanced parenthesis: this '(' is never closed")
        return QueryError(len(text), "the query ends where a term is expected (dangling operator?)")
    pos = token.start_pos if token.start_pos is not None else len(text)
    if token.type == "RPAR":
        if _unclosed_paren(text[:pos]) is None:
            return QueryError(pos, "unbalanced parenthesis: this ')' has no matching '('")
        return QueryError(pos, "a term is expected before ')'")
    if token.type in ("OR", "AND", "NEAR"):
        return QueryError(pos, f"{token.type} needs a term on each side")
    if token.type == "NOT":
        return QueryError(pos, "NOT cannot follow NEAR or a field scope (write NOT title:(...))")
    return QueryError(pos, f"unexpected {token.value!r}")


def _unclosed_paren(text: str) -> int | None:
    """The position of the innermost '(' left open in `text`, ignoring quoted phrases."""
    stack: list[int] = []
    for m in re.finditer(r'"[^"]*"|“[^”]*”|[()]', text):
        if m.group() == "(":
            stack.append(m.start())
        elif m.group() == ")" and stack:
            stack.pop()
    return stack[-1] if stack else None


def _pos(node: Query | Token) -> int:
    if isinstance(node, Token):
        return node.start_pos or 0
    return node.pos


class _Build(Transformer[Token, Query]):
    """Tree -> AST, with the checks a grammar cannot express (operands of NEAR, wildcards, lang codes)."""

    def start(self, children: list[Query]) -> Query:
        return children[0]

    def or_expr(self, children: list[Query | Token]) -> Query:
        nodes = tuple(c for c in children if not isinstance(c, Token))
        return Or(nodes, _pos(nodes[0]))

    def and_expr(self, children: list[Query | Token]) -> Query:
        nodes = tuple(c for c in children if not isinstance(c, Token))
        return And(nodes, _pos(nodes[0]))

    def not_(self, children: list[Query | Token]) -> Query:
        op, child = children
        assert isinstance(op, Token) and not isinstance(child, Token)
        return Not(child, _pos(op))

    def near(self, children: list[Query | Token]) -> Query:
        left, op, right = children
        assert isinstance(op, Token) and not isinstance(left, Token) and not isinstance(right, Token)
        distance = _near_distance(op)
        for operand in (left, right):
            if not is_span(operand):
                raise QueryError(_pos(operand), _bad_near_operand(operand))
        return Near(left, right, distance, _pos(left))  # type: ignore[arg-type]  # checked by is_span

    def group(self, children: list[Query | Token]) -> Query:
        node = children[1]
        assert not isinstance(node, Token)
        return node

    def field(self, children: list[Query | Token]) -> Query:
        scope, child = children
        assert isinstance(scope, Token) and not isinstance(child, Token)
        if _has_field(child):
            raise QueryError(_pos(child), "field scopes cannot be nested")
        return Field(str(scope)[:-1], child, _pos(scope))

    def lang(self, children: list[Token]) -> Query:
        token = children[0]
        code = str(token)[len("lang:"):]
        if not _LANG_CODE.fullmatch(code):
            reason = f"lang: needs a primary language subtag such as en or pt, got {code!r}"
            raise QueryError(_pos(token), reason)
        return Lang(code.lower(), _pos(token))

    def phrase(self, children: list[Token]) -> Query:
        token = children[0]
        return _words(str(token)[1:-1], _pos(token) + 1)

    def word(self, children: list[Token]) -> Query:
        token = children[0]
        return _words(str(token), _pos(token))


def _words(text: str, pos: int) -> Query:
    """A term, phrase or wildcard from a bare word or a phrase's inside; a trailing '*' makes a prefix."""
    star = text.find("*")
    wildcard = star == len(text) - 1 and star >= 0
    if star >= 0 and not wildcard:
        raise QueryError(pos + star, "'*' is only allowed at the end of a word")
    tokens = tokenize(text[:-1] if wildcard else text)
    if not tokens:
        raise QueryError(pos, f"{text!r} has no letters or digits")
    if wildcard and not text[-2:-1].isalnum():
        raise QueryError(pos + star, "'*' must follow a letter or digit")
    if len(tokens) == 1:
        return Prefix(tokens[0], pos) if wildcard else Term(tokens[0], pos)
    return Phrase(tuple(tokens), pos, wildcard)


def _near_distance(op: Token) -> int:
    spec = str(op)[len("NEAR"):]
    if not re.fullmatch(r"/\d{1,6}", spec) or int(spec[1:]) < 1:
        raise QueryError(_pos(op), "NEAR needs a distance of at least 1, as in NEAR/5")
    return int(spec[1:])


def _bad_near_operand(node: Query) -> str:
    kind = {Field: "a field scope", Lang: "lang:", Not: "NOT", And: "AND"}.get(type(node), "an AND/NOT group")
    hint = " (put the scope around the NEAR: title:(a NEAR/3 b))" if isinstance(node, Field) else ""
    return f"NEAR takes terms, phrases, wildcards, OR-groups of those or another NEAR, not {kind}{hint}"


def _has_field(node: Query) -> bool:
    if isinstance(node, Field):
        return True
    if isinstance(node, And | Or):
        return any(_has_field(c) for c in node.children)
    if isinstance(node, Not):
        return _has_field(node.child)
    return False


def leaves(node: Query) -> list[Term | Phrase | Prefix | Near]:
    """The positional leaves (terms, phrases, wildcards, whole NEARs) of a query, in order."""
    if isinstance(node, Term | Phrase | Prefix | Near):
        return [node]
    if isinstance(node, And | Or):
        return [leaf for c in node.children for leaf in leaves(c)]
    if isinstance(node, Not | Field):
        return leaves(node.child)
    return []


__all__ = [
    "And", "Field", "Lang", "Leaf", "Near", "Not", "Or", "Phrase", "Prefix", "Query", "QueryError",
    "Span", "Term", "fold", "is_span", "leaves", "parse", "tokenize",
]
