"""The Starlette application: WebSocket ``/v1/stream`` plus ``/v1/info``, ``/healthz``, ``/readyz``, ``/metrics``.

Each WebSocket gets a :class:`StreamHandler` with three parts: a reader task (frames -> sans-I/O
:class:`ServerConnection` -> :class:`Session`), a writer task (outbox -> socket), and the handler's
own coroutine, which decides how the stream ends and delivers finals before any close it initiates.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import uuid
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
from .admission import TARGET_UTILISATION, Admission
from .auth import ANONYMOUS, Authenticator, OriginPolicy, Principal, find_credential, forbidden, parse_origins
from .metrics import Metrics
from .openai_api import routes as openai_routes
from .outbox import Outbox
from .protocol import SUBPROTOCOLS, codec_for_subprotocol
from .protocol.connection import ConnectionLimits, ServerConnection
from .protocol.errors import Close, ErrorCode, ProtocolError
from .quotas import AddressGate, AudioRate
from .scheduler import StageFailed
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

    def __init__(self, settings: Settings, stages: dict[str, Stage] | None = None, table=None):
        self.settings = settings
        self.table = table                       # the shared WorkerTable under --workers N, else None
        self.worker = table.index if table is not None else 0
        self.metrics = Metrics()
        self.admission = Admission(settings, self.metrics)
        if table is not None:
            self.admission.external_busy = lambda: table.others("busy_cores")
            self.admission.external_target = lambda: table.others_target(TARGET_UTILISATION)
        self.stages: dict[str, Stage] = stages if stages is not None else build_stages(settings, self.metrics,
                                                                                        self.admission)
        self.schemas = {"vad": VAD_SCHEMA, **{name: st.schema for name, st in self.stages.items()}}
        for name, st in self.stages.items():
            self.admission.register(name, list(getattr(st, "schedulers", {}).values()),
                                    getattr(st, "machine_target", TARGET_UTILISATION))   # fakes in tests: default
        self.handlers: set[StreamHandler] = set()
        self.wyoming: set = set()                     # open Wyoming connections
        self._wyoming_server = None
        self.detached: dict[str, Session] = {}        # dropped streams kept for resume (oldest first)
        self.auth = Authenticator(settings.api_key_list, settings.jwt_secret or None,
                                  Path(settings.jwt_public_key).read_text() if settings.jwt_public_key else None,
                                  settings.jwt_audience)
        self.origins = OriginPolicy(parse_origins(settings.allowed_origins))
        self.gate = AddressGate(settings.max_connections_per_ip, settings.handshakes_per_ip_per_s,
                                settings.handshake_burst)
        self.ready = False
        self.draining = False
        self.drain_started: float | None = None
        self.started_at = time.time()
        self._housekeeper: asyncio.Task | None = None

    async def startup(self) -> None:
        for stage in self.stages.values():
            await stage.start()
        self._housekeeper = asyncio.create_task(self._housekeeping())
        if self.settings.wyoming_port:
            from .wyoming.server import start_wyoming

            self._wyoming_server = await start_wyoming(self)
        self.ready = True
        log.info("ready", extra={"pipelines": list(self.schemas), "version": __version__,
                                 "auth": "required" if self.auth.required else "off"})
        if not self.auth.required:
            log.warning("authentication is off: no --api-key, --jwt-secret or --jwt-public-key configured; "
                        "every stream runs as 'anonymous'")

    async def shutdown(self) -> None:
        await self.drain()
        if self._wyoming_server is not None:
            self._wyoming_server.close()
        if self._housekeeper:
            self._housekeeper.cancel()
        for stage in self.stages.values():
            await stage.stop()

    async def drain(self) -> None:
        """Graceful shutdown: every stream gets its finals, an error ``shutting_down`` and close 1012."""
        if self.draining:
            return
        self.draining = True
        self.drain_started = time.monotonic()
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
                    self.expire_detached(sid, "grace period over")
            for h in list(self.handlers):
                longest = min(s.max_session_s, h.principal.max_stream_s or s.max_session_s)
                if h.send_started is not None:          # its socket takes nothing: slow, not idle
                    if now - h.send_started > s.idle_timeout_s:
                        h.terminate(ProtocolError(ErrorCode.SLOW_CONSUMER, f"client read nothing for "
                                                                           f"{s.idle_timeout_s:g} s; closing"))
                elif h.session is None and now - h.opened > s.start_timeout_s:
                    h.terminate(ProtocolError(ErrorCode.START_TIMEOUT,
                                              f"no start or resume within {s.start_timeout_s:g} s; closing"))
                elif now - h.last_input > s.idle_timeout_s:
                    h.terminate(ProtocolError(ErrorCode.IDLE_TIMEOUT,
                                              f"no message for {s.idle_timeout_s:g} s; closing"))
                elif now - h.opened > longest:
                    h.terminate(ProtocolError(ErrorCode.SESSION_TOO_LONG,
                                              f"stream reached the maximum length of {longest:g} s"))
            self.gate.forget_idle(now)
            self.publish()

    def publish(self) -> None:
        """This worker's row of the shared table (whole-server limits read the sums)."""
        self.admission.sample_cpu()
        if self.table is not None:
            # the engine load other workers' admission adds to their own: the part no stage could shed
            self.table.write(self.session_count(local=True), self.admission.machine_busy(local=True, required=True),
                             self.admission.local_target())

    def expire_detached(self, sid: str, why: str) -> None:
        sess = self.detached.pop(sid, None)
        if sess is not None:
            sess.close()
            self.metrics.sessions_total.labels("expired").inc()
            log.info("detached stream expired", extra={"session": short_id(sid), "why": why})

    def session_count(self, principal: str | None = None, local: bool = False) -> int:
        """Streams holding a session (started, or detached awaiting resume), in the whole server (every
        worker) unless ``local``; sockets that have not started yet do not count."""
        if self.table is not None and principal is None and not local:
            return self.session_count(local=True) + int(self.table.others("sessions"))
        live = sum(1 for h in self.handlers if h.session is not None and not h._detached
                   and (principal is None or h.principal.name == principal))
        kept = sum(1 for sess in self.detached.values() if principal is None or sess.principal == principal)
        wyoming = sum(1 for c in self.wyoming if c.session is not None) if principal is None else 0
        return live + kept + wyoming

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
            "worker": {"index": self.worker, "pid": os.getpid(), "of": self.table.workers if self.table else 1},
            "workers": self.table.rows() if self.table is not None else None,
            "totals": {"sessions": self.session_count(), "busy_cores": round(self.admission.machine_busy(), 3)},
            "load": {**self.admission.report(len(self.handlers)), "detached": len(self.detached),
                     "pending": sum(1 for h in self.handlers if h.session is None),
                     "connections": sum(self.gate.open.values()), "tasks": len(asyncio.all_tasks())},
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
        # Echo only a real protocol name, never the voxserve.auth.<token> entry.
        self.subprotocol = self.codec.subprotocol if self.codec.subprotocol in offered else None
        self.principal: Principal = ANONYMOUS
        client = ws.scope.get("client")
        self.address = client[0] if client else "?"
        s0 = server.settings
        self.rate = AudioRate(s0.max_audio_rate, s0.audio_burst_s)
        self._lag_limit_s = min(2.0, s0.ring_seconds / 4)   # stage work pending before input is paused
        # The routing key a balancer hashes (?session=KEY): the client's, echoed in ready; else a fresh one
        # (then only a balancer that pins by something else brings a resume back here).
        key = ws.query_params.get("session", "")
        self.route = key[:128] if key and key.isascii() and key.isprintable() else uuid.uuid4().hex
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
        self.send_started: float | None = None     # when the writer's current send began (None: not sending)
        self.sent = 0                              # events sent on this socket
        self._flushing: asyncio.Future | None = None   # the latest flush still delivering its finals

    # -- lifecycle -----------------------------------------------------------------------------------
    async def run(self) -> None:
        refusal = self._handshake_refusal()
        if refusal is not None:
            await self._refuse(refusal)
            return
        why = self.server.gate.admit(self.address, time.monotonic())
        if why is not None:
            await self._refuse(ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, why + "; retry later"))
            return
        try:
            await self._run_accepted()
        finally:
            self.server.gate.release(self.address)

    def _handshake_refusal(self) -> ProtocolError | None:
        """Checks made before the socket is accepted: Origin, credential, server state. Sets the principal."""
        srv, ws = self.server, self.ws
        origin = ws.headers.get("origin")
        if not srv.origins.permits(origin, ws.headers.get("host"), ws.url.scheme):
            return forbidden(f"web origin {origin!r} is not allowed to open streams (--allowed-origins)")
        try:
            self.principal = srv.auth.authenticate(
                find_credential(ws.headers, ws.scope.get("subprotocols") or [], ws.query_params))
        except ProtocolError as err:
            return err
        if srv.draining or not srv.ready:
            return ProtocolError(ErrorCode.SHUTTING_DOWN if srv.draining else ErrorCode.SERVER_BUSY,
                                 "server is shutting down" if srv.draining else "server is still loading models")
        return None

    async def _refuse(self, err: ProtocolError) -> None:
        """No session for this socket. A browser (it sent Origin) cannot read an HTTP status, so it gets a
        typed error and the close code; other clients get the HTTP status at the handshake."""
        m = self.server.metrics
        m.sessions_total.labels("refused").inc()
        m.errors.labels(err.code.value).inc()
        log.info("stream refused", extra={"code": err.code.value, "address": self.address,
                                          "principal": self.principal.name})
        status = {ErrorCode.UNAUTHORIZED: 401, ErrorCode.FORBIDDEN: 403,
                  ErrorCode.TOO_MANY_CONNECTIONS: 429}.get(err.code, 503)
        denial = "websocket.http.response" in (self.ws.scope.get("extensions") or {})
        try:
            if denial and not self.ws.headers.get("origin"):
                headers = {"www-authenticate": 'Bearer realm="voxserve"'} if status == 401 else None
                await self.ws.send_denial_response(JSONResponse(err.to_event(), status_code=status,
                                                                headers=headers))
            else:
                await self.ws.accept(subprotocol=self.subprotocol)
                await self._send_now(err.to_event())
                await self._close(err.code.close_code, err.code.value)
        except Exception:                       # the client went away meanwhile
            pass
        if not self.done.done():
            self.done.set_result(None)

    async def _run_accepted(self) -> None:
        m = self.server.metrics
        await self.ws.accept(subprotocol=self.subprotocol)
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
                if self._flushing is not None and not self._flushing.done():
                    self._flushing.cancel()
                self.session.close()
            self.server.handlers.discard(self)
            # a detached session lives on (and keeps its load) until it is resumed or expires
            self.server.admission.release(
                self, self.session.id if self.session is not None and not self._detached else None)
            self.server.publish()
            m.sessions_active.dec()
            if not self.done.done():
                self.done.set_result(None)

    def _capacity_refusal(self) -> ProtocolError | None:
        """Limits checked when a stream asks for a session (start or resume)."""
        srv = self.server
        if srv.session_count() >= srv.settings.max_sessions:
            return ProtocolError(ErrorCode.SERVER_BUSY,
                                 f"server is at its limit of {srv.settings.max_sessions} streams; retry later")
        cap = self.principal.max_streams
        if cap is not None and srv.session_count(self.principal.name) >= cap:
            return ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS,
                                 f"this credential may hold {cap} streams at once; close one first")
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
            if self.session is not None and grace > 0 and not self._stopped and self.server.settings.max_detached:
                # Keep the stream (state, retained events, stages finishing their work) for a resume;
                # past the cap the oldest kept stream expires first.
                while len(self.server.detached) >= self.server.settings.max_detached:
                    self.server.expire_detached(next(iter(self.server.detached)), "too many detached streams")
                self.session.detach(time.monotonic())
                self.server.detached[self.session.id] = self.session
                self._detached = True
                log.info("stream disconnected; kept for resume", extra={**self._log_extra, "grace_s": grace})
            else:
                log.info("stream disconnected", extra=self._log_extra)
            return
        if self._flushing is not None:             # finals of flushes still decoding come before the end
            await self._while_progressing(asyncio.shield(self._flushing), max(1.0, self.server.settings.drain_timeout_s))
        if self.session is not None and not self.session.overflowed:
            if not await self._while_progressing(self.session.finish(), max(1.0, self.server.settings.drain_timeout_s)):
                log.warning("finals not delivered in time", extra=self._log_extra)
        err = self._end
        if self.session is not None and self.session.overflowed:
            # Nothing more can be queued; the error goes first so a client that wakes up sees why.
            self.session.outbox = Outbox(1, 1)
            self.session.overflowed = False
        if err is None and self.session is not None:
            self._queue({"type": "stopped", "session_id": self.session.id,
                                     **self.session.position("audio", self.session.ring.end),
                         "dropped_events": self.session.outbox.dropped,
                         "dropped_by_type": dict(self.session.dropped_by_type)})
        elif err is not None:
            m.errors.labels(err.code.value).inc()
            event = err.to_event()
            if err.code is ErrorCode.SHUTTING_DOWN and self.session is not None:
                # Everything up to here was processed (finals above): a new stream elsewhere goes on from here.
                event["next_seq"] = self.conn.next_seq
                event.update(self.session.position("received", self.session.ring.end))
            self._queue(event)
        self._wake.set()
        # Let the writer deliver everything queued, then close.
        self._closing = True
        await self._while_progressing(self._drained(), 2.0 if err and err.code is ErrorCode.SLOW_CONSUMER else 10.0)
        code, reason = (Close.NORMAL, "stopped") if err is None else (err.code.close_code, err.code.value)
        m.sessions_total.labels("stopped" if err is None else err.code.value).inc()
        log.info("stream closed", extra={**self._log_extra, "close_code": int(code), "reason": reason})
        slow = err is not None and err.code is ErrorCode.SLOW_CONSUMER
        await self._close(int(code), reason, timeout=2.0 if slow or self.server.draining
                          else self.server.settings.idle_timeout_s)

    async def _backpressure(self) -> bool:
        """The client reads its events more slowly than the stream produces them, or a stage is behind the
        input: stop reading its input (TCP then pushes back on the sender) until the writer has sent half the
        backlog and the stages have caught up. Nothing the client asked for is dropped, and the ring never
        overwrites unprocessed audio. False (stream ends with ``slow_consumer``) when nothing moves for
        ``idle_timeout_s``."""
        sess = self.session
        t0 = time.monotonic()
        self.server.metrics.backpressure.inc()
        while (sess.outbox.kept > sess.outbox.soft // 2 or sess.lagging(self._lag_limit_s / 2)) \
                and not self._client_gone:
            now = time.monotonic()
            if now - t0 > self.server.settings.idle_timeout_s:
                self._end = ProtocolError(ErrorCode.SLOW_CONSUMER, f"client read no events for "
                                                                    f"{self.server.settings.idle_timeout_s:g} s")
                return False
            self.last_input = now                  # connected and pushed back on, not idle
            await asyncio.sleep(0.005)
        return True

    async def _while_progressing(self, work, stall_s: float) -> bool:
        """Run ``work`` for as long as the client keeps taking events: it is cut off only after ``stall_s``
        seconds in which the writer sent nothing (a slow reader that reads still gets everything; one that
        stopped reading, or a server shutting down with a stuck client, does not hold the stream forever).
        True when ``work`` completed."""
        task = asyncio.ensure_future(work)
        sent = -1
        while True:
            done, _ = await asyncio.wait([task], timeout=stall_s)
            if done:
                return True
            if self.sent == sent or self._client_gone or (self.server.draining and self._drain_deadline_passed()):
                task.cancel()
                return False
            sent = self.sent

    def _drain_deadline_passed(self) -> bool:
        return time.monotonic() - (self.server.drain_started or time.monotonic()) > self.server.settings.drain_timeout_s

    async def _drained(self) -> None:
        """Until the writer has handed every queued event to the transport (its last send included)."""
        while self.session is not None and (len(self.session.outbox) or self.send_started is not None) \
                and not self._client_gone:
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
                if self.session is not None and (self.session.outbox.backlogged or self.session.lagging(
                        self._lag_limit_s)) and not await self._backpressure():
                    return
            except StageFailed as exc:                # a model failed: typed, not fatal, not a disconnect
                self._stage_failed(exc)
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
                audio_s = ev.samples.shape[0] / self.conn.config.audio.sample_rate
                m.audio_seconds.inc(audio_s)
                self.session.on_audio(ev)
                wait = self.rate.wait_for(audio_s, time.monotonic())
                if wait > 0:                  # faster than the audio-rate quota: stop reading (TCP pushes back)
                    m.paced_seconds.inc(wait)
                    await asyncio.sleep(wait)
            elif isinstance(ev, ProtocolError):
                m.errors.labels(ev.code.value).inc()
                if ev.fatal:
                    self._end = ev
                    return False
                self._queue_error(ev)
            elif isinstance(ev, Start):
                if not self._open_session(ev):
                    return False
            elif isinstance(ev, Resume):
                if not self._resume(ev):
                    return False
            elif isinstance(ev, Ack):
                self.session.ack(ev.eid)
            elif isinstance(ev, Update):
                self.session.on_update(ev.options)
                self._queue({"type": "updated", "options": ev.options})
            elif isinstance(ev, Flush):
                # The utterance ends here, now; its finals are delivered by a task, so the reader goes on
                # reading (pings, acks, the next utterance's audio) while they decode.
                # At most one flush in flight: a second waits for the first (a flood of flushes cannot pile
                # up tasks, and its events then push back like any other backlog).
                if self._flushing is not None and not self._flushing.done():
                    await asyncio.wait([self._flushing])
                at = self.session.position("at", self.session.ring.end)
                drain = self.session.begin_flush()
                self._flushing = asyncio.ensure_future(self._complete_flush(drain, at, None))
            elif isinstance(ev, Stop):
                self._stopped = True
                return False
        return True

    async def _complete_flush(self, drain, at: dict, previous: asyncio.Future | None) -> None:
        """Deliver a flush's finals, then ``flushed`` (flushes complete in order). A stage failure is a
        typed, non-fatal ``stage_failed``; the stream goes on."""
        if previous is not None:
            await asyncio.wait([previous])
        try:
            await drain
        except StageFailed as exc:
            self._stage_failed(exc)
        self._queue({"type": "flushed", **at})

    def _stage_failed(self, exc: Exception) -> None:
        err = ProtocolError(ErrorCode.STAGE_FAILED, f"a model failed for this stream: {exc}")
        self.server.metrics.errors.labels(err.code.value).inc()
        log.warning("stage failed", extra={**self._log_extra, "error": str(exc)[:200]})
        self._queue_error(err)

    def _resume(self, ev: Resume) -> bool:
        """Reattach a dropped stream: the client learns where to resume its audio (``next_seq``) and
        receives every retained event after ``last_eid`` again (finals are never lost or doubled:
        clients drop events whose ``eid`` they already have). Only the principal that started the
        stream, holding its ``resume_token`` from ``ready``, may resume it. False when the stream must end."""
        srv = self.server
        session = srv.detached.get(ev.session_id)
        if session is None:
            err = ProtocolError(ErrorCode.UNKNOWN_SESSION, f"no resumable stream {short_id(ev.session_id)}... "
                                                           f"(expired after {srv.settings.resume_grace_s:g} s, or "
                                                           "never existed); send start for a new one")
            srv.metrics.errors.labels(err.code.value).inc()
            self._queue_error(err)
            return True
        if session.principal != self.principal.name or not hmac.compare_digest(
                session.resume_token.encode(), ev.resume_token.encode()):
            log.warning("resume refused: wrong principal or resume token",
                        extra={"session": short_id(session.id), "principal": self.principal.name})
            self._end = forbidden("this stream belongs to another credential, or the resume_token is wrong")
            return False
        del srv.detached[ev.session_id]
        self.session = session
        self.conn = session.conn
        self.conn.adopt(self.codec)
        replay = session.attach(self._wake.set, self._overflow, ev.last_eid)
        cfg = self.conn.config
        srv.admission.streams[self] = tuple(cfg.pipelines)
        self._log_extra = {"session": short_id(session.id), "principal": self.principal.name,
                           "client": cfg.client or "", "pipelines": list(cfg.pipelines)}
        srv.metrics.sessions_total.labels("resumed").inc()
        log.info("stream resumed", extra={**self._log_extra, "replayed": len(replay), "next_seq": self.conn.next_seq})
        # ``resumed`` belongs to this connection, not to the stream: no event id (the replayed events below
        # keep their older ids; a client that took a newer id from it would drop them as duplicates).
        session.outbox.put({"type": "resumed", "session_id": session.id, "next_seq": self.conn.next_seq,
                            **session.position("received", session.ring.end), "replayed": len(replay),
                            "config": cfg.to_wire()}, False)
        for old in replay:
            session.outbox.put(old, False)
        self._wake.set()
        return True

    def _open_session(self, start: Start) -> bool:
        srv = self.server
        cfg = self.conn.config
        denied = [p for p in start.pipelines if not self.principal.allows(p)]
        if denied:
            self._end = forbidden(f"this credential may not use pipeline(s) {denied} "
                                  f"(allowed: {sorted(self.principal.pipelines or ())})")
            return False
        refusal = self._capacity_refusal() or srv.admission.admit(self, cfg)
        if refusal is not None:
            self._end = refusal
            return False
        s = srv.settings
        if self.principal.audio_rate is not None:
            self.rate = AudioRate(self.principal.audio_rate, s.audio_burst_s)
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
        self.session.principal = self.principal.name
        self._log_extra = {"session": short_id(self.session.id), "principal": self.principal.name,
                           "client": cfg.client or "", "pipelines": list(cfg.pipelines)}
        srv.metrics.sessions_total.labels("opened").inc()
        srv.publish()
        log.info("stream started", extra={**self._log_extra, "rate": cfg.audio.sample_rate})
        self._queue({"type": "ready", "session_id": self.session.id, "resume_token": self.session.resume_token,
                     "route": self.route, "worker": srv.worker, "principal": self.principal.name,
                     "protocol_version": PROTOCOL_VERSION,
                     "subprotocol": self.codec.subprotocol, "config": cfg.to_wire(),
                     "limits": {"max_frames_per_second": s.max_frames_per_second, "frame_burst": s.frame_burst,
                                "max_message_bytes": s.max_message_bytes,
                                "max_frame_ms": max_frame_ms(cfg.audio, s.max_message_bytes),
                                "max_audio_rate": self.rate.rate,
                                "audio_burst_s": self.rate.burst_s}})
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
                if event is not None and self.session is not None and self.session.outbox.kept == \
                        self.session.outbox.soft // 2:
                    self.session.drained()         # half the backlog is out: paused producers resume
                if event is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                payload = encode_or_explain(encode, event, self._log_extra)
                self.send_started = time.monotonic()
                if isinstance(payload, bytes):
                    await send({"type": "websocket.send", "bytes": payload})
                else:
                    await send({"type": "websocket.send", "text": payload})
                self.send_started = None
                self.sent += 1
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

    async def _close(self, code: int, reason: str, timeout: float = 2.0) -> None:
        """Send the close frame. It queues behind the data already written, and the ASGI server drops the
        connection a fixed time after it (uvicorn: 10 s) whether or not the client has read that far; so
        first wait, while the client keeps reading, until the kernel has delivered what was written
        (at most ``timeout`` seconds without progress)."""
        await wait_unsent_drained(self.ws, timeout)
        try:
            await asyncio.wait_for(self.ws.close(code, reason), timeout=timeout)
        except Exception:
            pass


def _finite(value):
    """``value`` with NaN and infinities (which JSON cannot carry) replaced by None, recursively."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode_or_explain(encode, event: dict, log_extra: dict) -> bytes | str:
    """Encode an event for the wire. One that cannot be encoded as it is (a NaN under the JSON
    subprotocol, say) goes with non-finite numbers as null; if it still cannot, the client gets a typed
    ``stage_failed`` error in its place, with the same ``eid``: never a silently dead writer."""
    try:
        return encode(event)
    except (ValueError, TypeError, OverflowError) as first:
        log.error("event could not be encoded", extra={**log_extra, "type": event.get("type"), "error": repr(first)})
        try:
            return encode(_finite(event))
        except (ValueError, TypeError, OverflowError) as exc:
            err = ProtocolError(ErrorCode.STAGE_FAILED, f"a {str(event.get('type'))[:40]!r} event could not be "
                                                        f"encoded ({type(exc).__name__}) and was replaced by this error")
            return encode({**err.to_event(), "eid": event.get("eid")})


def unsent_bytes(ws: WebSocket) -> int | None:
    """Bytes written to this connection that its peer has not yet acknowledged (Linux ``SIOCOUTQ``), or
    None where that cannot be known (not uvicorn, not Linux, not a TCP socket)."""
    import fcntl
    import struct
    import termios

    proto = getattr(getattr(ws, "_receive", None), "__self__", None)       # uvicorn's protocol object
    transport = getattr(proto, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or not hasattr(termios, "TIOCOUTQ"):
        return None
    try:
        buffered = transport.get_write_buffer_size()
        return buffered + struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return None


async def wait_unsent_drained(ws: WebSocket, stall_s: float) -> None:
    """Wait until the peer has received everything written, as long as it keeps taking data (gives up
    after ``stall_s`` without progress)."""
    last, since = unsent_bytes(ws), time.monotonic()
    while last:
        await asyncio.sleep(0.02)
        now_unsent = unsent_bytes(ws)
        if not now_unsent:
            return
        if now_unsent < last:
            last, since = now_unsent, time.monotonic()
        elif time.monotonic() - since > stall_s:
            return


def max_frame_ms(audio, max_message_bytes: int) -> int:
    """The longest audio frame (ms, at most the protocol's 1 s) whose message fits ``max_message_bytes``
    for this stream's format, with room for the msgpack envelope."""
    per_ms = audio.bytes_per_frame * audio.sample_rate / 1000.0
    return int(min(1000.0, (max_message_bytes - 64) / per_ms))


def short_id(session_id: str) -> str:
    """The part of a session id that logs and errors show (a full id is a resume handle)."""
    return session_id[:8]


async def stream_endpoint(ws: WebSocket) -> None:
    server: VoxServer = ws.app.state.vox
    handler = StreamHandler(server, ws)
    await handler.run()


def http_error(err: ProtocolError, status: int) -> JSONResponse:
    headers = {"www-authenticate": 'Bearer realm="voxserve"'} if status == 401 else None
    return JSONResponse({"error": err.to_event()}, status_code=status, headers=headers)


def create_app(settings: Settings | None = None, stages: dict[str, Stage] | None = None, table=None) -> Starlette:
    settings = settings or Settings.from_env()
    vox = VoxServer(settings, stages, table)

    def principal_of(request: Request) -> Principal:
        """The request's principal (raises a typed ``unauthorized``)."""
        return vox.auth.authenticate(find_credential(request.headers, (), request.query_params))

    def guarded(endpoint):
        """``--protect-metrics``: the endpoint needs a credential like a stream does."""
        async def wrapper(request: Request) -> Response:
            if settings.protect_metrics:
                try:
                    principal_of(request)
                except ProtocolError as err:
                    return http_error(err, 401)
            return await endpoint(request)
        return wrapper

    @guarded
    async def info(request: Request) -> Response:
        return JSONResponse(vox.info())

    memory_baseline: list = []

    @guarded
    async def debug_memory(request: Request) -> Response:
        """``--tracemalloc`` only: the 15 allocation sites that grew most since the first call (KiB)."""
        import tracemalloc

        if not tracemalloc.is_tracing():
            return JSONResponse({"error": "start the server with --tracemalloc"}, status_code=404)
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        if not memory_baseline:
            memory_baseline.append(snap)
        stats = snap.compare_to(memory_baseline[0], "lineno")[:15]
        current, peak = tracemalloc.get_traced_memory()
        return JSONResponse({"traced_kib": round(current / 1024, 1), "peak_kib": round(peak / 1024, 1),
                             "top_growth": [{"where": str(st.traceback[0]), "kib": round(st.size_diff / 1024, 1),
                                             "count": st.count_diff} for st in stats]})

    async def tokens(request: Request) -> Response:
        """``POST /v1/tokens`` (API key required): a short-lived JWT for a browser page.
        Body (JSON, optional): ``ttl_s`` (<= --token-max-ttl-s), ``pipelines`` (a subset)."""
        from .auth import unauthorized

        cred = find_credential(request.headers, (), {})
        if vox.auth.required:
            owner = vox.auth.api_key_principal(cred.token) if cred else None
            if owner is None:
                return http_error(unauthorized("POST /v1/tokens needs an API key as 'Authorization: Bearer KEY'"),
                                  401)
        else:
            owner = ANONYMOUS
        try:
            body = await request.json() if (await request.body()).strip() else {}
        except (ValueError, RecursionError):
            body = None
        bad = None
        if not isinstance(body, dict) or set(body) - {"ttl_s", "pipelines"}:
            bad = "body must be a JSON object with optional ttl_s and pipelines"
        else:
            ttl = body.get("ttl_s", settings.token_ttl_s)
            pipes = body.get("pipelines")
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= settings.token_max_ttl_s:
                bad = f"ttl_s must be a number of seconds in [1, {settings.token_max_ttl_s:g}]"
            elif pipes is not None and (not isinstance(pipes, list) or not all(
                    isinstance(p, str) and p in vox.schemas for p in pipes)):
                bad = f"pipelines must be a list of loaded pipelines ({sorted(vox.schemas)})"
        if bad:
            return http_error(ProtocolError(ErrorCode.BAD_VALUE, bad), 400)
        token = vox.auth.mint(owner, float(ttl), pipes)
        log.info("token minted", extra={"principal": owner.name, "ttl_s": ttl, "pipelines": pipes})
        return JSONResponse({"token": token, "token_type": "Bearer", "expires_in": int(ttl),
                             "subprotocol": "voxserve.auth." + token},
                            headers={"cache-control": "no-store"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "uptime_s": round(time.time() - vox.started_at, 1)})

    async def readyz(request: Request) -> Response:
        if vox.ready:
            return JSONResponse({"status": "ready", "pipelines": list(vox.schemas)})
        return JSONResponse({"status": "draining" if vox.draining else "loading"}, status_code=503)

    @guarded
    async def metrics(request: Request) -> Response:
        text = vox.metrics.render()
        text = text.decode() if isinstance(text, bytes) else text
        if vox.table is not None:                   # every worker's figures and the totals, whoever answers
            rows = vox.table.rows()
            lines = ["# HELP voxserve_worker_sessions streams holding a session, per worker process",
                     "# TYPE voxserve_worker_sessions gauge"]
            lines += [f'voxserve_worker_sessions{{worker="{r["worker"]}"}} {r["sessions"]}' for r in rows]
            lines += ["# HELP voxserve_worker_busy_cores engine-busy cores, per worker process",
                      "# TYPE voxserve_worker_busy_cores gauge"]
            lines += [f'voxserve_worker_busy_cores{{worker="{r["worker"]}"}} {r["busy_cores"]}' for r in rows]
            lines += ["# HELP voxserve_server_sessions streams holding a session, all workers",
                      "# TYPE voxserve_server_sessions gauge", f"voxserve_server_sessions {vox.session_count()}",
                      "# HELP voxserve_answering_worker the worker process that served this scrape",
                      "# TYPE voxserve_answering_worker gauge", f"voxserve_answering_worker {vox.worker}"]
            text += "\n".join(lines) + "\n"
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    routes = [
        WebSocketRoute("/v1/stream", stream_endpoint),
        Route("/v1/info", info),
        Route("/v1/tokens", tokens, methods=["POST"]),
        Route("/v1/debug/memory", debug_memory),
        *openai_routes(vox),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    if STATIC_DIR.is_dir():
        routes.append(Mount("/", StaticFiles(directory=str(STATIC_DIR), html=True), name="static"))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if settings.tracemalloc:
            import tracemalloc

            tracemalloc.start(1)
        await vox.startup()
        try:
            yield
        finally:
            await vox.shutdown()

    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    from .auth import LOCAL_ORIGIN

    allowed = vox.origins.allowed
    cors = dict(allow_origins=["*"]) if "*" in allowed else (
        dict(allow_origins=list(allowed)) if allowed else dict(allow_origin_regex=LOCAL_ORIGIN.pattern))
    middleware = [Middleware(CORSMiddleware, allow_methods=["GET", "POST"],
                             allow_headers=["authorization", "content-type"], max_age=600, **cors)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.vox = vox
    return app
