"""Cross-stream dynamic batching with deadlines: one :class:`BatchScheduler` per model.

Data path: stage streams ``submit(payload, deadline, policy)`` -> a deadline-ordered heap ->
the scheduler task blocks for the first request, gathers for at most ``max_wait_s`` (or until
``max_batch`` are waiting), takes the earliest deadlines first -> ``run_batch(payloads)`` in a
dedicated executor thread (never on the event loop; at most ``max_inflight`` batches at once) ->
each request's future gets an :class:`Outcome` with its queue and compute times.

Order: ``priority`` first (lower runs first; ASR finals before interims), then deadline (or the
``rank`` a stage gives instead: ASR interims by when their stream's user last saw an update). A
``batch_key`` (optional) says which requests can share one engine call: a batch then holds the first
request in that order and only requests with its key (ASR: the same padded length), so a request never
waits inside a batch for unrelated work that merely happened to be queued with it.

Policies when a deadline cannot be met (checked when a batch is formed, using the measured batch
time): ``run_late`` runs it anyway and marks it late (finals are never dropped); ``skip`` resolves it
as skipped without running (the stage then does its fallback: drop a stale partial, pass audio
through unconverted).

Late binding: a request submitted with ``bind`` has its payload made when a batch is formed, not when
it was queued (ASR interims with ``interim_latest_audio``: the segment up to the newest audio, so a
request that waited in the queue decodes what has been heard meanwhile instead of going stale).
``bind()`` returns ``(payload, weight, required)``, or None when the work is no longer wanted (the
request is then cancelled). It may be called more than once for one request (a request whose bound
payload has another ``batch_key`` stays queued and is bound again later), so it must not change
anything that the last call would not set the same way. A bound request is never skipped: past its
deadline it runs, marked late.

Failures: if ``run_batch`` raises, every request of that batch fails with
:class:`StageFailed` (nobody hangs); if it returns an ``Exception`` in one slot, only that request fails.
Watchdog: a call that runs longer than ``timeout_s`` fails its requests with :class:`StageFailed`; its
thread is abandoned (a Python thread cannot be killed) and the scheduler goes on with a fresh one.

With a shared :class:`~voxserve.server.runtime.EngineRuntime` (``--engine-workers`` >= 0), a gathered batch
also waits for one of the machine's workers, granted across every model earliest deadline first, and
runs on the runtime's pool instead of this scheduler's own threads; ``max_inflight`` still caps this
model's batches in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger("voxserve.scheduler")

RUN_LATE = "run_late"
BUSY_KEEP_S = 10.0      # how long batches' busy times are kept (utilisation looks at the last 2 s)
SKIP = "skip"


class StageFailed(RuntimeError):
    """The engine call for this request failed."""


@dataclass
class Outcome:
    value: Any
    queue_s: float            # submit -> batch start
    compute_s: float          # the batch's engine time
    batch_size: int
    late: bool = False        # finished after its deadline
    skipped: bool = False     # dropped by the skip policy (value is None)
    share: float = 0.0        # this request's weight / the batch's total weight
    marginal_s: float = 0.0   # engine seconds one more request like this one costs at the current batching


class BatchCostFit:
    """A least-squares line through recent batches' engine time against their total weight,
    ``seconds = fixed + per_weight x weight`` (exponential forgetting, ``forget`` per batch).

    A request's share of its batch (time x weight / total weight) includes part of the batch's fixed cost,
    so at low load, when batches are small, it overstates what one more stream would add once batches
    fill; ``per_weight`` is that addition. It is None until ``min_batches`` have been seen with enough
    spread in batch weight to tell a slope (all batches alike, e.g. one stream, give none), or when the
    fitted slope is not positive."""

    def __init__(self, forget: float = 0.99, min_batches: int = 20):
        self.forget, self.min_batches = forget, min_batches
        self.count = 0
        self.n = self.sw = self.sww = self.st = self.swt = 0.0

    def add(self, weight: float, seconds: float) -> None:
        f = self.forget
        self.count += 1
        self.n = f * self.n + 1.0
        self.sw = f * self.sw + weight
        self.sww = f * self.sww + weight * weight
        self.st = f * self.st + seconds
        self.swt = f * self.swt + weight * seconds

    def per_weight(self) -> float | None:
        if self.count < self.min_batches:
            return None
        mw = self.sw / self.n
        var = self.sww / self.n - mw * mw
        if var <= (0.1 * mw) ** 2:
            return None
        slope = (self.swt / self.n - mw * self.st / self.n) / var
        return slope if slope > 0 else None


def marginal_cost(share_s: float, weight: float, per_weight: float | None) -> float:
    """Engine seconds one more request of ``weight`` adds: the fitted slope x weight, but never more than
    its measured share of a batch (``share_s``) nor less than a quarter of it (a noisy slope must not make
    admission see streams as nearly free)."""
    if per_weight is None:
        return share_s
    return max(0.25 * share_s, min(share_s, per_weight * weight))


@dataclass(order=True)
class _Request:
    priority: int
    rank: float               # order within a priority: the deadline unless the stage gave another
    seq: int
    deadline: float = field(compare=False)
    payload: Any = field(compare=False)
    policy: str = field(compare=False)
    weight: float = field(compare=False)
    required: float = field(compare=False)
    enqueued: float = field(compare=False)
    future: asyncio.Future = field(compare=False)
    owner: Any = field(default=None, compare=False)
    bind: Callable[[], tuple[Any, float, float] | None] | None = field(default=None, compare=False)


class BatchScheduler:
    def __init__(self, name: str, run_batch: Callable[[list[Any]], Sequence[Any]], *, max_batch: int = 32,
                 max_wait_s: float = 0.002, max_inflight: int = 1, metrics: Any = None,
                 clock: Callable[[], float] = time.perf_counter, timeout_s: float | None = None,
                 runtime: Any = None, batch_key: Callable[[Any], Any] | None = None, nice: int = 0):
        if max_batch < 1 or max_inflight < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_inflight must be >= 1, max_wait_s >= 0")
        self.name = name
        self.nice = nice
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_inflight = max_inflight
        self.metrics = metrics
        self.clock = clock
        self.timeout_s = timeout_s
        self.runtime = runtime
        self.batch_key = batch_key
        self.hung_calls = 0
        self._heap: list[_Request] = []
        self._seq = itertools.count()
        self._executor = self._new_executor(f"engine-{name}")
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Future | None = None
        self._slots: asyncio.Semaphore | None = None
        self._inflight: set[asyncio.Task] = set()
        # recent batches: (end time, seconds busy, the required part of those seconds, and both split by
        # owner: ((owner, seconds, required seconds), ...) for the requests that named one)
        self._busy: deque[tuple[float, float, float, tuple]] = deque()
        self.cost_fit = BatchCostFit()                 # engine time against batch weight (admission)
        self.batch_time_ewma: float | None = None      # seconds per batch call
        self.item_time_ewma: float | None = None       # seconds per item (batch time / size)
        self.batches = 0
        self.items = 0

    def withdraw(self, fut: asyncio.Future) -> bool:
        """Cancel the request behind ``fut`` if it is still queued (True); one already in an engine call
        is left to finish, so its result is not thrown away (False)."""
        if fut.done() or not any(r.future is fut for r in self._heap):
            return False
        fut.cancel()             # the loop drops cancelled requests when it pops them
        return True

    def _new_executor(self, prefix: str) -> ThreadPoolExecutor:
        """This scheduler's engine threads; with ``nice`` > 0 they run at that lower OS priority (Linux
        schedules threads, so a long ASR decode then yields a core to a 16 ms VC block that is due)."""
        return ThreadPoolExecutor(max_workers=self.max_inflight, thread_name_prefix=prefix,
                                  initializer=_lower_priority if self.nice > 0 else None,
                                  initargs=(self.nice,) if self.nice > 0 else ())

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._slots = asyncio.Semaphore(self.max_inflight)
            self._task = asyncio.create_task(self._loop(), name=f"scheduler-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        for req in self._heap:
            if not req.future.done():
                req.future.set_exception(StageFailed(f"{self.name}: scheduler stopped"))
        self._heap.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- submission ----------------------------------------------------------------------------------
    def submit(self, payload: Any, *, deadline: float, policy: str = RUN_LATE, weight: float = 1.0,
               priority: int = 0, required: float = 1.0, rank: float | None = None,
               owner: Any = None, bind: Callable[[], tuple[Any, float, float] | None] | None = None
               ) -> asyncio.Future:
        """Queue one request; the returned future resolves to an :class:`Outcome`. ``weight`` is the
        request's share of work relative to others (e.g. the number of wakeword steps it carries);
        ``priority``: lower runs first whatever the deadlines (then earliest deadline first);
        ``required`` (0..1): the part of this work the stage could not shed under load (an interim sent
        more often than the sparsest cadence the stage falls back to counts for that share), which is
        what :meth:`required_utilisation` reports to admission; ``rank`` (seconds, on this scheduler's
        clock): the order within one priority when it is not the deadline (ASR interims: when the user
        would otherwise wait too long for an update), earliest first; the deadline still decides
        ``skip`` and lateness. ``owner`` (hashable, e.g. the stream's session id): whose work this is, so
        :meth:`utilisation` can leave out the work of streams that have ended (``exclude``). ``bind``: late
        binding (see the module's docstring); ``payload``, ``weight`` and ``required`` are then replaced
        by what it returns when the request is taken."""
        if self._task is None:
            self.start()
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, _Request(priority, deadline if rank is None else rank, next(self._seq), deadline,
                                            payload, policy, weight,
                                            min(1.0, max(0.0, required)), self.clock(), fut, owner, bind))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        return fut

    @property
    def pending(self) -> int:
        return len(self._heap)

    def expected_batch_s(self) -> float:
        return self.batch_time_ewma or 0.0

    # -- the loop ------------------------------------------------------------------------------------
    async def _wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._wake = loop.create_future()
        handle = loop.call_later(timeout, _resolve, self._wake) if timeout is not None else None
        try:
            await self._wake
        finally:
            if handle:
                handle.cancel()
            self._wake = None

    async def _loop(self) -> None:
        assert self._slots is not None
        while True:
            while not self._heap:
                await self._wait(None)                   # block for the first request
            await self._slots.acquire()
            first = min(r.enqueued for r in self._heap)
            while len(self._heap) < self.max_batch:     # gather for at most max_wait
                remaining = first + self.max_wait_s - self.clock()
                if remaining <= 0:
                    break
                await self._wait(remaining)
            if self.runtime is not None and self._heap:
                await self.runtime.acquire(min(r.deadline for r in self._heap), self.name)   # the machine's worker
            batch = self._take()
            if not batch:
                if self.runtime is not None:
                    self.runtime.release(0.0, self.name)
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    def _take(self) -> list[_Request]:
        now = self.clock()
        est = self.expected_batch_s()
        batch: list[_Request] = []
        other: list[_Request] = []                       # another batch key: stays queued
        key = None
        while self._heap and len(batch) < self.max_batch:
            req = heapq.heappop(self._heap)
            if req.future.done():                        # cancelled by its stream
                continue
            if req.bind is not None:
                bound = req.bind()
                if bound is None:                        # no longer wanted
                    req.future.cancel()
                    continue
                req.payload, req.weight, required = bound
                req.required = min(1.0, max(0.0, required))
            elif req.policy == SKIP and now + est > req.deadline:
                req.future.set_result(Outcome(None, now - req.enqueued, 0.0, 0, late=True, skipped=True))
                continue
            if self.batch_key is not None:
                k = self.batch_key(req.payload)
                if not batch:
                    key = k
                elif k != key:
                    other.append(req)
                    continue
            batch.append(req)
        for req in other:
            heapq.heappush(self._heap, req)
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        start = self.clock()
        payloads = [r.payload for r in batch]
        compute = 0.0
        try:
            executor = self.runtime.executor if self.runtime is not None else self._executor
            call = loop.run_in_executor(executor, _timed, self.run_batch, payloads)
            try:
                results, compute = await asyncio.wait_for(asyncio.shield(call), self.timeout_s) \
                    if self.timeout_s else await call
            except asyncio.TimeoutError:
                self._abandon_executor()
                raise StageFailed(f"{self.name}: engine call did not finish in {self.timeout_s:g} s") from None
            if len(results) != len(batch):
                raise StageFailed(f"{self.name}: run_batch returned {len(results)} results for {len(batch)} inputs")
        except Exception as exc:
            log.error("batch failed", extra={"model": self.name, "size": len(batch), "error": repr(exc)})
            err = exc if isinstance(exc, StageFailed) else StageFailed(f"{self.name}: {exc!r}")
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(err)
            return
        finally:
            assert self._slots is not None
            self._slots.release()
            if self.runtime is not None:
                self.runtime.release(compute or (self.clock() - start), self.name)
        self._observe(len(batch), compute)
        end = self.clock()
        total_weight = sum(r.weight for r in batch) or 1.0
        per = compute / total_weight
        owners = tuple((r.owner, per * r.weight, per * r.weight * r.required) for r in batch if r.owner is not None)
        self._busy.append((end, compute, per * sum(r.weight * r.required for r in batch), owners))
        while self._busy[0][0] < end - BUSY_KEEP_S:     # bounded even when nobody asks for utilisation
            self._busy.popleft()
        self.cost_fit.add(total_weight, compute)
        slope = self.cost_fit.per_weight()
        for r, res in zip(batch, results):
            if r.future.done():
                continue
            if isinstance(res, Exception):
                r.future.set_exception(res if isinstance(res, StageFailed) else StageFailed(repr(res)))
            else:
                share = r.weight / total_weight
                r.future.set_result(Outcome(res, start - r.enqueued, compute, len(batch), late=end > r.deadline,
                                            share=share, marginal_s=marginal_cost(compute * share, r.weight, slope)))

    def _abandon_executor(self) -> None:
        """The watchdog fired: leave the stuck thread to itself, run later batches on a new one."""
        self.hung_calls += 1
        if self.runtime is not None:
            self.runtime.replace_executor()
            if self.metrics is not None:
                self.metrics.engine_timeouts.labels(self.name).inc()
            return
        stuck = self._executor
        self._executor = self._new_executor(f"engine-{self.name}-{self.hung_calls}")
        stuck.shutdown(wait=False, cancel_futures=True)
        if self.metrics is not None:
            self.metrics.engine_timeouts.labels(self.name).inc()

    def utilisation(self, window_s: float = 2.0, required: bool = False, exclude: Any = ()) -> float:
        """Fraction of the last ``window_s`` seconds the executor spent in engine calls (per thread); with
        ``required``, only the part of that work the stages could not have shed (see ``submit``); less the
        work of the owners in ``exclude`` (a container: streams that have ended add no more load)."""
        now = self.clock()
        while self._busy and self._busy[0][0] < now - window_s:
            self._busy.popleft()
        k = 2 if required else 1
        busy = sum(b[k] for b in self._busy)
        if exclude:
            busy -= sum(o[k] for b in self._busy for o in b[3] if o[0] in exclude)
        return min(1.0, max(0.0, busy) / (window_s * self.max_inflight))

    def required_utilisation(self, window_s: float = 2.0, exclude: Any = ()) -> float:
        return self.utilisation(window_s, required=True, exclude=exclude)

    def _observe(self, size: int, compute: float) -> None:
        a = 0.1
        self.batch_time_ewma = compute if self.batch_time_ewma is None else (1 - a) * self.batch_time_ewma + a * compute
        per = compute / size
        self.item_time_ewma = per if self.item_time_ewma is None else (1 - a) * self.item_time_ewma + a * per
        self.batches += 1
        self.items += size
        if self.metrics is not None:
            self.metrics.batch_size.labels(self.name).observe(size)
            self.metrics.engine_seconds.labels(self.name).observe(compute)


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: per thread; elsewhere a no-op)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):
        pass


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _timed(fn: Callable, payloads: list) -> tuple[Sequence[Any], float]:
    t0 = time.perf_counter()
    out = fn(payloads)
    return out, time.perf_counter() - t0
