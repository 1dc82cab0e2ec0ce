"""ingester.speedups: trafilatura gets cheaper and computes exactly what it computed before."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from copy import copy

import lxml.etree  # type: ignore[import-untyped, unused-ignore]
import lxml.html  # type: ignore[import-untyped, unused-ignore]
import pytest
import trafilatura
import trafilatura.utils
from conftest import shared_path
from test_extract_quality import load_sample
from trafilatura.htmlprocessing import convert_tags, tree_cleaning
from trafilatura.settings import Extractor as Options

from ingester import speedups
from ingester.extract import Extracted, extract_sync


@pytest.mark.parametrize(("path", "guarded"), [
    (".//*[re:test(@class, 'a|b')]", ".//*[((@class) and re:test(@class, 'a|b'))]"),
    (".//div[@x or re:test(@id|@class, 'x(?:y|z)\\s', 'i')]",
     ".//div[@x or ((@id or @class) and re:test(@id|@class, 'x(?:y|z)\\s', 'i'))]"),
    ('.//*[not(re:test(@id, "a\\)b"))]', './/*[not(((@id) and re:test(@id, "a\\)b")))]'),
    # left alone: the pattern matches "" (an absent attribute), the string is not an attribute,
    # the pattern is not a valid regex
    (".//*[re:test(@id, '^$')]", None),
    (".//*[re:test(@id, 'a|')]", None),
    (".//*[re:test(@id, 'a*', 'i')]", None),
    (".//*[re:test(text(), 'a')]", None),
    (".//*[re:test(@id, 'a(')]", None),
])
def test_guard_rewrites_only_where_exact(path: str, guarded: str | None) -> None:
    assert speedups.guard(path) == (guarded or path)


def test_a_pattern_matching_empty_needs_no_guard_to_stay_exact() -> None:
    """lxml tests "" for an absent attribute: '^$' selects elements *without* an id, which a guard
    would lose; a pattern that cannot match "" selects the same nodes guarded or not."""
    root = lxml.etree.fromstring("<r><a id='x'/><b/><c id=''/><d class='x y'/></r>")
    for pattern in ("^$", "x", "^x|y$", "z"):
        path = f".//*[re:test(@id|@class, '{pattern}')]"
        plain, guarded = (lxml.etree.XPath(p, namespaces={"re": speedups.EXSLT_REGEXP})
                          for p in (path, speedups.guard(path)))
        assert plain(root) == guarded(root)
    empty_id = lxml.etree.XPath(".//*[re:test(@id, '^$')]", namespaces={"re": speedups.EXSLT_REGEXP})
    assert [e.tag for e in empty_id(root)] == ["b", "c", "d"]


def test_trafilatura_selectors_select_the_same_nodes_guarded() -> None:
    """Every selector the guard changes, on real pages as parsed and as trafilatura cleans them."""
    pages = load_sample(shared_path("pages", "trafilatura-eval"))[::4]
    selectors = {id(s): s for _, _, value in speedups.selectors()
                 for s in (value if isinstance(value, list) else [value])}.values()
    pairs = [(s, twin) for s in selectors if (twin := speedups.guarded_twin(s)) is not None]
    assert len(pairs) >= 15  # trafilatura 2.3's body, comment, discard, byline and title selectors
    options = Options(comments=False)
    selected = 0
    for html, url, _ in pages:
        raw = trafilatura.load_html(html)
        cleaned = convert_tags(tree_cleaning(copy(raw), options), options, url)
        for tree in (raw, cleaned):
            for plain, guarded in pairs:
                nodes = plain(tree)
                assert guarded(tree) == nodes, plain.path
                selected += len(nodes)
    assert selected > len(pages)  # the selectors did select: the comparison was not between empty sets


def _extract_all(apply: bool, pages: list[tuple[str, str]]) -> list[Extracted | None]:
    if apply:
        speedups.apply()
        assert speedups.guard_regex_tests() == 0  # applied once
    return [extract_sync(html, url) for html, url in pages]


def test_records_are_identical_with_speedups() -> None:
    """Extraction in a fresh process with and without the speed-ups, on the same real pages."""
    pages = [(html, url) for html, url, _ in load_sample(shared_path("pages", "trafilatura-eval"))[::4]]
    spawn = multiprocessing.get_context("spawn")
    results = []
    for apply in (False, True):
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            results.append(pool.submit(_extract_all, apply, pages).result(timeout=600))
    plain, fast = results
    assert fast == plain
    assert sum(r is not None and len(r.text) > 500 for r in plain) > len(pages) * 0.8


def test_plain_html_elements_takes_effect() -> None:
    speedups.plain_html_elements()
    try:
        tree = trafilatura.load_html("<html><body><form></form><p>x</p></body></html>")
        assert tree is not None  # a form is an HtmlElement, not lxml.html.FormElement: the lookup is in place
        assert type(tree.find(".//form")) is lxml.html.HtmlElement
    finally:
        trafilatura.utils.HTML_PARSER.set_element_class_lookup(lxml.html.HtmlElementClassLookup())
