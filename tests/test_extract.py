"""Extraction: metadata, feed HTML, and a worker pool that survives hostile pages, hangs and dead workers."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trafilatura
from pytest_httpserver import HTTPServer

from ingester.config import NetworkConfig
from ingester.extract import (
    MAX_TEXT_CHARS,
    Extracted,
    ExtractError,
    Extractor,
    ExtractTimeout,
    _page_meta,
    extract_sync,
    html_to_text,
)
from ingester.safehttp import SafeClient, decode_html

URL = "https://www.example.com/world/2025/03/ceasefire-talks"
PARAGRAPHS = [
    "Leaders of the so-called coalition of the willing met in London on Sunday to discuss a ceasefire.",
    "The talks, hosted by the prime minister, focused on security guarantees for Ukraine after a truce.",
    "Officials said that the meeting produced a commitment to keep up military support and sanctions.",
    "A spokesperson added that further meetings of defence chiefs would follow in the coming weeks.",
]


def article_page(*, lang: str = 'lang="en-GB"', head: str = "", body_extra: str = "") -> str:
    paragraphs = "".join(f"<p>{p}</p>" for p in PARAGRAPHS)
    return f"""<!DOCTYPE html><html {lang}><head><meta charset="utf-8">
<title>Ceasefire talks in London | Example News</title>
<link rel="canonical" href="/world/2025/03/ceasefire-talks?utm_source=canonical">
<meta property="og:site_name" content="Example News">
<meta property="og:title" content="Ceasefire talks in London">
<meta property="article:published_time" content="2025-03-02T18:30:00+01:00">
<meta name="author" content="Jane Doe; John Roe">
{head}</head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/world">World</a></li></ul></nav>
<main><article><h1>Ceasefire talks in London</h1>{paragraphs}{body_extra}</article></main>
<section id="comments" class="comments"><h2>Comments</h2>
<div class="comment"><p>Reader comment: this is the worst idea I have heard all year.</p></div></section>
<footer><p>Copyright Example News 2025. All rights reserved.</p></footer></body></html>"""


@pytest.fixture(scope="module")
def extractor() -> Iterator[Extractor]:
    pool = Extractor(workers=2, timeout=60)
    yield pool
    pool.close()


def test_extract_sync_text_and_metadata() -> None:
    result = extract_sync(article_page(), URL)
    assert result is not None
    assert result.title == "Ceasefire talks in London"
    for paragraph in PARAGRAPHS:
        assert paragraph in result.text
    assert "Reader comment" not in result.text  # comments are not the article
    assert "All rights reserved" not in result.text
    assert result.authors == ["Jane Doe", "John Roe"]
    assert result.published_at == "2025-03-02T17:30:00Z"  # converted to UTC
    assert result.language == "en"
    assert result.canonical == "https://www.example.com/world/2025/03/ceasefire-talks?utm_source=canonical"
    assert result.sitename == "Example News"


def test_metadata_fallbacks() -> None:
    head = '<meta property="og:locale" content="de_DE"><meta property="og:url" content="https://example.com/og">'
    page = article_page(lang="", head=head).replace('<link rel="canonical"', '<link rel="alternate"')
    page = page.replace('content="2025-03-02T18:30:00+01:00"', 'content="2025-03-02"')
    result = extract_sync(page, URL)
    assert result is not None
    assert result.language == "en"  # the text's: it overrules og:locale (ingester.language)
    assert result.canonical == "https://example.com/og"
    assert result.published_at == "2025-03-02T00:00:00Z"  # a day only: midnight UTC


@pytest.mark.parametrize(("lang", "head"), [
    ('lang="de-AT"', ""),
    ('xml:lang="de"', ""),
    ("", '<meta property="og:locale" content="de_DE">'),
    ("", '<meta http-equiv="Content-Language" content="de">'),
    ('lang=""', '<meta name="language" content="DE">'),
])
def test_declared_language(lang: str, head: str) -> None:
    tree = trafilatura.load_html(article_page(lang=lang, head=head))
    assert _page_meta(tree, URL)[0] == "de"


def test_no_main_text_gives_none() -> None:
    assert extract_sync("<html><head><title>Empty</title></head><body><img src=a.png></body></html>",
                        URL) is None
    assert extract_sync("<html><body><script>var a = 'not text';</script></body></html>", URL) is None
    assert extract_sync("", URL) is None
    assert extract_sync("   \n", URL) is None


def test_html_to_text() -> None:
    html = ("<p>First &amp; foremost,<br>a line.</p><script>alert('x')</script><style>p{}</style>"
            "<ul><li>one</li><li>two</li></ul>tail <b>bold</b>\u00a0 text")
    assert html_to_text(html) == "First & foremost,\na line.\none\ntwo\ntail bold text"
    assert html_to_text("Plain text, no markup.") == "Plain text, no markup."
    assert html_to_text('<?xml version="1.0" encoding="utf-8"?><p>declared</p>') == "declared"
    assert html_to_text("") == ""
    assert html_to_text("<p>unclosed <div>nested") == "unclosed\nnested"
    assert html_to_text("<div>" * 5000 + "deep" + "</div>" * 5000) in ("deep", "")


async def test_pool_matches_direct_extraction(extractor: Extractor) -> None:
    page = article_page()
    results = await asyncio.gather(*(extractor.extract(page, URL) for _ in range(4)))
    assert results == [extract_sync(page, URL)] * 4
    assert isinstance(results[0], Extracted)


@pytest.mark.parametrize("tag", ["div", "span", "b", "blockquote", "section"])
def test_deep_nesting_does_not_blow_the_stack(tag: str) -> None:
    deep = f"<{tag}>" * 5000 + "<p>buried</p>" + f"</{tag}>" * 5000
    extract_sync(article_page(body_extra=deep), URL)  # must return, whatever it keeps
    lists = "<ul><li>" * 5000 + "x" + "</li></ul>" * 5000
    tables = "<table><tr><td>" * 3000 + "x" + "</td></tr></table>" * 3000
    for body in (lists, tables):
        extract_sync(article_page(body_extra=body), URL)


async def test_deep_nesting_in_the_pool_keeps_the_text_before_it(extractor: Extractor) -> None:
    page = article_page(body_extra="<div>" * 5000 + "<p>buried</p>" + "</div>" * 5000)
    result = await extractor.extract(page, URL)
    assert result is not None and PARAGRAPHS[0] in result.text


async def test_huge_pages_survive(extractor: Extractor) -> None:
    para = "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod. " * 4 + "</p>"
    flat = "<html><body>" + ("<div>" + para + "</div>") * (20_000_000 // (len(para) + 11)) + "</body></html>"
    nested = "<html><body>" + ("<div><div><div>" + para) * (20_000_000 // (len(para) + 15)) + "</body></html>"
    assert len(flat) > 19_000_000 and len(nested) > 19_000_000
    flat_result, nested_result = await asyncio.gather(extractor.extract(flat, URL),
                                                      extractor.extract(nested, URL))
    assert flat_result is not None and len(flat_result.text) <= MAX_TEXT_CHARS
    assert nested_result is None or len(nested_result.text) <= MAX_TEXT_CHARS
    assert await extractor.extract(article_page(), URL) is not None


@pytest.fixture
def client() -> Iterator[SafeClient]:
    network = NetworkConfig.model_validate({"allow_private": ["127.0.0.0/8"], "timeout": 10.0})
    yield SafeClient(network)


async def fetch_text(client: SafeClient, url: str) -> str:
    response = await client.get(url)
    await client.aclose()
    return decode_html(response.content, response.headers.get("content-type", ""))


async def test_gzip_body_served_as_text_html(httpserver: HTTPServer, client: SafeClient,
                                             extractor: Extractor) -> None:
    body = gzip.compress(article_page().encode())
    httpserver.expect_request("/gz").respond_with_data(body, content_type="text/html")
    text = await fetch_text(client, httpserver.url_for("/gz"))
    assert text.startswith("\x1f")  # the garbage string the caller ends up with
    assert extract_sync(text, URL) is None
    assert await extractor.extract(text, URL) is None
    # garbage that does not start with the magic number is caught by its control characters
    assert extract_sync("<html>" + body.decode("latin-1"), URL) is None


@pytest.mark.parametrize(("body", "content_type", "expected"), [
    # declared utf-8, really cp1252: the decoder falls back and the text stays right
    (article_page(body_extra="<p>Un café à Genève, déjà vu.</p>").encode("cp1252"),
     "text/html; charset=utf-8", "café à Genève"),
    # declared latin-1, really utf-8: mojibake, but the page survives
    (article_page(body_extra="<p>Un café à Genève, déjà vu.</p>").encode("utf-8"),
     "text/html; charset=iso-8859-1", "cafÃ©"),
    # declared a charset that does not exist
    (article_page().encode("utf-8"), "text/html; charset=x-no-such-charset", PARAGRAPHS[0]),
])
async def test_wrong_charset(httpserver: HTTPServer, client: SafeClient, extractor: Extractor,
                             body: bytes, content_type: str, expected: str) -> None:
    httpserver.expect_request("/page").respond_with_data(body, content_type=content_type)
    result = await extractor.extract(await fetch_text(client, httpserver.url_for("/page")), URL)
    assert result is not None and expected in result.text


async def test_timeout_replaces_the_worker() -> None:
    pool = Extractor(workers=1, timeout=1.0)
    try:
        await pool.extract(article_page(), URL)  # workers up and warm
        with pytest.raises(ExtractTimeout):
            await pool._pool.run(time.sleep, 60)  # a hung worker: same pool path as a page
        assert await pool.extract(article_page(), URL) is not None
    finally:
        pool.close()


PRELOAD_PROBE = """
import asyncio, sys, time
from ingester.extract import Extractor, ExtractTimeout

def preloaded() -> bool:
    return "ingester.extract_preload" in sys.modules

async def main() -> None:
    pool = Extractor(workers=1, timeout=0.5)
    await pool.start()
    first = await pool._pool.run(preloaded)
    try:
        await pool._pool.run(time.sleep, 60)
    except ExtractTimeout:
        pass
    print(first, await pool._pool.run(preloaded))  # the replacement worker
    pool.close()

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_workers_replaced_after_a_timeout_start_warm(tmp_path: Path) -> None:
    """The forkserver warms up once (ingester.extract_preload); every worker forked from it has that.
    In a fresh interpreter: this test process's forkserver may have started without the preload."""
    probe = tmp_path / "probe.py"
    probe.write_text(PRELOAD_PROBE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


async def test_a_real_page_over_the_timeout_is_cut() -> None:
    para = "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod. " * 4 + "</p>"
    huge = "<html><body>" + ("<div>" + para + "</div>") * 20_000 + "</body></html>"  # ~6 MB, seconds
    pool = Extractor(workers=1, timeout=0.05)
    try:
        await pool._pool.run(os.getpid)  # workers up and warm
        with pytest.raises(ExtractTimeout):
            await pool.extract(huge, URL)
        assert await pool._pool.run(os.getpid) > 0
    finally:
        pool.close()


async def test_cancelling_a_call_stops_its_worker() -> None:
    pool = Extractor(workers=1, timeout=3600)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool._pool.run(time.sleep, 3600), 1.0)
        # the only worker is free again, not still sleeping
        assert await asyncio.wait_for(pool.extract(article_page(), URL), 60) is not None
    finally:
        pool.close()


async def test_pool_survives_sigkill_of_idle_and_busy_workers() -> None:
    pool = Extractor(workers=1, timeout=60)
    try:
        idle = await pool._pool.run(os.getpid)
        os.kill(idle, signal.SIGKILL)
        await asyncio.sleep(0.5)
        assert await pool.extract(article_page(), URL) is not None

        busy = await pool._pool.run(os.getpid)
        assert busy != idle
        task = asyncio.ensure_future(pool._pool.run(time.sleep, 30))
        await asyncio.sleep(0.5)
        os.kill(busy, signal.SIGKILL)
        with pytest.raises(ExtractError, match="worker died"):
            await task
        assert await pool.extract(article_page(), URL) is not None
    finally:
        pool.close()


async def test_workers_are_memory_capped_and_warm() -> None:
    cap = 512 * 1024**2
    pool = Extractor(workers=1, timeout=60, memory_limit=cap)
    try:
        rlimit = "__import__('resource').getrlimit(__import__('resource').RLIMIT_AS)[0]"
        assert await pool._pool.run(eval, rlimit) == cap
        with pytest.raises(MemoryError):  # raised in the worker, which lives on
            await pool._pool.run(bytearray, 2 * cap)
        # the initializer paid dateparser's warm-up
        assert await pool._pool.run(eval, "'dateparser' in __import__('sys').modules")
        assert await pool.extract(article_page(), URL) is not None
    finally:
        pool.close()


def test_what_the_feed_gave_is_not_searched_for_in_the_page() -> None:
    page = ("<html lang='en'><head><title>Talks resume</title></head><body><article><h1>Talks resume</h1>"
            "<p class='byline'>By <span class='author'>Jane Doe</span></p>"
            "<p class='date'>Published 3 March 2021</p>"
            + "".join(f"<p>Paragraph {i} of a report long enough for the extractor to keep it whole.</p>"
                      for i in range(6)) + "</article></body></html>")
    searched = extract_sync(page, URL)
    given = extract_sync(page, URL, "", False, False)
    assert searched is not None and given is not None
    assert searched.authors == ["Jane Doe"] and searched.published_at == "2021-03-03T00:00:00Z"
    assert given.authors == [] and given.published_at is None
    assert given.text == searched.text and given.signature == searched.signature is not None
