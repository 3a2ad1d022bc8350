"""Locust load test: each user streams real speech at real-time pace over voxserve protocol v1.

    locust -f bench/locustfile.py --headless -u 100 -r 20 -t 60s --host ws://127.0.0.1:8000

Each user connects, starts a VAD stream (``VOXSERVE_LOCUST_PIPELINES``, default ``vad``), sends the
speech in 20 ms msgpack ``audio`` messages on a real-time schedule, then ``stop``s and waits for
``stopped``. A credential comes from ``VOXSERVE_TOKEN`` (API key or JWT, sent as
``Authorization: Bearer``). Reported to locust's statistics (request type ``WS``):
- ``vad``/``wakeword``/``transcript`` events: response time = event arrival minus the send time of
  the frame whose arrival produced it (from the event's ``stream_sample``);
- ``session``: the whole stream, start to normal close; a failure if the server sent a fatal error
  or closed with anything but 1000.
The client is synchronous (``websockets.sync``) so it runs under locust's gevent.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
from locust import User, between, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import speech_16k  # noqa: E402

FRAME_MS = 20
FRAME = 16 * FRAME_MS
TOKEN = os.environ.get("VOXSERVE_TOKEN")
PIPELINES = [p for p in os.environ.get("VOXSERVE_LOCUST_PIPELINES", "vad").split(",") if p]
_PCM: bytes | None = None


def pcm() -> bytes:
    global _PCM
    if _PCM is None:
        _PCM = (np.clip(speech_16k(), -1, 1) * 32767).astype("<i2").tobytes()
    return _PCM


class VoxStreamUser(User):
    wait_time = between(0.5, 1.5)

    def _fire(self, name: str, ms: float, length: int = 0, exc: Exception | None = None) -> None:
        events.request.fire(request_type="WS", name=name, response_time=ms, response_length=length,
                            exception=exc, context={})

    @task
    def stream_speech(self) -> None:
        from websockets.sync.client import connect

        host = self.host or "ws://127.0.0.1:8000"
        url = host.rstrip("/") + ("" if host.rstrip("/").endswith("/v1/stream") else "/v1/stream")
        data = pcm()
        frame_bytes = FRAME * 2
        n = len(data) // frame_bytes
        sent_at = [0.0] * (n + 1)
        t_session = time.perf_counter()
        failure: list[Exception] = []
        headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else None
        with connect(url, subprotocols=["voxserve.v1.msgpack"], compression=None, open_timeout=10,
                     additional_headers=headers) as ws:
            ws.send(msgpack.packb({"type": "start", "sample_rate": 16000, "pipelines": PIPELINES,
                                   "client": "locust"}))
            ready = msgpack.unpackb(ws.recv(timeout=10))
            if ready.get("type") != "ready":
                self._fire("session", (time.perf_counter() - t_session) * 1000, 0,
                           RuntimeError(f"refused: {ready.get('code')}"))
                return

            def reader() -> None:
                try:
                    for raw in ws:
                        ev = msgpack.unpackb(raw)
                        typ = ev.get("type")
                        if typ == "error" and ev.get("fatal"):
                            failure.append(RuntimeError(f"{ev['code']}: {ev['message']}"))
                        elif "stream_sample" in ev:
                            idx = min(max(0, (ev["stream_sample"] - 1) // FRAME), n)
                            if sent_at[idx]:
                                self._fire(typ, (time.perf_counter() - sent_at[idx]) * 1000, len(raw))
                except Exception as exc:  # connection closed abnormally
                    failure.append(exc)

            rt = threading.Thread(target=reader, daemon=True)
            rt.start()
            t0 = time.perf_counter()
            for i in range(n):
                delay = t0 + i * FRAME_MS / 1000 - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent_at[i] = time.perf_counter()
                ws.send(msgpack.packb({"type": "audio", "seq": i, "pcm": data[i * frame_bytes:(i + 1) * frame_bytes]}))
            ws.send(msgpack.packb({"type": "stop"}))
            rt.join(30)
            code = ws.close_code
        if code != 1000 and not failure:
            failure.append(RuntimeError(f"closed with {code}"))
        self._fire("session", (time.perf_counter() - t_session) * 1000, 0, failure[0] if failure else None)
