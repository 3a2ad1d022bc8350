"""Asyncio client for voxserve protocol v1 (on the ``websockets`` library).

Example::

    async with VoxClient.connect("ws://127.0.0.1:8000/v1/stream") as client:
        ready = await client.start(sample_rate=16000, pipelines=["vad"])
        await client.send_audio(pcm_bytes)
        await client.stop()
        async for event in client.events():
            print(event)
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voxserve.server.protocol import ClientConnection, Codec, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK

from .audiofile import PcmSource


class VoxError(Exception):
    """A fatal error reported by the server, or a refused stream (``code`` is the protocol's error code,
    e.g. ``unauthorized``; ``close_code`` the WebSocket close code or, for a refused handshake, the HTTP
    status)."""

    def __init__(self, event: dict | None, close_code: int | None = None):
        self.event = event or {}
        self.close_code = close_code
        super().__init__(f"{self.event.get('code', 'closed')}: {self.event.get('message', '')} (close {close_code})")

    @property
    def code(self) -> str | None:
        return self.event.get("code")


def _refusal(exc: InvalidStatus) -> VoxError:
    """A handshake the server refused with an HTTP status (401, 403, 429, 503) as a typed error."""
    import json

    status = exc.response.status_code
    try:
        event = json.loads(exc.response.body or b"{}")
        if "error" in event and isinstance(event["error"], dict):
            event = event["error"]
    except ValueError:
        event = {}
    if not isinstance(event, dict) or "code" not in event:
        event = {"code": {401: "unauthorized", 403: "forbidden", 429: "too_many_connections"}.get(status, "refused"),
                 "message": f"HTTP {status} at the handshake"}
    return VoxError({"type": "error", "fatal": True, **event}, status)


class VoxClient:
    def __init__(self, ws: Any, codec: Codec):
        self.ws = ws
        self.conn = ClientConnection(codec)
        self.session_id: str | None = None
        self.resume_token: str = ""
        self.config: dict | None = None

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, *, subprotocol: str = "msgpack", open_timeout: float = 10.0,
                      max_size: int | None = 16 * 1024 * 1024, token: str | None = None,
                      token_via: str = "header", ssl: Any = None) -> AsyncIterator["VoxClient"]:
        """Open a stream connection. ``token`` (API key or JWT) travels as ``Authorization: Bearer``
        (``token_via="header"``, default), as the ``voxserve.auth.<token>`` subprotocol (what browsers do)
        or as ``?token=`` (``"query"``). A refused handshake raises :class:`VoxError`."""
        name = SUBPROTOCOL_JSON if subprotocol == "json" else SUBPROTOCOL_MSGPACK
        protocols = [name]
        headers = None
        if token:
            if token_via == "header":
                headers = {"Authorization": f"Bearer {token}"}
            elif token_via == "subprotocol":
                protocols.append("voxserve.auth." + token)
            elif token_via == "query":
                from urllib.parse import quote

                url += ("&" if "?" in url else "?") + "token=" + quote(token, safe="")
            else:
                raise ValueError("token_via must be header, subprotocol or query")
        extra = {"ssl": ssl} if ssl is not None else {}
        try:
            ws_cm = websockets.connect(url, subprotocols=protocols, compression=None, open_timeout=open_timeout,
                                       max_size=max_size, additional_headers=headers, **extra)
            ws = await ws_cm.__aenter__()
        except InvalidStatus as exc:
            raise _refusal(exc) from None
        try:
            yield cls(ws, Codec(ws.subprotocol or SUBPROTOCOL_MSGPACK))
        except BaseException as exc:
            if not await ws_cm.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await ws_cm.__aexit__(None, None, None)

    async def start(self, **kwargs: Any) -> dict:
        """Send ``start`` and wait for ``ready`` (raises :class:`VoxError` on refusal)."""
        await self.ws.send(self.conn.start(**kwargs))
        return await self._reply("ready")

    async def resume(self, session_id: str, last_eid: int, resume_token: str = "") -> dict:
        """Reattach to a dropped session with the ``resume_token`` its ``ready`` carried; returns the
        ``resumed`` event (raises :class:`VoxError`)."""
        await self.ws.send(self.conn.control("resume", session_id=session_id, last_eid=last_eid,
                                             resume_token=resume_token or self.resume_token))
        return await self._reply("resumed")

    async def _reply(self, expected: str) -> dict:
        """Wait for the session-opening event ``expected``; an error (or a close) raises :class:`VoxError`."""
        while True:
            ev = await self.recv()
            if ev is None:
                raise VoxError(None, self.ws.close_code)
            if ev.get("type") == expected:
                self.session_id = ev["session_id"]
                self.resume_token = ev.get("resume_token", self.resume_token)
                self.config = ev["config"]
                return ev
            if ev.get("type") == "error":
                if ev.get("fatal"):
                    try:                      # the close frame follows a fatal error: report its code
                        await asyncio.wait_for(self.ws.wait_closed(), 5.0)
                    except asyncio.TimeoutError:
                        pass
                raise VoxError(ev, self.ws.close_code)

    async def ack(self, eid: int) -> None:
        await self.ws.send(self.conn.control("ack", eid=eid))

    async def send_audio(self, pcm: bytes, *, raw: bool = False) -> None:
        """Send PCM: as an ``audio`` message (sequence-numbered) or, if ``raw``, a bare binary frame."""
        await self.ws.send(pcm if raw else self.conn.audio(pcm, ts=time.time() * 1000.0))

    async def update(self, options: dict) -> None:
        await self.ws.send(self.conn.control("update", options=options))

    async def flush(self) -> None:
        await self.ws.send(self.conn.control("flush"))

    async def stop(self) -> None:
        await self.ws.send(self.conn.control("stop"))

    async def recv(self) -> dict | None:
        """Next event, or None once the connection is closed."""
        try:
            return self.conn.decode(await self.ws.recv())
        except ConnectionClosed:
            return None

    async def events(self) -> AsyncIterator[dict]:
        while True:
            ev = await self.recv()
            if ev is None:
                return
            yield ev

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    @property
    def close_reason(self) -> str | None:
        return self.ws.close_reason


class FramePacer:
    """Keeps a client that sends "as fast as allowed" under the server's message flood limit (the
    ``limits`` of ``ready``): a token bucket at 90 % of the server's rate and half its burst, so the
    server never has to refuse the stream. The audio-rate quota needs no pacing here: the server paces
    that one itself by reading more slowly."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.last: float | None = None

    @classmethod
    def for_limits(cls, limits: dict | None) -> "FramePacer":
        limits = limits or {}
        return cls(0.9 * float(limits.get("max_frames_per_second", 200.0)), 0.5 * float(limits.get("frame_burst", 400)))

    def delay(self, now: float) -> float:
        """Seconds to wait before sending the next message (takes its token)."""
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= 1.0
        if self.tokens >= 0:
            return 0.0
        wait = -self.tokens / self.rate
        self.tokens, self.last = 0.0, now + wait
        return wait


@dataclass
class StreamResult:
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    ready: dict | None = None
    resumes: int = 0
    restarts: int = 0             # new streams started elsewhere (server drained or lost the stream)

    @property
    def fatal(self) -> dict | None:
        for ev in self.events:
            if ev.get("type") == "error" and ev.get("fatal"):
                return ev
        return None

    def of_type(self, t: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == t]


async def stream_source(url: str, source: PcmSource, *, pipelines: list[str] | tuple[str, ...] = ("vad",),
                        options: dict | None = None, speed: float = 1.0, frame_ms: float = 20.0,
                        subprotocol: str = "msgpack", raw_frames: bool = False,
                        output_sample_rate: int | None = None, on_event: Callable[[dict], None] | None = None,
                        client_name: str = "voxserve-client", resume: bool = True, max_reconnects: int = 8,
                        cut_at: tuple[int, ...] = (), token: str | None = None, token_via: str = "header",
                        ssl: Any = None) -> StreamResult:
    """Stream ``source`` at ``speed`` x real time (0 = as fast as allowed), then ``stop``; collect events.

    Events are read concurrently with sending. With ``resume`` (default), a dropped connection is
    re-established with exponential backoff and the session resumed: the server says which audio
    frame it needs next and re-sends the events it retained; events already received (same ``eid``)
    are dropped, so nothing is lost or doubled. ``cut_at`` (frame indices) aborts the TCP connection
    just before sending those frames: a test aid that simulates a network drop.
    """
    import uuid

    result = StreamResult()
    frames = list(source.frames(frame_ms))
    cuts = sorted(set(cut_at))
    state = {"eid": -1, "session": None, "acked": -1, "resume_token": "", "first": 0}
    route = uuid.uuid4().hex         # ?session=ROUTE: a balancer sends every reconnect to the same replica
    t0 = time.perf_counter()
    backoff = 0.2
    attempts = 0
    while True:
        finished = moving = False
        try:
            routed = url + ("&" if "?" in url else "?") + "session=" + route
            async with VoxClient.connect(routed, subprotocol=subprotocol, token=token, token_via=token_via,
                                         ssl=ssl) as client:
                if state["session"] is None:
                    result.ready = await client.start(
                        sample_rate=source.sample_rate, encoding=source.encoding, channels=source.channels,
                        pipelines=list(pipelines), options=options or {}, output_sample_rate=output_sample_rate,
                        client=client_name)
                    state["session"] = result.ready["session_id"]
                    state["resume_token"] = result.ready.get("resume_token", "")
                    state["eid"] = result.ready.get("eid", -1)
                    if on_event:
                        on_event(result.ready)
                    if raw_frames and result.ready["config"].get("binary_frames") != "pcm":
                        raise ValueError("raw frames need binary_frames=pcm (use the json subprotocol)")
                    next_seq = state["first"]
                else:
                    try:
                        resumed = await client.resume(state["session"], state["eid"], state["resume_token"])
                    except VoxError as exc:
                        if exc.code != "unknown_session" or not resume:
                            raise
                        # The stream is gone (its server was killed): start a new one from where the old one
                        # was known to have got to. Results already received stay; nothing is doubled.
                        state.update(session=None, eid=-1, acked=-1, first=state.get("sent", 0))
                        result.restarts += 1
                        continue
                    result.resumes += 1
                    if on_event:
                        on_event(resumed)
                    next_seq = resumed["next_seq"]
                client.conn.seq = next_seq

                async def reader() -> None:
                    async for ev in client.events():
                        eid = ev.get("eid")
                        if eid is not None:
                            if eid <= state["eid"]:
                                continue                      # already have it (replayed after a resume)
                            state["eid"] = eid
                        result.events.append(ev)
                        if on_event:
                            on_event(ev)
                        if resume and state["eid"] - state["acked"] >= 32:
                            state["acked"] = state["eid"]
                            try:
                                await client.ack(state["eid"])
                            except ConnectionClosed:
                                return

                rtask = asyncio.create_task(reader())
                pacer = FramePacer.for_limits((result.ready or {}).get("limits")) if speed <= 0 else None
                try:
                    for i in range(next_seq, len(frames)):
                        if rtask.done():
                            break
                        if cuts and i >= cuts[0]:
                            cuts.pop(0)
                            client.ws.transport.abort()            # simulated network drop
                            break
                        if pacer is not None:
                            delay = pacer.delay(time.perf_counter())
                            if delay > 0:
                                await asyncio.sleep(delay)
                        await client.send_audio(frames[i], raw=raw_frames)
                        state["sent"] = i
                        if speed > 0:
                            sent_s = (i + 1) * frame_ms / 1000.0
                            delay = t0 + sent_s / speed - time.perf_counter()
                            if delay > 0:
                                await asyncio.sleep(delay)
                    else:
                        if not rtask.done():
                            await client.stop()
                except ConnectionClosed:
                    pass
                await rtask
                result.close_code = client.close_code
                result.close_reason = client.close_reason
                finished = result.close_code is not None and (result.close_code == 1000 or result.fatal is not None)
                moved = result.events[-1] if result.events and result.events[-1].get("code") == "shutting_down" else None
                if moved is not None and resume and moved.get("next_seq", len(frames)) < len(frames):
                    # The server is draining: its finals came first; go on with a new stream elsewhere from the
                    # first frame it did not process.
                    state.update(session=None, eid=-1, acked=-1, first=moved["next_seq"])
                    route = uuid.uuid4().hex
                    result.restarts += 1
                    result.events.pop()
                    finished = False
                    attempts = 0
                    moving = True
        except (ConnectionClosed, OSError) as exc:
            if state["session"] is None:
                raise
            result.close_code, result.close_reason = 1006, str(exc)
        if not moving and (finished or not resume or state["session"] is None or attempts >= max_reconnects):
            return result
        attempts += 1
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
