"""Sans-I/O connection state machines for protocol v1.

:class:`ServerConnection` turns received frame payloads into typed events and checks every
per-connection rule that needs no I/O: message size, message shape, option schemas, the audio
format, the frame flood limit (token bucket on an explicit clock) and sequence numbers.
:class:`ClientConnection` builds client messages and decodes server events.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Union

from .codec import Codec, SUBPROTOCOL_JSON
from .errors import ErrorCode, ProtocolError
from .messages import Ack, AudioFormat, AudioIn, Flush, Resume, Start, Stop, Update, MAX_FRAME_SECONDS
from .options import PipelineSchema, merge_options, validate_options

Event = Union[Start, Resume, AudioIn, Update, Flush, Stop, Ack, ProtocolError]


class ConnectionState(enum.Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPING = "stopping"   # stop received: no more audio, finals being delivered
    CLOSED = "closed"       # a fatal error was raised; further input is ignored


@dataclass
class ConnectionLimits:
    """Per-connection input limits. Units: bytes, frames per second, frames."""

    max_message_bytes: int = 256 * 1024
    max_frames_per_second: float = 200.0
    frame_burst: int = 400


@dataclass(frozen=True)
class StreamConfig:
    """The accepted configuration of a stream, defaults filled in (sent back in ``ready``)."""

    audio: AudioFormat
    pipelines: tuple[str, ...]
    options: dict[str, dict[str, Any]]
    output_sample_rate: int
    binary_frames: str
    client: str | None

    def to_wire(self) -> dict:
        return {"sample_rate": self.audio.sample_rate, "encoding": self.audio.encoding,
                "channels": self.audio.channels, "pipelines": list(self.pipelines), "options": self.options,
                "output_sample_rate": self.output_sample_rate, "binary_frames": self.binary_frames}


class ServerConnection:
    """Server side of one WebSocket: payloads in (``receive``), typed events out.

    Obligations: never raises on client input (errors come back as :class:`ProtocolError` events);
    after a fatal error the state is ``CLOSED`` and later input yields nothing. ``now`` is a
    monotonic time in seconds supplied by the caller.
    """

    def __init__(self, codec: Codec, schemas: dict[str, PipelineSchema], limits: ConnectionLimits | None = None):
        self.codec = codec
        self.schemas = schemas
        self.limits = limits or ConnectionLimits()
        self.state = ConnectionState.AWAITING_START
        self.config: StreamConfig | None = None
        self.samples_received = 0      # absolute input position (samples per channel, input rate)
        self.next_seq = 0
        self.duplicates = 0
        self._tokens = float(self.limits.frame_burst)
        self._last_refill: float | None = None

    def adopt(self, codec: Codec) -> None:
        """Continue this connection's stream over a new socket (session resume)."""
        self.codec = codec
        self.state = ConnectionState.STREAMING
        self._tokens = float(self.limits.frame_burst)
        self._last_refill = None

    def reset(self) -> None:
        """Back to awaiting ``start`` (the server refused the accepted configuration)."""
        self.state = ConnectionState.AWAITING_START
        self.config = None

    # -- input -------------------------------------------------------------------------------------
    def receive(self, payload: bytes | str, now: float) -> list[Event]:
        if self.state is ConnectionState.CLOSED:
            return []
        try:
            return self._receive(payload, now)
        except ProtocolError as err:
            if err.fatal:
                self.state = ConnectionState.CLOSED
            return [err]

    def _receive(self, payload: bytes | str, now: float) -> list[Event]:
        size = len(payload)
        self._take_token(now)        # every message counts against the flood limit
        if size > self.limits.max_message_bytes:
            raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE,
                                f"message of {size} bytes exceeds the limit of {self.limits.max_message_bytes}")
        if isinstance(payload, str):
            return self._handle_message(self.codec.decode_text(payload), now)
        if self.config is not None and self.config.binary_frames == "pcm":
            return [self._audio(bytes(payload), None, None, now)]
        if self.codec.is_json:
            if self.state is ConnectionState.AWAITING_START:
                raise ProtocolError(ErrorCode.NOT_STARTED, "send a start message before audio")
            return [self._audio(bytes(payload), None, None, now)]
        return self._handle_message(self.codec.decode_binary(payload), now)

    def _handle_message(self, msg: dict, now: float) -> list[Event]:
        mtype = msg.get("type")
        if not isinstance(mtype, str):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "message has no string 'type' field")
        if mtype == "start":
            if self.state is not ConnectionState.AWAITING_START:
                raise ProtocolError(ErrorCode.ALREADY_STARTED, "the stream is already started")
            return [self._start(Start.parse(msg))]
        if mtype == "resume":
            if self.state is not ConnectionState.AWAITING_START:
                raise ProtocolError(ErrorCode.ALREADY_STARTED, "resume must be the first message")
            return [Resume.parse(msg)]
        if mtype in ("audio", "update", "flush", "stop", "ack") and self.state is ConnectionState.AWAITING_START:
            raise ProtocolError(ErrorCode.NOT_STARTED, f"{mtype!r} before a successful start")
        if mtype == "audio":
            extra = set(msg) - {"type", "seq", "pcm", "ts"}
            if extra:
                raise ProtocolError(ErrorCode.UNKNOWN_FIELD, f"unknown field(s) {sorted(extra)} in 'audio'")
            pcm = msg.get("pcm")
            if not isinstance(pcm, (bytes, bytearray)):
                raise ProtocolError(ErrorCode.BAD_VALUE, "audio.pcm must be bytes (base64 in JSON)")
            seq = msg.get("seq")
            if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
                raise ProtocolError(ErrorCode.BAD_VALUE, "audio.seq must be a non-negative integer")
            ts = msg.get("ts")
            if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
                raise ProtocolError(ErrorCode.BAD_VALUE, "audio.ts must be a number (client ms)")
            ev = self._audio(bytes(pcm), seq, ts, now)
            return [ev] if ev is not None else []
        if mtype == "update":
            upd = Update.parse(msg)
            assert self.config is not None
            checked = {}
            for pipe, opts in upd.options.items():
                if pipe not in self.config.pipelines:
                    raise ProtocolError(ErrorCode.UNKNOWN_FIELD, f"update for pipeline {pipe!r} not in this stream")
                checked[pipe] = validate_options(self.schemas[pipe], opts, update=True)
            for pipe, opts in checked.items():
                self.config.options[pipe].update(opts)
            return [Update(checked)]
        if mtype == "flush":
            _no_fields(msg)
            return [Flush()]
        if mtype == "stop":
            _no_fields(msg)
            if self.state is ConnectionState.STREAMING:
                self.state = ConnectionState.STOPPING
            return [Stop()]
        if mtype == "ack":
            return [Ack.parse(msg)]
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown message type {mtype!r}")

    def _start(self, start: Start) -> Start:
        requested = list(start.pipelines)
        for name in requested:
            if name not in self.schemas:
                raise ProtocolError(ErrorCode.UNKNOWN_PIPELINE,
                                    f"unknown pipeline {name!r} (available: {sorted(self.schemas)})")
        # Dependencies first (e.g. asr needs vad), keeping the client's order otherwise.
        ordered: list[str] = []
        for name in requested:
            for dep in self.schemas[name].requires:
                if dep not in ordered:
                    ordered.append(dep)
            if name not in ordered:
                ordered.append(name)
        for pipe in start.options:
            if pipe not in ordered:
                raise ProtocolError(ErrorCode.UNKNOWN_FIELD, f"options given for pipeline {pipe!r} not requested")
        options = {name: merge_options(self.schemas[name], start.options.get(name)) for name in ordered}
        default_bf = "pcm" if self.codec.subprotocol == SUBPROTOCOL_JSON else "msgpack"
        self.config = StreamConfig(start.audio, tuple(ordered), options,
                                   start.output_sample_rate or start.audio.sample_rate,
                                   start.binary_frames or default_bf, start.client)
        self.state = ConnectionState.STREAMING
        return start

    def _audio(self, pcm: bytes, seq: int | None, ts: float | None, now: float) -> AudioIn | None:
        if self.state is ConnectionState.AWAITING_START:
            raise ProtocolError(ErrorCode.NOT_STARTED, "send a start message before audio")
        if self.state is ConnectionState.STOPPING:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "audio after stop is ignored", fatal=False)
        if seq is not None and seq < self.next_seq:
            self.duplicates += 1     # a replayed frame we already have (resume): idempotent
            return None
        assert self.config is not None
        fmt = self.config.audio
        if len(pcm) > fmt.max_frame_bytes():
            raise ProtocolError(ErrorCode.BAD_FRAME_LENGTH,
                                f"audio frame of {len(pcm)} bytes is longer than {MAX_FRAME_SECONDS:g} s "
                                f"({fmt.max_frame_bytes()} bytes at this format)")
        samples = fmt.decode(pcm)
        ev = AudioIn(samples, self.samples_received, self.next_seq if seq is None else seq, ts, now)
        self.samples_received += samples.shape[0]
        self.next_seq = ev.seq + 1
        return ev

    def _take_token(self, now: float) -> None:
        lim = self.limits
        if self._last_refill is not None:
            self._tokens = min(float(lim.frame_burst), self._tokens + (now - self._last_refill) * lim.max_frames_per_second)
        self._last_refill = now
        if self._tokens < 1.0:
            raise ProtocolError(ErrorCode.RATE_LIMITED,
                                f"more than {lim.max_frames_per_second:g} messages per second "
                                f"(burst {lim.frame_burst}); send larger frames or pace the stream")
        self._tokens -= 1.0

    # -- output ------------------------------------------------------------------------------------
    def encode(self, event: dict) -> bytes | str:
        return self.codec.encode(event)


def _no_fields(msg: dict) -> None:
    extra = set(msg) - {"type"}
    if extra:
        raise ProtocolError(ErrorCode.UNKNOWN_FIELD, f"unknown field(s) {sorted(extra)} in {msg['type']!r}")


class ClientConnection:
    """Client side: builds messages and decodes events for one subprotocol."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.seq = 0

    def start(self, *, sample_rate: int = 16000, encoding: str = "s16le", channels: int = 1,
              pipelines: list[str] | tuple[str, ...] = ("vad",), options: dict | None = None,
              output_sample_rate: int | None = None, client: str | None = None) -> bytes | str:
        msg: dict[str, Any] = {"type": "start", "version": 1, "sample_rate": sample_rate, "encoding": encoding,
                               "channels": channels, "pipelines": list(pipelines), "options": options or {}}
        if output_sample_rate:
            msg["output_sample_rate"] = output_sample_rate
        if client:
            msg["client"] = client
        return self.codec.encode(msg)

    def audio(self, pcm: bytes, ts: float | None = None) -> bytes | str:
        """An ``audio`` message with the next sequence number."""
        msg: dict[str, Any] = {"type": "audio", "seq": self.seq, "pcm": pcm}
        if ts is not None:
            msg["ts"] = ts
        self.seq += 1
        return self.codec.encode(msg)

    def control(self, mtype: str, **fields: Any) -> bytes | str:
        return self.codec.encode({"type": mtype, **fields})

    def decode(self, payload: bytes | str) -> dict:
        return self.codec.decode_event(payload)
