"""One engine runtime for the machine: a worker pool sized to the cores, granted in deadline order.

Every model keeps its own :class:`~voxserve.server.scheduler.BatchScheduler` (per-model batching: block
for the first request, gather up to ``max_wait``, cap ``max_batch``; stage policies: skip stale interims,
coalesced wakeword steps, VC pass-through, finals run late but never dropped). What they share is this
runtime: a scheduler with a batch ready asks for a worker with the earliest deadline among its waiting
requests; a free worker goes to the waiting scheduler whose deadline is earliest, across all models, and
the batch runs on the runtime's thread pool (``workers`` threads; ONNX Runtime runs each call on
``intra_op_threads`` of its own). So on a 2-core machine VC, wakeword and two ASR batches no longer run
on four threads at once, and a final whose deadline is near goes before a VC block that can wait.

Data path: scheduler gathers a batch -> :meth:`EngineRuntime.acquire` (deadline) -> worker granted in
deadline order -> ``run_batch`` on :attr:`executor` -> :meth:`release` (+ busy seconds recorded) -> the
next waiting scheduler. :meth:`utilisation` is the busy share of the whole pool: what admission reads as
the machine's load. Pure asyncio + a thread pool; knows nothing of sockets or models.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .scheduler import BUSY_KEEP_S


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class EngineRuntime:
    def __init__(self, workers: int | None = None, *, clock: Callable[[], float] = time.perf_counter):
        self.workers = workers or default_workers()
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        self.clock = clock
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="engine")
        self._free = self.workers
        self._waiting: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()
        self._busy: deque[tuple[float, float]] = deque()     # (end time, seconds) of recent calls
        self.grants = 0
        self.waits = 0
        self.replaced = 0

    async def acquire(self, deadline: float) -> None:
        """Wait for a worker; waiters are served earliest deadline first (ties: first come)."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            self.grants += 1
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (deadline, next(self._seq), fut))
        self.waits += 1
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():   # granted as we were cancelled: pass the worker on
                self.release(0.0)
            raise
        self.grants += 1

    def release(self, busy_s: float) -> None:
        """Give a worker back after ``busy_s`` seconds of engine time; the earliest waiter gets it."""
        if busy_s > 0:
            now = self.clock()
            self._busy.append((now, busy_s))
            while self._busy[0][0] < now - BUSY_KEEP_S:     # bounded even when nobody asks for utilisation
                self._busy.popleft()
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self._free = min(self.workers, self._free + 1)

    def replace_executor(self) -> None:
        """A call hung (the watchdog fired): later calls run on fresh threads; the stuck one is abandoned."""
        self.replaced += 1
        stuck = self.executor
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"engine-{self.replaced}")
        stuck.shutdown(wait=False, cancel_futures=True)

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiting if not f.done())

    def utilisation(self, window_s: float = 2.0) -> float:
        """Busy share of the whole pool over the last ``window_s`` seconds (0-1)."""
        now = self.clock()
        while self._busy and self._busy[0][0] < now - window_s:
            self._busy.popleft()
        return min(1.0, sum(b for _, b in self._busy) / (window_s * self.workers))

    def busy_cores(self, window_s: float = 2.0) -> float:
        return self.utilisation(window_s) * self.workers

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
