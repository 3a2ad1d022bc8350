"""TLS (wss, mutual TLS), exposure refusal and the quotas, each against a real server on loopback.

Every quota refusal is typed (error code and close code or HTTP status); the audio-rate quota paces
input instead of refusing it, and loses nothing.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time

import pytest
import websockets

from voxserve.clients.client import VoxClient, VoxError, stream_source

from ..conftest import free_port, start_server, voxserve_exe
from .helpers import self_signed_cert, vad_events, voiced_source

pytestmark = pytest.mark.slow


def test_non_loopback_without_credential_refuses_to_start(tmp_path):
    out = subprocess.run(voxserve_exe() + ["serve", "--host", "0.0.0.0", "--port", str(free_port()),
                                           "--pipelines", "vad"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "refusing to listen on 0.0.0.0 without a credential" in out.stderr


def test_non_loopback_with_insecure_flag_or_key_starts(tmp_path):
    for extra in (["--insecure-no-auth"], ["--api-key", "a-key-for-this-test-only"]):
        srv = start_server(tmp_path, "--host", "0.0.0.0", "--pipelines", "vad", *extra)
        try:
            assert srv.get_json("/readyz")["status"] == "ready"
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key, (ca_pem, _) = self_signed_cert(folder, "ca")
    _, _, (srv_pem, srv_key) = self_signed_cert(folder, "server", ca=(ca_cert, ca_key))
    _, _, (dev_pem, dev_key) = self_signed_cert(folder, "device", ca=(ca_cert, ca_key))
    return {"ca": ca_pem, "server": (srv_pem, srv_key), "device": (dev_pem, dev_key)}


def client_context(pki, with_cert=False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_cert:
        ctx.load_cert_chain(str(pki["device"][0]), str(pki["device"][1]))
    return ctx


def test_wss_streams_with_a_configured_certificate(tmp_path, pki):
    cert, key = pki["server"]
    srv = start_server(tmp_path, "--pipelines", "vad", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                       "--api-key", "tls-key-0123456789", ssl_context=client_context(pki))
    try:
        assert srv.url.startswith("wss://")
        source = voiced_source(4.0, seed=5)
        result = asyncio.run(stream_source(srv.url, source, speed=0, token="tls-key-0123456789",
                                           ssl=client_context(pki)))
        assert result.close_code == 1000 and len(vad_events(result)) >= 2
        # A client that does not trust the certificate cannot connect.
        with pytest.raises(ssl.SSLCertVerificationError):
            asyncio.run(stream_source(srv.url, source, speed=0, token="tls-key-0123456789"))
        # The page is served over https (getUserMedia needs a secure context).
        status, body, _ = srv.request("/")
        assert status == 200 and b"<html" in body.lower()
    finally:
        srv.stop()


def test_mutual_tls_requires_a_client_certificate(tmp_path, pki):
    cert, key = pki["server"]
    srv = start_server(tmp_path, "--pipelines", "vad", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                       "--ssl-ca-certs", str(pki["ca"]), ssl_context=client_context(pki, with_cert=True))
    try:
        ok = asyncio.run(stream_source(srv.url, voiced_source(2.0), speed=0, ssl=client_context(pki, True)))
        assert ok.close_code == 1000
        with pytest.raises((ssl.SSLError, OSError, websockets.InvalidHandshake)):
            asyncio.run(stream_source(srv.url, voiced_source(2.0), speed=0, ssl=client_context(pki, False)))
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("quota"), "--pipelines", "vad", "--log-format", "text",
                       "--max-connections-per-ip", "6", "--start-timeout-s", "1", "--max-detached", "1",
                       "--max-audio-rate", "2", "--audio-burst-s", "1", "--max-message-bytes", "65536",
                       "--max-sessions", "4")
    yield srv
    assert srv.proc.poll() is None
    srv.stop()


async def raw(url):
    return await websockets.connect(url, subprotocols=["voxserve.v1.json"], compression=None)


def test_socket_that_never_starts_is_closed_and_holds_no_slot(quota_server):
    async def go():
        idle = [await raw(quota_server.url) for _ in range(3)]
        # max_sessions is 4: three silent sockets do not take session slots.
        async with VoxClient.connect(quota_server.url) as c:
            await c.start(pipelines=["vad"])
        msgs = []
        for ws in idle:
            msgs.append(await asyncio.wait_for(ws.recv(), 5))
            await asyncio.wait_for(ws.wait_closed(), 5)
        return msgs, [ws.close_code for ws in idle]
    msgs, codes = asyncio.run(go())
    assert all('"start_timeout"' in m for m in msgs) and codes == [1008] * 3


def test_connections_per_address_capped_with_typed_refusal(quota_server):
    async def go():
        held = [await raw(quota_server.url) for _ in range(6)]
        try:
            with pytest.raises(VoxError) as info:
                async with VoxClient.connect(quota_server.url):
                    pass
            return info.value
        finally:
            for ws in held:
                await ws.close()
    err = asyncio.run(go())
    assert err.code == "too_many_connections" and err.close_code == 429


def test_handshake_rate_limited(tmp_path):
    srv = start_server(tmp_path, "--pipelines", "vad", "--handshakes-per-ip-per-s", "1", "--handshake-burst", "3")
    try:
        async def go():
            codes = []
            for _ in range(5):
                try:
                    ws = await raw(srv.url)
                    await ws.close()
                    codes.append("open")
                except websockets.InvalidStatus as exc:
                    codes.append(exc.response.status_code)
            return codes
        codes = asyncio.run(go())
        assert codes[:3] == ["open"] * 3 and 429 in codes[3:]
    finally:
        srv.stop()


def test_audio_faster_than_the_quota_is_paced_not_lost(quota_server):
    """4 s of audio sent as fast as possible at 2x real time with 1 s of burst: it takes at least
    (4 - 1) / 2 = 1.5 s, and every sample arrives (stopped at 4000 ms)."""
    source = voiced_source(4.0, seed=9)
    t0 = time.perf_counter()
    result = asyncio.run(stream_source(quota_server.url, source, speed=0, frame_ms=100))
    took = time.perf_counter() - t0
    assert result.close_code == 1000
    assert result.of_type("stopped")[0]["audio_ms"] == pytest.approx(4000, abs=1)
    assert took >= 1.45, took
    metrics = quota_server.get_text("/metrics")
    paced = [ln for ln in metrics.splitlines() if ln.startswith("voxserve_audio_paced_seconds_total")]
    assert paced and float(paced[0].split()[-1]) > 1.0


def test_detached_streams_capped(quota_server):
    async def drop():
        async with VoxClient.connect(quota_server.url) as c:
            ready = await c.start(pipelines=["vad"])
            c.ws.transport.abort()
        await asyncio.sleep(0.3)
        return ready

    async def resume(ready):
        async with VoxClient.connect(quota_server.url) as c:
            try:
                return (await c.resume(ready["session_id"], -1, ready["resume_token"]))["type"]
            except VoxError as err:
                return err.code
    first, second = asyncio.run(drop()), asyncio.run(drop())
    assert asyncio.run(resume(first)) == "unknown_session"       # max_detached 1: the older one expired
    assert asyncio.run(resume(second)) == "resumed"


def test_transport_refuses_messages_over_the_limit(quota_server):
    async def go():
        ws = await raw(quota_server.url)
        await ws.send('{"type": "start", "pipelines": ["vad"]}')
        await ws.recv()
        try:
            await ws.send(b"\x00" * 70000)
            await asyncio.wait_for(ws.wait_closed(), 5)
        except websockets.ConnectionClosed:
            pass
        return ws.close_code
    assert asyncio.run(go()) == 1009


def test_an_engine_this_machine_lacks_is_a_one_line_error_not_a_traceback():
    """``--engine onnxruntime-cuda`` where ONNX Runtime has no CUDA provider (every CPU machine): exit 2 with
    the engine's own explanation, as for invalid settings."""
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider, so the engine starts (the GPU check covers it)")
    out = subprocess.run(voxserve_exe() + ["serve", "--port", str(free_port()), "--pipelines", "vad,vc",
                                           "--engine", "onnxruntime-cuda"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "voxserve: cannot start: onnxruntime-cuda" in out.stderr and "CUDAExecutionProvider" in out.stderr
    assert "Traceback" not in out.stderr
