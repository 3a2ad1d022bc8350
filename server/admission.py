"""Admission control from measured capacity.

Two measurements, both taken from the work the server actually did:
- per engine scheduler, its **utilisation**: the fraction of the last 2 s its executor thread spent in
  engine calls, counting only the work its stage could not shed under load (``required``: an ASR
  interim sent more often than the sparsest cadence the stage falls back to, ``interim_max_interval_ms``,
  counts for that share; everything else counts in full);
- per pipeline, the **marginal cost of one real-time stream**: engine seconds per second of audio,
  where each request costs what one more like it adds at the current batching (the slope of the
  scheduler's fit of batch time against batch weight, ``scheduler.BatchCostFit``; an 80 ms wakeword step
  weighs 1), at most its share of its batch's time (a small batch's share carries the call's fixed
  cost, which full batches spread over many streams), again
  the required part (so a lightly loaded server's eager interims do not make it refuse streams it holds
  once the cadence has stretched).

A new stream is refused (``server_busy``, close 1013) when either
- for any pipeline it asks for, the utilisation of that pipeline's busiest scheduler, plus the cost of
  streams admitted to it but not yet visible in that utilisation (admitted within the 2 s window), plus
  the new stream's marginal cost, would exceed the target (0.8 of one executor thread); or
- for the whole machine, the engine threads' busy time summed over every scheduler (in cores), plus the
  not-yet-measured streams' costs, plus the new stream's cost over all its pipelines, would exceed 0.8 of
  the machine's cores (four engine threads on two cores are not four cores).
That is the point past which queues, and so budgets, stop being stable; a stage with a short budget lowers
the 0.8 while its streams are open (``Stage.machine_target``: VC, 0.6), since its tail grows with the whole
machine's load before the others' do. Streams that have ended are left
out: their engine work (stages name each request's stream, ``BatchScheduler.submit(owner=)``), their share
of the event loop's work and their budget misses are still in the windows, but will not recur, so a client
that sends files one after another faster than real time is not refused on a server its last file left
idle. (Other processes' CPU cannot be told apart by stream: a load generator on the same box still counts
until the window has moved past it.) A pipeline is judged only
after 20 measurements; until then only the static ``max_sessions`` limit applies to it.

The machine's load also counts this process's CPU outside engine calls (event loop: protocol, VAD,
resampling), measured from its CPU time over the same window, and the CPU the machine's other processes
used (``/proc/stat`` less this process: a load generator or another service on the same box); a new stream
adds, beside its engine costs, the event-loop cores per open stream measured so far (so a burst of arrivals
is not admitted as if its streams cost the loop nothing until the window sees them). And whatever the estimates say, a new stream
that would use an engine is refused while the stages are missing their budgets (at least ``MISS_LIMIT``
misses in the last ``MISS_WINDOW_S``: an ASR final late, a VC block late or passed through, a wakeword
step late or coalesced; a skipped ASR interim is shedding by design and does not count): on a shared CPU
one stage's load shows up as another's latency (ASR decodes starving the 16 ms VC blocks), which no cost
model of the first stage sees.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any, Callable

from .protocol.errors import ErrorCode, ProtocolError

TARGET_UTILISATION = 0.8
MIN_SAMPLES = 20
WINDOW_S = 2.0          # the utilisation window: streams admitted more recently are not in it yet
MISS_WINDOW_S = 5.0     # budget misses this recent hold admission ...
MISS_LIMIT = 5          # ... once there are this many (a one-off hiccup does not)
LOOP = "(event loop)"   # the key of a stream's event-loop cost among its per-pipeline costs


def _machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used (Linux /proc/stat: all but idle and iowait),
    or None where that is not available."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()[1:]
        ticks = [int(x) for x in fields[:8]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _util(scheduler: Any, required: bool, ended: Any = ()) -> float:
    """The scheduler's utilisation (its required part), less the work of the ``ended`` streams."""
    if required and hasattr(scheduler, "required_utilisation"):
        return scheduler.required_utilisation(exclude=ended)
    return scheduler.utilisation(exclude=ended)


class CostModel:
    """EWMA of engine seconds per audio second for one pipeline."""

    def __init__(self, alpha: float = 0.05):
        self.alpha = alpha
        self.value: float | None = None
        self.samples = 0

    def observe(self, work_s: float, audio_s: float) -> None:
        if audio_s <= 0:
            return
        x = work_s / audio_s
        self.value = x if self.value is None else (1 - self.alpha) * self.value + self.alpha * x
        self.samples += 1


class Admission:
    def __init__(self, settings: Any, metrics: Any, cores: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.metrics = metrics
        self.cores = cores if cores is not None else float(len(os.sched_getaffinity(0)))
        self.clock = clock
        self.external_busy: Callable[[], float] = lambda: 0.0     # other worker processes' engine load
        self.external_target: Callable[[], float] = lambda: TARGET_UTILISATION   # and their tightest target
        self._recent: deque[tuple[float, object, dict[str, float]]] = deque()   # (admitted at, stream, costs)
        self.costs: dict[str, CostModel] = {}
        self.schedulers: dict[str, list] = {}          # pipeline -> its BatchSchedulers
        self.targets: dict[str, float] = {}            # pipeline -> machine target while its streams are open
        self.streams: dict[object, tuple[str, ...]] = {}
        self._misses: deque[tuple[float, str, object]] = deque()   # (when, pipeline, stream) of recent misses
        self._ended: dict[object, float] = {}              # owner (session id) -> when its stream ended
        self._cpu: deque[tuple[float, float]] = deque()    # (clock, process CPU seconds) samples
        self.process_cpu: Callable[[], float] = time.process_time
        self.machine_cpu: Callable[[], float | None] = _machine_busy_seconds   # all processes (None: unknown)
        self.loop_per_stream = 0.0        # EWMA of event-loop cores per open stream (protocol, VAD, resampling)
        workers = int(getattr(settings, "engine_workers", -1) if settings is not None else -1)
        self.runtime = None                            # the machine's shared engine pool (server/runtime.py)
        if workers >= 0:
            from .runtime import EngineRuntime

            self.runtime = EngineRuntime(workers or None)

    def register(self, pipeline: str, schedulers: list, target: float = TARGET_UTILISATION) -> None:
        """``target``: the share of the machine's cores its engine load may reach while this pipeline has
        streams open (a stage with a short budget, VC's 40 ms, needs more headroom than the default)."""
        self.schedulers[pipeline] = list(schedulers)
        self.targets[pipeline] = target

    def machine_target(self, pipelines: Any = ()) -> float:
        """The machine's target with streams of ``pipelines`` about to open: the tightest target among
        them and the pipelines of the open streams, here and in the other worker processes (the tail of
        a short-budget stage depends on the whole machine's load, not on which stream brought it)."""
        return min(self.local_target(pipelines), self.external_target())

    def local_target(self, pipelines: Any = ()) -> float:
        """:meth:`machine_target` from this process's streams only (what it publishes to the others)."""
        open_ = {p for ps in self.streams.values() for p in ps} | set(pipelines)
        return min((self.targets.get(p, TARGET_UTILISATION) for p in open_), default=TARGET_UTILISATION)

    def cost_model(self, pipeline: str) -> CostModel:
        model = self.costs.get(pipeline)
        if model is None:
            model = self.costs[pipeline] = CostModel()
        return model

    def marginal(self, pipeline: str) -> float | None:
        m = self.costs.get(pipeline)
        if m is None or m.samples < MIN_SAMPLES:
            return None
        return m.value

    def ended(self) -> dict[object, float]:
        """Streams that ended within the measurement windows (owner -> when): their engine work and budget
        misses are still in the windows but will not recur, so admission leaves them out."""
        now = self.clock()
        keep = max(WINDOW_S, MISS_WINDOW_S)
        for owner in [o for o, t in self._ended.items() if now - t > keep]:
            del self._ended[owner]
        return self._ended

    def utilisation(self, pipeline: str, required: bool = False, ongoing: bool = True) -> float:
        """The pipeline's busiest scheduler's utilisation; with ``required``, only the work its stage could
        not shed under load (an ASR stream's interims beyond the sparsest cadence are not required); with
        ``ongoing``, less the work of streams that have ended."""
        ended = self.ended() if ongoing else ()
        return max((_util(s, required, ended) for s in self.schedulers.get(pipeline, [])), default=0.0)

    def threads(self, pipeline: str) -> int:
        """Engine threads of the pipeline's busiest scheduler (its utilisation is a fraction of these)."""
        group = self.schedulers.get(pipeline, [])
        if not group:
            return 1
        return getattr(max(group, key=lambda s: s.utilisation()), "max_inflight", 1)

    def machine_busy(self, local: bool = False, required: bool = False, ongoing: bool = True) -> float:
        """Cores' worth of engine work: each scheduler's utilisation times its threads, summed (with
        ``ongoing``, less the work of streams that have ended), plus the other worker processes' (unless
        ``local``; they publish their required, ongoing part)."""
        ended = self.ended() if ongoing else ()
        own = sum(_util(s, required, ended) * getattr(s, "max_inflight", 1) for group in self.schedulers.values()
                  for s in group)
        return own if local else own + self.external_busy()

    def missed(self, pipeline: str, owner: object = None) -> None:
        """A stage of ``pipeline`` missed its latency budget, in the stream ``owner`` (its session id) when
        known (see the module docstring for what counts)."""
        now = self.clock()
        self._misses.append((now, pipeline, owner))
        self._forget_misses(now)           # bounded even while no stream asks to be admitted

    def _forget_misses(self, now: float) -> None:
        while self._misses and now - self._misses[0][0] > MISS_WINDOW_S:
            self._misses.popleft()

    def recent_misses(self) -> dict[str, int]:
        """Per pipeline, the budget misses of the last ``MISS_WINDOW_S``, except those of streams that have
        ended since (a stream that outran the server, e.g. a file sent faster than real time, does not
        hold the next stream back once it is gone)."""
        self._forget_misses(self.clock())
        ended = self.ended()
        out: dict[str, int] = {}
        for _, p, owner in self._misses:
            if owner is None or owner not in ended:
                out[p] = out.get(p, 0) + 1
        return out

    def sample_cpu(self) -> None:
        """Record this process's CPU time (called at each admission and each publish of the load)."""
        now = self.clock()
        self._cpu.append((now, self.process_cpu(), self.machine_cpu()))
        while len(self._cpu) > 2 and now - self._cpu[1][0] >= WINDOW_S:
            self._cpu.popleft()
        # per stream, from streams open through the window (not those just admitted, whose load it does not
        # hold yet), and only with several of them (the server's own fixed loop work is then spread thin)
        settled = len(self.streams) - len({h for _, h, _ in self._recent if h in self.streams})
        if settled >= 4 and now - self._cpu[0][0] >= 0.5 * WINDOW_S:
            x = self.loop_cores() / settled
            self.loop_per_stream = x if not self.loop_per_stream else 0.8 * self.loop_per_stream + 0.2 * x

    def loop_cores(self, ongoing: bool = True) -> float:
        """Cores this process spent outside engine calls over the last window (its CPU minus engine busy);
        with ``ongoing``, less the part taken to be the ended streams' (their share of the engine work: a
        stream's protocol, VAD and resampling work grows with its audio as its engine work does)."""
        if len(self._cpu) < 2 or self._cpu[-1][0] - self._cpu[0][0] < 0.5:
            return 0.0
        (t0, c0, _), (t1, c1, _) = self._cpu[0], self._cpu[-1]
        engines = self.machine_busy(local=True, ongoing=False)
        loop = max(0.0, (c1 - c0) / (t1 - t0) - engines)
        if ongoing and engines > 0 and self.ended():
            loop *= min(1.0, self.machine_busy(local=True) / engines)
        return loop

    def other_cores(self) -> float:
        """Cores the machine's other processes used over the last window (all CPU time minus this process's,
        less what the other voxserve workers publish, which ``external_busy`` already counts): a load
        generator, another service or a build on the same box takes cores the stages then lack."""
        if len(self._cpu) < 2 or self._cpu[-1][0] - self._cpu[0][0] < 0.5:
            return 0.0
        (t0, c0, m0), (t1, c1, m1) = self._cpu[0], self._cpu[-1]
        if m0 is None or m1 is None:
            return 0.0
        return max(0.0, ((m1 - m0) - (c1 - c0)) / (t1 - t0) - self.external_busy())

    def unmeasured(self) -> dict[str, float]:
        """Per pipeline, the cost of streams admitted within the utilisation window (not in it yet)."""
        now = self.clock()
        while self._recent and now - self._recent[0][0] > WINDOW_S:
            self._recent.popleft()
        out: dict[str, float] = {}
        for _, _, costs in self._recent:
            for p, c in costs.items():
                out[p] = out.get(p, 0.0) + c
        return out

    def admit(self, handler: object, config: Any) -> ProtocolError | None:
        if self.settings.admission:
            self.sample_cpu()
            misses = self.recent_misses()
            if sum(misses.values()) >= MISS_LIMIT and any(self.schedulers.get(p) for p in config.pipelines):
                return ProtocolError(
                    ErrorCode.SERVER_BUSY,
                    f"the server's stages are missing their latency budgets ({sum(misses.values())} misses in "
                    f"the last {MISS_WINDOW_S:g} s: " + ", ".join(f"{p} {n}" for p, n in sorted(misses.items()))
                    + "). Retry later or on another server")
            costs = {p: c for p in config.pipelines if (c := self.marginal(p)) is not None}
            pending = self.unmeasured()           # also the event-loop cost of streams just admitted (LOOP)
            for p, cost in costs.items():
                # in units of one thread of that scheduler: utilisation x threads = threads busy
                threads = self.threads(p)
                util = (self.utilisation(p, required=True) * threads + pending.get(p, 0.0)) / threads
                cost = cost / threads
                if util + cost > TARGET_UTILISATION:
                    return ProtocolError(
                        ErrorCode.SERVER_BUSY,
                        f"measured capacity exhausted for {p}: engine utilisation {util:.2f} (streams just "
                        f"admitted included), one more stream adds ~{cost:.2f}, limit {TARGET_UTILISATION}. "
                        "Retry later or on another server")
            busy = (self.machine_busy(required=True) + self.loop_cores() + self.other_cores()
                    + sum(pending.values()))
            loop = self.loop_per_stream if costs else 0.0
            need = sum(costs.values()) + loop
            limit = self.machine_target(config.pipelines) * self.cores
            if costs and busy + need > limit:
                return ProtocolError(
                    ErrorCode.SERVER_BUSY,
                    f"the machine's engines are busy: {busy:.2f} of {self.cores:g} cores in use, one more stream "
                    f"needs ~{need:.2f}, limit {limit:.2f}. Retry later or on another server")
            if costs:
                self._recent.append((self.clock(), handler, {**costs, LOOP: loop}))
        self.streams[handler] = tuple(config.pipelines)
        return None

    def release(self, handler: object, owner: object = None) -> None:
        """``handler``'s stream has ended; ``owner`` (its session id, as its stages name their engine work
        and budget misses) is then left out of the measurements (None: no session, or one that lives on
        detached and keeps its load)."""
        self.streams.pop(handler, None)
        if owner is not None:
            self._ended[owner] = self.clock()
        if any(h is handler for _, h, _ in self._recent):      # a stream that already ended adds no load
            self._recent = deque(r for r in self._recent if r[1] is not handler)

    def report(self, open_streams: int) -> dict:
        out: dict[str, Any] = {"streams": open_streams, "cores": self.cores, "admission": bool(self.settings.admission),
                               "target_utilisation": TARGET_UTILISATION, "machine_target": self.machine_target(),
                               "machine_busy_cores":
                               round(self.machine_busy(ongoing=False), 3), "machine_required_cores":
                               round(self.machine_busy(required=True), 3), "loop_cores": round(self.loop_cores(), 3),
                               "other_processes_cores": round(self.other_cores(), 3),
                               "recent_budget_misses": self.recent_misses(),
                               "loop_cores_per_stream": round(self.loop_per_stream, 4), "pipelines": {}}
        for p in sorted(set(self.costs) | set(self.schedulers)):
            util = self.utilisation(p, required=True)
            cost = self.marginal(p)
            entry: dict[str, Any] = {"utilisation": round(self.utilisation(p, ongoing=False), 3), "required_utilisation":
                                     round(util, 3), "cost_per_stream": None if cost is None else round(cost, 4)}
            if cost:
                threads = self.threads(p)
                own = (TARGET_UTILISATION - util) * threads / cost
                machine = (self.machine_target((p,)) * self.cores - self.machine_busy(required=True)
                           - self.loop_cores() - self.other_cores()) / cost
                entry["remaining_streams_estimate"] = max(0, int(min(own, machine)))
            out["pipelines"][p] = entry
        return out
