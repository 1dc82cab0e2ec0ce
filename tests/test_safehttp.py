"""The safe HTTP client against real loopback servers: the guard, redirects, caps, deadline, decoding."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import logging
import re
import socket
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import brotli
import httpx
import pytest
import zstandard
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from ingester.config import NetworkConfig
from ingester.safehttp import (
    BadURL,
    BlockedAddress,
    FetchError,
    Response,
    SafeClient,
    Timeout,
    TooLarge,
    TooManyRedirects,
    decode_html,
    refusal,
)

LOOPBACK_ONLY = NetworkConfig(allow_private=["127.0.0.1/32"])  # type: ignore[list-item]
NO_PRIVATE = NetworkConfig(allow_private=[])


# --- a raw loopback HTTP server that counts every connection it accepts ---------------------------

@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Writer = asyncio.StreamWriter
Handler = Callable[[Request, Writer], Awaitable[None]]


@dataclass
class Server:
    host: str
    routes: dict[str, Handler] = field(default_factory=dict)
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (h.partition(":") for h in lines if h)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            request = Request(method, path, headers, body)
            self.requests.append(request)
            await self.routes.get(path, not_found)(request, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def respond(status: int = 200, body: bytes = b"ok", headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: Request, writer: Writer) -> None:
        writer.write(raw_response(status, body, headers))

    return handler


def raw_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def redirect(location: str, status: int = 302) -> Handler:
    return respond(status, b"", {"Location": location})


not_found = respond(404, b"not found")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(host: str = "127.0.0.1", **routes: Handler) -> Server:
        server = Server(host, {f"/{k.replace('_', '-')}": v for k, v in routes.items()})
        aserver = await asyncio.start_server(server._serve, host, 0)
        server.port = aserver.sockets[0].getsockname()[1]
        servers.append(aserver)
        return server

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def refusals() -> float:
    return REGISTRY.get_sample_value("ingester_private_address_refusals_total") or 0.0


# --- the private-address guard ----------------------------------------------------------------------

GUARDED_FORMS = [
    "http://127.0.0.1:{port}/",
    "http://localhost:{port}/",
    "http://2130706433:{port}/",  # decimal
    "http://0x7f000001:{port}/",  # hex
    "http://017700000001:{port}/",  # octal
    "http://127.1:{port}/",  # short form
    "http://[::ffff:127.0.0.1]:{port}/",  # IPv4-mapped
    "http://[::ffff:7f00:1]:{port}/",
    "http://[64:ff9b::7f00:1]:{port}/",  # NAT64
    "http://[::127.0.0.1]:{port}/",  # IPv4-compatible (deprecated)
    "HTTP://LOCALHOST:{port}/",
]


async def test_the_refusal_names_the_address_and_the_host_it_came_from(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(ok=respond())
    async with SafeClient(NO_PRIVATE) as client:
        with pytest.raises(BlockedAddress) as literal:
            await client.get(f"http://127.0.0.1:{server.port}/ok")
        with pytest.raises(BlockedAddress) as named:
            await client.get(f"http://localhost:{server.port}/ok")
    assert literal.value.reason == "refused: 127.0.0.1 is a loopback address"
    assert re.fullmatch(r"refused: localhost: (127\.0\.0\.1|::1) is a loopback address", named.value.reason)


@pytest.mark.parametrize("template", GUARDED_FORMS)
async def test_guard_refuses_loopback_forms_before_connecting(serve, template: str) -> None:
    server = await serve(ok=respond())
    url = template.format(port=server.port) + "ok"
    async with SafeClient(NO_PRIVATE) as client:
        with pytest.raises(BlockedAddress) as caught:
            await client.get(url)
    assert "refused" in caught.value.reason and url in str(caught.value)
    assert server.connections == 0


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_guard_refuses_ipv6_loopback_before_connecting(serve) -> None:
    server = await serve("::1", ok=respond())
    async with SafeClient(LOOPBACK_ONLY) as client:
        with pytest.raises(BlockedAddress, match="loopback"):
            await client.get(server.url("/ok"))
    assert server.connections == 0
    async with SafeClient(NetworkConfig(allow_private=["::1/128"])) as client:  # type: ignore[list-item]
        assert (await client.get(server.url("/ok"))).content == b"ok"  # the control: it does serve
    assert server.connections == 1


async def test_guard_lets_allow_private_through(serve) -> None:
    server = await serve(ok=respond())
    async with SafeClient(LOOPBACK_ONLY) as client:
        response = await client.get(server.url("/ok"))
    assert (response.status, response.content) == (200, b"ok")
    assert server.connections == 1


@pytest.mark.parametrize("form", ["http://127.0.0.2:{port}/", "http://2130706434:{port}/"])
async def test_guard_refuses_redirect_into_private_address(serve, form: str) -> None:
    """127.0.0.1 is allowed and redirects to 127.0.0.2, which is not: the second server sees nothing."""
    inner = await serve("127.0.0.2", secret=respond(200, b"internal"))
    outer = await serve(start=redirect(form.format(port=inner.port) + "secret"))
    async with SafeClient(LOOPBACK_ONLY) as client:
        with pytest.raises(BlockedAddress) as caught:
            await client.get(outer.url("/start"))
    assert "127.0.0.2" in caught.value.reason and "redirected to" in caught.value.reason
    assert caught.value.url == outer.url("/start")
    assert len(outer.requests) == 1
    assert inner.connections == 0


async def test_guard_refusal_counts_and_logs(serve) -> None:
    server = await serve()
    url = f"http://2130706433:{server.port}/feed.xml"
    before = refusals()
    async with SafeClient(NO_PRIVATE) as client:
        with capture_logs() as logs, pytest.raises(BlockedAddress):
            await client.get(url)
    assert refusals() == before + 1
    [entry] = [e for e in logs if e["event"] == "fetch refused"]
    assert entry["log_level"] == "warning"
    assert entry["url"] == url
    assert "127.0.0.1 is a loopback address" in entry["reason"]


@pytest.mark.parametrize("address", [
    "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",  # private: refused
    "100.64.0.1",
    "100.127.255.254", "224.0.0.1", "239.255.255.250", "0.0.0.0", "0.1.2.3", "255.255.255.255",
    "198.18.0.1", "240.0.0.1", "127.0.0.1", "::", "::1", "fe80::1", "fc00::1", "fd12:3456::1",
    "fec0::1", "ff02::1", "2002:7f00:1::", "2002:a00:1::", "64:ff9b::a00:1", "64:ff9b:1::a00:1",
    "::ffff:10.0.0.1", "::ffff:0:a00:1",  # private in IPv6 forms: refused
    "::127.0.0.1", "2001::1", "2001:db8::1",
])
def test_refusal_of_private_address(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8",
                                     "2002:808:808::", "64:ff9b::808:808"])
def test_no_refusal_for_public_address(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_refusal_reasons_name_the_kind() -> None:
    def why(a: str) -> str:
        return refusal(ipaddress.ip_address(a)) or ""

    assert "CGNAT" in why("100.64.0.1")
    assert "multicast" in why("224.0.0.1")
    assert "link-local" in why("169.254.169.254")  # refusal reason only: nothing connects
    assert "loopback" in why("::ffff:127.0.0.1") and "embedded" in why("::ffff:127.0.0.1")
    assert "private" in why("64:ff9b::a00:1")


def test_refusal_allow_private_applies_to_embedded_forms() -> None:
    allow = [ipaddress.ip_network("10.0.0.0/8")]  # allow_private, checked without connecting
    assert refusal(ipaddress.ip_address("10.9.8.7"), allow) is None
    assert refusal(ipaddress.ip_address("::ffff:10.9.8.7"), allow) is None
    assert refusal(ipaddress.ip_address("192.168.0.1"), allow) is not None


# --- schemes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/_x",
                                 "data:text/plain,hello", "javascript:alert(1)", "//127.0.0.1/x"])
async def test_guard_refuses_non_http_schemes(url: str) -> None:
    async with SafeClient(LOOPBACK_ONLY) as client:
        with capture_logs() as logs, pytest.raises(BadURL, match="not http"):
            await client.get(url)
    assert any(e["event"] == "fetch refused" and e["url"] == url for e in logs)


async def test_guard_refuses_redirect_to_file_scheme(serve) -> None:
    server = await serve(start=redirect("file:///etc/passwd"))
    async with SafeClient(LOOPBACK_ONLY) as client:
        with pytest.raises(BadURL, match=r"scheme .file.*redirected to file:/+etc/passwd"):
            await client.get(server.url("/start"))
    assert len(server.requests) == 1


# --- redirects ---------------------------------------------------------------------------------------

async def test_redirect_loop_is_cut(serve) -> None:
    server = await serve(loop=redirect("/loop"))
    async with SafeClient(NetworkConfig(allow_private=["127.0.0.1/32"], max_redirects=3)) as client:  # type: ignore[list-item]
        with pytest.raises(TooManyRedirects):
            await client.get(server.url("/loop"))
    assert len(server.requests) == 4  # the first request and 3 redirects


async def test_relative_redirect_resolves_and_chain_is_recorded(serve) -> None:
    server = await serve(a=redirect("b", 301), b=redirect("/c/../d?x=1", 307))
    server.routes["/d?x=1"] = respond(200, b"done")
    async with SafeClient(LOOPBACK_ONLY) as client:
        response = await client.get(server.url("/a"))
    assert (response.status, response.content) == (200, b"done")
    assert response.url == server.url("/d?x=1")
    assert response.redirects == [server.url("/a"), server.url("/b")]
    assert response.host == "127.0.0.1"


async def test_303_turns_post_into_get(serve) -> None:
    server = await serve(form=redirect("/result", 303), result=respond(200, b"fine"))
    async with SafeClient(LOOPBACK_ONLY) as client:
        response = await client.request("POST", server.url("/form"), content=b"a=1",
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.content == b"fine"
    first, second = server.requests
    assert (first.method, first.body) == ("POST", b"a=1")
    assert (second.method, second.body) == ("GET", b"")
    assert "content-type" not in second.headers


async def test_post_does_not_follow_redirects(serve) -> None:
    server = await serve(hook=redirect("/elsewhere", 307), elsewhere=respond())
    async with SafeClient(LOOPBACK_ONLY) as client:
        response = await client.post(server.url("/hook"), b"{}")
    assert response.status == 307 and response.redirects == []
    assert [r.path for r in server.requests] == ["/hook"]


async def test_cross_origin_redirect_drops_credentials(serve) -> None:
    other = await serve(land=respond())
    server = await serve(go=redirect(other.url("/land")))
    async with SafeClient(LOOPBACK_ONLY) as client:
        await client.get(server.url("/go"), {"Authorization": "Bearer s3cret", "X-Keep": "1"})
    assert server.requests[0].headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in other.requests[0].headers
    assert other.requests[0].headers["x-keep"] == "1"


async def test_non_ascii_validator_is_sent_as_utf8(serve) -> None:
    server = await serve(feed=respond(304, b""))
    async with SafeClient(LOOPBACK_ONLY) as client:
        response = await client.get(server.url("/feed"), {"If-None-Match": '"café"'})
    assert response.status == 304
    assert server.requests[0].headers["if-none-match"] == '"café"'.encode().decode("latin-1")


async def test_header_injection_is_a_fetch_error(serve) -> None:
    server = await serve(feed=respond())
    async with SafeClient(LOOPBACK_ONLY) as client:
        with pytest.raises(FetchError):
            await client.get(server.url("/feed"), {"If-None-Match": '"x"\r\nX-Evil: 1'})
    assert server.requests == []


async def test_guard_checks_cached_lookups_again(serve) -> None:
    server = await serve(ok=respond())
    before = refusals()
    async with SafeClient(NO_PRIVATE) as client:
        for _ in range(2):
            with pytest.raises(BlockedAddress):
                await client.get(f"http://localhost:{server.port}/ok")
    assert refusals() == before + 2
    assert server.connections == 0


# --- byte cap on decoded bytes ------------------------------------------------------------------------

MB = 1024 * 1024


def gzip_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(MB)
    return b"".join([*(packer.compress(block) for _ in range(size // MB)), packer.flush()])


def brotli_zeros(size: int) -> bytes:
    packer = brotli.Compressor(quality=5)
    block = bytes(MB)
    return b"".join([*(packer.process(block) for _ in range(size // MB)), packer.finish()])


def zstd_zeros(size: int) -> bytes:
    packer = zstandard.ZstdCompressor().compressobj()
    block = bytes(MB)
    return b"".join([*(packer.compress(block) for _ in range(size // MB)), packer.flush()])


@pytest.mark.parametrize(("encoding", "bomb"), [
    ("gzip", lambda: gzip_zeros(64 * MB)),
    ("br", lambda: brotli_zeros(256 * MB)),
    ("zstd", lambda: zstd_zeros(64 * MB)),
    ("gzip, gzip", lambda: gzip.compress(gzip_zeros(64 * MB))),
])
async def test_compression_bomb_is_cut_at_decoded_cap(serve, encoding: str,
                                                      bomb: Callable[[], bytes]) -> None:
    body = bomb()
    assert len(body) < MB  # the bomb is small on the wire
    server = await serve(bomb=respond(200, body, {"Content-Encoding": encoding}))
    async with SafeClient(LOOPBACK_ONLY) as client:
        tracemalloc.start()
        try:
            with pytest.raises(TooLarge, match="decoded"):
                await client.get(server.url("/bomb"), max_bytes=MB)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 6 * MB, f"inflated far past the cap: peak {peak / MB:.1f} MB"


async def test_plain_oversize_body_is_cut(serve) -> None:
    server = await serve(big=respond(200, b"x" * (2 * MB)))
    async with SafeClient(LOOPBACK_ONLY) as client:
        with pytest.raises(TooLarge):
            await client.get(server.url("/big"), max_bytes=MB)
        assert len((await client.get(server.url("/big"), max_bytes=2 * MB)).content) == 2 * MB


@pytest.mark.parametrize(("encoding", "pack"), [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, as some servers send
    ("br", brotli.compress),
    ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
    ("identity", lambda b: b),
    ("utf-8", lambda b: b),  # a bogus coding some feed servers send: passed through
    ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
])
async def test_compressed_bodies_decode(serve, encoding: str, pack: Callable[[bytes], bytes]) -> None:
    text = b"<rss>" + b"".join(b"<item>%d</item>" % i for i in range(30000)) + b"</rss>"
    server = await serve(feed=respond(200, pack(text), {"Content-Encoding": encoding}))
    async with SafeClient(LOOPBACK_ONLY) as client:
        response = await client.get(server.url("/feed"))
    assert response.content == text
    assert "gzip" in server.requests[0].headers["accept-encoding"]


async def test_corrupt_gzip_is_a_fetch_error(serve) -> None:
    server = await serve(bad=respond(200, b"definitely not gzip", {"Content-Encoding": "gzip"}))
    async with SafeClient(LOOPBACK_ONLY) as client:
        with pytest.raises(FetchError, match="undecodable"):
            await client.get(server.url("/bad"))


# --- the deadline --------------------------------------------------------------------------------------

async def drip_body(request: Request, writer: Writer) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(1)


async def drip_headers(request: Request, writer: Writer) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for i in range(1000):
        writer.write(b"X-%d: y\r\n" % i)
        await writer.drain()
        await asyncio.sleep(1)


@pytest.mark.parametrize("route", ["body", "headers"])
async def test_drip_is_cut_at_the_deadline(serve, route: str) -> None:
    server = await serve(body=drip_body, headers=drip_headers)
    started = time.monotonic()
    async with SafeClient(LOOPBACK_ONLY) as client:
        with pytest.raises(Timeout, match="within 2 s"):
            await client.get(server.url(f"/{route}"), timeout=2)
    assert time.monotonic() - started < 10  # sanity only: httpx's own per-read timeout would never fire


async def test_deadline_covers_the_whole_redirect_chain(serve) -> None:
    async def slow_redirect(request: Request, writer: Writer) -> None:
        await asyncio.sleep(0.8)
        writer.write(raw_response(302, b"", {"Location": "/slow"}))

    server = await serve(slow=slow_redirect)
    async with SafeClient(NetworkConfig(allow_private=["127.0.0.1/32"], max_redirects=20)) as client:  # type: ignore[list-item]
        with pytest.raises(Timeout):
            await client.get(server.url("/slow"), timeout=2)
    assert len(server.requests) <= 4


async def test_connection_refused_is_a_fetch_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        async with SafeClient(LOOPBACK_ONLY) as client:
            with pytest.raises(FetchError) as caught:
                await client.get(f"http://127.0.0.1:{port}/")
    assert caught.value.kind == "network"


# --- POST with a secret URL ---------------------------------------------------------------------------

SECRET = "T0123/B4567/verysecrettoken"


def hide(url: str) -> str:
    return url.replace(SECRET, "***")


async def test_post_redacts_secret_url_when_refused(serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = await serve()
    url = f"http://127.0.0.1:{server.port}/services/{SECRET}"
    async with SafeClient(NO_PRIVATE) as client:
        with capture_logs() as logs, pytest.raises(BlockedAddress) as caught:
            await client.post(url, b"{}", redact=hide)
    assert SECRET not in str(caught.value) and SECRET not in caught.value.url
    assert "/services/***" in caught.value.url
    assert logs and all(SECRET not in str(e) for e in logs)
    assert SECRET not in caplog.text


@pytest.mark.parametrize("route", ["drip", "big", "closed"])
async def test_post_redacts_secret_url_in_errors(serve, caplog: pytest.LogCaptureFixture, route: str) -> None:
    caplog.set_level(logging.DEBUG)
    server = await serve()
    server.routes = {f"/drip/{SECRET}": drip_body, f"/big/{SECRET}": respond(200, b"x" * 4096)}
    port = server.port
    if route == "closed":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening
    config = NetworkConfig(allow_private=["127.0.0.1/32"], max_bytes=1024)  # type: ignore[list-item]
    async with SafeClient(config) as client:
        with capture_logs() as logs, pytest.raises(FetchError) as caught:
            await client.post(f"http://127.0.0.1:{port}/{route}/{SECRET}", b"{}", timeout=1.5, redact=hide)
    assert SECRET not in str(caught.value)
    assert f"/{route}/***" in caught.value.url
    assert all(SECRET not in str(e) for e in logs)
    assert SECRET not in caplog.text


# --- decode_html ------------------------------------------------------------------------------------

def test_decode_html_header_charset() -> None:
    assert decode_html("café".encode("latin-1"), "text/html; charset=ISO-8859-1") == "café"
    assert decode_html("café".encode("latin-1"), 'text/html; charset="iso-8859-1"') == "café"


def test_decode_html_meta_charset() -> None:
    page = '<html><head><meta charset="windows-1251"></head><body>мир</body></html>'
    assert "мир" in decode_html(page.encode("cp1251"))
    page = '<meta http-equiv="Content-Type" content="text/html; charset=koi8-r">мир'
    assert "мир" in decode_html(page.encode("koi8-r"), "text/html")


def test_decode_html_xml_declaration() -> None:
    feed = '<?xml version="1.0" encoding="ISO-8859-15"?><rss><title>€uro</title></rss>'
    assert "€uro" in decode_html(feed.encode("iso-8859-15"))


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_decode_html_boms(encoding: str) -> None:
    text = "<p>Ünïcödé ✓</p>"
    data = text.encode(encoding)
    if encoding in ("utf-16-le", "utf-16-be"):
        data = ("\ufeff" + text).encode(encoding)
    assert decode_html(data, "text/html; charset=iso-8859-1") == text  # the BOM wins over the header


def test_decode_html_wrong_header_charset_falls_back() -> None:
    page = '<meta charset="utf-8"><p>naïve café</p>'.encode()
    assert "naïve café" in decode_html(page, "text/html; charset=us-ascii")  # ascii fails: the meta wins
    latin = "<p>naïve café</p>".encode("latin-1")
    assert "naïve café" in decode_html(latin, "text/html; charset=utf-8")  # not UTF-8: cp1252
    assert "naïve café" in decode_html(latin, "text/html; charset=no-such-charset")


def test_decode_html_ignores_utf16_declared_in_ascii_document() -> None:
    page = '<meta charset="utf-16"><p>plain</p>'.encode("ascii")
    assert decode_html(page) == page.decode("ascii")


def test_response_text_uses_headers() -> None:
    response = Response("http://a/", 200, httpx.Headers({"content-type": "text/html; charset=cp1252"}),
                        "€".encode("cp1252"))
    assert response.text() == "€"


async def test_one_host_gets_as_many_connections_as_its_gate_allows(serve) -> None:  # type: ignore[no-untyped-def]
    """One host keeps to one connection pool: with host_concurrency above the pool's usual 10, the
    requests the gate lets through must all be sent, not queue inside httpx against their deadline."""
    in_flight, peak = 0, 0

    async def slow(request: Request, writer: Writer) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.3)
        in_flight -= 1
        writer.write(raw_response(200, b"ok"))

    server = await serve(slow=slow)
    network = NetworkConfig(allow_private=["127.0.0.1/32"], host_concurrency=25)  # type: ignore[list-item]
    async with SafeClient(network) as client:
        responses = await asyncio.gather(*(client.get(server.url("/slow")) for _ in range(25)))
    assert [r.status for r in responses] == [200] * 25
    assert peak == 25
