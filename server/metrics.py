"""Prometheus metrics of one server instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()     # the *_created series only add noise to every scrape

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sessions_active = Gauge("voxserve_sessions_active", "streams currently open", registry=r)
        self.sessions_total = Counter("voxserve_sessions_total", "streams opened", ["outcome"], registry=r)
        self.frames = Counter("voxserve_audio_frames_total", "audio frames received", registry=r)
        self.bytes_in = Counter("voxserve_bytes_received_total", "bytes of WebSocket messages received", registry=r)
        self.audio_seconds = Counter("voxserve_audio_seconds_total", "seconds of audio received", registry=r)
        self.events = Counter("voxserve_events_sent_total", "events sent", ["type"], registry=r)
        self.events_dropped = Counter("voxserve_events_dropped_total", "stale events dropped for slow readers",
                                      registry=r)
        self.backpressure = Counter("voxserve_backpressure_total", "times a stream's input was paused until its "
                                    "client read its events", registry=r)
        self.engine_timeouts = Counter("voxserve_engine_timeouts_total", "engine calls the watchdog gave up on",
                                       ["model"], registry=r)
        self.paced_seconds = Counter("voxserve_audio_paced_seconds_total", "time readers waited to keep streams "
                                     "within their audio-rate quota", registry=r)
        self.errors = Counter("voxserve_errors_total", "errors reported to clients", ["code"], registry=r)
        self.stage_latency = Histogram("voxserve_stage_latency_seconds", "per-result stage latency (total)",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_queue = Histogram("voxserve_stage_queue_seconds", "per-result time waiting for an engine",
                                     ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.budget_violations = Counter("voxserve_budget_violations_total", "stage deadlines missed",
                                         ["stage", "action"], registry=r)
        self.batch_size = Histogram("voxserve_batch_size", "requests per engine call", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.engine_seconds = Histogram("voxserve_engine_call_seconds", "engine call time", ["model"],
                                        buckets=LATENCY_BUCKETS, registry=r)

        for stage in ("vad", "wakeword", "asr_partial", "asr_final", "vc"):
            self.stage_latency.labels(stage)
            self.stage_queue.labels(stage)
        for outcome in ("opened", "stopped", "disconnected", "refused"):
            self.sessions_total.labels(outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)
