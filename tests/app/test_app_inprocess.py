"""The ASGI app in-process (Starlette TestClient): no network, real app, real session code."""

import msgpack
import numpy as np
import pytest
from starlette.testclient import TestClient

from voxserve.server.app import create_app
from voxserve.server.settings import Settings


@pytest.fixture
def client():
    with TestClient(create_app(Settings(pipelines="vad"))) as c:
        yield c


def test_ready_and_info(client):
    assert client.get("/readyz").json()["status"] == "ready"
    info = client.get("/v1/info").json()
    assert info["subprotocols"] == ["voxserve.v1.msgpack", "voxserve.v1.json"]
    assert info["load"]["streams"] == 0


def test_stream_speech_in_process(client, speech16k):
    pcm = (np.clip(speech16k, -1, 1) * 32767).astype("<i2").tobytes()
    with client.websocket_connect("/v1/stream", subprotocols=["voxserve.v1.msgpack"]) as ws:
        ws.send_bytes(msgpack.packb({"type": "start", "sample_rate": 16000, "pipelines": ["vad"]}))
        ready = msgpack.unpackb(ws.receive_bytes())
        assert ready["type"] == "ready" and ready["config"]["options"]["vad"]["frame_ms"] == 30
        for i in range(0, len(pcm), 6400):
            ws.send_bytes(msgpack.packb({"type": "audio", "pcm": pcm[i:i + 6400]}))
        ws.send_bytes(msgpack.packb({"type": "stop"}))
        events = []
        while True:
            ev = msgpack.unpackb(ws.receive_bytes())
            events.append(ev)
            if ev["type"] == "stopped":
                break
    vad = [e for e in events if e["type"] == "vad"]
    assert vad[0]["event"] == "speech_start" and vad[-1]["event"] == "speech_end"
    assert events[-1]["audio_ms"] == pytest.approx(len(speech16k) / 16, abs=1)


def test_update_and_flush_in_process(client):
    with client.websocket_connect("/v1/stream", subprotocols=["voxserve.v1.json"]) as ws:
        ws.send_text('{"type":"start"}')
        assert ws.receive_json()["type"] == "ready"
        ws.send_text('{"type":"update","options":{"vad":{"aggressiveness":3}}}')
        ev = ws.receive_json()
        assert ev["type"] == "updated" and ev["options"] == {"vad": {"aggressiveness": 3}} and ev["eid"] >= 1
        ws.send_text('{"type":"flush"}')
        assert ws.receive_json()["type"] == "flushed"
        ws.send_text('{"type":"update","options":{"vad":{"aggressiveness":7}}}')
        err = ws.receive_json()
        assert err["code"] == "bad_value" and err["fatal"] is False
