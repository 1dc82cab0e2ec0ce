"""sd_notify(3) without a dependency: readiness, stopping, reloading and the watchdog.

Each message is one datagram to $NOTIFY_SOCKET (a path, or an abstract socket written with a leading
'@'). Outside systemd the variable is unset and every call is a cheap no-op returning False.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import structlog

log = structlog.get_logger("ingester.systemd")


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. vsock: addresses, which a service on a host does not get


def notify(state: str) -> bool:
    """Send `state` (newline-separated KEY=VALUE assignments); True if a datagram went out."""
    address = _address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # a full receive queue must not stall the event loop
            sock.connect(address)
            sock.send(state.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify failed", state=state.split("\n", 1)[0], error=repr(exc))
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Startup is complete (Redis reachable, consumer groups created)."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping() -> bool:
    return notify("STOPPING=1")


def reloading() -> bool:
    """Before a SIGHUP reload; send ready() when it is done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds within which systemd expects WATCHDOG=1, or None when the watchdog is off for us."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None  # meant for another process (e.g. our parent)
    return usec / 1_000_000


class Watchdog:
    """Pings systemd only while the daemon proves it is doing work.

    Real work (the poll tick, each turn of the article loop) calls progress(); every half interval the
    task sends WATCHDOG=1 if there was progress since the last ping. A daemon whose loop is blocked,
    or whose work loops are wedged, stops pinging and systemd restarts it.
    """

    def __init__(self, interval: float | None = None) -> None:
        self.interval = watchdog_interval() if interval is None else interval
        self._progressed = False
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return bool(self.interval)

    def progress(self) -> None:
        self._progressed = True

    def check(self) -> bool:
        """One watchdog period: ping if there was progress since the last one; False if there was none."""
        if not self._progressed:
            return False
        self._progressed = False
        if watchdog():
            self.pings += 1
        return True

    async def run(self) -> None:
        """Until cancelled; returns at once when systemd did not ask for a watchdog."""
        if not self.interval:
            return
        while True:
            await asyncio.sleep(self.interval / 2)
            if not self.check():
                log.warning("no progress in the last watchdog period; not pinging systemd",
                            period=self.interval / 2)
