"""Hypothesis generators of hostile client input for protocol v1 (used by the unit fuzz tests and by
``bench/fuzz.py`` against a live server).

- :func:`messages`: maps shaped like every client message type, then mutated: fields dropped, unknown
  fields added, values replaced by anything JSON/msgpack can carry (wrong types, huge and negative
  numbers, NaN, nested containers, long strings, bytes).
- :func:`message_frames`: what one WebSocket message can be: a message as a JSON text frame or a
  msgpack binary frame, raw PCM of any length, or arbitrary bytes/text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import msgpack
from hypothesis import strategies as st

TYPES = ("start", "audio", "update", "flush", "stop", "ack", "resume")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 1, 8000, 16000, 48000, 2**31, 2**53 + 1, 10**18]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -0.0, 1e-300]),
    st.text(max_size=40), st.sampled_from(["", "vad", "asr", "vc", "wakeword", "s16le", "f32le", "pcm",
                                            "msgpack", "hey_jarvis", "always", "realtime", "\x00", "é" * 30]),
    st.binary(max_size=64),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)

OPTION_NAMES = ["aggressiveness", "frame_ms", "min_speech_ms", "min_silence_ms", "events", "mode", "interims",
                "interim_interval_ms", "pre_roll_ms", "max_segment_s", "speculate_after_ms", "wake_timeout_s",
                "budget_partial_ms", "budget_final_ms", "semitones", "formant", "gain_db", "budget_ms", "delivery",
                "models", "threshold", "patience", "refractory_ms", "gating", "gate_hangover_ms", "heads"]


@st.composite
def pipeline_options(draw):
    pipes = draw(st.lists(st.sampled_from(["vad", "asr", "vc", "wakeword", "nope"]), max_size=3, unique=True))
    return {p: draw(st.dictionaries(st.sampled_from(OPTION_NAMES), values, max_size=4)) for p in pipes}


@st.composite
def base_message(draw, mtype: str) -> dict:
    if mtype == "start":
        return {"type": "start", "version": 1, "sample_rate": draw(st.sampled_from([8000, 16000, 44100, 48000])),
                "encoding": draw(st.sampled_from(["s16le", "f32le"])), "channels": draw(st.sampled_from([1, 2])),
                "pipelines": draw(st.lists(st.sampled_from(["vad", "asr", "vc", "wakeword"]), max_size=3)),
                "options": draw(pipeline_options()), "binary_frames": draw(st.sampled_from(["pcm", "msgpack"]))}
    if mtype == "audio":
        return {"type": "audio", "seq": draw(st.integers(-2, 10**6)), "pcm": draw(st.binary(max_size=3000)),
                "ts": draw(st.floats(allow_nan=True))}
    if mtype == "update":
        return {"type": "update", "options": draw(pipeline_options())}
    if mtype == "ack":
        return {"type": "ack", "eid": draw(st.integers(-3, 10**6))}
    if mtype == "resume":
        return {"type": "resume", "session_id": draw(st.text(max_size=40)), "last_eid": draw(st.integers(-3, 10**6)),
                "resume_token": draw(st.text(max_size=40))}
    return {"type": mtype}


@st.composite
def messages(draw) -> dict:
    msg = dict(draw(base_message(draw(st.sampled_from(TYPES + ("bogus",))))))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "add", "replace", "retype"]))
        keys = sorted(msg)
        if op == "drop" and keys:
            msg.pop(draw(st.sampled_from(keys)))
        elif op == "add":
            msg[draw(st.text(max_size=10))] = draw(values)
        elif op == "replace" and keys:
            msg[draw(st.sampled_from(keys))] = draw(values)
        elif op == "retype":
            msg["type"] = draw(st.one_of(st.sampled_from(TYPES), values))
    return msg


def nested(depth: int) -> str:
    """A JSON object nested ``depth`` levels deep."""
    return '{"a":' * depth + "1" + "}" * depth


@dataclass(frozen=True)
class Frame:
    """One WebSocket message: ``kind`` is json (text), msgpack (binary), pcm (binary) or raw."""

    kind: str
    body: object

    def encode(self, codec=None) -> bytes | str:
        if self.kind == "json":
            try:
                return json.dumps(self.body, default=lambda b: b.hex() if isinstance(b, bytes) else str(b))
            except (ValueError, OverflowError):
                return "{}"
        if self.kind == "msgpack":
            try:
                return msgpack.packb(self.body, use_bin_type=True)
            except (OverflowError, TypeError, ValueError):
                return b"\x80"
        return self.body  # type: ignore[return-value]


def message_frames():
    return st.one_of(
        messages().map(lambda m: Frame("json", m)),
        messages().map(lambda m: Frame("msgpack", m)),
        st.binary(min_size=0, max_size=2000).map(lambda b: Frame("pcm", b)),
        st.one_of(st.binary(max_size=300), st.text(max_size=300)).map(lambda b: Frame("raw", b)),
    )


def draw_sequences(n: int, seed: int = 0, max_len: int = 25) -> list[list[Frame]]:
    """``n`` message sequences drawn by hypothesis (shrinking off: these are replayed, not minimised),
    reproducible from ``seed``: a valid ``start`` first half of the time, so later messages meet a
    started stream too."""
    from hypothesis import HealthCheck, Phase, given, seed as hseed, settings

    out: list[list[Frame]] = []
    start = Frame("msgpack", {"type": "start", "pipelines": ["vad", "vc"], "sample_rate": 16000})

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.booleans(), st.lists(message_frames(), min_size=1, max_size=max_len))
    def collect(started, frames):
        out.append(([start] if started else []) + frames)
    collect()
    return out[:n]


async def replay(url: str, frames: list[Frame], *, read_s: float = 1.0) -> dict:
    """Send ``frames`` on one connection (msgpack subprotocol), read what comes back for ``read_s``;
    report the error codes, whether any was a server fault, and the close code."""
    import asyncio

    import websockets

    report = {"errors": [], "server_faults": [], "close": None, "refused": None}
    try:
        ws = await websockets.connect(url, subprotocols=["voxserve.v1.msgpack"], compression=None,
                                      open_timeout=20, max_size=None)
    except websockets.InvalidStatus as exc:
        report["refused"] = exc.response.status_code
        return report

    async def reader():
        async for msg in ws:
            try:
                ev = msgpack.unpackb(msg) if isinstance(msg, bytes) else json.loads(msg)
            except Exception:                      # noqa: BLE001 - a frame we cannot decode is itself a failure
                report["server_faults"].append({"code": "undecodable_event"})
                continue
            if isinstance(ev, dict) and ev.get("type") == "error":
                report["errors"].append(ev.get("code"))
                if ev.get("fault") == "server" and ev.get("code") not in ("server_busy", "shutting_down"):
                    report["server_faults"].append(ev)
    task = asyncio.ensure_future(reader())
    try:
        for f in frames:
            await ws.send(f.encode())
        await asyncio.wait_for(asyncio.shield(task), read_s)
    except (websockets.ConnectionClosed, asyncio.TimeoutError):
        pass
    finally:
        await ws.close()
        try:
            await asyncio.wait_for(task, 5)
        except (asyncio.TimeoutError, websockets.ConnectionClosed):
            task.cancel()
    report["close"] = ws.close_code
    return report


async def fuzz_server(url: str, sequences: list[list[Frame]], concurrency: int) -> list[dict]:
    """Replay every sequence against a live server, ``concurrency`` connections at a time."""
    import asyncio

    sem = asyncio.Semaphore(concurrency)

    async def one(seq):
        async with sem:
            return await replay(url, seq)
    return await asyncio.gather(*(one(s) for s in sequences))
