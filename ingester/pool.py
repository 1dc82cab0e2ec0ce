"""A process pool for CPU-bound work (feed parsing, extraction) that never blocks the event loop.

pebble cuts a task at its timeout and replaces the worker that ran it, so a pathological
document costs one worker restart, not a stuck pool.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import pebble

T = TypeVar("T")


class TaskTimeout(Exception):
    """The task ran past its timeout; its worker was replaced."""


class WorkerCrashed(Exception):
    """The worker process died (killed, out of memory...) while running the task."""


class WorkerPool:
    def __init__(self, workers: int | None = None, *, timeout: float = 30.0,
                 initializer: Callable[[], None] | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.timeout = timeout
        # forkserver: workers do not inherit the daemon's event loop, sockets or threads.
        context = multiprocessing.get_context("forkserver")
        self._pool = pebble.ProcessPool(max_workers=self.workers, initializer=initializer,
                                        context=context)

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        future = self._pool.schedule(fn, args=args, timeout=timeout or self.timeout)
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            name = getattr(fn, "__name__", fn)
            raise TaskTimeout(f"{name} ran over {timeout or self.timeout:g} s") from None
        except pebble.ProcessExpired as exc:
            raise WorkerCrashed(f"worker died running {getattr(fn, '__name__', fn)}: {exc}") from None
        except asyncio.CancelledError:
            future.cancel()  # type: ignore[no-untyped-call]  # pebble stops the worker running it
            raise

    def close(self) -> None:
        self._pool.stop()  # type: ignore[no-untyped-call]
        self._pool.join(timeout=10)
