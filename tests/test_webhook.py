"""Generic webhooks: payloads and the HMAC signature, checked by a real loopback receiver."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis
from test_alerts import (  # the loopback server and helpers, and its fixtures
    HMAC_SECRET,
    Hook,
    Running,
    _acked_all,
    alerter,
    client,
    eventually,
    hook,
    make_article,
    make_config,
    publish,
)

from ingester import webhook
from ingester.keys import Keys
from ingester.safehttp import SafeClient


def test_sign_and_verify() -> None:
    body = b'{"topic":"t"}'
    header = webhook.sign(body, "s3cret")
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert webhook.verify(body, header, "s3cret")
    assert not webhook.verify(body + b" ", header, "s3cret")  # the exact bytes are signed
    assert not webhook.verify(body, header, "other")
    assert not webhook.verify(body, None, "s3cret")
    assert not webhook.verify(body, header.removeprefix("sha256="), "s3cret")
    assert not webhook.verify(body, "sha256=é", "s3cret")
    # a known vector: HMAC-SHA256(key="key", "The quick brown fox jumps over the lazy dog")
    assert webhook.sign(b"The quick brown fox jumps over the lazy dog", "key") == (
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8")


def test_payloads() -> None:
    article = make_article(1)
    alert = orjson.loads(webhook.alert_payload(article, "ceasefire", ["ceasefire"]))
    assert alert == {"type": "alert", "topic": "ceasefire", "article": article.as_dict(),
                     "matched_terms": ["ceasefire"]}
    digest = orjson.loads(webhook.digest_payload("ceasefire", [article, make_article(2)]))
    assert digest["type"] == "digest" and digest["count"] == 2
    assert [a["id"] for a in digest["articles"]] == ["a1", "a2"]


def test_headers_without_secret_are_unsigned() -> None:
    assert webhook.SIGNATURE_HEADER not in webhook.headers(b"{}", None)
    assert webhook.headers(b"{}", "k")[webhook.SIGNATURE_HEADER] == webhook.sign(b"{}", "k")


async def test_signed_webhook_end_to_end(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                         client: SafeClient) -> None:
    config = make_config(hook, [{"name": "hook", "type": "webhook", "webhook_url": hook.url("/in"),
                                 "secret": HMAC_SECRET},
                                {"name": "plain", "type": "webhook", "webhook_url": hook.url("/plain")}])
    await publish(redis, keys, make_article(1, title="Ceasefire <!channel>"), make_article(2, cluster=1))
    run = Running(alerter(redis, keys, config, client))
    await eventually(lambda: _acked_all(redis, keys, 2))
    await run.stop()
    (signed,) = hook.at("/in")
    assert webhook.verify(signed.body, signed.headers[webhook.SIGNATURE_HEADER], HMAC_SECRET)
    assert not webhook.verify(signed.body, signed.headers[webhook.SIGNATURE_HEADER], "wrong")
    payload = signed.json()
    assert payload["topic"] == "ceasefire" and payload["article"]["title"] == "Ceasefire <!channel>"
    assert payload["matched_terms"] == ["ceasefire"]  # what matched; truce is only in the summary
    assert signed.headers["Content-Type"] == "application/json"
    (plain,) = hook.at("/plain")
    assert webhook.SIGNATURE_HEADER not in plain.headers
    # one delivery id per (notifier, topic, story): a receiver can drop a redelivery
    assert len(signed.headers[webhook.DELIVERY_HEADER]) == 32
    assert plain.headers[webhook.DELIVERY_HEADER] != signed.headers[webhook.DELIVERY_HEADER]


__all__ = ["client", "hook"]  # fixtures used here
