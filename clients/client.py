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
from websockets.exceptions import ConnectionClosed

from voxserve.server.protocol import ClientConnection, Codec, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK

from .audiofile import PcmSource


class VoxError(Exception):
    """A fatal error reported by the server, or a refused stream."""

    def __init__(self, event: dict | None, close_code: int | None = None):
        self.event = event or {}
        self.close_code = close_code
        super().__init__(f"{self.event.get('code', 'closed')}: {self.event.get('message', '')} (close {close_code})")


class VoxClient:
    def __init__(self, ws: Any, codec: Codec):
        self.ws = ws
        self.conn = ClientConnection(codec)
        self.session_id: str | None = None
        self.config: dict | None = None

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, *, subprotocol: str = "msgpack", open_timeout: float = 10.0,
                      max_size: int | None = 16 * 1024 * 1024) -> AsyncIterator["VoxClient"]:
        name = SUBPROTOCOL_JSON if subprotocol == "json" else SUBPROTOCOL_MSGPACK
        async with websockets.connect(url, subprotocols=[name], compression=None, open_timeout=open_timeout,
                                      max_size=max_size) as ws:
            yield cls(ws, Codec(ws.subprotocol or SUBPROTOCOL_MSGPACK))

    async def start(self, **kwargs: Any) -> dict:
        """Send ``start`` and wait for ``ready`` (raises :class:`VoxError` on refusal)."""
        await self.ws.send(self.conn.start(**kwargs))
        while True:
            ev = await self.recv()
            if ev is None:
                raise VoxError(None, self.ws.close_code)
            if ev.get("type") == "ready":
                self.session_id = ev["session_id"]
                self.config = ev["config"]
                return ev
            if ev.get("type") == "error":
                if ev.get("fatal"):
                    try:                      # the close frame follows a fatal error: report its code
                        await asyncio.wait_for(self.ws.wait_closed(), 5.0)
                    except asyncio.TimeoutError:
                        pass
                raise VoxError(ev, self.ws.close_code)

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


@dataclass
class StreamResult:
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    ready: dict | None = None

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
                        client_name: str = "voxserve-client") -> StreamResult:
    """Stream ``source`` at ``speed`` x real time (0 = as fast as allowed), then ``stop``; collect events.

    Events are read concurrently with sending, so results arrive while audio is still going out.
    """
    result = StreamResult()
    async with VoxClient.connect(url, subprotocol=subprotocol) as client:
        result.ready = await client.start(sample_rate=source.sample_rate, encoding=source.encoding,
                                          channels=source.channels, pipelines=list(pipelines), options=options or {},
                                          output_sample_rate=output_sample_rate, client=client_name)
        if on_event:
            on_event(result.ready)
        if raw_frames and result.ready["config"].get("binary_frames") != "pcm":
            raise ValueError("raw frames need binary_frames=pcm (use the json subprotocol)")

        async def reader() -> None:
            async for ev in client.events():
                result.events.append(ev)
                if on_event:
                    on_event(ev)

        rtask = asyncio.create_task(reader())
        t0 = time.perf_counter()
        sent_s = 0.0
        try:
            for chunk in source.frames(frame_ms):
                if rtask.done():
                    break
                await client.send_audio(chunk, raw=raw_frames)
                sent_s += len(chunk) / source.bytes_per_frame / source.sample_rate
                if speed > 0:
                    delay = t0 + sent_s / speed - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
            if not rtask.done():
                await client.stop()
        except ConnectionClosed:
            pass
        await rtask
        result.close_code = client.close_code
        result.close_reason = client.close_reason
    return result
