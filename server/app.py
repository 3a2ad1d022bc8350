"""The Starlette application: WebSocket ``/v1/stream`` plus ``/v1/info``, ``/healthz``, ``/readyz``, ``/metrics``.

Each WebSocket gets a :class:`StreamHandler` with three parts: a reader task (frames -> sans-I/O
:class:`ServerConnection` -> :class:`Session`), a writer task (outbox -> socket), and the handler's
own coroutine, which decides how the stream ends and delivers finals before any close it initiates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import __version__
from .admission import Admission
from .metrics import Metrics
from .outbox import Outbox
from .protocol import SUBPROTOCOLS, codec_for_subprotocol
from .protocol.connection import ConnectionLimits, ServerConnection
from .protocol.errors import Close, ErrorCode, ProtocolError
from .protocol.messages import ENCODINGS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, PROTOCOL_VERSION, Ack, AudioIn, Flush, Resume, \
    Start, Stop, Update
from .session import Session
from .settings import Settings
from .stages.base import Stage
from .vad import VAD_SCHEMA

log = logging.getLogger("voxserve")
STATIC_DIR = Path(__file__).parent / "static"


class VoxServer:
    """Process-wide state: settings, shared stages (models), open streams, metrics, admission."""

    def __init__(self, settings: Settings, stages: dict[str, Stage] | None = None):
        self.settings = settings
        self.metrics = Metrics()
        self.admission = Admission(settings, self.metrics)
        self.stages: dict[str, Stage] = stages if stages is not None else build_stages(settings, self.metrics,
                                                                                        self.admission)
        self.schemas = {"vad": VAD_SCHEMA, **{name: st.schema for name, st in self.stages.items()}}
        for name, st in self.stages.items():
            self.admission.register(name, list(getattr(st, "schedulers", {}).values()))
        self.handlers: set[StreamHandler] = set()
        self.detached: dict[str, Session] = {}        # dropped streams kept for resume
        self.ready = False
        self.draining = False
        self.started_at = time.time()
        self._housekeeper: asyncio.Task | None = None

    async def startup(self) -> None:
        for stage in self.stages.values():
            await stage.start()
        self._housekeeper = asyncio.create_task(self._housekeeping())
        self.ready = True
        log.info("ready", extra={"pipelines": list(self.schemas), "version": __version__})

    async def shutdown(self) -> None:
        await self.drain()
        if self._housekeeper:
            self._housekeeper.cancel()
        for stage in self.stages.values():
            await stage.stop()

    async def drain(self) -> None:
        """Graceful shutdown: every stream gets its finals, an error ``shutting_down`` and close 1012."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        handlers = list(self.handlers)
        if handlers:
            log.info("draining streams", extra={"streams": len(handlers)})
        for h in handlers:
            h.terminate(ProtocolError(ErrorCode.SHUTTING_DOWN, "server is shutting down; reconnect elsewhere"))
        for sid in list(self.detached):
            self.detached.pop(sid).close()
        if handlers:
            await asyncio.wait([h.done for h in handlers], timeout=self.settings.drain_timeout_s)

    async def _housekeeping(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for sid, sess in list(self.detached.items()):
                if sess.detached_at is not None and now - sess.detached_at > s.resume_grace_s:
                    self.detached.pop(sid, None)
                    sess.close()
                    self.metrics.sessions_total.labels("expired").inc()
                    log.info("detached stream expired", extra={"session": sid})
            for h in list(self.handlers):
                if now - h.last_input > s.idle_timeout_s:
                    h.terminate(ProtocolError(ErrorCode.IDLE_TIMEOUT,
                                              f"no message for {s.idle_timeout_s:g} s; closing"))
                elif now - h.opened > s.max_session_s:
                    h.terminate(ProtocolError(ErrorCode.SESSION_TOO_LONG,
                                              f"stream reached the maximum length of {s.max_session_s:g} s"))

    def info(self) -> dict:
        s = self.settings
        return {
            "server": "voxserve", "version": __version__, "protocol_version": PROTOCOL_VERSION,
            "subprotocols": list(SUBPROTOCOLS), "stream_path": "/v1/stream",
            "pipelines": {name: schema.describe() for name, schema in self.schemas.items()},
            "models": {name: st.describe().get("models", {}) for name, st in self.stages.items()},
            "audio": {"sample_rates": {"min": MIN_SAMPLE_RATE, "max": MAX_SAMPLE_RATE},
                      "encodings": sorted(ENCODINGS), "channels": [1, 2],
                      "frame_ms": {"min": 10, "max": 1000}, "model_rate": 16000},
            "limits": {"max_sessions": s.max_sessions, "max_message_bytes": s.max_message_bytes,
                       "max_frames_per_second": s.max_frames_per_second, "frame_burst": s.frame_burst,
                       "idle_timeout_s": s.idle_timeout_s, "max_session_s": s.max_session_s,
                       "outbox_soft": s.outbox_soft, "outbox_hard": s.outbox_hard},
            "load": self.admission.report(len(self.handlers)),
        }


def build_stages(settings: Settings, metrics: Metrics, admission: Admission | None = None) -> dict[str, Stage]:
    """Instantiate the model stages named in ``settings.pipelines`` (``vad`` is built in)."""
    from .stages.registry import create_stage

    stages: dict[str, Stage] = {}
    for name in settings.pipeline_list:
        if name == "vad":
            continue
        stages[name] = create_stage(name, settings, metrics, admission)
    return stages


class StreamHandler:
    """Drives one WebSocket stream from accept to close."""

    def __init__(self, server: VoxServer, ws: WebSocket):
        self.server = server
        self.ws = ws
        offered = ws.scope.get("subprotocols") or []
        self.codec = codec_for_subprotocol(offered)
        self.subprotocol = self.codec.subprotocol if self.codec.subprotocol in offered else None
        s = server.settings
        self.conn = ServerConnection(self.codec, server.schemas,
                                     ConnectionLimits(s.max_message_bytes, s.max_frames_per_second, s.frame_burst))
        self.session: Session | None = None
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future = self.loop.create_future()
        self.opened = self.last_input = time.monotonic()
        self._wake = asyncio.Event()
        self._end: ProtocolError | None = None      # why the server ends the stream (None = client ended)
        self._stopped = False
        self._client_gone = False
        self._reader: asyncio.Task | None = None
        self._log_extra: dict = {}
        self._pending_direct: list[dict] = []     # events queued before a session exists
        self._closing = False
        self._detached = False

    # -- lifecycle -----------------------------------------------------------------------------------
    async def run(self) -> None:
        m = self.server.metrics
        await self.ws.accept(subprotocol=self.subprotocol)
        refusal = self._refusal()
        if refusal is not None:
            m.sessions_total.labels("refused").inc()
            m.errors.labels(refusal.code.value).inc()
            await self._send_now(refusal.to_event())
            await self._close(refusal.code.close_code, refusal.code.value)
            self.done.set_result(None)
            return
        self.server.handlers.add(self)
        m.sessions_active.inc()
        writer = asyncio.create_task(self._writer())
        self._reader = asyncio.create_task(self._read_loop())
        try:
            try:
                await self._reader
            except asyncio.CancelledError:
                if not self._reader.cancelled():
                    raise
            await self._finish(writer)
        finally:
            writer.cancel()
            if self.session is not None and not self._detached:
                self.session.close()
            self.server.handlers.discard(self)
            self.server.admission.release(self)
            m.sessions_active.dec()
            if not self.done.done():
                self.done.set_result(None)

    def _refusal(self) -> ProtocolError | None:
        srv = self.server
        if srv.draining or not srv.ready:
            return ProtocolError(ErrorCode.SHUTTING_DOWN if srv.draining else ErrorCode.SERVER_BUSY,
                                 "server is shutting down" if srv.draining else "server is still loading models")
        if len(srv.handlers) >= srv.settings.max_sessions:
            return ProtocolError(ErrorCode.SERVER_BUSY,
                                 f"server is at its limit of {srv.settings.max_sessions} streams; retry later")
        return None

    def terminate(self, err: ProtocolError) -> None:
        """Ask the stream to end (from housekeeping, shutdown or a stage): finals first, then close."""
        if self._end is None:
            self._end = err
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    async def _finish(self, writer: asyncio.Task) -> None:
        m = self.server.metrics
        if self._client_gone:
            m.sessions_total.labels("disconnected").inc()
            grace = self.server.settings.resume_grace_s
            if self.session is not None and grace > 0 and not self._stopped:
                # Keep the stream (state, retained events, stages finishing their work) for a resume.
                self.session.detach(time.monotonic())
                self.server.detached[self.session.id] = self.session
                self._detached = True
                log.info("stream disconnected; kept for resume", extra={**self._log_extra, "grace_s": grace})
            else:
                log.info("stream disconnected", extra=self._log_extra)
            return
        if self.session is not None and not self.session.overflowed:
            try:
                await asyncio.wait_for(self.session.finish(), timeout=max(1.0, self.server.settings.drain_timeout_s))
            except asyncio.TimeoutError:
                log.warning("finals not delivered in time", extra=self._log_extra)
        err = self._end
        if self.session is not None and self.session.overflowed:
            # Nothing more can be queued; the error goes first so a client that wakes up sees why.
            self.session.outbox = Outbox(1, 1)
            self.session.overflowed = False
        if err is None and self.session is not None:
            self._queue({"type": "stopped", "session_id": self.session.id,
                                     **self.session.position("audio", self.session.ring.end),
                         "dropped_events": self.session.outbox.dropped})
        elif err is not None:
            m.errors.labels(err.code.value).inc()
            self._queue_error(err)
        self._wake.set()
        # Let the writer deliver everything queued, then close.
        self._closing = True
        try:
            await asyncio.wait_for(self._drained(), timeout=2.0 if err and err.code is ErrorCode.SLOW_CONSUMER else 10.0)
        except asyncio.TimeoutError:
            pass
        code, reason = (Close.NORMAL, "stopped") if err is None else (err.code.close_code, err.code.value)
        m.sessions_total.labels("stopped" if err is None else err.code.value).inc()
        log.info("stream closed", extra={**self._log_extra, "close_code": int(code), "reason": reason})
        await self._close(int(code), reason)

    async def _drained(self) -> None:
        while self.session is not None and len(self.session.outbox) and not self._client_gone:
            await asyncio.sleep(0.005)
        while self.session is None and self._pending_direct and not self._client_gone:
            await asyncio.sleep(0.005)

    # -- reading -------------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        receive = self.ws.receive
        m = self.server.metrics
        while True:
            message = await receive()
            mtype = message["type"]
            if mtype == "websocket.disconnect":
                self._client_gone = True
                return
            self.last_input = time.monotonic()
            payload = message.get("bytes")
            if payload is None:
                payload = message.get("text")
                if payload is None:
                    continue
            m.bytes_in.inc(len(payload))
            try:
                if not await self._dispatch(self.conn.receive(payload, self.last_input)):
                    return
            except Exception as exc:                  # a bug of ours: typed error, finals, close 1011
                log.exception("stream failed", extra=self._log_extra)
                self._end = ProtocolError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
                return

    async def _dispatch(self, events) -> bool:
        """Handle the events of one message; False when the stream must end."""
        m = self.server.metrics
        for ev in events:
            if isinstance(ev, AudioIn):
                m.frames.inc()
                m.audio_seconds.inc(ev.samples.shape[0] / self.conn.config.audio.sample_rate)
                self.session.on_audio(ev)
            elif isinstance(ev, ProtocolError):
                m.errors.labels(ev.code.value).inc()
                if ev.fatal:
                    self._end = ev
                    return False
                self._queue_error(ev)
            elif isinstance(ev, Start):
                if not self._open_session():
                    return False
            elif isinstance(ev, Resume):
                self._resume(ev)
            elif isinstance(ev, Ack):
                self.session.ack(ev.eid)
            elif isinstance(ev, Update):
                self.session.on_update(ev.options)
                self._queue({"type": "updated", "options": ev.options})
            elif isinstance(ev, Flush):
                await self.session.flush()
                self._queue({"type": "flushed", **self.session.position("at", self.session.ring.end)})
            elif isinstance(ev, Stop):
                self._stopped = True
                return False
        return True

    def _resume(self, ev: Resume) -> None:
        """Reattach a dropped stream: the client learns where to resume its audio (``next_seq``) and
        receives every retained event after ``last_eid`` again (finals are never lost or doubled:
        clients drop events whose ``eid`` they already have)."""
        srv = self.server
        session = srv.detached.pop(ev.session_id, None)
        if session is None:
            err = ProtocolError(ErrorCode.UNKNOWN_SESSION, f"no resumable stream {ev.session_id!r} (expired after "
                                                           f"{srv.settings.resume_grace_s:g} s, or never existed); "
                                                           "send start for a new one")
            srv.metrics.errors.labels(err.code.value).inc()
            self._queue_error(err)
            return
        self.session = session
        self.conn = session.conn
        self.conn.adopt(self.codec)
        replay = session.attach(self._wake.set, self._overflow, ev.last_eid)
        cfg = self.conn.config
        srv.admission.streams[self] = tuple(cfg.pipelines)
        self._log_extra = {"session": session.id, "client": cfg.client or "", "pipelines": list(cfg.pipelines)}
        srv.metrics.sessions_total.labels("resumed").inc()
        log.info("stream resumed", extra={**self._log_extra, "replayed": len(replay), "next_seq": self.conn.next_seq})
        self._queue({"type": "resumed", "session_id": session.id, "next_seq": self.conn.next_seq,
                     **session.position("received", session.ring.end), "replayed": len(replay),
                     "config": cfg.to_wire()})
        for old in replay:
            session.outbox.put(old, False)
        self._wake.set()

    def _open_session(self) -> bool:
        srv = self.server
        cfg = self.conn.config
        refusal = srv.admission.admit(self, cfg)
        if refusal is not None:
            self._end = refusal
            return False
        s = srv.settings
        try:
            self.session = Session(cfg, srv.stages, srv.metrics, ring_seconds=s.ring_seconds,
                                   outbox_soft=s.outbox_soft, outbox_hard=s.outbox_hard, notify=self._wake.set,
                                   on_overflow=self._overflow)
        except ProtocolError as err:          # a stage refused this configuration: the client may retry
            srv.admission.release(self)
            self.conn.reset()
            srv.metrics.errors.labels(err.code.value).inc()
            self._queue_error(err)
            return True
        self.session.conn = self.conn
        self._log_extra = {"session": self.session.id, "client": cfg.client or "", "pipelines": list(cfg.pipelines)}
        srv.metrics.sessions_total.labels("opened").inc()
        log.info("stream started", extra={**self._log_extra, "rate": cfg.audio.sample_rate})
        self._queue({"type": "ready", "session_id": self.session.id, "protocol_version": PROTOCOL_VERSION,
                     "subprotocol": self.codec.subprotocol, "config": cfg.to_wire()})
        return True

    # -- writing -------------------------------------------------------------------------------------
    def _overflow(self) -> None:
        self.terminate(ProtocolError(ErrorCode.SLOW_CONSUMER,
                                     f"client is not reading its events ({self.server.settings.outbox_hard} queued)"))

    def _queue(self, event: dict) -> None:
        if self.session is not None:
            self.session.emit(event, False)
        else:
            self._pending_direct.append(event)
            self._wake.set()

    def _queue_error(self, err: ProtocolError) -> None:
        self._queue(err.to_event())

    async def _writer(self) -> None:
        send = self.ws.send
        encode = self.codec.encode
        m = self.server.metrics
        try:
            while True:
                event = self._pending_direct.pop(0) if self._pending_direct else (
                    self.session.outbox.pop() if self.session is not None else None)
                if event is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                payload = encode(event)
                if isinstance(payload, bytes):
                    await send({"type": "websocket.send", "bytes": payload})
                else:
                    await send({"type": "websocket.send", "text": payload})
                m.events.labels(event.get("type", "?")).inc()
        except (WebSocketDisconnect, OSError, RuntimeError):
            self._client_gone = True
            if self._reader is not None and not self._reader.done():
                self._reader.cancel()
        except Exception:  # pragma: no cover - a bug in encoding
            log.exception("writer failed", extra=self._log_extra)

    async def _send_now(self, event: dict) -> None:
        payload = self.codec.encode(event)
        try:
            if isinstance(payload, bytes):
                await self.ws.send({"type": "websocket.send", "bytes": payload})
            else:
                await self.ws.send({"type": "websocket.send", "text": payload})
        except Exception:
            pass

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code, reason), timeout=2.0)
        except Exception:
            pass


async def stream_endpoint(ws: WebSocket) -> None:
    server: VoxServer = ws.app.state.vox
    handler = StreamHandler(server, ws)
    await handler.run()


def create_app(settings: Settings | None = None, stages: dict[str, Stage] | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    vox = VoxServer(settings, stages)

    async def info(request: Request) -> Response:
        return JSONResponse(vox.info())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "uptime_s": round(time.time() - vox.started_at, 1)})

    async def readyz(request: Request) -> Response:
        if vox.ready:
            return JSONResponse({"status": "ready", "pipelines": list(vox.schemas)})
        return JSONResponse({"status": "draining" if vox.draining else "loading"}, status_code=503)

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(vox.metrics.render(), media_type="text/plain; version=0.0.4")

    routes = [
        WebSocketRoute("/v1/stream", stream_endpoint),
        Route("/v1/info", info),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    if STATIC_DIR.is_dir():
        routes.append(Mount("/", StaticFiles(directory=str(STATIC_DIR), html=True), name="static"))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await vox.startup()
        try:
            yield
        finally:
            await vox.shutdown()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.vox = vox
    return app
