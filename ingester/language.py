"""An article's language (ISO 639-1): what its text is written in, else what its page or feed declares.

Declarations are often a site's default rather than the article's. On the 986 texts of 200+
characters from ../shared/pages/trafilatura-eval/ (bench/language_bench.py), the text overrules 24
of the 921 pages that declare a language, nearly all of them German or Spanish articles under
`<html lang="en">`, and gives a language to 62 of the 65 that declare none. So the text decides when
py3langid (trafilatura's author's fork of langid.py) is confident and gives the declared language next
to no chance; otherwise, and for text too short to tell, the declaration stands. Detection is CPU
work: it runs in the worker processes.
"""

from __future__ import annotations

import re
from functools import cache

from py3langid.langid import MODEL_FILE, LanguageIdentifier  # type: ignore[import-untyped]

SAMPLE_CHARS = 1000  # the answer of 20,000 on 984 of those 986 texts, at a sixth of the cost
MIN_CHARS = 200  # shorter text is left to the declarations
CONFIDENCE = 0.9  # the detector's probability (calibrated for the text's length) needed to decide
KEEP_DECLARED = 0.05  # a declared language the detector gives at least this much is kept


def code(tag: str | None) -> str | None:
    """A declared language tag as ISO 639-1: "en-US", "de_DE", "FR" -> "en", "de", "fr"; else None."""
    if not tag:
        return None
    primary = re.split(r"[-_,;\s]", tag.strip(), maxsplit=1)[0].lower()
    return primary if len(primary) == 2 and primary.isascii() and primary.isalpha() else None


def resolve(text: str, *declared: str | None) -> str | None:
    """The language of `text`: detected, or the first usable declaration (page before feed)."""
    stated = next((c for c in map(code, declared) if c), None)
    if len(text) < MIN_CHARS:
        return stated
    ranking = _identifier().rank(text[:SAMPLE_CHARS])
    if stated and dict(ranking).get(stated, 1.0) >= KEEP_DECLARED:  # one the model lacks is kept too
        return stated
    best, probability = ranking[0]
    if probability >= CONFIDENCE and code(best) == best:  # 2-letter codes only: the record says 639-1
        return str(best)
    return stated


@cache
def _identifier() -> LanguageIdentifier:
    """The model (~0.5 s to load): workers load it in their warm-up, before they fork."""
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def warm_up() -> None:
    _identifier()
