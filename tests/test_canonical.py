"""Canonical URLs: normalisation, and when a page's own canonical link is believed."""

from __future__ import annotations

import pytest

from ingester.canonical import article_id, canonical_url, normalize_url, source_host

LINKED = "https://feeds.example.net/r/123"


@pytest.mark.parametrize(("url", "expected"), [
    # tracking parameters go, meaningful ones stay, sorted
    ("https://example.com/a?utm_source=rss&utm_medium=feed&utm_campaign=x&id=7",
     "https://example.com/a?id=7"),
    ("https://example.com/a?fbclid=IwAR0&gclid=Cj0&mc_cid=abc&mc_eid=def", "https://example.com/a"),
    ("https://example.com/search?q=ceasefire&page=2&ref=home", "https://example.com/search?page=2&q=ceasefire"),
    ("https://example.com/a?b=2&a=1&c=3", "https://example.com/a?a=1&b=2&c=3"),
    # fragments, case, default ports
    ("https://example.com/a#comments", "https://example.com/a"),
    ("HTTPS://WWW.Example.COM/News/Story", "https://www.example.com/News/Story"),
    ("https://example.com:443/a", "https://example.com/a"),
    ("http://example.com:80/a", "http://example.com/a"),
    ("http://example.com:8080/a", "http://example.com:8080/a"),
    ("https://example.com", "https://example.com/"),
    ("https://reader:s3cret@example.com/a", "https://example.com/a"),  # credentials are no part of it
    # IDN hosts: punycode and Unicode spellings meet
    ("https://xn--bcher-kva.example/a", "https://bücher.example/a"),
    ("https://BÜCHER.example/a", "https://bücher.example/a"),
])
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_routes_to_one_article_give_one_id() -> None:
    routes = [
        canonical_url(LINKED, "https://www.example.com/world/story-1?utm_source=rss", None),
        canonical_url(LINKED, "https://www.example.com/world/story-1#top", None),
        canonical_url(LINKED, "https://WWW.EXAMPLE.COM:443/world/story-1?fbclid=x", None),
        canonical_url(LINKED, "https://amp.example.com/world/story-1.amp",
                      "https://www.example.com/world/story-1"),
        canonical_url(LINKED, "https://m.example.com/world/story-1",
                      "https://www.example.com/world/story-1?utm_campaign=c"),
    ]
    assert set(routes) == {"https://www.example.com/world/story-1"}
    assert len({article_id(r) for r in routes}) == 1
    assert len(article_id(routes[0])) == 24
    assert article_id(routes[0]) != article_id("https://www.example.com/world/story-2")


@pytest.mark.parametrize(("final", "page_canonical", "expected"), [
    # www vs bare host, and AMP hosts, are the same site
    ("https://example.com/a/1", "https://www.example.com/a/1", "https://www.example.com/a/1"),
    ("https://www.example.com/a/1", "https://example.com/a/1", "https://example.com/a/1"),
    ("https://amp.example.com/a/1", "https://www.example.com/a/1", "https://www.example.com/a/1"),
    ("https://www.example.com/a/1/amp", "https://www.example.com/a/1", "https://www.example.com/a/1"),
    # registered domains under a public suffix: another registrant is another site
    ("https://www.bbc.co.uk/news/1", "https://amp.bbc.co.uk/news/1", "https://amp.bbc.co.uk/news/1"),
    ("https://www.bbc.co.uk/news/1", "https://other.co.uk/news/1", "https://www.bbc.co.uk/news/1"),
    # relative canonicals resolve against the final URL
    ("https://www.example.com/a/1?x=1", "/a/one", "https://www.example.com/a/one"),
    ("https://www.example.com/a/1", "one", "https://www.example.com/a/one"),
    ("https://www.example.com/a/1", "//example.com/a/one", "https://example.com/a/one"),
    # the canonical is normalised too
    ("https://www.example.com/a/1", "HTTPS://WWW.example.com/a/1?utm_source=x#c", "https://www.example.com/a/1"),
    # IDN: the same site in either spelling
    ("https://bücher.de/a", "https://www.xn--bcher-kva.de/b", "https://www.bücher.de/b"),
    ("https://bücher.de/a", "https://xn--bcher-kva.com/b", "https://bücher.de/a"),
    # hosts without a registered domain (addresses) must match host and port exactly
    ("http://127.0.0.1:8080/news/1", "http://127.0.0.1:8080/c/1", "http://127.0.0.1:8080/c/1"),
    ("http://127.0.0.1:8080/news/1", "http://127.0.0.1:9090/c/1", "http://127.0.0.1:8080/news/1"),
])
def test_page_canonical(final: str, page_canonical: str, expected: str) -> None:
    assert canonical_url(LINKED, final, page_canonical) == expected


@pytest.mark.parametrize("page_canonical", [
    "https://www.other-site.com/a/1",  # another site
    "https://example.com.evil.net/a/1",  # a look-alike host
    "https://www.example.org/a/1",  # same name, other suffix
    "https://www.example.com/",  # homepage: a common CMS bug
    "https://www.example.com",
    "/",
    "javascript:alert(1)",  # not http(s)
    "ftp://www.example.com/a/1",
    "data:text/html,hi",
    "mailto:news@example.com",
    "https://www.example.com:notaport/a/1",  # malformed
    "http://[::1/a",
    "   ",
])
def test_untrusted_canonical_is_refused(page_canonical: str) -> None:
    final = "https://www.example.com/a/1?utm_source=x"
    assert canonical_url(LINKED, final, page_canonical) == "https://www.example.com/a/1"


def test_homepage_canonical_is_kept_for_the_homepage() -> None:
    assert canonical_url(LINKED, "https://example.com/", "https://www.example.com/") == "https://www.example.com/"


def test_linked_url_is_used_without_a_final_url() -> None:
    assert canonical_url("https://example.com/a?utm_medium=rss", "", None) == "https://example.com/a"


@pytest.mark.parametrize(("url", "host"), [
    ("https://www.example.com/a", "example.com"),
    ("https://WWW.Example.com:8443/a", "example.com"),
    ("https://amp.example.com/a", "amp.example.com"),
    ("https://www.xn--bcher-kva.example/a", "bücher.example"),
    ("http://127.0.0.1:8080/a", "127.0.0.1"),
    ("https://wwwexample.com/a", "wwwexample.com"),
])
def test_source_host(url: str, host: str) -> None:
    assert source_host(url) == host
