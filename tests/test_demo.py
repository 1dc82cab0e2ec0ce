"""`ingester demo`, the offline newcomer's command, runs the whole pipeline and says what it ingested."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_ingests_the_bundled_sites() -> None:
    env = {k: v for k, v in os.environ.items() if k != "INGESTER_REDIS_URL"}
    done = subprocess.run([sys.executable, "-m", "ingester", "demo", "--seconds", "90"], env=env,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "4 articles written" in done.stdout
    assert "1 syndicated copy clustered" in done.stdout
    assert done.stdout.count("topics=['ceasefire']") == 2
