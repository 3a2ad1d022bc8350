"""Wyoming over TCP on voxserve's shared stages (``voxserve serve --wyoming-port 10400``).

Per connection: bytes -> :class:`WyomingParser` -> events. ``describe`` -> ``info`` (one wake program
with every loaded head, one asr program with streaming transcripts); ``ping`` -> ``pong``;
``detect`` (names) or ``transcribe`` (language) choose what the next audio is for (default: wake word
when loaded, else transcription); ``audio-start``/``audio-chunk``/``audio-stop`` at any rate (8-48 kHz),
width (1, 2, 4 bytes) and channel count (1, 2) open a voxserve :class:`Session` with ``wakeword`` or
``vad,asr``, the same resampler, shared models, scheduler and admission as WebSocket streams.
Results: ``detection`` (name, timestamp in ms from audio-start) or ``not-detected`` after audio-stop;
``transcript-start``, a ``transcript-chunk`` per final as it is decoded, then ``transcript`` (all of
it) and ``transcript-stop``. Bad framing gets ``error`` (code, text) and the connection closes; bad
audio formats get ``error`` and the connection lives on. Unknown event types are ignored, as the
protocol expects.

Wyoming has no credentials: bind it to loopback (the default) or a trusted network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from .. import __version__
from ..protocol.codec import SUBPROTOCOL_MSGPACK, Codec
from ..protocol.connection import ConnectionLimits, ServerConnection
from ..protocol.errors import ProtocolError
from ..protocol.messages import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioIn, Start
from .framing import FramingError, WyEvent, WyomingParser, encode

log = logging.getLogger("voxserve.wyoming")
ATTRIBUTION = {"name": "voxserve", "url": "https://pypi.org/project/voxserve/"}


def _pcm_to_float(payload: bytes, width: int, channels: int) -> np.ndarray:
    usable = len(payload) - len(payload) % (width * channels)
    raw = payload[:usable]
    if width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 4:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    else:                                                # 8-bit PCM is unsigned
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if channels == 2:
        x = x.reshape(-1, 2).mean(axis=1, dtype=np.float32)
    return x


def describe(vox) -> dict:
    """The ``info`` event's data: what Home Assistant lists when the integration is added."""
    info: dict[str, Any] = {"asr": [], "wake": []}
    ww = vox.stages.get("wakeword")
    if ww is not None:
        models = [{"name": name, "attribution": ATTRIBUTION, "installed": True, "description": name.replace("_", " "),
                   "version": __version__, "languages": ["en"], "phrase": name.replace("_", " ")}
                  for name in ww.heads]
        info["wake"].append({"name": "voxserve-wakeword", "attribution": ATTRIBUTION, "installed": True,
                             "description": "voxserve wake word detection (openWakeWord-compatible)",
                             "version": __version__, "models": models})
    if "asr" in vox.stages:
        info["asr"].append({"name": "voxserve-asr", "attribution": ATTRIBUTION, "installed": True,
                            "description": "voxserve streaming speech recognition", "version": __version__,
                            "models": [{"name": "moonshine-base-en", "attribution": ATTRIBUTION, "installed": True,
                                        "description": "Moonshine base (English)", "version": __version__,
                                        "languages": ["en"]}],
                            "supports_transcript_streaming": True})
    return info


class WyomingConnection:
    def __init__(self, vox, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.vox, self.reader, self.writer = vox, reader, writer
        s = vox.settings
        self.parser = WyomingParser(max_payload=s.max_message_bytes)
        self.mode: str | None = None          # "wake" or "asr" for the next audio
        self.names: list[str] | None = None
        self.session = None
        self.detected = False
        self.finals: list[str] = []
        self.fmt: tuple[int, int, int] | None = None     # rate, width, channels
        self.received = 0
        self._pump: asyncio.Task | None = None
        self._wake = asyncio.Event()
        peer = writer.get_extra_info("peername")
        self.address = peer[0] if peer else "?"
        self.principal = type("P", (), {"name": "wyoming"})()

    # -- output --------------------------------------------------------------------------------------
    async def send(self, event_type: str, data: dict | None = None) -> None:
        self.writer.write(encode(event_type, data))
        await self.writer.drain()

    async def error(self, code: str, text: str) -> None:
        await self.send("error", {"code": code, "text": text})

    async def _pump_events(self) -> None:
        """Session events -> Wyoming events, in order."""
        while True:
            sess = self.session
            ev = sess.outbox.pop() if sess is not None else None
            if ev is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            kind = ev.get("type")
            if kind == "wakeword" and self.mode == "wake":
                self.detected = True
                await self.send("detection", {"name": ev["name"], "timestamp": int(ev["end_ms"])})
            elif kind == "transcript" and self.mode == "asr":
                text = ev.get("text", "").strip()
                if text:
                    self.finals.append(text)
                    await self.send("transcript-chunk", {"text": (" " if len(self.finals) > 1 else "") + text})
            elif kind == "error":
                await self.error(ev.get("code", "error"), ev.get("message", ""))

    # -- input ---------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.vox.wyoming.add(self)
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                for ev in self.parser.feed(data):
                    if isinstance(ev, FramingError):
                        log.info("wyoming framing error", extra={"code": ev.code, "address": self.address})
                        await self.error(ev.code, ev.message)
                        return
                    await self.handle(ev)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            await self._end_audio(deliver=False)
            self.vox.wyoming.discard(self)
            self.writer.close()

    async def handle(self, ev: WyEvent) -> None:
        t = ev.type
        if t == "describe":
            await self.send("info", describe(self.vox))
        elif t == "ping":
            await self.send("pong", {"text": str(ev.data.get("text", ""))[:256]})
        elif t == "detect":
            names = ev.data.get("names")
            self.mode, self.names = "wake", [str(n) for n in names] if isinstance(names, list) else None
        elif t == "transcribe":
            lang = str(ev.data.get("language") or "en").lower()
            if lang not in ("en", "english") and not lang.startswith("en-") and not lang.startswith("en_"):
                await self.error("unsupported_language", f"language {lang!r}: the model is English only")
                return
            self.mode = "asr"
        elif t == "audio-start":
            await self._start_audio(ev.data)
        elif t == "audio-chunk":
            if self.session is None and not await self._start_audio(ev.data):
                return
            if ev.payload:
                self._audio(ev.payload)
        elif t == "audio-stop":
            await self._end_audio(deliver=True)
        # other event types are not for this service: ignored, as Wyoming expects

    async def _start_audio(self, data: dict) -> bool:
        await self._end_audio(deliver=False)
        rate, width, channels = data.get("rate"), data.get("width", 2), data.get("channels", 1)
        if not (isinstance(rate, int) and MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE and width in (1, 2, 4)
                and channels in (1, 2)):
            await self.error("bad_audio_format", f"audio must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, width 1, 2 "
                                                 f"or 4 bytes, 1 or 2 channels; got rate={rate!r:.20} "
                                                 f"width={width!r:.10} channels={channels!r:.10}")
            return False
        vox = self.vox
        mode = self.mode or ("wake" if "wakeword" in vox.stages else "asr")
        pipelines = ["wakeword"] if mode == "wake" else ["vad", "asr"]
        if any(p not in vox.schemas for p in pipelines):
            await self.error("unsupported", f"this server was started without {pipelines[-1]}")
            return False
        options: dict = {"asr": {"interims": False}} if mode == "asr" else {}
        if mode == "wake" and self.names:
            known = [n for n in self.names if n in vox.stages["wakeword"].heads]
            if known:
                options = {"wakeword": {"models": known}}
        conn = ServerConnection(Codec(SUBPROTOCOL_MSGPACK), vox.schemas, ConnectionLimits())
        [start] = conn.receive(Codec(SUBPROTOCOL_MSGPACK).encode(
            {"type": "start", "sample_rate": rate, "channels": 1, "pipelines": pipelines, "options": options,
             "client": "wyoming"}), time.monotonic())
        if not isinstance(start, Start):
            await self.error("bad_audio_format", getattr(start, "message", "refused"))
            return False
        if vox.draining or not vox.ready:
            await self.error("shutting_down" if vox.draining else "server_busy", "not accepting audio now")
            return False
        if vox.session_count() >= vox.settings.max_sessions:
            await self.error("server_busy", f"server is at its limit of {vox.settings.max_sessions} streams")
            return False
        refusal = vox.admission.admit(self, conn.config)
        if refusal is not None:
            await self.error(refusal.code.value, refusal.message)
            return False
        from ..session import Session

        s = vox.settings
        try:
            self.session = Session(conn.config, vox.stages, vox.metrics, ring_seconds=s.ring_seconds,
                                   outbox_soft=s.outbox_soft, outbox_hard=s.outbox_hard, notify=self._wake.set)
        except ProtocolError as err:
            vox.admission.release(self)
            await self.error(err.code.value, err.message)
            return False
        self.session.principal = "wyoming"
        self.mode, self.fmt, self.received, self.detected, self.finals = mode, (rate, width, channels), 0, False, []
        vox.metrics.sessions_total.labels("opened").inc()
        self._pump = asyncio.ensure_future(self._pump_events())
        if mode == "asr":
            await self.send("transcript-start", {"language": "en"})
        return True

    def _audio(self, payload: bytes) -> None:
        rate, width, channels = self.fmt  # type: ignore[misc]
        x = _pcm_to_float(payload, width, channels)
        if not x.size:
            return
        ev = AudioIn(x, self.received, 0, None, time.monotonic())
        self.received += x.shape[0]
        self.vox.metrics.audio_seconds.inc(x.shape[0] / rate)
        self.session.on_audio(ev)

    async def _end_audio(self, *, deliver: bool) -> None:
        sess = self.session
        if sess is None:
            return
        try:
            if deliver:
                try:
                    await asyncio.wait_for(sess.finish(), timeout=max(5.0, self.vox.settings.drain_timeout_s * 2))
                except asyncio.TimeoutError:
                    log.warning("wyoming: results not ready in time")
                while len(sess.outbox):                          # let the pump send what finish produced
                    await asyncio.sleep(0.005)
                if self.mode == "wake" and not self.detected:
                    await self.send("not-detected")
                elif self.mode == "asr":
                    await self.send("transcript", {"text": " ".join(self.finals), "language": "en"})
                    await self.send("transcript-stop")
        except (ConnectionError, RuntimeError):
            pass
        finally:
            if self._pump is not None:
                self._pump.cancel()
                self._pump = None
            sess.close()
            self.vox.admission.release(self, sess.id)
            self.session = None
            self.mode = None if deliver else self.mode


async def start_wyoming(vox) -> asyncio.AbstractServer:
    s = vox.settings

    async def on_connect(reader, writer):
        await WyomingConnection(vox, reader, writer).run()
    server = await asyncio.start_server(on_connect, s.wyoming_host, s.wyoming_port, limit=2**20,
                                        reuse_port=vox.table is not None)      # --workers: every worker listens
    log.info("wyoming listening", extra={"host": s.wyoming_host, "port": s.wyoming_port})
    return server
