"""The one HTTP client for everything the daemon fetches, guarded against SSRF and hostile servers.

- only http and https, on every redirect;
- every address a host name resolves to is checked when the connection is opened (so after DNS and on
  every redirect, and the connection goes to the address that was checked: no DNS rebinding);
  private, loopback, link-local, CGNAT, multicast, reserved, and IPv4-mapped/NAT64/6to4 forms of them
  are refused unless inside `allow_private`;
- caps on redirects, decoded body bytes (a gzip/brotli bomb is cut at the cap) and total time per
  request, redirects included (a server that drips one byte a second is cut at the deadline).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import httpcore
import httpx
import structlog

from ingester import metrics
from ingester.config import NetworkConfig

log = structlog.get_logger("ingester.http")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_6TO4 = ipaddress.ip_network("2002::/16")


class FetchError(Exception):
    """A request that did not give a usable response; `kind` is a short metric label."""

    kind = "network"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class BlockedAddress(FetchError):
    kind = "blocked"


class TooLarge(FetchError):
    kind = "too_large"


class Timeout(FetchError):
    kind = "timeout"


class BadURL(FetchError):
    kind = "bad_url"


class TooManyRedirects(FetchError):
    kind = "redirects"


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _6TO4:
        return ip.sixtofour
    return None


def refusal(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why the daemon must not connect to `ip`, or None when it may."""
    if any(ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and (inner := embedded_ipv4(ip)) is not None:
        reason = refusal(inner, allow)
        return f"{reason} (embedded in {ip})" if reason else None
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if not ip.is_global:
        if ip.is_loopback:
            return f"{ip} is a loopback address"
        if ip.is_link_local:
            return f"{ip} is a link-local address"
        if ip.is_private:
            return f"{ip} is a private address"
        return f"{ip} is not a public address"
    return None


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves host names itself, checks every address, then connects to the checked address."""

    def __init__(self, allow: Sequence[IPNetwork]) -> None:
        self._allow = allow
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[typing.Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        address = await self.checked_address(host, port)
        return await self._inner.connect_tcp(address, port, timeout=timeout,
                                             local_address=local_address,
                                             socket_options=socket_options)

    async def checked_address(self, host: str, port: int) -> str:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host.strip("[]"), port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        for ip in addresses:  # one bad address refuses the host: no racing the resolver
            if reason := refusal(ip, self._allow):
                raise BlockedAddress(host, f"refused: {host} resolves to {reason}")
        return str(addresses[0])

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[typing.Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress(path, "refused: Unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, allow: Sequence[IPNetwork], limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(allow),
        )


class HostGate(Protocol):
    """Politeness: holds a slot for one request to `host` (see ingester.politeness)."""

    def slot(self, host: str) -> AbstractAsyncContextManager[None]: ...


@dataclass
class Response:
    url: str  # final URL, after redirects
    status: int
    headers: httpx.Headers
    content: bytes  # decoded (gzip, brotli...) body, at most max_bytes
    redirects: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return httpx.URL(self.url).host

    def text(self) -> str:
        return decode_html(self.content, self.headers.get("content-type", ""))


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", re.I)


def decode_html(content: bytes, content_type: str = "") -> str:
    """Text from bytes: a BOM, the HTTP charset, the document's own declaration, UTF-8, else cp1252."""
    if content.startswith(b"\xef\xbb\xbf"):
        return content[3:].decode("utf-8", errors="replace")
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        return content.decode("utf-16", errors="replace")
    candidates = []
    if m := re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", content_type, re.I):
        candidates.append(m.group(1))
    head = content[:4096]
    for pattern in (_META_CHARSET, _XML_ENCODING):
        if m2 := pattern.search(head):
            candidates.append(m2.group(1).decode("ascii"))
    for charset in [*candidates, "utf-8"]:
        try:
            return content.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return content.decode("cp1252", errors="replace")


class SafeClient:
    """Guarded GET/POST over a few small connection pools (httpx costs grow with pool size)."""

    def __init__(self, network: NetworkConfig, *, gate: HostGate | None = None,
                 pools: int = 4, connections_per_pool: int = 10) -> None:
        self.network = network
        self._gate = gate
        limits = httpx.Limits(max_connections=connections_per_pool,
                              max_keepalive_connections=connections_per_pool)
        self._clients = [
            httpx.AsyncClient(transport=_GuardedTransport(network.allow_private, limits),
                              headers={"User-Agent": network.user_agent}, trust_env=False,
                              follow_redirects=False, timeout=network.timeout)
            for _ in range(pools)
        ]

    def _client(self, host: str) -> httpx.AsyncClient:
        return self._clients[hash(host) % len(self._clients)]  # one host keeps to one pool

    async def get(self, url: str, headers: dict[str, str] | None = None, *,
                  max_bytes: int | None = None, timeout: float | None = None) -> Response:
        """GET following (and checking) redirects, within the byte cap and the total deadline."""
        return await self.request("GET", url, headers=headers, max_bytes=max_bytes,
                                  timeout=timeout, follow=True)

    async def post(self, url: str, content: bytes, headers: dict[str, str] | None = None, *,
                   timeout: float | None = None, redact: Callable[[str], str] | None = None,
                   ) -> Response:
        """POST without following redirects. `redact` hides the URL (e.g. a webhook's secret path)."""
        return await self.request("POST", url, headers=headers, content=content,
                                  timeout=timeout, follow=False, redact=redact)

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      content: bytes | None = None, max_bytes: int | None = None,
                      timeout: float | None = None, follow: bool = True,
                      redact: Callable[[str], str] | None = None) -> Response:
        shown = redact or (lambda u: u)
        deadline = timeout if timeout is not None else self.network.timeout
        try:
            async with asyncio.timeout(deadline):
                return await self._follow(method, url, headers or {}, content,
                                          max_bytes or self.network.max_bytes, follow, shown)
        except TimeoutError:
            raise self._refused(Timeout(shown(url), f"no complete response within {deadline:g} s")) from None
        except FetchError as exc:
            if isinstance(exc, BlockedAddress) and exc.url != shown(url):
                exc = BlockedAddress(shown(url), exc.reason)
            raise self._refused(exc) from None
        except httpx.InvalidURL as exc:
            raise self._refused(BadURL(shown(url), str(exc))) from None
        except (httpx.HTTPError, OSError) as exc:
            raise self._refused(FetchError(shown(url), f"{type(exc).__name__}: {exc}")) from None

    @staticmethod
    def _refused(exc: FetchError) -> FetchError:
        if isinstance(exc, BlockedAddress):
            metrics.PRIVATE_REFUSALS.inc()
            log.warning("fetch refused", url=exc.url, reason=exc.reason)
        return exc

    async def _follow(self, method: str, url: str, headers: dict[str, str],
                      content: bytes | None, max_bytes: int, follow: bool,
                      shown: Callable[[str], str]) -> Response:
        redirects: list[str] = []
        while True:
            target = _checked_url(url, shown)
            status, response_headers, body = await self._once(method, target, headers, content,
                                                              max_bytes, shown)
            location = response_headers.get("location")
            if not (follow and status in _REDIRECTS and location):
                return Response(str(target), status, response_headers, body, redirects)
            if len(redirects) >= self.network.max_redirects:
                raise TooManyRedirects(shown(url), f"more than {self.network.max_redirects} redirects")
            redirects.append(str(target))
            url = str(target.join(location))
            if status == 303:
                method, content = "GET", None

    async def _once(self, method: str, url: httpx.URL, headers: dict[str, str],
                    content: bytes | None, max_bytes: int, shown: Callable[[str], str],
                    ) -> tuple[int, httpx.Headers, bytes]:
        async with self._slot(url.host):
            request = self._client(url.host).build_request(method, url, headers=headers,
                                                           content=content)
            response = await self._client(url.host).send(request, stream=True)
            try:
                body = bytearray()
                async for chunk in response.aiter_bytes():  # decoded: the cap bounds inflation
                    body += chunk
                    if len(body) > max_bytes:
                        raise TooLarge(shown(str(url)), f"response over {max_bytes} bytes (decoded)")
                return response.status_code, response.headers, bytes(body)
            finally:
                await response.aclose()

    def _slot(self, host: str) -> AbstractAsyncContextManager[None]:
        return self._gate.slot(host) if self._gate else _no_gate()

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients))

    async def __aenter__(self) -> SafeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@asynccontextmanager
async def _no_gate() -> AsyncIterator[None]:
    yield


def _checked_url(url: str, shown: Callable[[str], str]) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise BadURL(shown(url), str(exc)) from None
    if parsed.scheme not in ("http", "https"):
        raise BadURL(shown(url), f"refused: scheme {parsed.scheme or '(none)'!r} is not http(s)")
    if not parsed.host:
        raise BadURL(shown(url), "no host")
    return parsed
