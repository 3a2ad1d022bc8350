"""Every kind of bad input against a real server: typed error, proper close code, neighbour untouched.

A well-behaved neighbour streams real speech at real-time pace for the whole module; each test
misbehaves beside it and checks that the neighbour is still running; the last test checks that the
neighbour's events equal a solo run of the same audio.
"""

import asyncio
import time

import msgpack
import pytest
import websockets

from voxserve.server.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK

from ..conftest import start_server
from .helpers import Neighbour, stream, vad_events, voiced_source

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("bad"), "--pipelines", "vad", "--log-format", "text",
                       "--max-message-bytes", "65536", "--max-frames-per-second", "200", "--frame-burst", "300",
                       "--max-sessions", "6", "--idle-timeout-s", "1.5",
                       "--resume-grace-s", "0")      # dropped sockets here must not hold session slots
    yield srv
    assert srv.proc.poll() is None, "server died during the bad-input tests"
    srv.stop()


@pytest.fixture(scope="module")
def neighbour(server):
    source = voiced_source(24.0, seed=11)      # generated: runs without ../shared; outlives every test below
    reference = vad_events(stream(server.url, source, speed=0, frame_ms=300))   # VAD is chunking-invariant
    n = Neighbour(server.url, source, speed=1.0)
    time.sleep(0.3)
    return n, reference


async def raw(url, subprotocol=SUBPROTOCOL_MSGPACK):
    return await websockets.connect(url, subprotocols=[subprotocol], compression=None, max_size=None)


async def events_until_close(ws, timeout=10.0):
    out = []
    try:
        async with asyncio.timeout(timeout):
            async for msg in ws:
                out.append(msgpack.unpackb(msg) if isinstance(msg, bytes) else __import__("json").loads(msg))
    except websockets.ConnectionClosed:
        pass
    return out


def start_msg(**kw):
    return msgpack.packb({"type": "start", "sample_rate": 16000, "pipelines": ["vad"], **kw})


def run(coro):
    return asyncio.run(coro)


def check_neighbour(neighbour, server):
    n, _ = neighbour
    assert n.running, "neighbour stream ended early"
    assert server.get_json("/healthz")["status"] == "alive"


def test_malformed_msgpack_is_typed_and_recoverable(server, neighbour):
    async def go():
        ws = await raw(server.url)
        await ws.send(b"\xc1\xc1\xc1")
        err = msgpack.unpackb(await ws.recv())
        await ws.send(start_msg())
        ready = msgpack.unpackb(await ws.recv())
        await ws.send(msgpack.packb({"type": "stop"}))
        rest = await events_until_close(ws)
        return err, ready, rest, ws.close_code
    err, ready, rest, code = run(go())
    assert err["type"] == "error" and err["code"] == "bad_message" and err["fatal"] is False
    assert ready["type"] == "ready"
    assert rest[-1]["type"] == "stopped" and code == 1000
    check_neighbour(neighbour, server)


@pytest.mark.parametrize("start,code", [({"sample_rate": 4000}, "unsupported_sample_rate"),
                                        ({"sample_rate": 192000}, "unsupported_sample_rate"),
                                        ({"encoding": "alaw"}, "unsupported_encoding"),
                                        ({"colour": "red"}, "unknown_field"),
                                        ({"options": {"vad": {"loudness": 1}}}, "unknown_field"),
                                        ({"pipelines": ["vad", "mindreading"]}, "unknown_pipeline")])
def test_bad_start_gets_typed_error_and_may_retry(server, neighbour, start, code):
    async def go():
        ws = await raw(server.url)
        await ws.send(start_msg(**start))
        err = msgpack.unpackb(await ws.recv())
        await ws.send(start_msg())
        ready = msgpack.unpackb(await ws.recv())
        await ws.close()
        return err, ready
    err, ready = run(go())
    assert err["code"] == code and err["fatal"] is False and err["message"]
    assert ready["type"] == "ready"
    check_neighbour(neighbour, server)


def test_audio_before_start(server, neighbour):
    async def go():
        ws = await raw(server.url, SUBPROTOCOL_JSON)
        await ws.send(b"\x00\x00" * 160)
        err = __import__("json").loads(await ws.recv())
        await ws.close()
        return err
    err = run(go())
    assert err["code"] == "not_started" and err["fatal"] is False
    check_neighbour(neighbour, server)


def test_oversized_message_closes_1009(server, neighbour):
    """The transport itself (uvicorn's ws_max_size = --max-message-bytes) refuses the message before it
    is buffered whole: close 1009 with the limit in the reason; the stream's earlier events arrived."""
    async def go():
        ws = await raw(server.url)
        await ws.send(start_msg())
        ready = msgpack.unpackb(await ws.recv())
        try:
            await ws.send(msgpack.packb({"type": "audio", "pcm": b"\x00" * 70000}))
        except websockets.ConnectionClosed:
            pass
        evs = await events_until_close(ws)
        return ready, evs, ws.close_code, ws.close_reason
    ready, evs, code, reason = run(go())
    assert ready["type"] == "ready" and code == 1009 and "65536" in reason
    assert all(e.get("code") == "message_too_large" for e in evs if e.get("type") == "error")
    check_neighbour(neighbour, server)


def test_odd_length_pcm_closes_1007(server, neighbour):
    async def go():
        ws = await raw(server.url)
        await ws.send(start_msg())
        await ws.recv()
        await ws.send(msgpack.packb({"type": "audio", "pcm": b"\x00\x01\x02"}))
        evs = await events_until_close(ws)
        return evs, ws.close_code
    evs, code = run(go())
    assert evs[-1]["code"] == "bad_audio" and code == 1007
    check_neighbour(neighbour, server)


def test_flood_closes_1008_after_delivering_earned_finals(server, neighbour):
    src = voiced_source(8.0, seed=4)
    frames = list(src.frames(20))

    async def go():
        ws = await raw(server.url)
        await ws.send(start_msg(sample_rate=src.sample_rate, channels=src.channels))
        await ws.recv()
        for f in frames[:100]:                       # 2 s of speech, paced: earns a speech_start
            await ws.send(msgpack.packb({"type": "audio", "pcm": f}))
            await asyncio.sleep(0.02)
        for f in frames[100:] * 3:                   # then a flood far above 200 messages/s
            try:
                await ws.send(msgpack.packb({"type": "audio", "pcm": f}))
            except websockets.ConnectionClosed:
                break
        evs = await events_until_close(ws)
        return evs, ws.close_code
    evs, code = run(go())
    kinds = [(e["type"], e.get("event") or e.get("code")) for e in evs]
    assert ("vad", "speech_start") in kinds
    assert kinds.index(("vad", "speech_end")) < kinds.index(("error", "rate_limited")), kinds
    assert code == 1008
    check_neighbour(neighbour, server)


def test_abrupt_disconnect_leaves_server_running(server, neighbour):
    src = voiced_source(3.0, seed=6)
    before = server.get_json("/v1/info")["load"]["streams"]

    async def go():
        ws = await raw(server.url)
        await ws.send(start_msg(sample_rate=src.sample_rate, channels=src.channels))
        await ws.recv()
        for f in list(src.frames(20))[:50]:
            await ws.send(msgpack.packb({"type": "audio", "pcm": f}))
        ws.transport.abort()                          # TCP reset, no close frame
    run(go())
    time.sleep(0.3)
    assert server.get_json("/v1/info")["load"]["streams"] == before        # the reset stream is gone
    check_neighbour(neighbour, server)
    assert "stream disconnected" in server.log()


def test_idle_stream_times_out_with_typed_error(server, neighbour):
    async def go():
        ws = await raw(server.url)
        await ws.send(start_msg())
        await ws.recv()
        t0 = time.monotonic()
        evs = await events_until_close(ws)
        return evs, ws.close_code, time.monotonic() - t0
    evs, code, waited = run(go())
    assert evs[-1]["code"] == "idle_timeout" and code == 1008 and 1.0 < waited < 5.0
    check_neighbour(neighbour, server)


def test_max_sessions_refused_with_1013(server, neighbour):
    async def go():
        held = []
        for _ in range(5):                            # neighbour + 5 = the limit of 6
            ws = await raw(server.url)
            await ws.send(start_msg())
            await ws.recv()
            held.append(ws)
        extra = await raw(server.url)               # a socket alone holds no slot: the refusal comes at start
        await extra.send(start_msg())
        evs = await events_until_close(extra, timeout=5)
        for ws in held:
            await ws.close()
        return evs, extra.close_code
    evs, code = run(go())
    assert evs[0]["code"] == "server_busy" and evs[0]["fatal"] is True and code == 1013
    check_neighbour(neighbour, server)


def test_neighbour_events_unchanged(server, neighbour):
    n, reference = neighbour
    result = n.join()
    assert result.close_code == 1000
    assert vad_events(result) == reference
    assert not [e for e in result.events if e["type"] == "error"]
