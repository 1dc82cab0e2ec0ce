"""Canonical article URLs: which URL names an article, normalised so every route to it gives one id."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit, urlunsplit

from courlan import normalize_url as courlan_normalize
from courlan.clean import decode_punycode
from courlan.urlutils import get_tldinfo

from ingester.keys import digest


def canonical_url(linked: str, final: str, page_canonical: str | None) -> str:
    """The article's URL: the page's canonical when it is trustworthy, else where redirects ended."""
    base = final or linked
    candidate = _trusted_canonical(base, page_canonical) if page_canonical else None
    return normalize_url(candidate or base)


def normalize_url(url: str) -> str:
    """Lowercase scheme and host, no default port, no fragment, no tracking parameters, sorted query.

    Tracking parameters are courlan's list (utm_*, fbclid, gclid, mc_cid, ...); IDN hosts come out in
    Unicode whether given in Unicode or punycode. A user name and password are dropped.
    """
    normalized = courlan_normalize(without_credentials(url.strip()), strict=False)
    parts = urlsplit(normalized)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, ""))


def without_credentials(url: str) -> str:
    """The URL without a user name or password: what a record may show of a feed's address."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def article_id(canonical: str) -> str:
    """The stable article id: 24 hex characters derived from the canonical URL."""
    return digest(canonical)


def source_host(url: str) -> str:
    """The site's host, lowercased, without "www." or port; IDN in Unicode."""
    host = decode_punycode((urlsplit(url).hostname or "").lower())
    return host.removeprefix("www.")


def _trusted_canonical(final: str, page_canonical: str) -> str | None:
    """The page's canonical made absolute, or None when it leaves the site or is a known CMS error."""
    try:
        candidate = urljoin(final, page_canonical.strip())
        target, origin = urlsplit(candidate), urlsplit(final)
        target.port, origin.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return None
    if target.scheme.lower() not in ("http", "https") or not target.hostname:
        return None
    if _site(target.hostname, target.port) != _site(origin.hostname or "", origin.port):
        return None
    if _is_homepage(target.path, target.query) and not _is_homepage(origin.path, origin.query):
        return None  # a CMS that points every article's canonical at the front page
    return candidate


def _site(host: str, port: int | None) -> tuple[str, int | None]:
    """The registered domain (www.x.co.uk, amp.x.co.uk -> x.co.uk); the host and port when it has none."""
    host = decode_punycode(host.lower().rstrip("."))
    _, registered = get_tldinfo(f"http://{host}/")
    return (registered, None) if registered else (host.removeprefix("www."), port)


def _is_homepage(path: str, query: str) -> bool:
    return path in ("", "/") and not query
