"""A process pool for CPU-bound work (feed parsing, extraction) that never blocks the event loop.

pebble cuts a task at its timeout and replaces the worker that ran it, so a pathological document
costs one worker restart, not a stuck pool. Workers come from a forkserver (a clean process with the
`preload` modules imported), not forked from the daemon with its threads and sockets; so, as with any
non-fork start method, a program's main module must be import-safe (`if __name__ == "__main__":`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import pebble

T = TypeVar("T")


class TaskFailed(Exception):
    """The pool could not run the task to its end."""


class TaskTimeout(TaskFailed):
    """The task ran past its timeout; its worker was replaced."""


class WorkerCrashed(TaskFailed):
    """The worker process died (killed, out of memory...) while running the task."""


class WorkerPool:
    def __init__(self, workers: int | None = None, *, timeout: float = 30.0,
                 initializer: Callable[..., None] | None = None, initargs: Sequence[Any] = (),
                 preload: Sequence[str] = ()) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.timeout = timeout
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._context = multiprocessing.get_context("forkserver")
        if preload:
            self._context.set_forkserver_preload(list(preload))
        self._pool = self._new_pool()

    def _new_pool(self) -> pebble.ProcessPool:
        return pebble.ProcessPool(max_workers=self.workers, initializer=self._initializer,
                                  initargs=self._initargs, context=self._context)

    async def start(self) -> None:
        """Start the workers now rather than with the first task. Starting them blocks (the first pool
        also starts the forkserver, which imports and warms up the preload modules): on a thread."""
        await asyncio.to_thread(self._schedule, os.getpid, (), self.timeout)
        await self.run(os.getpid)  # a worker is up (and a pool broken at birth is replaced)

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """fn(*args) in a worker; exceptions fn raises come back as they are."""
        limit = timeout or self.timeout
        for attempt in (1, 2):
            future = self._schedule(fn, args, limit)
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                # pebble gives up on the whole pool when a worker dies while none is busy (one
                # killed while idle, say): not this task's fault, so start a fresh pool and retry once.
                if attempt == 2:
                    raise WorkerCrashed("the worker pool broke twice in a row") from None
            except FutureTimeout:
                raise TaskTimeout(f"no result within {limit:g} s; worker replaced") from None
            except pebble.ProcessExpired as exc:
                raise WorkerCrashed(f"worker died: {exc}") from None
            except asyncio.CancelledError:
                future.cancel()  # type: ignore[no-untyped-call]  # pebble stops the worker running it
                raise
        raise AssertionError("unreachable")

    def _schedule(self, fn: Callable[..., T], args: tuple[Any, ...], timeout: float,
                  ) -> pebble.ProcessFuture[T]:
        if not self._pool.active:
            self._retire(self._pool)
            self._pool = self._new_pool()
        return self._pool.schedule(fn, args=args, timeout=timeout)

    @staticmethod
    def _retire(pool: pebble.ProcessPool) -> None:
        """Stop a broken pool; joining it blocks, so that happens on a thread of its own."""
        pool.stop()  # type: ignore[no-untyped-call]
        threading.Thread(target=pool.join, name="pool-retire", daemon=True).start()

    def close(self) -> None:
        """Stop the workers (pending tasks are cancelled)."""
        self._pool.stop()  # type: ignore[no-untyped-call]
        self._pool.join(timeout=10)
