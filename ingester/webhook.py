"""Generic JSON webhooks: payloads, the HMAC-SHA256 signature header, and a verifier for receivers.

docs/alerts.md documents the payloads; receivers should check the signature over the exact body bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import orjson

from ingester.record import Article

SIGNATURE_HEADER = "X-Ingester-Signature"
DELIVERY_HEADER = "X-Ingester-Delivery"  # stable per (notifier, topic, story): receivers can dedupe
_PREFIX = "sha256="


def alert_payload(article: Article, topic: str, matched_terms: Sequence[str]) -> bytes:
    return orjson.dumps({"type": "alert", "topic": topic, "article": article.as_dict(),
                         "matched_terms": list(matched_terms)})


def digest_payload(topic: str, articles: Sequence[Article]) -> bytes:
    return orjson.dumps({"type": "digest", "topic": topic, "count": len(articles),
                         "articles": [a.as_dict() for a in articles]})


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: sha256=<hex HMAC-SHA256 of the body>."""
    return _PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secret: str) -> bool:
    """True when `header` is the signature of exactly `body` under `secret` (constant-time compare)."""
    if not header or not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign(body, secret).encode("ascii"), header.strip().encode("ascii", "replace"))


def headers(body: bytes, secret: str | None, delivery: str | None = None) -> dict[str, str]:
    out = {"Content-Type": "application/json"}
    if secret:
        out[SIGNATURE_HEADER] = sign(body, secret)
    if delivery:
        out[DELIVERY_HEADER] = delivery
    return out
