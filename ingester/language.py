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
MIN_CHARS = 200  # shorter text cannot overrule a declaration...
UNDECLARED_MIN_CHARS = 100  # ...but names the language of one that has none (0.5 % wrong at 100 chars)
CONFIDENCE = 0.9  # the detector's probability (calibrated for the text's length) needed to decide
KEEP_DECLARED = 0.05  # a declared language the detector gives at least this much is kept


ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv
dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig
ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh
mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru
rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug
uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())  # noqa: SIM905 (a table reads better as text). The 184 codes of the standard
_RETIRED = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}  # older codes, still written
_AS_MODELLED = {"nb": "no"}  # py3langid calls Bokmål "no" (Norwegian): a page's "nb" is that


def code(tag: str | None) -> str | None:
    """A declared language tag as ISO 639-1: "en-US", "de_DE", "FR" -> "en", "de", "fr". None for
    what names no language ("jp", "cz" and "us" are countries, not languages)."""
    if not tag:
        return None
    primary = re.split(r"[-_,;\s]", tag.strip(), maxsplit=1)[0].lower()
    primary = _RETIRED.get(primary, primary)
    return primary if primary in ISO_639_1 else None


def resolve(text: str, *declared: str | None) -> str | None:
    """The language of `text`: detected, or the first usable declaration (page before feed)."""
    stated = next((c for c in map(code, declared) if c), None)
    if len(text) < (MIN_CHARS if stated else UNDECLARED_MIN_CHARS):
        return stated
    ranking = _identifier().rank(text[:SAMPLE_CHARS])
    share = dict(ranking).get(_AS_MODELLED.get(stated, stated)) if stated else None
    if share is not None and share >= KEEP_DECLARED:
        return stated
    best, probability = ranking[0]
    if probability >= CONFIDENCE and code(best) == best:  # the model's 3-letter labels are not 639-1
        return str(best)
    return stated  # the text is not clear


@cache
def _identifier() -> LanguageIdentifier:
    """The model (~0.5 s to load): workers load it in their warm-up, before they fork."""
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def warm_up() -> None:
    _identifier()
