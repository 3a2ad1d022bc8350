"""Typed client messages of protocol v1 and their parsing from decoded maps (pure).

Units: ``sample_rate`` in Hz; sample positions are counts of samples *per channel* at the
stream's input rate; times are milliseconds (float).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = 1
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
ENCODINGS = {"s16le": (np.dtype("<i2"), 2), "f32le": (np.dtype("<f4"), 4)}
MAX_FRAME_SECONDS = 1.0


@dataclass(frozen=True)
class AudioFormat:
    """The PCM layout a client sends: interleaved little-endian samples."""

    sample_rate: int = 16000
    encoding: str = "s16le"
    channels: int = 1

    @property
    def bytes_per_frame(self) -> int:
        """Bytes per sample frame (all channels of one instant)."""
        return ENCODINGS[self.encoding][1] * self.channels

    def decode(self, data: bytes) -> np.ndarray:
        """PCM bytes -> float32 mono in [-1, 1] (stereo is averaged). Raises ``bad_audio``."""
        bpf = self.bytes_per_frame
        if len(data) == 0 or len(data) % bpf:
            raise ProtocolError(ErrorCode.BAD_AUDIO,
                                f"audio payload of {len(data)} bytes is not a positive whole number of "
                                f"{bpf}-byte frames ({self.encoding}, {self.channels} ch)")
        dtype = ENCODINGS[self.encoding][0]
        x = np.frombuffer(data, dtype=dtype)
        if self.encoding == "s16le":
            x = x.astype(np.float32) * np.float32(1.0 / 32768.0)
        else:
            x = x.astype(np.float32)
            if not np.isfinite(x).all():
                raise ProtocolError(ErrorCode.BAD_AUDIO, "f32le audio contains NaN or infinity")
            np.clip(x, -1.0, 1.0, out=x)
        if self.channels == 2:
            x = x.reshape(-1, 2).mean(axis=1, dtype=np.float32)
        return x

    def max_frame_bytes(self) -> int:
        return int(self.sample_rate * MAX_FRAME_SECONDS) * self.bytes_per_frame


def _check_fields(msg: dict, allowed: set[str]) -> None:
    extra = set(msg) - allowed - {"type"}
    if extra:
        raise ProtocolError(ErrorCode.UNKNOWN_FIELD,
                            f"unknown field(s) {sorted(extra)} in {msg.get('type')!r} (allowed: {sorted(allowed)})")


def _int_field(msg: dict, name: str, default: int | None, lo: int | None = None, hi: int | None = None,
               code: ErrorCode = ErrorCode.BAD_VALUE) -> int | None:
    v = msg.get(name)
    if v is None:                  # absent or null: the default (a null channels once reached the audio path)
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise ProtocolError(ErrorCode.BAD_VALUE, f"{name} must be an integer, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ProtocolError(code, f"{name}={v} outside [{lo}, {hi}]")
    return v


@dataclass(frozen=True)
class Start:
    """``start``: opens the stream. ``options`` maps pipeline name to its option map (unvalidated)."""

    audio: AudioFormat
    pipelines: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    output_sample_rate: int | None = None
    binary_frames: str | None = None
    client: str | None = None

    FIELDS = {"sample_rate", "encoding", "channels", "pipelines", "options", "output_sample_rate",
              "binary_frames", "client", "version"}

    @classmethod
    def parse(cls, msg: dict) -> "Start":
        _check_fields(msg, cls.FIELDS)
        version = _int_field(msg, "version", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.BAD_VALUE, f"protocol version {version} not supported (server speaks 1)")
        rate = _int_field(msg, "sample_rate", 16000, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE,
                          code=ErrorCode.UNSUPPORTED_SAMPLE_RATE)
        enc = msg.get("encoding", "s16le")
        if not isinstance(enc, str) or enc not in ENCODINGS:
            raise ProtocolError(ErrorCode.UNSUPPORTED_ENCODING,
                                f"encoding {enc!r} not supported (use one of {sorted(ENCODINGS)})")
        ch = _int_field(msg, "channels", 1, 1, 2)
        pipes = msg.get("pipelines", ["vad"])
        if isinstance(pipes, str):
            pipes = [p for p in pipes.split(",") if p]
        if not isinstance(pipes, (list, tuple)) or not all(isinstance(p, str) for p in pipes):
            raise ProtocolError(ErrorCode.BAD_VALUE, "pipelines must be a list of names")
        opts = msg.get("options", {}) or {}
        if not isinstance(opts, dict):
            raise ProtocolError(ErrorCode.BAD_VALUE, "options must be a map of pipeline -> options")
        out_rate = _int_field(msg, "output_sample_rate", None, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE,
                              code=ErrorCode.UNSUPPORTED_SAMPLE_RATE)
        bf = msg.get("binary_frames")
        if bf not in (None, "pcm", "msgpack"):
            raise ProtocolError(ErrorCode.BAD_VALUE, "binary_frames must be 'pcm' or 'msgpack'")
        client = msg.get("client")
        if client is not None and not isinstance(client, str):
            raise ProtocolError(ErrorCode.BAD_VALUE, "client must be a string")
        return cls(AudioFormat(rate, enc, ch), tuple(dict.fromkeys(pipes)), opts, out_rate, bf, client)


@dataclass(frozen=True)
class AudioIn:
    """Decoded audio: ``samples`` float32 mono at the input rate; ``start`` its absolute position."""

    samples: np.ndarray
    start: int
    seq: int
    client_ts: float | None = None
    received_at: float = 0.0


@dataclass(frozen=True)
class Update:
    """``update``: per-pipeline option changes (unvalidated map)."""

    options: dict[str, Any]

    @classmethod
    def parse(cls, msg: dict) -> "Update":
        _check_fields(msg, {"options"})
        opts = msg.get("options")
        if not isinstance(opts, dict):
            raise ProtocolError(ErrorCode.BAD_VALUE, "update needs options: a map of pipeline -> options")
        return cls(opts)


@dataclass(frozen=True)
class Flush:
    """``flush``: end the current utterance now (stages emit their finals)."""


@dataclass(frozen=True)
class Stop:
    """``stop``: no more audio; the server delivers all finals, then closes with 1000."""


@dataclass(frozen=True)
class Ack:
    """``ack``: the client has received every event up to event id ``eid``; the server may forget them."""

    eid: int

    @classmethod
    def parse(cls, msg: dict) -> "Ack":
        _check_fields(msg, {"eid"})
        if "eid" not in msg:
            raise ProtocolError(ErrorCode.BAD_VALUE, "ack needs eid: the last event id received")
        return cls(_int_field(msg, "eid", None, -1))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Resume:
    """``resume``: reattach to a session the server still holds after a dropped connection.
    ``last_eid`` is the last event id the client received (-1 for none); ``resume_token`` is the
    per-stream secret the server sent in ``ready`` (a session id alone is not a credential)."""

    session_id: str
    last_eid: int
    resume_token: str = ""

    @classmethod
    def parse(cls, msg: dict) -> "Resume":
        _check_fields(msg, {"session_id", "last_eid", "resume_token"})
        sid = msg.get("session_id")
        if not isinstance(sid, str) or not sid or len(sid) > 128:
            raise ProtocolError(ErrorCode.BAD_VALUE, "resume.session_id must be a non-empty string")
        token = msg.get("resume_token", "")
        if not isinstance(token, str) or len(token) > 256:
            raise ProtocolError(ErrorCode.BAD_VALUE, "resume.resume_token must be the string from 'ready'")
        return cls(sid, _int_field(msg, "last_eid", -1, -1), token)  # type: ignore[arg-type]
