"""Make trafilatura cheaper in the extraction workers, without changing anything it computes.

Both switches are process-wide and applied once per worker (ingester.extract.warm_up); tests check
that records come out identical with and without them.

- `plain_html_elements`: lxml.html's default element lookup calls a Python method for each element
  proxy (form fields get their own classes), and trafilatura creates hundreds of thousands of proxies
  per page; a C-level lookup makes extraction ~14 % cheaper.
- `guard_regex_tests`: trafilatura's selectors test class and id attributes with EXSLT
  `re:test(@class, '...')`, which lxml runs as a Python callback for every element the predicate
  reaches, whether it has the attribute or not (~3,450 calls per news page). For an absent attribute
  the callback tests "", so where the pattern cannot match "" the test is false, and
  `((@class) and re:test(@class, '...'))` selects exactly the same nodes while libxml2 settles most
  elements in C: 8-10 % less extraction CPU (bench/speedups_bench.py).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import lxml.etree  # type: ignore[import-untyped, unused-ignore]
import lxml.html  # type: ignore[import-untyped, unused-ignore]
import trafilatura.utils

EXSLT_REGEXP = "http://exslt.org/regular-expressions"
# re:test(<attributes>, '<pattern>'[, '<flags>']): only an attribute union as the string tested
_RE_TEST = re.compile(r"""re:test\(\s*(@[\w:-]+(?:\s*\|\s*@[\w:-]+)*)\s*,\s*(['"])(.*?)\2\s*"""
                      r"""(?:,\s*(['"])(\w*)\4\s*)?\)""", re.DOTALL)

_guarded = False


def apply() -> None:
    """Both switches (once per process; applying them again changes nothing)."""
    plain_html_elements()
    guard_regex_tests()


def plain_html_elements() -> None:
    """Give every element of trafilatura's parser lxml.html's HtmlElement class without asking Python
    (pages have no forms worth keeping)."""
    trafilatura.utils.HTML_PARSER.set_element_class_lookup(lxml.etree.ElementDefaultClassLookup(
        element=lxml.html.HtmlElement, comment=lxml.html.HtmlComment,
        pi=lxml.html.HtmlProcessingInstruction, entity=lxml.html.HtmlEntity))


def guard(path: str) -> str:
    """The XPath with each `re:test` on attributes guarded by their presence, where that is exact:
    the pattern is a literal that cannot match the empty string (lxml tests "" for no attribute)."""
    def guarded(call: re.Match[str]) -> str:
        attributes, pattern, flags = call.group(1), call.group(3), call.group(5) or ""
        try:
            if re.search(pattern, "", re.IGNORECASE if "i" in flags else 0):
                return call.group(0)
        except re.error:
            return call.group(0)
        present = " or ".join(a.strip() for a in attributes.split("|"))
        return f"(({present}) and {call.group(0)})"

    return _RE_TEST.sub(guarded, path)


def guard_regex_tests() -> int:
    """Swap every selector of the loaded trafilatura modules for its guarded twin; returns how many.

    Lists of selectors are changed in place, so every module sharing them sees the change."""
    global _guarded
    if _guarded:
        return 0
    _guarded = True
    # id -> (selector, its twin); a twin maps to itself, and holding both keeps every id unique
    twins: dict[int, tuple[lxml.etree.XPath, lxml.etree.XPath]] = {}

    def twin(selector: lxml.etree.XPath) -> lxml.etree.XPath:
        if id(selector) not in twins:
            new = guarded_twin(selector)
            twins[id(selector)] = (selector, selector if new is None else new)
            if new is not None:
                twins[id(new)] = (new, new)
        return twins[id(selector)][1]

    for module, name, value in selectors():
        if isinstance(value, list):
            value[:] = [twin(selector) for selector in value]
        else:
            setattr(module, name, twin(value))
    return sum(old is not new for old, new in twins.values())


def guarded_twin(selector: lxml.etree.XPath) -> lxml.etree.XPath | None:
    """The selector with its attribute tests guarded, or None where the guard changes nothing."""
    path = guard(selector.path)
    if path == selector.path:
        return None
    try:
        return lxml.etree.XPath(path, namespaces={"re": EXSLT_REGEXP})
    except lxml.etree.XPathError:  # another namespace prefix: leave that selector as it is
        return None


def selectors() -> Iterator[tuple[object, str, lxml.etree.XPath | list[lxml.etree.XPath]]]:
    """(module, name, selector or list of selectors) in every loaded trafilatura module."""
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.split(".")[0] != "trafilatura":
            continue
        for name, value in list(vars(module).items()):
            selectors = value if isinstance(value, list) and value else [value]
            if all(isinstance(v, lxml.etree.XPath) for v in selectors):
                yield module, name, value
