"""The TOML config contract: every key, durations, key paths in errors, env overrides and secrets."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ingester.config import REDIS_URL_ENV, Config, ConfigError, from_dict, load, parse_duration

FULL = """
[redis]
url = "redis://127.0.0.1:6379/0"
namespace = "media"
data_dir = "/var/lib/ingester"

[polling]
default_interval = "5m"
min_interval = "1s"
max_interval = "24h"
concurrency = 50

[network]
allow_private = ["127.0.0.0/24", "::1/128"]
timeout = "20s"
max_bytes = 2048
max_redirects = 3
host_concurrency = 4
host_min_gap = "500ms"
user_agent = "test-agent/1"

[[feeds]]
url = "https://feeds.example.org/world.xml"
interval = "2m"

[[feeds]]
url = "http://feeds.example.org/local.xml"

[sources]
opml = ["feeds.opml", "more/other.opml"]

[articles]
dedup_retention = "30d"
min_text_length = 150
max_attempts = 3
reclaim_idle = "2m"
extract_timeout = 10
workers = 2
concurrency = 8
near_duplicate_threshold = 0.7

[streams]
retention = "7d"

[[topics]]
name = "ceasefire"
query = "ceasefire OR truce"
notify = ["newsroom"]
min_score = 0.5

[[notifiers]]
name = "newsroom"
type = "slack"
webhook_url = "https://hooks.slack.example/services/T000/B000/XXXX"
digest = "10m"
rate = 0.5

[server]
host = "127.0.0.1"
port = 0
shutdown_grace = "5s"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    return str(info.value)


@pytest.fixture(autouse=True)
def _no_redis_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)


# --- every key of the contract ---------------------------------------------------------------------------

def test_full_config_loads_every_key(tmp_path: Path) -> None:
    config = load(write(tmp_path, FULL))
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    assert config.redis.namespace == "media"
    assert config.redis.data_dir == "/var/lib/ingester"
    assert (config.polling.default_interval, config.polling.min_interval) == (300.0, 1.0)
    assert config.polling.max_interval == 86400.0
    assert config.polling.concurrency == 50
    assert config.network.allow_private == [ipaddress.ip_network("127.0.0.0/24"),
                                            ipaddress.ip_network("::1/128")]
    assert (config.network.timeout, config.network.max_bytes, config.network.max_redirects) == (20.0, 2048, 3)
    assert (config.network.host_concurrency, config.network.host_min_gap) == (4, 0.5)
    assert config.network.user_agent == "test-agent/1"
    assert [(f.url, f.interval) for f in config.feeds] == [
        ("https://feeds.example.org/world.xml", 120.0), ("http://feeds.example.org/local.xml", None)]
    assert config.sources.opml == ["feeds.opml", "more/other.opml"]
    assert config.articles.dedup_retention == 30 * 86400.0
    assert (config.articles.min_text_length, config.articles.max_attempts) == (150, 3)
    assert (config.articles.reclaim_idle, config.articles.extract_timeout) == (120.0, 10.0)
    assert (config.articles.workers, config.articles.concurrency) == (2, 8)
    assert config.articles.near_duplicate_threshold == 0.7
    assert config.streams.retention == 7 * 86400.0
    assert [(t.name, t.query, t.notify, t.min_score) for t in config.topics] == [
        ("ceasefire", "ceasefire OR truce", ["newsroom"], 0.5)]
    notifier = config.notifiers[0]
    assert (notifier.name, notifier.type, notifier.digest, notifier.rate) == ("newsroom", "slack", 600.0, 0.5)
    assert notifier.webhook_url.get_secret_value().endswith("/XXXX")
    assert (config.server.host, config.server.port, config.server.shutdown_grace) == ("127.0.0.1", 0, 5.0)


def test_empty_config_gives_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""))
    assert config.redis.url is None and config.redis_url is None  # embedded redis-server
    assert config.redis.namespace == "ingester"
    assert (config.polling.min_interval, config.polling.default_interval, config.polling.max_interval) == (
        1.0, 300.0, 86400.0)
    assert config.network.allow_private == []
    assert config.feeds == [] and config.sources.opml == [] and config.topics == []
    assert config.server.port == 9180


def test_relative_paths_start_at_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    config = load(write(tmp_path, '[sources]\nopml = ["feeds.opml"]\n', name="etc/ingester.toml"))
    assert config.path(config.sources.opml[0]) == tmp_path / "etc" / "feeds.opml"


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6380/1", "unix:///run/redis.sock?db=0",
                                 "redis+sentinel://s1:26379,s2:26379/mymaster/0"])
def test_redis_url_schemes_accepted(url: str) -> None:
    assert from_dict({"redis": {"url": url}}).redis.url == url


def test_example_deploy_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "example.toml"
    if not example.exists():
        pytest.skip(f"{example} not written yet")
    config = load(example)
    assert config.feeds or config.sources.opml


# --- durations --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "seconds"), [
    (30, 30.0), (0, 0.0), (1.5, 1.5), ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0),
    ("30d", 30 * 86400.0), ("45", 45.0), ("1.5h", 5400.0), (" 2m ", 120.0),
])
def test_duration_forms(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "soon", "5 minutes", "5min", "1w", "-5s", "m5", "5mm", "1e3s",
                                   True, None, [5], -1, float("inf"), float("nan")])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_durations_in_the_config_file(tmp_path: Path) -> None:
    config = load(write(tmp_path, """
        [polling]
        default_interval = 90
        min_interval = "500ms"
        max_interval = "1h"
    """))
    assert (config.polling.min_interval, config.polling.default_interval, config.polling.max_interval) == (
        0.5, 90.0, 3600.0)


def test_infinite_duration_from_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^feeds\[0\]\.interval: .*finite"):
        load(write(tmp_path, '[[feeds]]\nurl = "https://a.example/f"\ninterval = inf\n'))


def test_polling_bounds_must_be_ordered() -> None:
    message = error_of({"polling": {"min_interval": "10m", "default_interval": "5m"}})
    assert message.startswith("polling: ") and "min_interval" in message


# --- errors name the key path -----------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "prefix"), [
    ({"redis": {"nope": 1}}, "redis.nope: unknown key"),
    ({"nope": {}}, "nope: unknown key"),
    ({"base_dir": "/etc"}, "base_dir: unknown key"),
    ({"polling": {"interval": "5m"}}, "polling.interval: unknown key"),
    ({"feeds": [{"url": "https://a.example/f", "intervall": "5m"}]}, "feeds[0].intervall: unknown key"),
    ({"sources": {"opml": ["a.opml"], "json": []}}, "sources.json: unknown key"),
    ({"network": {"allow": []}}, "network.allow: unknown key"),
    ({"topics": [{"name": "t", "query": "x", "colour": "red"}]}, "topics[0].colour: unknown key"),
    ({"server": {"ports": 1}}, "server.ports: unknown key"),
])
def test_unknown_keys(data: dict[str, Any], prefix: str) -> None:
    assert error_of(data) == prefix


@pytest.mark.parametrize(("data", "prefix"), [
    ({"feeds": [{"url": "https://a.example/f"}, {"url": "https://b.example/f", "interval": "soon"}]},
     "feeds[1].interval: "),
    ({"feeds": [{"url": "https://a.example/f", "interval": True}]}, "feeds[0].interval: "),
    ({"feeds": [{"url": "ftp://a.example/f"}]}, "feeds[0].url: "),
    ({"feeds": [{"url": 5}]}, "feeds[0].url: "),
    ({"feeds": [{}]}, "feeds[0].url: "),
    ({"feeds": [{"url": "http://a.example:99999/f"}]}, "feeds[0].url: "),
    ({"feeds": {"url": "https://a.example/f"}}, "feeds: "),
    ({"redis": {"url": "http://127.0.0.1:6379"}}, "redis.url: "),
    ({"redis": {"url": 6379}}, "redis.url: "),
    ({"redis": {"namespace": 5}}, "redis.namespace: "),
    ({"redis": {"namespace": ""}}, "redis.namespace: "),
    ({"redis": {"namespace": "a b"}}, "redis.namespace: "),
    ({"redis": "redis://x"}, "redis: "),
    ({"polling": {"default_interval": "5 minutes"}}, "polling.default_interval: "),
    ({"polling": {"min_interval": [1]}}, "polling.min_interval: "),
    ({"polling": {"max_interval": -1}}, "polling.max_interval: "),
    ({"polling": {"concurrency": "5"}}, "polling.concurrency: "),
    ({"polling": {"concurrency": 0}}, "polling.concurrency: "),
    ({"network": {"allow_private": "127.0.0.0/8"}}, "network.allow_private: "),
    ({"network": {"allow_private": ["127.0.0.0/33"]}}, "network.allow_private: "),
    ({"network": {"allow_private": ["localhost"]}}, "network.allow_private: "),
    ({"network": {"max_redirects": 50}}, "network.max_redirects: "),
    ({"network": {"max_bytes": 10}}, "network.max_bytes: "),
    ({"network": {"timeout": "forever"}}, "network.timeout: "),
    ({"sources": {"opml": "feeds.opml"}}, "sources.opml: "),
    ({"sources": {"opml": [1]}}, "sources.opml[0]: "),
    ({"articles": {"max_attempts": 0}}, "articles.max_attempts: "),
    ({"articles": {"near_duplicate_threshold": 1.5}}, "articles.near_duplicate_threshold: "),
    ({"articles": {"workers": 0}}, "articles.workers: "),
    ({"articles": {"dedup_retention": "a month"}}, "articles.dedup_retention: "),
    ({"streams": {"retention": "x"}}, "streams.retention: "),
    ({"server": {"port": 70000}}, "server.port: "),
    ({"server": {"port": "9180"}}, "server.port: "),
    ({"topics": [{"name": "bad name", "query": "x"}]}, "topics[0].name: "),
    ({"topics": [{"name": "t"}]}, "topics[0].query: "),
    ({"topics": [{"name": "t", "query": "x", "min_score": -1}]}, "topics[0].min_score: "),
])
def test_wrong_values_name_the_key(data: dict[str, Any], prefix: str) -> None:
    assert error_of(data).startswith(prefix)


def test_error_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, '[[feeds]]\nurl = "https://a.example/f"\ninterval = "often"\n'))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("feeds[0].interval: ")


def test_load_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="no such config file") as info:
        load(missing)
    assert str(info.value).startswith(str(missing))


def test_load_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, '[redis]\nurl = "redis://unterminated\n')
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load(path)
    assert str(info.value).startswith(str(path))


def test_load_a_directory_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path)
    binary = tmp_path / "latin1.toml"
    binary.write_bytes(b'[redis]\nnamespace = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read"):
        load(binary)


def test_duplicate_toml_table_is_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(write(tmp_path, "[redis]\n[redis]\n"))


# --- INGESTER_REDIS_URL -----------------------------------------------------------------------------------

def test_env_overrides_redis_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[redis]\nurl = "redis://config-host:6379/0"\n')
    assert load(path).redis_url == "redis://config-host:6379/0"
    monkeypatch.setenv(REDIS_URL_ENV, "redis://127.0.0.1:7000/2")
    assert load(path).redis_url == "redis://127.0.0.1:7000/2"


def test_env_gives_a_url_when_config_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, "unix:///tmp/r.sock")
    assert load(write(tmp_path, "")).redis_url == "unix:///tmp/r.sock"


def test_empty_env_does_not_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, "")
    assert load(write(tmp_path, '[redis]\nurl = "redis://h:1/0"\n')).redis_url == "redis://h:1/0"


# --- topics, notifiers and secrets ------------------------------------------------------------------------

SECRET = "https://hooks.slack.example/services/T123/B456/s3cr3tT0k3n"


def notifying(webhook_url: str, **extra: object) -> dict[str, Any]:
    return {"topics": [{"name": "ceasefire", "query": "ceasefire", "notify": ["desk"]}],
            "notifiers": [{"name": "desk", "type": "slack", "webhook_url": webhook_url, **extra}]}


def test_env_secret_is_read_and_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SLACK_HOOK", SECRET)
    config = from_dict(notifying("env:TEST_SLACK_HOOK"))
    assert config.notifiers[0].webhook_url.get_secret_value() == SECRET
    for text in (repr(config), str(config), repr(config.notifiers[0]), config.model_dump_json()):
        assert "s3cr3tT0k3n" not in text


def test_literal_secret_is_hidden_too() -> None:
    config = from_dict(notifying(SECRET))
    assert config.notifiers[0].webhook_url.get_secret_value() == SECRET
    assert "s3cr3tT0k3n" not in repr(config) and "s3cr3tT0k3n" not in str(config)


def test_missing_env_secret_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_MISSING_HOOK", raising=False)
    message = error_of(notifying("env:TEST_MISSING_HOOK"))
    assert message.startswith("notifiers[0].webhook_url: ")
    assert "TEST_MISSING_HOOK" in message


def test_bad_secret_value_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SLACK_HOOK", "hooks.slack.example/s3cr3tT0k3n")  # no scheme
    message = error_of(notifying("env:TEST_SLACK_HOOK"))
    assert message.startswith("notifiers[0].webhook_url: ")
    assert "s3cr3tT0k3n" not in message


def test_webhook_signing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SIGNING", "sign-s3cr3t")
    data = notifying("https://hooks.example/x", secret="env:TEST_SIGNING")
    data["notifiers"][0]["type"] = "webhook"
    config = from_dict(data)
    assert config.notifiers[0].secret is not None
    assert config.notifiers[0].secret.get_secret_value() == "sign-s3cr3t"
    assert "sign-s3cr3t" not in repr(config)
    data["notifiers"][0]["type"] = "slack"
    assert error_of(data).startswith("notifiers[0]: ")


def test_notifier_type_is_checked() -> None:
    data = notifying("https://x.example/h")
    data["notifiers"][0]["type"] = "email"
    assert error_of(data).startswith("notifiers[0].type: ")


def test_topic_naming_an_unknown_notifier() -> None:
    data = notifying("https://x.example/h")
    data["topics"].append({"name": "other", "query": "truce", "notify": ["nobody"]})
    assert error_of(data) == "topics[1].notify: unknown notifier 'nobody'"


def test_unused_notifier_is_an_error() -> None:
    data = notifying("https://x.example/h")
    data["notifiers"].append({"name": "spare", "type": "webhook", "webhook_url": "https://y.example/h"})
    assert error_of(data).startswith("notifiers[1]: ")
    assert "spare" in error_of(data)


def test_duplicate_names() -> None:
    data = notifying("https://x.example/h")
    data["topics"].append({"name": "ceasefire", "query": "truce"})
    assert error_of(data).startswith("topics[1].name: ")


def test_invalid_topic_query_names_the_key() -> None:
    pytest.importorskip("ingester.query", reason="ingester.query (the query language) is not written yet")
    message = error_of({"topics": [{"name": "t", "query": "ceasefire AND (truce"}]})
    assert message.startswith("topics[0].query: ")


def test_config_is_frozen() -> None:
    config = from_dict({})
    with pytest.raises(ValueError):
        config.redis.namespace = "other"  # type: ignore[misc]
    assert isinstance(config, Config)
