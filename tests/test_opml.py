"""OPML import/export: reading real and broken files, writing valid OPML 2.0, and the round trip."""

from __future__ import annotations

import csv
import string

import lxml.etree
import pytest
from conftest import shared_path
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer

from ingester.opml import OpmlError, OpmlFeed, read_opml, write_opml

NESTED = b"""<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0">
  <head><title>Subscriptions</title></head>
  <body>
    <outline type="rss" text="Top" xmlUrl="https://top.example.com/feed"/>
    <outline text="News">
      <outline text="World">
        <outline type="rss" text="Wire &amp; Co" title="ignored when text is set" xmlUrl="https://wire.example.org/rss?a=1&amp;b=2"/>
      </outline>
      <outline type="rss" title="Title attribute only" xmlUrl="http://paper.example.com/atom"/>
      <outline type="rss" text="Not http" xmlUrl="ftp://files.example.com/feed"/>
      <outline type="rss" text="Script" xmlUrl="javascript:alert(1)"/>
      <outline type="rss" text="Relative" xmlUrl="/feed.xml"/>
      <outline type="link" text="A page, not a feed" url="https://page.example.com/"/>
    </outline>
    <outline title="">
      <outline type="rss" text="Untitled group" xmlUrl="https://untitled.example.com/feed"/>
    </outline>
    <outline type="rss" text="Duplicate" xmlUrl="https://top.example.com/feed"/>
  </body>
</opml>
"""


def test_read_nested_outlines() -> None:
    assert read_opml(NESTED) == [
        OpmlFeed("https://top.example.com/feed", "Top", None),
        OpmlFeed("https://wire.example.org/rss?a=1&b=2", "Wire & Co", "News/World"),
        OpmlFeed("http://paper.example.com/atom", "Title attribute only", "News"),
        OpmlFeed("https://untitled.example.com/feed", "Untitled group", None),
    ]


def test_read_opml1_in_latin1() -> None:
    doc = '<?xml version="1.0" encoding="ISO-8859-1"?><opml version="1.0"><head/><body>'
    doc += '<outline text="Économie"><outline text="Café" xmlUrl="https://cafe.example.fr/rss"/></outline>'
    doc += "</body></opml>"
    assert read_opml(doc.encode("latin-1")) == [OpmlFeed("https://cafe.example.fr/rss", "Café", "Économie")]


def test_category_attribute_of_a_top_level_outline() -> None:
    doc = b'<opml version="2.0"><body><outline text="x" category="/Tech/Linux" xmlUrl="https://x.example/f"/>'
    doc += b"</body></opml>"
    assert read_opml(doc) == [OpmlFeed("https://x.example/f", "x", "Tech/Linux")]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty document"),
        (b"  \n", "empty document"),
        (NESTED[: len(NESTED) // 2], "malformed OPML"),
        (b"<!DOCTYPE html><html><body><p>Sign in</p></body></html>", "malformed OPML|not OPML"),
        (b'<rss version="2.0"><channel><title>t</title></channel></rss>', "not OPML"),
        (bytes(range(256)), "malformed OPML"),
        (b"https://feeds.example.org/list.opml", "malformed OPML"),
    ],
)
def test_broken_files_raise_opml_error(body: bytes, reason: str) -> None:
    with pytest.raises(OpmlError, match=reason):
        read_opml(body)


def test_a_url_as_content_is_not_fetched(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/list.opml").respond_with_data(NESTED, content_type="text/x-opml")
    with pytest.raises(OpmlError):
        read_opml(httpserver.url_for("/list.opml").encode())
    assert httpserver.log == []


@pytest.mark.timeout(20)
def test_entity_bomb_is_not_expanded() -> None:
    decls = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    doc = f'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY lol0 "lol">{decls}]><opml version="2.0"><body>'
    doc += '<outline text="&lol9;" xmlUrl="https://x.example/f"/></body></opml>'
    try:
        feeds = read_opml(doc.encode())
    except OpmlError:
        return
    assert all(len(f.title or "") < 100 for f in feeds)


def test_write_is_valid_opml2_with_escaping_and_nesting() -> None:
    feeds = [
        OpmlFeed("https://a.example/rss?x=1&y=2", 'Tom & "Jerry" <3', "News/World"),
        OpmlFeed("https://b.example/feed", "Bell\x07less\x00", "News"),  # XML cannot carry \x07 or \x00
        OpmlFeed("https://c.example/feed"),
    ]
    doc = write_opml(feeds, title="Mine & yours")
    root = lxml.etree.fromstring(doc)
    assert root.tag == "opml" and root.get("version") == "2.0"
    assert root.findtext("head/title") == "Mine & yours"
    (world_feed,) = root.findall("body/outline[@text='News']/outline[@text='World']/outline")
    assert world_feed.get("xmlUrl") == "https://a.example/rss?x=1&y=2"
    assert world_feed.get("text") == 'Tom & "Jerry" <3'
    bell = root.find("body/outline[@text='News']/outline[@xmlUrl='https://b.example/feed']")
    assert bell.get("text") == "Bellless"
    assert root.find("body/outline[@xmlUrl='https://c.example/feed']").get("text") == ""
    assert set(read_opml(doc)) == {feeds[0], OpmlFeed("https://b.example/feed", "Bellless", "News"), feeds[2]}


def test_write_of_nothing_reads_back_empty() -> None:
    assert read_opml(write_opml([])) == []


# Text that XML 1.0 can carry, with the characters that need escaping made likely.
_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cn"), include_characters="<>&\"'\t\n"),
    min_size=1, max_size=25,
).map(str.strip).filter(bool)
_segment = _text.map(lambda s: s.replace("/", "").strip()).filter(bool)
_host = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,6}){1,2}", fullmatch=True)
_path = st.text(string.ascii_letters + string.digits + "-._~/%?=&", max_size=30)
_feed = st.builds(
    OpmlFeed,
    url=st.builds(lambda host, path: f"https://{host}/{path}", _host, _path),
    title=st.none() | _text,
    category=st.none() | st.lists(_segment, min_size=1, max_size=3).map("/".join),
)


@settings(max_examples=200, deadline=None)
@given(feeds=st.lists(_feed, max_size=12, unique_by=lambda f: f.url), title=_text)
def test_round_trip(feeds: list[OpmlFeed], title: str) -> None:
    back = read_opml(write_opml(feeds, title=title))
    assert len(back) == len(feeds)
    assert set(back) == set(feeds)  # the order is grouped by category


def test_shared_opml_files_read_without_crashing() -> None:
    root = shared_path("feeds")
    with (root / "index.csv").open(encoding="utf-8") as index:
        paths = [row["path"] for row in csv.DictReader(index)]
    opml_files = [p for p in paths if b"<opml" in (root / p).read_bytes()[:2048].lower()]
    assert opml_files, "the index lists no OPML file"
    found = 0
    for path in opml_files:
        try:
            feeds = read_opml((root / path).read_bytes())
        except OpmlError:
            continue
        assert all(f.url.startswith(("http://", "https://")) for f in feeds), path
        found += len(feeds)
    print(f"\n{len(opml_files)} OPML files, {found} feeds")
    assert found > 0
