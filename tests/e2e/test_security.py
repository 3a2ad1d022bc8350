"""Authentication, Origin checks and credentials in logs, against a real server with real sockets.

The server runs with two API keys, an HS256 JWT secret and ``--protect-metrics``; a well-behaved
neighbour stream (generated audio, no sample files needed) runs through every test and must end with
the same events as a solo run.
"""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
import websockets

from voxserve.clients.client import VoxClient, VoxError, stream_source

from ..conftest import start_server
from .helpers import Neighbour, stream, vad_events, voiced_source

pytestmark = pytest.mark.slow

KEY1, KEY2 = "k1-4f6a9c0d2b7e41a8", "k2-93b1e7c4d55a0f62"
SECRET = "jwt-secret-6c1d8e2f9a0b3c4d5e6f7a8b"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("sec"), "--pipelines", "vad,vc", "--log-format", "json",
                       "--api-key", KEY1, "--api-key", KEY2, "--jwt-secret", SECRET, "--protect-metrics")
    yield srv
    assert srv.proc.poll() is None, "server died during the security tests"
    srv.stop()


@pytest.fixture(scope="module")
def neighbour(server):
    source = voiced_source(16.0, seed=3)
    reference = vad_events(stream(server.url, source, speed=0, frame_ms=200, token=KEY1))
    assert len(reference) >= 8, "the generated neighbour audio must give VAD events"
    n = Neighbour(server.url, source, speed=1.0, token=KEY2)
    time.sleep(0.3)
    return n, reference


def token(sub="alice", *, secret=SECRET, aud="voxserve", ttl=60.0, **claims) -> str:
    now = time.time()
    body = {"sub": sub, "aud": aud, "iat": int(now), "exp": int(now + ttl), **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm="HS256")


async def open_stream(url, tok=None, via="header", pipelines=("vad",)):
    async with VoxClient.connect(url, token=tok, token_via=via) as c:
        ready = await c.start(pipelines=list(pipelines))
        return ready, c.ws.subprotocol


def refused(url, tok=None, via="header", pipelines=("vad",)) -> VoxError:
    with pytest.raises(VoxError) as info:
        asyncio.run(open_stream(url, tok, via, pipelines))
    return info.value


def mint(server, key=KEY1, **body) -> dict:
    status, raw, headers = server.request("/v1/tokens", token=key, data=json.dumps(body).encode(),
                                          headers={"Content-Type": "application/json"})
    assert status == 200, raw
    assert headers.get("cache-control") == "no-store"
    return json.loads(raw)


@pytest.mark.parametrize("make, why", [
    (lambda: None, "requires a credential"),
    (lambda: "not-a-key", "unknown API key"),
    (lambda: token(secret="some-other-secret-entirely-0123456789"), "rejected"),
    (lambda: token(ttl=-120), "expired"),
    (lambda: token(aud="someone-else"), "audience"),
    (lambda: jwt.encode({"sub": "x", "aud": "voxserve"}, SECRET, algorithm="HS256"), "exp"),
    (lambda: token(nbf=int(time.time()) + 600), "nbf"),
], ids=["none", "wrong-key", "foreign-jwt", "expired", "audience", "no-exp", "nbf"])
def test_bad_credentials_get_401_and_no_session(server, neighbour, make, why):
    opened, refusals = metric(server, "opened"), metric(server, "refused")
    err = refused(server.url, make())               # made now: a token made at collection could expire
    assert err.code == "unauthorized" and err.close_code == 401
    assert why in err.event["message"]
    assert metric(server, "opened") == opened and metric(server, "refused") == refusals + 1
    assert neighbour[0].running


def metric(server, outcome: str) -> float:
    for line in server.get_text("/metrics", token=KEY1).splitlines():
        if line.startswith(f'voxserve_sessions_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no sessions_total for {outcome}")


def test_unsigned_token_refused(server, neighbour):
    none_alg = jwt.encode({"sub": "mallory", "aud": "voxserve", "exp": time.time() + 60}, None, algorithm="none")
    err = refused(server.url, none_alg)
    assert err.code == "unauthorized" and "algorithm" in err.event["message"]


@pytest.mark.parametrize("via", ["header", "subprotocol", "query"])
def test_api_key_and_jwt_accepted_every_way(server, neighbour, via):
    ready, sub = asyncio.run(open_stream(server.url, KEY1, via))
    assert ready["principal"].startswith("key-") and KEY1 not in json.dumps(ready)
    assert sub == "voxserve.v1.msgpack"                       # the auth subprotocol is never echoed
    ready, sub = asyncio.run(open_stream(server.url, token("alice"), via))
    assert ready["principal"] == "alice" and sub == "voxserve.v1.msgpack"


def test_minted_token_as_subprotocol_and_query(server, neighbour):
    minted = mint(server, ttl_s=30, pipelines=["vad"])
    assert minted["expires_in"] == 30 and minted["token_type"] == "Bearer"
    claims = jwt.decode(minted["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 30 and claims["pipelines"] == ["vad"]
    for via in ("subprotocol", "query"):
        ready, sub = asyncio.run(open_stream(server.url, minted["token"], via))
        assert ready["principal"] == claims["sub"] and sub == "voxserve.v1.msgpack"
    # The token is narrowed to vad: asking for vc is forbidden (typed, close 4403 after the upgrade).
    err = refused(server.url, minted["token"], "subprotocol", pipelines=("vad", "vc"))
    assert err.code == "forbidden" and err.close_code == 4403


def test_token_endpoint_needs_an_api_key_and_checks_its_body(server, neighbour):
    assert server.request("/v1/tokens", data=b"{}")[0] == 401
    assert server.request("/v1/tokens", token=token("alice"), data=b"{}")[0] == 401   # a JWT cannot mint
    assert server.request("/v1/tokens", token="wrong", data=b"{}")[0] == 401
    for body in (b'{"ttl_s": 100000}', b'{"ttl_s": "60"}', b'{"pipelines": ["asr"]}', b"[1]", b"{",
                 b'{"extra": 1}', b"[" * 5000):
        status, raw, _ = server.request("/v1/tokens", token=KEY1, data=body)
        assert status == 400, (body[:20], status)
        assert json.loads(raw)["error"]["code"] == "bad_value"
    assert mint(server)["expires_in"] == 60                   # the default lifetime


def test_expired_minted_token_refused(server, neighbour):
    minted = mint(server, ttl_s=1)
    time.sleep(7.5)                                            # past exp plus the 5 s leeway
    err = refused(server.url, minted["token"], "subprotocol")
    assert err.code == "unauthorized" and "expired" in err.event["message"]


def test_jwt_claims_restrict_streams(server, neighbour):
    limited = token("bob", max_streams=1, pipelines=["vad"])

    async def two():
        async with VoxClient.connect(server.url, token=limited) as first:
            await first.start(pipelines=["vad"])
            async with VoxClient.connect(server.url, token=limited) as second:
                with pytest.raises(VoxError) as info:
                    await second.start(pipelines=["vad"])
                return info.value
    err = asyncio.run(two())
    assert err.code == "too_many_connections" and err.close_code == 1013
    err = refused(server.url, limited, pipelines=("vc",))
    assert err.code == "forbidden"


def test_foreign_origin_refused_local_origin_allowed(server, neighbour):
    async def with_origin(origin):
        ws = await websockets.connect(server.url, subprotocols=["voxserve.v1.json", "voxserve.auth." + KEY1],
                                      origin=origin, compression=None)
        try:                          # a refused page hears the error at once, before it says anything
            first = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
        except asyncio.TimeoutError:
            await ws.send(json.dumps({"type": "start", "pipelines": ["vad"]}))
            first = json.loads(await ws.recv())
        if first["type"] == "error":
            await asyncio.wait_for(ws.wait_closed(), 5)
        else:
            await ws.close()
        return first, ws.close_code
    first, code = asyncio.run(with_origin("https://evil.example"))
    assert first["type"] == "error" and first["code"] == "forbidden" and code == 4403
    first, _ = asyncio.run(with_origin(f"http://localhost:{server.port}"))
    assert first["type"] == "ready"
    # CORS on the HTTP API: the same list.
    _, _, h = server.request("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in h}
    _, _, h = server.request("/healthz", headers={"Origin": "http://localhost:5173"})
    assert {k.lower(): v for k, v in h.items()}.get("access-control-allow-origin") == "http://localhost:5173"


def test_resume_needs_the_same_principal_and_the_resume_token(server, neighbour):
    async def drop_then(resume_key, resume_token):
        async with VoxClient.connect(server.url, token=KEY1) as c:
            ready = await c.start(pipelines=["vad"])
            c.ws.transport.abort()
        await asyncio.sleep(0.3)
        async with VoxClient.connect(server.url, token=resume_key) as c:
            try:
                ev = await c.resume(ready["session_id"], -1, resume_token(ready))
                return ev["type"], ready
            except VoxError as err:
                return err.code, ready
    code, _ = asyncio.run(drop_then(KEY2, lambda r: r["resume_token"]))
    assert code == "forbidden"
    code, _ = asyncio.run(drop_then(KEY1, lambda r: "guessed"))
    assert code == "forbidden"
    code, _ = asyncio.run(drop_then(KEY1, lambda r: ""))
    assert code == "forbidden"
    code, ready = asyncio.run(drop_then(KEY1, lambda r: r["resume_token"]))
    assert code == "resumed"
    assert ready["session_id"] not in server.log()             # ids are logged shortened


def test_metrics_and_info_need_a_credential_and_show_no_paths(server, neighbour):
    assert server.request("/metrics")[0] == 401
    assert server.request("/v1/info")[0] == 401
    assert server.request("/metrics", token="wrong")[0] == 401
    assert server.request("/healthz")[0] == 200 and server.request("/readyz")[0] == 200
    info = server.get_json("/v1/info", token=KEY1)
    text = json.dumps(info)
    assert "site-packages" not in text and "/" not in json.dumps(info["models"])


def test_client_cli_reports_unauthorized(server, tmp_path):
    import subprocess
    import sys

    import soundfile as sf

    from .helpers import voiced_signal

    wav = tmp_path / "v.wav"
    sf.write(wav, voiced_signal(2.0), 16000)
    exe = [sys.executable, "-m", "voxserve.clients.cli", "stream", str(wav), "--url", server.url, "--speed", "0"]
    bad = subprocess.run(exe + ["--json"], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert bad.returncode == 1
    assert json.loads(bad.stdout.splitlines()[-1])["code"] == "unauthorized"
    good = subprocess.run(exe, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "VOXSERVE_TOKEN": KEY2})
    assert good.returncode == 0, good.stderr
    assert "closed: 1000" in good.stdout


def test_neighbour_unchanged_and_no_credential_in_the_log(server, neighbour):
    n, reference = neighbour
    result = n.join(60)
    assert result.close_code == 1000 and vad_events(result) == reference
    # One more stream with every kind of credential in flight, then search the whole log.
    minted = mint(server)["token"]
    for tok, via in ((KEY1, "query"), (minted, "query"), (minted, "subprotocol"), (token("carol"), "header")):
        asyncio.run(stream_source(server.url, voiced_source(1.0), speed=0, token=tok, token_via=via))
    log = server.log()
    for secret in (KEY1, KEY2, SECRET, minted, minted.split(".")[2], token("carol").split(".")[1]):
        assert secret not in log
    assert "token=[redacted]" in log                           # uvicorn's request line, scrubbed
    json_lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(rec.get("msg") == "stream started" and rec.get("principal") == "carol" for rec in json_lines)
