"""Admission control from measured capacity.

Each stream costs CPU in proportion to the audio it sends and the pipelines it runs. The server
measures that cost (seconds of work per second of audio, per pipeline) from the work it actually
did, and refuses a new stream (``server_busy``, close 1013) when its estimated cost would push the
total above ``capacity`` (usable cores x target utilisation). Until enough has been measured, the
static ``max_sessions`` limit alone applies.
"""

from __future__ import annotations

import os
from typing import Any

from .protocol.errors import ErrorCode, ProtocolError

TARGET_UTILISATION = 0.8


class CostModel:
    """EWMA of work seconds per audio second for one pipeline."""

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
        self.capacity = self.cores * TARGET_UTILISATION
        self.costs: dict[str, CostModel] = {}
        self.streams: dict[object, tuple[str, ...]] = {}

    def cost_model(self, pipeline: str) -> CostModel:
        model = self.costs.get(pipeline)
        if model is None:
            model = self.costs[pipeline] = CostModel()
        return model

    def stream_cost(self, pipelines: tuple[str, ...]) -> float | None:
        """Estimated cores one real-time stream of these pipelines uses, or None if not yet measured."""
        total = 0.0
        for p in pipelines:
            m = self.costs.get(p)
            if m is None or m.samples < 20:
                if p == "vad":
                    continue          # VAD cost is negligible next to the transport
                return None
            total += m.value or 0.0
        return total

    def load(self) -> float:
        total = 0.0
        for pipes in self.streams.values():
            c = self.stream_cost(pipes)
            total += c or 0.0
        return total

    def admit(self, handler: object, config: Any) -> ProtocolError | None:
        if self.settings.admission:
            cost = self.stream_cost(config.pipelines)
            if cost is not None and cost > 0 and self.load() + cost > self.capacity:
                return ProtocolError(ErrorCode.SERVER_BUSY,
                                     f"measured capacity exhausted: load {self.load():.2f} of {self.capacity:.2f} "
                                     f"cores; this stream needs ~{cost:.3f}. Retry later")
        self.streams[handler] = tuple(config.pipelines)
        return None

    def release(self, handler: object) -> None:
        self.streams.pop(handler, None)

    def report(self, open_streams: int) -> dict:
        load = self.load()
        per_pipeline = {p: round(m.value, 5) for p, m in self.costs.items() if m.value is not None}
        out: dict[str, Any] = {"streams": open_streams, "cores": self.cores, "capacity_cores": self.capacity,
                               "load_cores": round(load, 4), "cost_per_stream_cores": per_pipeline}
        return out
