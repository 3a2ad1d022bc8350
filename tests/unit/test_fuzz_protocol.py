"""Property-based fuzzing of the sans-I/O protocol core, in both subprotocols (hypothesis).

Invariant: whatever bytes or text a client sends, in whatever order, ``ServerConnection.receive``
returns typed events or typed client errors; it never raises, and nothing a client sends produces
``internal``. Inputs: arbitrary bytes and text, structured mutations of every message type (wrong types,
missing and extra fields, huge and negative numbers, NaN, deep nesting, odd PCM lengths), and stateful
sequences of start/update/audio/flush/stop/ack/resume in any order.

CI runs a few thousand cases; ``bench/fuzz.py`` runs the same generators for longer and against a live
server.
"""

from __future__ import annotations

import json
import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxserve.server.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, Codec, ProtocolError, ServerConnection
from voxserve.server.protocol.connection import ConnectionLimits, ConnectionState
from voxserve.server.protocol.errors import ErrorCode
from voxserve.server.protocol.messages import Ack, AudioIn, Flush, Resume, Start, Stop, Update
from voxserve.server.stages.asr import ASR_SCHEMA
from voxserve.server.stages.vc import VC_SCHEMA
from voxserve.server.stages.wakeword import WAKEWORD_SCHEMA
from voxserve.server.vad import VAD_SCHEMA

from ..fuzzgen import Frame, message_frames, messages, nested

SCHEMAS = {"vad": VAD_SCHEMA, "asr": ASR_SCHEMA, "vc": VC_SCHEMA, "wakeword": WAKEWORD_SCHEMA}
CODECS = [Codec(SUBPROTOCOL_MSGPACK), Codec(SUBPROTOCOL_JSON)]
EVENT_TYPES = (Start, Resume, AudioIn, Update, Flush, Stop, Ack)
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(conn: ServerConnection, payload, now: float = 0.0) -> list:
    try:
        out = conn.receive(payload, now)
    except BaseException as exc:             # the invariant under test: this never happens
        raise AssertionError(f"receive raised {type(exc).__name__}: {exc} for {payload!r:.300}") from exc
    assert isinstance(out, list)
    for ev in out:
        assert isinstance(ev, EVENT_TYPES + (ProtocolError,)), ev
        if isinstance(ev, ProtocolError):
            assert ev.code is not ErrorCode.INTERNAL and ev.code.fault == "client", ev
            json.dumps(ev.to_event())        # the error event itself must encode
        if isinstance(ev, AudioIn):
            assert ev.samples.dtype.name == "float32" and ev.samples.ndim == 1
            assert bool((abs(ev.samples) <= 1.0).all())
    return out


def fresh(codec: Codec) -> ServerConnection:
    return ServerConnection(codec, SCHEMAS, ConnectionLimits(max_message_bytes=400_000, max_frames_per_second=1e9,
                                                             frame_burst=10**9))


@pytest.mark.parametrize("codec", CODECS, ids=["msgpack", "json"])
@FUZZ
@given(data=st.one_of(st.binary(max_size=4096), st.text(max_size=2048)))
def test_arbitrary_bytes_and_text(codec, data):
    conn = fresh(codec)
    check(conn, data)
    check(conn, data)                         # and again, in whatever state the first left it


@pytest.mark.parametrize("codec", CODECS, ids=["msgpack", "json"])
@FUZZ
@given(frames=st.lists(message_frames(), min_size=1, max_size=25))
def test_message_sequences_in_any_order(codec, frames):
    conn = fresh(codec)
    for i, frame in enumerate(frames):
        out = check(conn, frame.encode(codec), now=i * 0.01)
        if conn.state is ConnectionState.CLOSED:
            assert any(isinstance(e, ProtocolError) and e.fatal for e in out) or not out
            assert check(conn, frame.encode(codec)) == []             # closed: later input yields nothing


@pytest.mark.parametrize("codec", CODECS, ids=["msgpack", "json"])
@FUZZ
@given(msg=messages())
def test_every_message_after_a_valid_start(codec, msg):
    conn = fresh(codec)
    [ready] = check(conn, codec.encode({"type": "start", "pipelines": ["vad", "asr", "vc"], "sample_rate": 48000,
                                        "channels": 2, "encoding": "f32le"}))
    assert isinstance(ready, Start)
    check(conn, Frame("json" if codec.is_json else "msgpack", msg).encode())


@pytest.mark.parametrize("codec", CODECS, ids=["msgpack", "json"])
@pytest.mark.parametrize("depth", [50, 900, 5000, 100_000])
def test_deep_nesting_is_a_typed_error(codec, depth):
    conn = fresh(codec)
    msgpack_nested = b"\x91" * depth + b"\x90"            # arrays of one element, depth deep
    for payload in (("[" * depth) + ("]" * depth), '{"type":"start","options":' + nested(depth) + "}",
                    msgpack_nested):
        out = check(conn, payload)
        assert all(isinstance(e, ProtocolError) for e in out)


@pytest.mark.parametrize("codec", CODECS, ids=["msgpack", "json"])
def test_nan_huge_and_negative_numbers(codec):
    for value in (math.nan, math.inf, -math.inf, 10**30, -(10**30), -1, 2**63, 1e308):
        for field in ("sample_rate", "channels", "version", "output_sample_rate"):
            conn = fresh(codec)
            msg = {"type": "start", field: value}
            try:
                payload = codec.encode(msg)
            except (ValueError, OverflowError):
                payload = json.dumps(msg)         # JSON with NaN/Infinity literals (Python's extension)
            check(conn, payload)


def test_one_second_of_every_advertised_format_fits_the_default_message_limit():
    """The protocol advertises frames up to 1 s at 8-48 kHz, s16le/f32le, 1-2 channels: the largest
    (48 kHz f32le stereo, 384000 bytes) must fit in the default message limit with its envelope."""
    from voxserve.server.protocol.messages import ENCODINGS, MAX_FRAME_SECONDS, MAX_SAMPLE_RATE, AudioFormat
    from voxserve.server.settings import Settings

    biggest = max(AudioFormat(MAX_SAMPLE_RATE, enc, ch).max_frame_bytes() for enc in ENCODINGS for ch in (1, 2))
    assert biggest == int(MAX_SAMPLE_RATE * MAX_FRAME_SECONDS) * 8
    envelope = len(msgpack.packb({"type": "audio", "seq": 2**40, "ts": 1.0e12, "pcm": b"\0" * biggest}))
    assert envelope <= Settings().max_message_bytes
    conn = fresh(CODECS[0])
    check(conn, msgpack.packb({"type": "start", "sample_rate": 48000, "encoding": "f32le", "channels": 2}))
    [audio] = check(conn, msgpack.packb({"type": "audio", "pcm": b"\0" * biggest}))
    assert isinstance(audio, AudioIn) and audio.samples.shape == (48000,)
