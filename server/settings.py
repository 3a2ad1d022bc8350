"""Validated server settings. Every field has a CLI flag and a ``VOXSERVE_<FIELD>`` variable.

Precedence: command-line flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Settings:
    host: str = field(default="127.0.0.1", metadata={"doc": "address to bind"})
    port: int = field(default=8000, metadata={"doc": "TCP port"})
    workers: str = field(default="1", metadata={"doc": "worker processes on the port (SO_REUSEPORT), each with its "
                                                     "own event loop and engines; auto = one per core"})
    pipelines: str = field(default="vad,wakeword,asr,vc", metadata={"doc": "pipelines to load at start (comma list)"})
    max_sessions: int = field(default=400, metadata={"doc": "concurrent streams; more are refused with 1013"})
    max_message_bytes: int = field(default=512 * 1024, metadata={"doc": "largest accepted WebSocket message "
                                                                      "(the default fits 1 s of 48 kHz f32le stereo)"})
    max_frames_per_second: float = field(default=200.0, metadata={"doc": "messages/s per stream, audio or control (flood limit)"})
    frame_burst: int = field(default=400, metadata={"doc": "messages a stream may send in a burst"})
    idle_timeout_s: float = field(default=30.0, metadata={"doc": "close a stream that sends nothing this long"})
    max_session_s: float = field(default=4 * 3600.0, metadata={"doc": "longest stream (seconds)"})
    outbox_soft: int = field(default=256, metadata={"doc": "queued events per stream before stale ones drop"})
    outbox_hard: int = field(default=1024, metadata={"doc": "queued events per stream before slow_consumer"})
    ring_seconds: float = field(default=30.0, metadata={"doc": "audio kept per stream (seconds at 16 kHz)"})
    resume_grace_s: float = field(default=30.0, metadata={"doc": "keep a dropped stream this long for resume "
                                                                  "(0 = no resume)"})
    drain_timeout_s: float = field(default=5.0, metadata={"doc": "time given to streams to finish on shutdown"})
    wakeword_models: str = field(default="", metadata={"doc": "extra wakeword heads: files or folders, comma list"})
    wakeword_incremental: bool = field(default=True, metadata={"doc": "compute the wakeword embedding "
                                                                       "incrementally (8 new mel frames per step)"})
    engine: str = field(default="auto", metadata={"doc": "engine: auto, onnxruntime-cpu, onnxruntime-cuda, "
                                                          "onnxruntime-trt, tensorrt (wakeword heads always run on "
                                                          "ONNX Runtime CPU: they are tiny)"})
    asr_precision: str = field(default="auto", metadata={"doc": "ASR weights x activations: int8 (dynamic int8 "
                                                                "MatMuls, CPU only; same transcripts on ../shared, "
                                                                "0.56x the time), fp32, or auto (int8 when the engine "
                                                                "is the CPU)"})
    asr_nice: int = field(default=10, metadata={"doc": "OS priority (nice, 0-19) added to the ASR engine threads "
                                                       "(Linux): long, elastic ASR decodes yield a core to VC and "
                                                       "wakeword work that is due; 0: the same priority"})
    intra_op_threads: int = field(default=1, metadata={"doc": "ONNX Runtime threads per engine call"})
    max_batch: int = field(default=32, metadata={"doc": "largest batch per engine call"})
    max_wait_ms: float = field(default=2.0, metadata={"doc": "time the batcher waits for more requests"})
    engine_workers: int = field(default=-1, metadata={"doc": "engine worker threads shared by every model, "
                                                              "granted earliest deadline first (0: one per core); "
                                                              "-1 (default until measured): each model keeps its "
                                                              "own threads"})
    engine_timeout_s: float = field(default=10.0, metadata={"doc": "watchdog: an engine call running longer "
                                                                   "fails its requests (stage_failed) and the "
                                                                   "stage goes on with a fresh worker thread"})
    inject_faults: str = field(default="", metadata={"doc": "testing aid: MODEL:raise:N (every Nth batch of MODEL "
                                                            "raises) or MODEL:hang:N (the Nth hangs), comma list"})
    tracemalloc: bool = field(default=False, metadata={"doc": "testing aid: trace allocations; GET "
                                                              "/v1/debug/memory shows the top growth"})
    engine_delay_ms: float = field(default=0.0, metadata={"doc": "testing aid: add this much time to every "
                                                                 "engine batch (simulates an overloaded engine)"})
    admission: bool = field(default=True, metadata={"doc": "refuse streams when measured capacity is exhausted"})
    # -- security (see server/auth.py) ------------------------------------------------------------------
    api_keys: str = field(default="", repr=False, metadata={
        "doc": "API keys accepted as credentials (repeat --api-key; VOXSERVE_API_KEYS is a comma list)",
        "flag": "--api-key", "append": True, "secret": True})
    jwt_secret: str = field(default="", repr=False, metadata={"doc": "HS256 secret for JWTs (also signs "
                                                                     "/v1/tokens)", "secret": True})
    jwt_public_key: str = field(default="", metadata={"doc": "PEM file of the RS256/ES256 public key for JWTs"})
    jwt_audience: str = field(default="voxserve", metadata={"doc": "required JWT audience (aud)"})
    insecure_no_auth: bool = field(default=False, metadata={"doc": "allow a non-loopback host without any "
                                                                   "credential configured"})
    protect_metrics: bool = field(default=False, metadata={"doc": "/metrics and /v1/info need a credential"})
    allowed_origins: str = field(default="", metadata={"doc": "web origins allowed to open streams and call the "
                                                              "API (comma list, * = any); default: the server's "
                                                              "own origin and localhost pages"})
    token_ttl_s: float = field(default=60.0, metadata={"doc": "lifetime of tokens minted by POST /v1/tokens"})
    token_max_ttl_s: float = field(default=3600.0, metadata={"doc": "longest ttl_s a /v1/tokens request may ask"})
    ssl_certfile: str = field(default="", metadata={"doc": "TLS certificate (PEM): serve https/wss"})
    ssl_keyfile: str = field(default="", metadata={"doc": "TLS private key (PEM)"})
    ssl_ca_certs: str = field(default="", metadata={"doc": "CA bundle: require client certificates signed by it"})
    max_upload_bytes: int = field(default=100 * 1024 * 1024, metadata={"doc": "largest file accepted by "
                                                                            "POST /v1/audio/transcriptions"})
    max_upload_s: float = field(default=3 * 3600.0, metadata={"doc": "longest audio accepted by "
                                                                   "POST /v1/audio/transcriptions (seconds)"})
    wyoming_port: int = field(default=0, metadata={"doc": "serve the Wyoming protocol (Home Assistant) on this "
                                                         "TCP port (0 = off; 10400 is the usual)"})
    wyoming_host: str = field(default="127.0.0.1", metadata={"doc": "address for the Wyoming port (it has no "
                                                                   "credentials: loopback or a trusted network)"})
    # -- quotas ---------------------------------------------------------------------------------------
    max_audio_rate: float = field(default=4.0, metadata={"doc": "seconds of audio accepted per wall-clock second "
                                                                "per stream (a JWT audio_rate claim overrides); "
                                                                "faster input is paced, not dropped"})
    audio_burst_s: float = field(default=30.0, metadata={"doc": "seconds of audio a stream may send ahead of "
                                                                "max_audio_rate"})
    max_connections_per_ip: int = field(default=256, metadata={"doc": "open WebSockets per client address"})
    handshakes_per_ip_per_s: float = field(default=50.0, metadata={"doc": "new WebSockets per second per client "
                                                                          "address"})
    handshake_burst: int = field(default=200, metadata={"doc": "new WebSockets per client address in a burst"})
    start_timeout_s: float = field(default=10.0, metadata={"doc": "a socket that sends no start/resume within "
                                                                  "this is closed (start_timeout)"})
    max_detached: int = field(default=100, metadata={"doc": "dropped streams kept for resume (the oldest "
                                                            "expires first)"})
    log_level: str = field(default="info", metadata={"doc": "debug, info, warning, error"})
    log_format: str = field(default="json", metadata={"doc": "json (structured) or text"})

    def __post_init__(self) -> None:
        problems = []
        if not (0 <= self.port <= 65535):
            problems.append(f"port {self.port} outside 0..65535")
        if not (0 <= self.wyoming_port <= 65535):
            problems.append(f"wyoming_port {self.wyoming_port} outside 0..65535")
        for name in ("max_sessions", "max_message_bytes", "frame_burst", "outbox_soft", "outbox_hard", "max_batch",
                     "intra_op_threads", "max_connections_per_ip", "handshake_burst", "max_upload_bytes"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("max_frames_per_second", "idle_timeout_s", "max_session_s", "ring_seconds", "token_ttl_s",
                     "token_max_ttl_s", "max_audio_rate", "audio_burst_s", "handshakes_per_ip_per_s",
                     "start_timeout_s", "max_upload_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        if self.max_wait_ms < 0 or self.drain_timeout_s < 0 or self.resume_grace_s < 0:
            problems.append("max_wait_ms and drain_timeout_s must be >= 0")
        if not (self.workers == "auto" or (self.workers.isdigit() and int(self.workers) >= 1)):
            problems.append("workers must be a number >= 1 or auto")
        if not (0 <= self.asr_nice <= 19):
            problems.append(f"asr_nice {self.asr_nice} outside 0..19")
        if self.engine_workers < -1:
            problems.append("engine_workers must be -1 (per model), 0 (one per core) or a thread count")
        if self.engine_timeout_s <= 0:
            problems.append("engine_timeout_s must be > 0")
        try:
            parse_faults(self.inject_faults)
        except ValueError as exc:
            problems.append(str(exc))
        if self.max_detached < 0:
            problems.append("max_detached must be >= 0")
        if self.token_ttl_s > self.token_max_ttl_s:
            problems.append("token_ttl_s must be <= token_max_ttl_s")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            problems.append("ssl_certfile and ssl_keyfile go together")
        if self.ssl_ca_certs and not self.ssl_certfile:
            problems.append("ssl_ca_certs needs ssl_certfile and ssl_keyfile")
        if self.outbox_hard < self.outbox_soft:
            problems.append("outbox_hard must be >= outbox_soft")
        if self.log_format not in ("json", "text"):
            problems.append("log_format must be json or text")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            problems.append("log_level must be debug, info, warning or error")
        if self.engine == "torch":
            problems.append("engine torch runs torch modules (the reference pitch shifter, the engine contract tests), "
                            "not the ONNX models the server serves: use auto, onnxruntime-cpu, onnxruntime-cuda, "
                            "onnxruntime-trt or tensorrt")
        elif self.engine not in ("auto", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt"):
            problems.append(f"unknown engine {self.engine!r}")
        if self.asr_precision not in ("auto", "int8", "fp32"):
            problems.append(f"asr_precision must be auto, int8 or fp32, not {self.asr_precision!r}")
        elif self.asr_precision == "int8" and self.engine not in ("auto", "onnxruntime-cpu"):
            problems.append(f"asr_precision int8 runs on onnxruntime-cpu only (engine is {self.engine})")
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

    @property
    def engine_delay_s(self) -> float:
        return self.engine_delay_ms / 1000.0

    @property
    def worker_count(self) -> int:
        return len(os.sched_getaffinity(0)) if self.workers == "auto" else int(self.workers)

    @property
    def api_key_list(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def has_credentials(self) -> bool:
        return bool(self.api_key_list or self.jwt_secret or self.jwt_public_key)

    @property
    def tls(self) -> bool:
        return bool(self.ssl_certfile)

    def exposure_problem(self) -> str | None:
        """Why this configuration must not start: a host beyond loopback with no credential configured
        (unless ``insecure_no_auth``). None when it may."""
        from .auth import is_loopback

        if is_loopback(self.host) or self.has_credentials or self.insecure_no_auth:
            return None
        return (f"refusing to listen on {self.host} without a credential: anyone who can reach it could stream. "
                "Configure --api-key KEY (or VOXSERVE_API_KEYS), --jwt-secret or --jwt-public-key; or pass "
                "--insecure-no-auth on a trusted network")

    @property
    def pipeline_list(self) -> list[str]:
        return [p.strip() for p in self.pipelines.split(",") if p.strip()]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("VOXSERVE_" + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f, raw)
        for k, v in overrides.items():
            if v is None:
                continue
            values[k] = ",".join(v) if isinstance(v, list) else v
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in fields(cls):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            kind = _kind(f)
            if f.metadata.get("append"):
                parser.add_argument(flag, dest=f.name, default=None, action="append",
                                    help=f"{f.metadata.get('doc', '')} (env VOXSERVE_{f.name.upper()})")
            elif kind is bool:
                parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                    help=f"{f.metadata.get('doc', '')} (env VOXSERVE_{f.name.upper()})")
            else:
                parser.add_argument(flag, dest=f.name, default=None, type=kind,
                                    help=f"{f.metadata.get('doc', '')} [default {f.default}] "
                                         f"(env VOXSERVE_{f.name.upper()})")

    def describe(self) -> list[dict]:
        return [{"flag": f.metadata.get("flag") or "--" + f.name.replace("_", "-"), "env": "VOXSERVE_" + f.name.upper(),
                 "default": f.default, "doc": f.metadata.get("doc", "")} for f in fields(self)]

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _kind(f: dataclasses.Field) -> type:
    return {"int": int, "float": float, "str": str, "bool": bool}.get(str(f.type), str)


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = _kind(f)
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"VOXSERVE_{f.name.upper()}={raw!r} is not a boolean")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"VOXSERVE_{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None


def parse_faults(spec: str) -> dict[str, tuple[str, int]]:
    """``"vc:raise:5,asr:hang:2"`` -> ``{"vc": ("raise", 5), "asr": ("hang", 2)}`` (the testing aid)."""
    out: dict[str, tuple[str, int]] = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        parts = item.split(":")
        if len(parts) != 3 or parts[1] not in ("raise", "hang") or not parts[2].isdigit() or int(parts[2]) < 1:
            raise ValueError(f"inject_faults: {item!r} is not MODEL:raise:N or MODEL:hang:N (N >= 1)")
        out[parts[0]] = (parts[1], int(parts[2]))
    return out
