"""Real-server lifecycle: endpoints, graceful shutdown (finals, then 1012), slow consumers."""

import asyncio
import json
import signal
import socket
import time

import msgpack
import pytest
import websockets

from voxserve.clients.audiofile import load_audio

from ..conftest import start_server

pytestmark = pytest.mark.slow


def test_http_endpoints(vad_server):
    assert vad_server.get_json("/healthz")["status"] == "alive"
    assert vad_server.get_json("/readyz")["status"] == "ready"
    info = vad_server.get_json("/v1/info")
    assert info["protocol_version"] == 1 and "vad" in info["pipelines"]
    assert info["audio"]["sample_rates"] == {"min": 8000, "max": 48000}
    assert set(info["audio"]["encodings"]) == {"s16le", "f32le"}
    assert info["pipelines"]["vad"]["options"]["aggressiveness"]["max"] == 3
    metrics = vad_server.get_text("/metrics")
    for name in ("voxserve_sessions_active", "voxserve_audio_frames_total", "voxserve_errors_total",
                 "voxserve_stage_latency_seconds_bucket"):
        assert name in metrics


def test_graceful_shutdown_delivers_finals_then_1012(tmp_path, jfk_path):
    srv = start_server(tmp_path, "--pipelines", "vad", "--log-format", "json")
    src = load_audio(jfk_path)
    frames = list(src.frames(20))

    async def go():
        ws = await websockets.connect(srv.url, subprotocols=["voxserve.v1.msgpack"], compression=None)
        await ws.send(msgpack.packb({"type": "start", "sample_rate": src.sample_rate, "channels": src.channels}))
        await ws.recv()
        for f in frames[:100]:                           # 2 s into the first sentence: speech is open
            await ws.send(msgpack.packb({"type": "audio", "pcm": f}))
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        evs = []
        try:
            async for m in ws:
                evs.append(msgpack.unpackb(m))
        except websockets.ConnectionClosed:
            pass
        return evs, ws.close_code
    evs, code = asyncio.run(go())
    kinds = [(e["type"], e.get("event") or e.get("code")) for e in evs]
    assert kinds.index(("vad", "speech_end")) < kinds.index(("error", "shutting_down")), kinds
    assert code == 1012
    assert srv.proc.wait(20) in (0, -signal.SIGTERM)     # uvicorn re-raises the signal after draining
    assert "Finished server process" in srv.log()
    lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    assert any(line["msg"] == "draining streams" for line in lines)     # structured JSON logs


def test_client_that_never_reads_is_freed_with_typed_reason(tmp_path):
    """A client that floods control messages and never reads its events: once both directions are stuck
    the server ends the stream with a typed reason after idle_timeout_s (slow_consumer when its writer is
    the one stalled, idle_timeout when the stalled peer also stops sending), frees it, and stays up."""
    srv = start_server(tmp_path, "--pipelines", "vad", "--log-format", "text", "--max-frames-per-second", "1e6",
                       "--frame-burst", "1000000", "--outbox-soft", "16", "--outbox-hard", "64",
                       "--idle-timeout-s", "3")

    async def go():
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ws = await websockets.connect(srv.url, sock=sock, subprotocols=["voxserve.v1.msgpack"], compression=None,
                                      max_queue=1)
        await ws.send(msgpack.packb({"type": "start"}))
        flush = msgpack.packb({"type": "flush"})

        async def flood():
            try:
                while True:
                    for _ in range(200):
                        await ws.send(flush)
                    await asyncio.sleep(0)          # sends that never block would starve the polling below
            except websockets.ConnectionClosed:
                pass
        sender = asyncio.create_task(flood())
        deadline = time.monotonic() + 30
        streams = None
        while time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            streams = srv.get_json("/v1/info")["load"]["streams"]
            if streams == 0:
                break
        sender.cancel()
        ws.transport.abort()
        return streams, srv.get_text("/metrics")
    streams, metrics = asyncio.run(go())
    assert streams == 0
    outcomes = {ln.split('"')[1]: float(ln.split()[-1]) for ln in metrics.splitlines()
                if ln.startswith("voxserve_sessions_total{")}
    assert outcomes["opened"] == 1 and outcomes.get("slow_consumer", 0) + outcomes.get("idle_timeout", 0) == 1, outcomes
    # (Whether backpressure engaged first depends on how the peer's TCP stack wedges; it is asserted
    # deterministically by test_vc_stream.py::test_client_faster_than_real_time_loses_no_converted_audio.)
    assert srv.get_json("/healthz")["status"] == "alive"
    srv.stop()