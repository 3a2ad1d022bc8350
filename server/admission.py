"""Admission control from measured capacity.

Two measurements, both taken from the work the server actually did:
- per engine scheduler, its **utilisation**: the fraction of the last 2 s its executor thread spent in
  engine calls;
- per pipeline, the **marginal cost of one real-time stream**: engine seconds per second of audio,
  where a batch's time is shared among its requests by weight (an 80 ms wakeword step weighs 1).

A new stream is refused (``server_busy``, close 1013) when, for any pipeline it asks for, the
utilisation of that pipeline's busiest scheduler plus the stream's marginal cost would exceed the
target utilisation (0.8 of one executor thread), i.e. when admitting it would push an engine past the
point where queues, and so budgets, stop being stable. A pipeline is judged only after 20
measurements; until then only the static ``max_sessions`` limit applies to it.
"""

from __future__ import annotations

import os
from typing import Any

from .protocol.errors import ErrorCode, ProtocolError

TARGET_UTILISATION = 0.8
MIN_SAMPLES = 20


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
    def __init__(self, settings: Any, metrics: Any, cores: float | None = None):
        self.settings = settings
        self.metrics = metrics
        self.cores = cores if cores is not None else float(len(os.sched_getaffinity(0)))
        self.costs: dict[str, CostModel] = {}
        self.schedulers: dict[str, list] = {}          # pipeline -> its BatchSchedulers
        self.streams: dict[object, tuple[str, ...]] = {}

    def register(self, pipeline: str, schedulers: list) -> None:
        self.schedulers[pipeline] = list(schedulers)

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

    def utilisation(self, pipeline: str) -> float:
        return max((s.utilisation() for s in self.schedulers.get(pipeline, [])), default=0.0)

    def admit(self, handler: object, config: Any) -> ProtocolError | None:
        if self.settings.admission:
            for p in config.pipelines:
                cost = self.marginal(p)
                if cost is None:
                    continue
                util = self.utilisation(p)
                if util + cost > TARGET_UTILISATION:
                    return ProtocolError(
                        ErrorCode.SERVER_BUSY,
                        f"measured capacity exhausted for {p}: engine utilisation {util:.2f}, one more stream "
                        f"adds ~{cost:.2f}, limit {TARGET_UTILISATION}. Retry later or on another server")
        self.streams[handler] = tuple(config.pipelines)
        return None

    def release(self, handler: object) -> None:
        self.streams.pop(handler, None)

    def report(self, open_streams: int) -> dict:
        out: dict[str, Any] = {"streams": open_streams, "cores": self.cores, "admission": bool(self.settings.admission),
                               "target_utilisation": TARGET_UTILISATION, "pipelines": {}}
        for p in sorted(set(self.costs) | set(self.schedulers)):
            util = self.utilisation(p)
            cost = self.marginal(p)
            entry: dict[str, Any] = {"utilisation": round(util, 3),
                                     "cost_per_stream": None if cost is None else round(cost, 4)}
            if cost:
                entry["remaining_streams_estimate"] = max(0, int((TARGET_UTILISATION - util) / cost))
            out["pipelines"][p] = entry
        return out
