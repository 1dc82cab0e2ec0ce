"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingester import systemd


class Listener:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def messages(self) -> list[str]:
        """Every datagram received so far."""
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return got


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield Listener(sock)


def test_ready_stopping_and_watchdog_reach_the_socket(listener: Listener) -> None:
    assert systemd.ready("42 feeds")
    assert systemd.watchdog()
    assert systemd.stopping()
    assert listener.messages() == ["READY=1\nSTATUS=42 feeds", "WATCHDOG=1", "STOPPING=1"]


def test_reloading_carries_the_monotonic_time(listener: Listener) -> None:
    assert systemd.reloading()
    (message,) = listener.messages()
    lines = dict(line.split("=", 1) for line in message.split("\n"))
    assert lines["RELOADING"] == "1" and int(lines["MONOTONIC_USEC"]) > 0


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ingester-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready()
        assert sock.recv(4096) == b"READY=1"


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.ready()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert not systemd.stopping()  # a socket that is gone is logged, not raised
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not systemd.watchdog()


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("60000000", "self", 60.0),
    ("500000", None, 0.5),
    ("60000000", "1", None),  # meant for another process
    ("0", None, None),
    ("soon", None, None),
    (None, None, None),
])
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None,
                           expected: float | None) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert systemd.watchdog_interval() == expected


def test_watchdog_pings_only_after_progress(listener: Listener) -> None:
    dog = systemd.Watchdog(interval=10)
    assert not dog.check()  # no progress: no ping
    assert listener.messages() == []
    dog.progress()
    dog.progress()
    assert dog.check()
    assert listener.messages() == ["WATCHDOG=1"]
    assert not dog.check()  # the progress was used up by the last ping
    assert listener.messages() == []
    assert dog.pings == 1


async def test_watchdog_task_stops_pinging_when_work_stops(listener: Listener,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: a ping is due every 0.05 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    dog = systemd.Watchdog()
    assert dog.enabled and dog.interval == 0.1
    task = asyncio.create_task(dog.run())
    try:
        for _ in range(5):  # work going on
            dog.progress()
            await asyncio.sleep(0.06)
        worked = listener.messages()
        await asyncio.sleep(0.3)  # work stopped
        idle = listener.messages()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert worked and set(worked) == {"WATCHDOG=1"}
    assert len(worked) <= 5  # never more pings than periods with progress
    assert len(idle) <= 1  # at most the ping for the last progress, then silence


async def test_watchdog_task_returns_when_systemd_asked_for_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    dog = systemd.Watchdog()
    assert not dog.enabled
    await asyncio.wait_for(dog.run(), 1)
