"""/healthz, /readyz and /metrics on the daemon's own event loop.

Three read-only endpoints do not justify a web framework: this is a minimal HTTP/1.1 responder on
asyncio.start_server. Every connection gets one request and is closed; the request head is capped in
size and the whole exchange in time, and connections beyond a small cap are dropped at once, so a slow
or hostile client cannot hold the server or the loop.

/healthz answers from memory only (never Redis): if the loop is blocked it does not answer at all,
and if the scheduler stopped ticking it answers 503. /readyz is Redis: PING within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from http import HTTPStatus

import orjson
import redis.asyncio as aioredis
import structlog
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = structlog.get_logger("ingester.health")

MAX_HEAD_BYTES = 8192  # request line and headers; a probe or a scraper sends a few hundred
PING_TIMEOUT = 1.0

Response = tuple[int, str, bytes]


class HealthServer:
    def __init__(self, redis: aioredis.Redis, host: str, port: int, stale_after: float = 30.0, *,
                 request_timeout: float = 5.0, max_connections: int = 32,
                 registry: CollectorRegistry = REGISTRY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis
        self.host = host
        self.stale_after = stale_after
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.registry = registry
        self._clock = clock
        self._wanted_port = port
        self._last_tick = clock()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def port(self) -> int:
        """The bound port (the chosen one when constructed with port=0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the health server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    def tick(self) -> None:
        """Called by the scheduler job: proof that scheduled work still runs."""
        self._last_tick = self._clock()

    async def start(self) -> None:
        self._last_tick = self._clock()  # the first tick gets a full stale_after from now
        self._server = await asyncio.start_server(self._serve, self.host, self._wanted_port,
                                                  limit=MAX_HEAD_BYTES)
        log.info("health server listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Closing the transports ends the handlers (end of stream): cancelling their tasks instead
        # makes asyncio.streams log the CancelledError as an error on Python 3.11.
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=self.request_timeout)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._connections) >= self.max_connections:
            writer.close()
            return
        self._connections[task] = writer
        try:
            async with asyncio.timeout(self.request_timeout):
                await self._exchange(reader, writer)
        except (TimeoutError, ConnectionError):
            pass  # a slow or vanished client: just drop it
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return await _send(writer, "GET", (431, "text/plain", b"request head too large\n"))
        except asyncio.IncompleteReadError:
            return  # closed before a whole request head
        method, path, headers = _parse_head(head)
        if method is None:
            return await _send(writer, "GET", (400, "text/plain", b"bad request\n"))
        await _send(writer, method, await self._route(method, path, headers))

    async def _route(self, method: str, path: str, headers: dict[str, str]) -> Response:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return self._healthz()
        if path == "/readyz":
            return await self._readyz()
        if path == "/metrics":
            return await self._metrics(headers.get("accept", ""))
        return 404, "text/plain", b"not found\n"

    def _healthz(self) -> Response:
        age = self._clock() - self._last_tick
        ok = age <= self.stale_after
        body = {"status": "ok" if ok else "stale", "last_tick_seconds_ago": round(age, 3),
                "stale_after": self.stale_after}
        return (200 if ok else 503), "application/json", orjson.dumps(body) + b"\n"

    async def _readyz(self) -> Response:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self.redis.ping()
        except TimeoutError:  # the client retries a refused connection: all we see is the wait
            reason = f"no answer within {PING_TIMEOUT:g} s"
        except Exception as exc:  # auth, failover in progress...: not ready
            reason = str(exc) or type(exc).__name__
        else:
            return 200, "application/json", b'{"status":"ok","redis":"ok"}\n'
        return 503, "application/json", orjson.dumps({"status": "unavailable", "redis": reason}) + b"\n"

    async def _metrics(self, accept: str) -> Response:
        encoder, content_type = choose_encoder(accept)  # OpenMetrics when the scraper asks for it
        body = await asyncio.to_thread(encoder, self.registry)  # serialising is CPU work: off the loop
        return 200, content_type, body


def _parse_head(head: bytes) -> tuple[str | None, str, dict[str, str]]:
    """(method, path without query, lower-cased headers); method None when it is not HTTP/1.x."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None, "", {}
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1].split("?", 1)[0], headers


async def _send(writer: asyncio.StreamWriter, method: str, response: Response) -> None:
    status, content_type, body = response
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode("latin-1")
    writer.write(head if method == "HEAD" else head + body)
    await writer.drain()
