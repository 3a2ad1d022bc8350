"""Stable error codes of protocol v1, each with its WebSocket close code and fatality.

An error event on the wire is ``{"type": "error", "code": <code>, "message": str, "fatal": bool}``.
``fault`` says who caused it: ``client`` (fix the request) or ``server`` (our problem or load).
Codes are stable API: add new ones, never rename.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Close(enum.IntEnum):
    """WebSocket close codes used by the server (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4401                 # application range (4000-4999): HTTP 401 / 403 as close codes
    FORBIDDEN = 4403


@dataclass(frozen=True)
class _Spec:
    close: Close
    fatal: bool
    fault: str


class ErrorCode(str, enum.Enum):
    """Every error the server can report. The value is the wire string."""

    BAD_MESSAGE = "bad_message"              # undecodable msgpack/JSON, not a map, no/unknown "type"
    UNKNOWN_FIELD = "unknown_field"          # a field or option the server does not know
    BAD_VALUE = "bad_value"                  # a known field with a wrong type or out of range
    UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    UNKNOWN_PIPELINE = "unknown_pipeline"
    NOT_STARTED = "not_started"              # audio/control before a successful start
    ALREADY_STARTED = "already_started"
    BAD_AUDIO = "bad_audio"                  # PCM length not a whole number of frames, NaN/inf floats
    BAD_FRAME_LENGTH = "bad_frame_length"    # audio frame longer than the maximum (1 s)
    MESSAGE_TOO_LARGE = "message_too_large"
    RATE_LIMITED = "rate_limited"            # frame flood
    SERVER_BUSY = "server_busy"              # admission refused
    IDLE_TIMEOUT = "idle_timeout"
    SESSION_TOO_LONG = "session_too_long"
    SLOW_CONSUMER = "slow_consumer"          # client does not read its events fast enough
    UNKNOWN_SESSION = "unknown_session"      # resume of a session the server does not hold
    SHUTTING_DOWN = "shutting_down"
    STAGE_FAILED = "stage_failed"            # an engine call failed for this stream (non-fatal)
    UNAUTHORIZED = "unauthorized"            # no credential, or an invalid/expired one
    FORBIDDEN = "forbidden"                  # valid credential, but not for this (origin, pipeline, session)
    START_TIMEOUT = "start_timeout"          # a socket that sent no start/resume in time
    TOO_MANY_CONNECTIONS = "too_many_connections"  # per-address or per-principal connection/handshake limits
    INTERNAL = "internal"

    @property
    def spec(self) -> _Spec:
        return _SPECS[self]

    @property
    def close_code(self) -> int:
        return int(self.spec.close)

    @property
    def fatal(self) -> bool:
        return self.spec.fatal

    @property
    def fault(self) -> str:
        return self.spec.fault


_SPECS: dict[ErrorCode, _Spec] = {
    ErrorCode.BAD_MESSAGE: _Spec(Close.POLICY_VIOLATION, False, "client"),
    ErrorCode.UNKNOWN_FIELD: _Spec(Close.POLICY_VIOLATION, False, "client"),
    ErrorCode.BAD_VALUE: _Spec(Close.POLICY_VIOLATION, False, "client"),
    ErrorCode.UNSUPPORTED_SAMPLE_RATE: _Spec(Close.POLICY_VIOLATION, False, "client"),
    ErrorCode.UNSUPPORTED_ENCODING: _Spec(Close.POLICY_VIOLATION, False, "client"),
    ErrorCode.UNKNOWN_PIPELINE: _Spec(Close.POLICY_VIOLATION, False, "client"),
    ErrorCode.NOT_STARTED: _Spec(Close.POLICY_VIOLATION, False, "client"),
    ErrorCode.ALREADY_STARTED: _Spec(Close.POLICY_VIOLATION, False, "client"),
    ErrorCode.BAD_AUDIO: _Spec(Close.INVALID_PAYLOAD, True, "client"),
    ErrorCode.BAD_FRAME_LENGTH: _Spec(Close.INVALID_PAYLOAD, True, "client"),
    ErrorCode.MESSAGE_TOO_LARGE: _Spec(Close.MESSAGE_TOO_BIG, True, "client"),
    ErrorCode.RATE_LIMITED: _Spec(Close.POLICY_VIOLATION, True, "client"),
    ErrorCode.SERVER_BUSY: _Spec(Close.TRY_AGAIN_LATER, True, "server"),
    ErrorCode.IDLE_TIMEOUT: _Spec(Close.POLICY_VIOLATION, True, "client"),
    ErrorCode.SESSION_TOO_LONG: _Spec(Close.POLICY_VIOLATION, True, "client"),
    ErrorCode.SLOW_CONSUMER: _Spec(Close.POLICY_VIOLATION, True, "client"),
    ErrorCode.UNKNOWN_SESSION: _Spec(Close.POLICY_VIOLATION, False, "client"),
    ErrorCode.SHUTTING_DOWN: _Spec(Close.SERVICE_RESTART, True, "server"),
    ErrorCode.STAGE_FAILED: _Spec(Close.INTERNAL_ERROR, False, "server"),
    ErrorCode.UNAUTHORIZED: _Spec(Close.UNAUTHORIZED, True, "client"),
    ErrorCode.FORBIDDEN: _Spec(Close.FORBIDDEN, True, "client"),
    ErrorCode.START_TIMEOUT: _Spec(Close.POLICY_VIOLATION, True, "client"),
    ErrorCode.TOO_MANY_CONNECTIONS: _Spec(Close.TRY_AGAIN_LATER, True, "client"),
    ErrorCode.INTERNAL: _Spec(Close.INTERNAL_ERROR, True, "server"),
}


class ProtocolError(Exception):
    """A typed protocol error. ``fatal`` defaults to the code's own fatality."""

    def __init__(self, code: ErrorCode, message: str, *, fatal: bool | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.fatal = code.fatal if fatal is None else fatal

    def to_event(self) -> dict:
        return {"type": "error", "code": self.code.value, "message": self.message, "fatal": self.fatal,
                "fault": self.code.fault}
