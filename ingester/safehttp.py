"""The one HTTP client for everything the daemon fetches, guarded against SSRF and hostile servers.

- only http and https, on every redirect;
- every address a host name resolves to is checked when the connection is opened (so after DNS and on
  every redirect, and the connection goes to the address that was checked: no DNS rebinding);
  private, loopback, link-local, CGNAT, multicast, reserved, and IPv4-mapped/NAT64/6to4 forms of them
  are refused unless inside `allow_private`;
- caps on redirects, decoded body bytes (we inflate in bounded steps, so a gzip/brotli bomb is cut at
  the cap without ever being inflated whole) and total time per request, redirects included (a server
  that drips one byte a second is cut at the deadline). Waiting for a politeness slot is not the
  server's fault: it has a budget of its own and does not eat into the deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
import typing
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Protocol

import brotli  # type: ignore[import-untyped]
import httpcore
import httpx
import structlog
import zstandard

from ingester import metrics
from ingester.config import NetworkConfig

log = structlog.get_logger("ingester.http")

# httpx logs every request's full URL at INFO; webhook URLs carry secrets, and we log our own way.
logging.getLogger("httpx").setLevel(logging.WARNING)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_6TO4 = ipaddress.ip_network("2002::/16")
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated
_NAMED: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("100.64.0.0/10"), "a carrier-grade NAT (CGNAT) address"),
    (ipaddress.ip_network("0.0.0.0/8"), "a 'this network' address"),
    (ipaddress.ip_network("::/128"), "the unspecified address"),
    (ipaddress.ip_network("fec0::/10"), "a site-local address"),
    # IPv4-compatible (deprecated): some stacks still route ::127.0.0.1 to 127.0.0.1.
    (ipaddress.ip_network("::/96"), "an IPv4-compatible IPv6 address"),
)


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


class GateBusy(Timeout):
    """No politeness slot for the host in time: nothing was sent, the server is not to blame."""

    kind = "busy"


class BadURL(FetchError):
    kind = "bad_url"


class Undecodable(FetchError):
    """The body's content encoding is corrupt: fetching it again gives the same bytes."""

    kind = "undecodable"


class TooManyRedirects(FetchError):
    kind = "redirects"


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, IPv4-translated, NAT64 or 6to4 IPv6 address, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or ip in _NAT64_LOCAL or ip in _SIIT:
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
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    for net, what in _NAMED:
        if ip in net:
            return f"{ip} is {what}"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_private:
        return f"{ip} is a private address"
    if not ip.is_global or ip.is_reserved:
        return f"{ip} is not a public address"
    return None


class _Resolver:
    """getaddrinfo with a short cache: feeds of one host are polled one after another, and the
    default executor has few threads. Only lookups are cached; every use is checked again."""

    def __init__(self, ttl: float = 30.0, size: int = 4096) -> None:
        self._ttl, self._size = ttl, size
        self._cache: dict[tuple[str, int], tuple[float, list[IPAddress]]] = {}

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        hit = self._cache.get((host, port))
        if hit and hit[0] > loop.time():
            return hit[1]
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if len(self._cache) >= self._size:
            del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache[(host, port)] = (loop.time() + self._ttl, addresses)
        return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves host names itself, checks every address, then connects to the checked address."""

    def __init__(self, allow: Sequence[IPNetwork], resolver: _Resolver) -> None:
        self._allow = allow
        self._resolver = resolver
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
        addresses = await self._resolver.resolve(host.strip("[]"), port)
        for ip in addresses:  # one bad address refuses the host: no racing the resolver
            if reason := refusal(ip, self._allow):
                named = "" if host.strip("[]") == str(ip) else f"{host}: "  # a name, not an IP literal
                raise BlockedAddress(host, f"refused: {named}{reason}")
        return str(addresses[0])

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[typing.Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress(path, "refused: Unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, allow: Sequence[IPNetwork], limits: httpx.Limits, ssl_context: typing.Any,
                 resolver: _Resolver) -> None:
        super().__init__(limits=limits, verify=ssl_context, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(allow, resolver),
        )


class HostGate(Protocol):
    """Politeness: holds a slot for one request to `host` (see ingester.politeness)."""

    def slot(self, host: str) -> AbstractAsyncContextManager[None]: ...

    async def hold_off(self, host: str, seconds: float) -> None: ...


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds a 429 or 503 asks us to wait (Retry-After: seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass
class Response:
    url: str  # final URL, after redirects
    status: int
    headers: httpx.Headers
    content: bytes  # decoded (gzip, brotli...) body, at most max_bytes
    redirects: list[str] = field(default_factory=list)  # the URLs that redirected, in order

    @property
    def host(self) -> str:
        return httpx.URL(self.url).host

    def text(self) -> str:
        return decode_html(self.content, self.headers.get("content-type", ""))


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.I)
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def decode_html(content: bytes, content_type: str = "") -> str:
    """Text from bytes: a BOM, the HTTP charset, the document's own declaration, UTF-8, else cp1252."""
    for bom, charset in _BOMS:
        if content.startswith(bom):
            return content[len(bom):].decode(charset, errors="replace")
    candidates = []
    if m := _HEADER_CHARSET.search(content_type):
        candidates.append(m.group(1))
    head = content[:4096]
    for pattern in (_META_CHARSET, _XML_ENCODING):
        # A declaration we could read as ASCII cannot be UTF-16/32 (HTML spec: treat it as UTF-8).
        if (m2 := pattern.search(head)) and not m2.group(1).lower().startswith((b"utf-16", b"utf-32")):
            candidates.append(m2.group(1).decode("ascii"))
    for charset in [*candidates, "utf-8"]:
        try:
            return content.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return content.decode("cp1252", errors="replace")


# --- bounded content decoding -------------------------------------------------------------------
# httpx inflates each network chunk whole: 64 KB of brotli can be gigabytes. We inflate in steps of
# at most about _STEP bytes and check the cap between steps.

_STEP = 64 * 1024
_ZSTD_SLICE = 16  # zstd has no output limit; ~32000:1 at most, so 16 input bytes give <= ~512 KB


class _Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)
        self._fallback = wbits == zlib.MAX_WBITS  # "deflate" is raw deflate on some servers
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            try:
                out = self._d.decompress(data, _STEP)
            except zlib.error:
                if not (self._fallback and not self._started):
                    raise
                self._d, self._fallback = zlib.decompressobj(-zlib.MAX_WBITS), False
                continue
            self._started = True
            data = self._d.unconsumed_tail
            if out:
                yield out
            if not data and len(out) < _STEP:
                return


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._d.is_finished():
            return  # trailing bytes after the end of the stream
        out = self._d.process(data, output_buffer_limit=_STEP)
        while out:  # output held back by the limit comes with empty input, until there is none
            yield out
            out = self._d.process(b"", output_buffer_limit=_STEP)


class _Zstd:
    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), _ZSTD_SLICE):
            yield self._d.decompress(data[i:i + _ZSTD_SLICE])


def _brotli_bounded() -> bool:
    try:  # output_buffer_limit came with brotli 1.2; without it we do not ask for br
        brotli.Decompressor().process(b"", output_buffer_limit=1)
    except TypeError:
        return False
    return True


_DECODERS: dict[str, Callable[[], _Decoder]] = {
    "gzip": lambda: _Zlib(zlib.MAX_WBITS | 16), "x-gzip": lambda: _Zlib(zlib.MAX_WBITS | 16),
    "deflate": lambda: _Zlib(zlib.MAX_WBITS), "br": _Brotli, "zstd": _Zstd,
}
ACCEPT_ENCODING = "gzip, deflate, br" if _brotli_bounded() else "gzip, deflate"
_DECODE_ERRORS = (zlib.error, brotli.error, zstandard.ZstdError)


def _decoders(content_encoding: str) -> list[_Decoder]:
    """Decoders in the order they apply; unknown codings ("identity", bogus "utf-8") pass through."""
    names = [n.strip().lower() for n in content_encoding.split(",")]
    return [_DECODERS[n]() for n in reversed(names) if n in _DECODERS]


def _through(decoders: Sequence[_Decoder], data: bytes) -> Iterator[bytes]:
    if not decoders:
        yield data
        return
    for piece in decoders[0].feed(data):
        if piece:
            yield from _through(decoders[1:], piece)


# --- the client ---------------------------------------------------------------------------------

class SafeClient:
    """Guarded GET/POST over a few small connection pools (httpx costs grow with pool size)."""

    def __init__(self, network: NetworkConfig, *, gate: HostGate | None = None,
                 pools: int = 4, connections_per_pool: int = 10) -> None:
        self.network = network
        self._gate = gate
        # One host keeps to one pool: it must hold every request the host gate lets through at once,
        # or the rest would queue inside httpx and run out their deadline there.
        size = max(connections_per_pool, network.host_concurrency)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        ssl_context = httpx.create_ssl_context(trust_env=False)  # certifi's roots, made once
        resolver = _Resolver()
        self._transports = [_GuardedTransport(network.allow_private, limits, ssl_context, resolver)
                            for _ in range(pools)]
        self._headers = httpx.Headers({"User-Agent": network.user_agent, "Accept": "*/*",
                                       "Accept-Encoding": ACCEPT_ENCODING})

    def _transport(self, host: str) -> httpx.AsyncHTTPTransport:
        return self._transports[hash(host) % len(self._transports)]  # one host keeps to one pool

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
        hop = _Hop(method, _headers(headers), content, max_bytes or self.network.max_bytes,
                   deadline, shown)
        try:
            async with asyncio.timeout(deadline) as budget:
                return await self._follow(url, hop, follow, budget)
        except TimeoutError:
            raise Timeout(shown(url), f"no complete response within {deadline:g} s") from None
        except FetchError as exc:
            raise self._refused(exc) from None
        except httpx.InvalidURL as exc:
            raise BadURL(shown(url), str(exc)) from None
        except (httpx.HTTPError, OSError) as exc:
            raise FetchError(shown(url), f"{type(exc).__name__}: {exc}") from None
        except _DECODE_ERRORS as exc:
            raise Undecodable(shown(url), f"undecodable body: {exc}") from None

    @staticmethod
    def _refused(exc: FetchError) -> FetchError:
        if isinstance(exc, BlockedAddress):
            metrics.PRIVATE_REFUSALS.inc()
            log.warning("fetch refused", url=exc.url, reason=exc.reason)
        elif isinstance(exc, BadURL) and exc.reason.startswith("refused"):
            log.warning("fetch refused", url=exc.url, reason=exc.reason)
        return exc

    async def _follow(self, url: str, hop: _Hop, follow: bool, budget: asyncio.Timeout) -> Response:
        redirects: list[str] = []
        first = url
        while True:
            target = _checked_url(url, first, hop.shown)
            try:
                status, response_headers, body = await self._once(target, hop, budget)
            except BlockedAddress as exc:  # name the URL asked for, and where it led if elsewhere
                where = f" (redirected to {hop.shown(str(target))})" if redirects else ""
                raise BlockedAddress(hop.shown(first), exc.reason + where) from None
            await self._honour_retry_after(target.host, status, response_headers)
            location = response_headers.get("location")
            if not (follow and status in _REDIRECTS and location):
                return Response(str(target), status, response_headers, body, redirects)
            if len(redirects) >= self.network.max_redirects:
                raise TooManyRedirects(hop.shown(first), f"more than {self.network.max_redirects} redirects")
            redirects.append(str(target))
            url = str(target.join(location))
            hop.redirected(status, target, httpx.URL(url))

    async def _honour_retry_after(self, host: str, status: int, headers: httpx.Headers) -> None:
        """A 429 or 503 with Retry-After holds the host off: no daemon sends it anything before then."""
        if self._gate is not None and status in (429, 503) and (wait := retry_after(headers)) is not None:
            await self._gate.hold_off(host, wait)

    async def _once(self, url: httpx.URL, hop: _Hop, budget: asyncio.Timeout,
                    ) -> tuple[int, httpx.Headers, bytes]:
        async with self._slot(url, hop, budget):
            headers = self._headers.copy()
            headers.update(hop.headers)
            request = httpx.Request(hop.method, url, headers=headers, content=hop.content)
            response = await self._transport(url.host).handle_async_request(request)
            try:
                body = bytearray()
                decoders = _decoders(response.headers.get("content-encoding", ""))
                async for raw in response.aiter_raw():
                    for piece in _through(decoders, raw):
                        body += piece
                        if len(body) > hop.max_bytes:
                            raise TooLarge(hop.shown(str(url)),
                                           f"response over {hop.max_bytes} bytes (decoded)")
                return response.status_code, response.headers, bytes(body)
            finally:
                await response.aclose()

    @asynccontextmanager
    async def _slot(self, url: httpx.URL, hop: _Hop, budget: asyncio.Timeout) -> AsyncIterator[None]:
        """The gate's slot for the host; the wait for it has a budget of its own, not the deadline's."""
        if self._gate is None:
            yield
            return
        loop = asyncio.get_running_loop()
        when = budget.when()
        left = None if when is None else when - loop.time()
        budget.reschedule(None)
        async with AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(hop.deadline):
                    await stack.enter_async_context(self._gate.slot(url.host))
            except TimeoutError:
                raise GateBusy(hop.shown(str(url)),
                               f"no politeness slot for {url.host} within {hop.deadline:g} s") from None
            finally:
                budget.reschedule(None if left is None else loop.time() + left)
            yield

    async def aclose(self) -> None:
        await asyncio.gather(*(t.aclose() for t in self._transports))

    async def __aenter__(self) -> SafeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass
class _Hop:
    """What the next request of a redirect chain sends."""

    method: str
    headers: httpx.Headers
    content: bytes | None
    max_bytes: int
    deadline: float
    shown: Callable[[str], str]

    def redirected(self, status: int, source: httpx.URL, target: httpx.URL) -> None:
        """As browsers and httpx do: 303 (and 301/302 after POST) become GET without a body."""
        if (status == 303 and self.method != "HEAD") or (status in (301, 302) and self.method == "POST"):
            self.method, self.content = "GET", None
            for name in ("content-type", "content-length", "transfer-encoding"):
                self.headers.pop(name, None)
        if (source.scheme, source.host, source.port) != (target.scheme, target.host, target.port):
            for name in ("authorization", "cookie"):  # credentials stay with their origin
                self.headers.pop(name, None)


def _headers(headers: dict[str, str] | None) -> httpx.Headers:
    """Caller headers; a non-ASCII value (an ETag a server sent in UTF-8) goes out as UTF-8."""
    return httpx.Headers([(k.encode("ascii"), v.encode("utf-8")) for k, v in (headers or {}).items()])


def _checked_url(url: str, first: str, shown: Callable[[str], str]) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise BadURL(shown(first), str(exc)) from None
    where = "" if url == first else f" (redirected to {shown(url)})"
    if parsed.scheme not in ("http", "https"):
        raise BadURL(shown(first), f"refused: scheme {parsed.scheme or '(none)'!r} is not http(s){where}")
    if not parsed.host:
        raise BadURL(shown(first), f"no host{where}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise BadURL(shown(first), f"port {parsed.port} out of range{where}")
    return parsed
