"""An article's language: the text's when the detector is sure, else the page's, else the feed's."""

from __future__ import annotations

import gzip
import json

import pytest
import trafilatura
from conftest import shared_path

from ingester import language
from ingester.extract import _page_meta, describe_text, extract_sync
from ingester.safehttp import decode_html

GERMAN = (
    "Die Gespräche über einen Waffenstillstand wurden am Sonntag in London fortgesetzt. Die Regierungschefs "
    "der sogenannten Koalition der Willigen berieten über Sicherheitsgarantien für die Ukraine. Nach Angaben "
    "von Teilnehmern soll die militärische Unterstützung in den kommenden Wochen weiter ausgebaut werden."
)
FRENCH = (
    "Les discussions sur un cessez-le-feu se sont poursuivies dimanche à Londres. Les dirigeants de la "
    "coalition des volontaires ont débattu des garanties de sécurité pour l'Ukraine. Selon plusieurs "
    "participants, le soutien militaire sera renforcé au cours des prochaines semaines."
)
ENGLISH = (
    "Talks on a ceasefire continued in London on Sunday. Leaders of the so-called coalition of the willing "
    "discussed security guarantees for Ukraine. According to participants, military support is to be "
    "stepped up further in the coming weeks, and defence chiefs will meet again before the summer."
)


@pytest.mark.parametrize(("tag", "expected"), [
    ("en-US", "en"), ("de_DE", "de"), ("FR", "fr"), (" pt-BR ", "pt"), ("en, de", "en"),
    ("", None), (None, None), ("english", None), ("x", None), ("zh-Hant-TW", "zh"), ("12", None),
    ("jp", None), ("cz", None), ("us", None), ("xx", None), ("nb-NO", "nb"), ("iw", "he"), ("tl", "tl"),
])
def test_code_keeps_the_primary_subtag_when_it_is_iso_639_1(tag: str | None, expected: str | None) -> None:
    assert language.code(tag) == expected


def test_the_text_outranks_a_wrong_declaration() -> None:
    assert language.resolve(GERMAN, "en") == "de"
    assert language.resolve(FRENCH, "en-GB", "de") == "fr"
    assert language.resolve(ENGLISH, "de") == "en"


def test_a_right_declaration_stands() -> None:
    assert language.resolve(ENGLISH, "en-GB") == "en"
    assert language.resolve(GERMAN, "de-AT") == "de"


def test_no_declaration_the_text_decides() -> None:
    assert language.resolve(GERMAN) == "de"
    assert language.resolve(FRENCH, None, "") == "fr"


def test_short_text_keeps_the_first_usable_declaration() -> None:
    short = GERMAN[:language.MIN_CHARS - 1]
    assert language.resolve(short, "en") == "en"  # too short to overrule anyone
    assert language.resolve(short, None, "english", "fr-FR") == "fr"
    assert language.resolve(short) == "de"  # long enough to name an undeclared language
    assert language.resolve(GERMAN[:language.UNDECLARED_MIN_CHARS - 1]) is None


def test_a_declaration_that_names_no_language_gives_way() -> None:
    assert language.resolve(GERMAN, "jp") == "de"
    assert language.resolve(GERMAN[:100], "cz", "de") == "de"  # short: the next declaration counts


def test_bokmal_is_norwegian_to_the_detector() -> None:
    bokmal = ("Forhandlingene om en våpenhvile fortsatte søndag i London. Lederne i den såkalte koalisjonen "
              "av villige drøftet sikkerhetsgarantier for Ukraina. Ifølge deltakerne skal den militære "
              "støtten økes ytterligere i de kommende ukene, og forsvarssjefene møtes igjen før sommeren.")
    assert "nb" not in language._identifier().labels  # the model has "no" and "nn"
    assert language.resolve(bokmal, "nb") == "nb"
    assert language.resolve(ENGLISH, "nb") == "en"


def test_text_without_language_keeps_the_declaration() -> None:
    digits = " ".join(str(n * 7919 % 10007) for n in range(80))  # numbers only: nothing to detect
    assert len(digits) >= language.MIN_CHARS
    assert language.resolve(digits, "fi") == "fi"


def test_feed_text_is_described_in_one_call() -> None:
    signature, lang = describe_text(ENGLISH * 3, None, "de")
    assert signature is not None
    assert lang == "en"
    assert describe_text("", "de", "fr") == (None, "de")


def test_extraction_reports_the_texts_language() -> None:
    paragraphs = "".join(f"<p>{s}.</p>" for s in GERMAN.split(". "))
    page = (f'<html lang="en"><head><title>Waffenstillstand</title></head><body><article>'
            f"<h1>Waffenstillstand</h1>{paragraphs}</article></body></html>")
    result = extract_sync(page, "https://example.com/a")
    assert result is not None and result.language == "de"
    result = extract_sync(page.replace(' lang="en"', ""), "https://example.com/a", feed_language="fr")
    assert result is not None and result.language == "de"


def test_english_news_with_a_wrong_declaration() -> None:
    """Real English news (ECB+ and the ceasefire set), each declared German: the text wins."""
    texts = [json.loads(line)["text"] for line in
             shared_path("news", "ecbplus", "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    texts += [json.loads(line)["text"] for line in
              shared_path("news", "ceasefire-dev.jsonl").read_text(encoding="utf-8").splitlines()]
    long_enough = [t for t in texts if len(t) >= language.MIN_CHARS]
    assert len(long_enough) > 1500
    wrong = [t[:80] for t in long_enough if language.resolve(t, "de") != "en"]
    assert len(wrong) <= len(long_enough) * 0.005, wrong[:10]
    assert all(language.resolve(t, "en") == "en" for t in long_enough)


def test_real_pages_mostly_keep_their_declaration() -> None:
    """On real pages the detector overrules a declaration rarely (a CMS's default language), and a page
    without one gets a language from its text."""
    root = shared_path("pages", "trafilatura-eval")
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    declared = overruled = undeclared = detected = 0
    for meta in sorted(manifest, key=lambda m: m["url"])[::3]:
        url, html = meta["url"], decode_html(gzip.decompress((root / meta["file"]).read_bytes()))
        result = extract_sync(html, url)
        if result is None or len(result.text) < language.MIN_CHARS:
            continue
        stated = _page_meta(trafilatura.load_html(html), url)[0]  # the declaration alone
        if stated:
            declared += 1
            overruled += result.language != stated
        else:
            undeclared += 1
            detected += result.language is not None
    print(f"declared {declared}, overruled {overruled}; undeclared {undeclared}, detected {detected}")
    assert declared > 250 and undeclared > 10
    assert overruled <= declared * 0.05
    assert detected >= undeclared * 0.9
