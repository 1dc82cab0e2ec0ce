"""The command line as a user runs it: feeds import/export, match, dlq, stats (subprocesses, real Redis)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingester.opml import OpmlFeed, read_opml, write_opml

SEED = Path(__file__).resolve().parent.parent.parent / "shared" / "seed" / "coalition-ceasefire-2025.txt"


def ingester(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingester", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, input=stdin, timeout=120)


@pytest.fixture
def config(tmp_path: Path, namespace: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[redis]\nnamespace = "{namespace}"\n\n[[topics]]\nname = "ceasefire"\n'
                    "query = '(ceasefire OR truce) AND (Ukraine OR Russia)'\nmin_score = 0.5\n")
    return path


def test_feeds_import_then_export_round_trips(config: Path, tmp_path: Path, redis_url: str) -> None:
    feeds = [OpmlFeed(f"https://news{i}.example/rss", f"News <{i}> & co", "World/Europe") for i in range(30)]
    opml = tmp_path / "feeds.opml"
    opml.write_bytes(write_opml(feeds))
    env = {"INGESTER_REDIS_URL": redis_url}
    imported = ingester("feeds", "import", str(opml), "--config", str(config), env=env)
    assert imported.returncode == 0, imported.stderr
    assert "30 new feeds" in imported.stdout
    again = ingester("feeds", "import", str(opml), "--config", str(config), env=env)
    assert "0 new feeds" in again.stdout
    exported = ingester("feeds", "export", "--config", str(config), env=env)
    assert exported.returncode == 0, exported.stderr
    by_url = lambda f: f.url  # noqa: E731
    assert sorted(read_opml(exported.stdout.encode()), key=by_url) == sorted(feeds, key=by_url)


def test_the_configs_feeds_are_known_before_any_daemon_ran(config: Path, tmp_path: Path,
                                                           redis_url: str) -> None:
    feed = "https://config.example/rss"
    config.write_text(config.read_text() + f'\n[[feeds]]\nurl = "{feed}"\ninterval = "2m"\n')
    env = {"INGESTER_REDIS_URL": redis_url}
    now = ingester("feeds", "poll-now", "--config", str(config), feed, env=env)
    assert now.returncode == 0 and now.stdout.strip() == "1 feeds due now", now.stderr
    opml = tmp_path / "more.opml"
    opml.write_bytes(write_opml([OpmlFeed(feed, "Same feed", None), OpmlFeed("https://new.example/rss")]))
    imported = ingester("feeds", "import", str(opml), "--config", str(config), env=env)
    assert "1 new feeds of 2" in imported.stdout, imported.stdout + imported.stderr
    exported = ingester("feeds", "export", "--config", str(config), env=env)
    assert {f.url for f in read_opml(exported.stdout.encode())} == {feed, "https://new.example/rss"}


def test_match_a_query_on_a_file_and_on_stdin(tmp_path: Path) -> None:
    story = tmp_path / "story.txt"
    story.write_text("Ceasefire talks resume\nUkraine and Russia agreed to a thirty-day truce on Monday.\n")
    hit = ingester("match", "--query", "truce AND Ukraine", str(story))
    miss = ingester("match", "--query", "armistice", "-", stdin=story.read_text())
    broken = ingester("match", "--query", "(truce AND", str(story))
    assert hit.returncode == 0 and "MATCH" in hit.stdout and "truce" in hit.stdout
    assert miss.returncode == 1 and "no match" in miss.stdout
    assert broken.returncode == 2 and "position" in broken.stderr


def test_match_a_topic_of_the_config_on_the_seed_story(config: Path) -> None:
    if not SEED.exists():
        pytest.skip(f"shared seed story not found at {SEED}")
    done = ingester("match", "--config", str(config), "--topic", "ceasefire", str(SEED))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MATCH: score" in done.stdout and "ceasefire" in done.stdout
    assert "language: en" in done.stdout  # plain text: detected from the text
    unknown = ingester("match", "--config", str(config), "--topic", "nosuch", str(SEED))
    assert unknown.returncode == 2 and unknown.stderr.strip() == "error: no topic named 'nosuch'"


def test_match_an_html_page_fetched_through_the_guard(httpserver, config: Path) -> None:  # type: ignore[no-untyped-def]
    httpserver.expect_request("/p").respond_with_data(
        "<html><body><article><h1>Truce</h1><p>Ukraine truce holds.</p></article></body></html>",
        content_type="text/html")
    refused = ingester("match", "--query", "truce", httpserver.url_for("/p"))
    assert refused.returncode == 2 and "refused" in refused.stderr  # loopback is private by default
    config.write_text('[network]\nallow_private = ["127.0.0.0/8"]\n' + config.read_text())
    for target in (["--query", "truce AND Ukraine"], ["--topic", "ceasefire"]):  # the config's network
        allowed = ingester("match", "--config", str(config), *target, httpserver.url_for("/p"))
        assert allowed.returncode == 0 and "MATCH" in allowed.stdout, allowed.stdout + allowed.stderr


def test_dlq_list_and_stats_on_an_empty_namespace(config: Path, redis_url: str) -> None:
    env = {"INGESTER_REDIS_URL": redis_url}
    listed = ingester("dlq", "list", "--config", str(config), env=env)
    assert listed.returncode == 0, listed.stderr
    assert "0 parked item(s)" in listed.stdout
    stats = ingester("stats", "--config", str(config), env=env)
    assert stats.returncode == 0, stats.stderr
    assert "ceasefire" in stats.stdout
