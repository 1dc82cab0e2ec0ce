"""Slack Block Kit messages: escaping of untrusted text, links only from http(s) URLs, limits."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ingester import slack
from ingester.record import Article

HOSTILE = "<!channel> <https://evil|Reuters>"


def article(**overrides: Any) -> Article:
    fields: dict[str, Any] = {
        "id": "a1", "url": "https://news.example/story/1", "canonical_url": "https://news.example/story/1",
        "feed_url": "https://news.example/feed", "source": "news.example",
        "title": "Ceasefire talks resume in Geneva", "text": "Full text about the ceasefire.",
        "summary": "Negotiators met on Tuesday to discuss a ceasefire between the parties.",
        "authors": ["A. Writer"], "language": "en", "published_at": "2025-03-15T10:04:05Z",
        "fetched_at": "2025-03-15T10:05:00Z", "extraction": "trafilatura", "cluster_id": "a1",
    }
    fields.update(overrides)
    return Article(**fields)


def all_texts(message: dict[str, Any]) -> list[str]:
    """Every text a Slack client renders from the message (not the button's url)."""
    texts = [message["text"]]
    for block in message["blocks"]:
        if "text" in block:
            texts.append(block["text"]["text"])
        for element in block.get("elements", []):
            texts.append(element["text"] if isinstance(element["text"], str) else element["text"]["text"])
    return texts


def check_limits(message: dict[str, Any]) -> None:
    assert len(message["blocks"]) <= slack.BLOCKS_MAX
    assert len(message["text"]) <= slack.FALLBACK_MAX
    for block in message["blocks"]:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= slack.HEADER_MAX
            assert block["text"]["type"] == "plain_text"
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= slack.SECTION_MAX
        for element in block.get("elements", []):
            if element.get("type") == "button":
                assert len(element["text"]["text"]) <= slack.BUTTON_TEXT_MAX
                assert len(element["url"]) <= slack.URL_MAX


def test_escape_only_the_three_characters() -> None:
    assert slack.escape("a & b < c > d *e* _f_") == "a &amp; b &lt; c &gt; d *e* _f_"
    assert slack.escape("&lt;") == "&amp;lt;"


def test_hostile_title_cannot_ping_or_mask_a_link() -> None:
    message = slack.alert_message(article(title=HOSTILE, summary=HOSTILE, source=HOSTILE,
                                          authors=[HOSTILE]), "ceasefire", ["ceasefire"])
    body = orjson.dumps(message).decode()
    assert "<" not in body and ">" not in body
    assert message["blocks"][0]["text"]["text"] == "&lt;!channel&gt; &lt;https://evil|Reuters&gt;"
    assert "&lt;!channel&gt;" in message["text"]
    assert message["unfurl_links"] is False and message["unfurl_media"] is False
    button = message["blocks"][-1]["elements"][0]
    assert button["url"] == "https://news.example/story/1"


def test_message_layout() -> None:
    message = slack.alert_message(article(), "ceasefire", ["ceasefire"])
    kinds = [b["type"] for b in message["blocks"]]
    assert kinds == ["header", "context", "section", "actions"]
    assert message["blocks"][0]["text"]["text"] == "Ceasefire talks resume in Geneva"
    context = message["blocks"][1]["elements"][0]["text"]
    assert "news.example" in context and "2025-03-15T10:04:05Z" in context
    assert "*ceasefire*" in message["blocks"][2]["text"]["text"]
    check_limits(message)


def test_matched_terms_bolded_after_escaping() -> None:
    snippet = slack.highlight("Talks on a <b>cease-fire</b> & truce", ["cease fire", "truce"])
    assert snippet == "Talks on a &lt;b&gt;*cease-fire*&lt;/b&gt; &amp; *truce*"


def test_snippet_window_starts_near_the_first_match() -> None:
    text = "filler " * 200 + "the ceasefire holds " + "more " * 200
    snippet = slack.highlight(text, ["ceasefire"])
    assert snippet.startswith(slack.ELLIPSIS) and snippet.endswith(slack.ELLIPSIS)
    assert "*ceasefire*" in snippet


def test_non_http_url_gives_no_button() -> None:
    for url in ("javascript:alert(1)", "ftp://x.example/a", "slack://channel?id=1", "<https://evil>", ""):
        message = slack.alert_message(article(url=url, canonical_url=url), "t", [])
        assert all(b["type"] != "actions" for b in message["blocks"]), url


def test_url_is_percent_encoded_and_long_url_dropped() -> None:
    message = slack.alert_message(article(url="https://x.example/a|b<c>d e"), "t", [])
    assert message["blocks"][-1]["elements"][0]["url"] == "https://x.example/a%7Cb%3Cc%3Ed%20e"
    long_url = "https://x.example/" + "a" * 4000
    message = slack.alert_message(article(url=long_url, canonical_url=long_url), "t", [])
    assert all(b["type"] != "actions" for b in message["blocks"])
    message = slack.alert_message(article(url=long_url), "t", [])  # falls back to the canonical URL
    assert message["blocks"][-1]["elements"][0]["url"] == "https://news.example/story/1"


def test_limits_truncate_never_fail() -> None:
    huge = "<&>" * 10_000
    message = slack.alert_message(article(title=huge, summary=huge, source=huge, published_at=huge),
                                  huge[:30], [huge])
    check_limits(message)
    header = message["blocks"][0]["text"]["text"]
    assert header.endswith(slack.ELLIPSIS)
    assert "&" not in header.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")


def test_empty_article_still_gives_a_message() -> None:
    message = slack.alert_message(article(title="", summary="", text="", source=""), "t", [])
    assert message["blocks"][0]["text"]["text"] == "(untitled)"
    check_limits(message)


untrusted = st.text(alphabet=st.sampled_from(list("<>&|!@#:/.*_~ abcHTtps")) | st.characters(),
                    max_size=300)
_HOSTILE_BITS = st.sampled_from(["<!channel>", "<!here>", "<@U123>", "<#C123>", "<https://evil|x>",
                                 "<http://a>", "<!subteam^S1>", "&lt;!channel&gt;", "<", "<!", "<@"])
hostile = st.lists(untrusted | _HOSTILE_BITS, max_size=6).map("".join)


@settings(max_examples=300, deadline=None)
@given(title=hostile, summary=hostile, source=hostile, authors=st.lists(hostile, max_size=3),
       published=st.none() | hostile, topic=st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True),
       terms=st.lists(hostile, max_size=3))
def test_no_untrusted_markup_reaches_the_payload(title: str, summary: str, source: str,
                                                 authors: list[str], published: str | None, topic: str,
                                                 terms: list[str]) -> None:
    a = article(title=title, summary=summary, text=summary, source=source, authors=authors,
                published_at=published)
    for message in [slack.alert_message(a, topic, terms), *slack.digest_messages(topic, [a, a])]:
        body = orjson.dumps(message).decode()
        for bad in ("<!", "<@", "<#"):
            assert bad not in body
        check_limits(message)
        for text in all_texts(message):
            # the only '<' left are the daemon's own links to the article URL
            assert text.replace("<https://news.example/story/1|", "").count("<") == 0
    assert "<" not in orjson.dumps(slack.alert_message(a, topic, terms)).decode()


def test_digest_lines_link_and_escape() -> None:
    messages = slack.digest_messages("ceasefire", [article(title=HOSTILE), article(url="javascript:x",
                                                                                   canonical_url="x:y")])
    assert len(messages) == 1
    lines = messages[0]["blocks"][1]["text"]["text"].split("\n")
    assert lines[0] == ("• <https://news.example/story/1|&lt;!channel&gt; &lt;https://evil|Reuters&gt;>"
                        " · news.example")
    assert lines[1] == "• Ceasefire talks resume in Geneva · news.example"
    assert messages[0]["blocks"][0]["text"]["text"] == "ceasefire: 2 new stories"


def test_digest_splits_by_limits() -> None:
    stories = [article(id=f"a{i}", cluster_id=f"a{i}", title=f"Story {i} " + "x" * 300,
                       url=f"https://news.example/{i}/" + "p" * 500) for i in range(400)]
    messages = slack.digest_messages("t", stories)
    assert len(messages) > 1
    assert slack.digest_counts("t", stories) == [
        sum(b["text"]["text"].count("\n") + 1 for b in m["blocks"][1:]) for m in messages]
    seen = []
    for number, message in enumerate(messages, 1):
        check_limits(message)
        assert message["blocks"][0]["text"]["text"].endswith(f"({number}/{len(messages)})")
        for block in message["blocks"][1:]:
            seen += [line.split("|")[0].removeprefix("• <") for line in block["text"]["text"].split("\n")]
    assert seen == [slack.article_link(s) for s in stories]  # every story once, in order


def test_digest_of_one_story_and_of_none() -> None:
    assert slack.digest_messages("t", []) == []
    (message,) = slack.digest_messages("t", [article()])
    assert message["text"] == "t: 1 new story"
