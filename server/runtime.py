"""One engine runtime for the machine: a worker pool sized to the cores, granted in deadline order.

Every model keeps its own :class:`~voxserve.server.scheduler.BatchScheduler` (per-model batching: block
for the first request, gather up to ``max_wait``, cap ``max_batch``; stage policies: skip stale interims,
coalesced wakeword steps, VC pass-through, finals run late but never dropped). What they share is this
runtime: a scheduler with a batch ready asks for a worker with the earliest deadline among its waiting
requests; a free worker goes to the waiting scheduler whose deadline is earliest, across all models, and
the batch runs on the runtime's thread pool (``workers`` threads; ONNX Runtime runs each call on
``intra_op_threads`` of its own). So on a 2-core machine VC, wakeword and two ASR batches no longer run
on four threads at once, and a final whose deadline is near goes before a VC block that can wait. The
pool cannot preempt a call, so while several models are active one worker is kept for the others (no model
holds more than ``workers - 1``; see :class:`EngineRuntime`).

Data path: scheduler gathers a batch -> :meth:`EngineRuntime.acquire` (deadline) -> worker granted in
deadline order -> ``run_batch`` on :attr:`executor` -> :meth:`release` (+ busy seconds recorded) -> the
next waiting scheduler. :meth:`utilisation` is the busy share of the whole pool: what admission reads as
the machine's load. Pure asyncio + a thread pool; knows nothing of sockets or models.
"""

from __future__ import annotations

import asyncio
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


RESERVE_S = 1.0    # a model counts as active for this long after it last asked for a worker


class EngineRuntime:
    """``reserve_s``: while more than one model is active (asked for a worker within that many seconds),
    no model holds more than ``workers - 1`` workers, so one stays for the others. The pool cannot preempt
    a call, so without this an ASR decode of 100-300 ms on each worker of a 2-core machine made 16 ms VC
    blocks wait for it (RESULTS, "ASR and the engine runtime"); a model alone may use every worker."""

    def __init__(self, workers: int | None = None, *, clock: Callable[[], float] = time.perf_counter,
                 reserve_s: float = RESERVE_S):
        self.workers = workers or default_workers()
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        self.clock = clock
        self.reserve_s = reserve_s
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="engine")
        self._free = self.workers
        self._waiting: list[tuple[float, int, asyncio.Future, object]] = []   # (deadline, seq, future, holder)
        self._held: dict[object, int] = {}          # holder (a model's name) -> workers it holds now
        self._asked: dict[object, float] = {}       # holder -> when it last asked for a worker
        self._seq = itertools.count()
        self._busy: deque[tuple[float, float]] = deque()     # (end time, seconds) of recent calls
        self._recheck: asyncio.TimerHandle | None = None
        self.grants = 0
        self.waits = 0
        self.reserved = 0        # times a free worker was kept back for other models
        self.replaced = 0

    def _may_take(self, holder: object, now: float) -> bool:
        """``holder`` may take a free worker: it holds fewer than ``workers - 1``, or no other model is active."""
        if self.workers == 1 or self._held.get(holder, 0) < self.workers - 1:
            return True
        return not any(h != holder and now - t < self.reserve_s for h, t in self._asked.items())

    async def acquire(self, deadline: float, holder: object = None) -> None:
        """Wait for a worker for ``holder`` (a model); waiters are served earliest deadline first (ties:
        first come) among those that may take one (see the class docstring)."""
        self._asked[holder] = self.clock()
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((deadline, next(self._seq), fut, holder))
        self._dispatch()
        if not fut.done():
            self.waits += 1
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():   # granted as we were cancelled: pass the worker on
                self.release(0.0, holder)
            raise
        self.grants += 1

    def _dispatch(self) -> None:
        """Give the free workers to the earliest waiters that may take them."""
        self._waiting = [w for w in self._waiting if not w[2].done()]
        now = self.clock()
        while self._free > 0 and self._waiting:
            ready = [w for w in self._waiting if self._may_take(w[3], now)]
            if not ready:
                self.reserved += 1
                if self._recheck is None:        # the reserve lapses when the other models go quiet
                    self._recheck = asyncio.get_running_loop().call_later(self.reserve_s, self._lapse)
                return
            w = min(ready)
            self._waiting.remove(w)
            self._free -= 1
            self._held[w[3]] = self._held.get(w[3], 0) + 1
            w[2].set_result(None)

    def _lapse(self) -> None:
        self._recheck = None
        self._dispatch()

    def release(self, busy_s: float, holder: object = None) -> None:
        """Give back ``holder``'s worker after ``busy_s`` seconds of engine time; the earliest waiter that
        may take it gets it."""
        if busy_s > 0:
            now = self.clock()
            self._busy.append((now, busy_s))
            while self._busy[0][0] < now - BUSY_KEEP_S:     # bounded even when nobody asks for utilisation
                self._busy.popleft()
        if self._held.get(holder, 0) > 0:
            self._held[holder] -= 1
        self._free = min(self.workers, self._free + 1)
        self._dispatch()

    def replace_executor(self) -> None:
        """A call hung (the watchdog fired): later calls run on fresh threads; the stuck one is abandoned."""
        self.replaced += 1
        stuck = self.executor
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"engine-{self.replaced}")
        stuck.shutdown(wait=False, cancel_futures=True)

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f, _ in self._waiting if not f.done())

    def utilisation(self, window_s: float = 2.0) -> float:
        """Busy share of the whole pool over the last ``window_s`` seconds (0-1)."""
        now = self.clock()
        while self._busy and self._busy[0][0] < now - window_s:
            self._busy.popleft()
        return min(1.0, sum(b for _, b in self._busy) / (window_s * self.workers))

    def busy_cores(self, window_s: float = 2.0) -> float:
        return self.utilisation(window_s) * self.workers

    def shutdown(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
