"""Injected faults against real servers (``--inject-faults``, a testing aid like ``--engine-delay-ms``).

- an engine that raises in a batch: the streams in it get a typed, non-fatal ``stage_failed``, their
  audio still comes back whole (the failed blocks unconverted), the stage recovers, the stream ends
  normally, and a neighbour on another pipeline is untouched;
- an engine call that hangs: the watchdog (``--engine-timeout-s``) fails the stalled requests with
  ``stage_failed`` and the stage goes on with a fresh worker;
- ``flush`` does not block the reader while its finals decode;
- a client vanishing (TCP reset) in the middle of a final leaves the server and a neighbour running.
"""

import asyncio

import numpy as np
import pytest

from voxserve.clients.client import VoxClient, stream_source

from ..conftest import start_server
from .helpers import Neighbour, stream, vad_events, voiced_source

pytestmark = pytest.mark.slow


def audio_of(result):
    evs = result.of_type("audio")
    assert [e["seq"] for e in evs] == list(range(len(evs)))
    return evs, sum(len(e["pcm"]) // 2 for e in evs)


def metric(srv, prefix: str) -> float:
    return sum(float(ln.split()[-1]) for ln in srv.get_text("/metrics").splitlines() if ln.startswith(prefix))


def test_engine_raising_in_a_batch(tmp_path):
    srv = start_server(tmp_path, "--pipelines", "vad,vc", "--log-format", "text", "--no-admission",
                       "--inject-faults", "vc:raise:25")
    try:
        source = voiced_source(4.0, seed=2)
        solo = vad_events(stream(srv.url, voiced_source(8.0, seed=5), speed=0, frame_ms=100))
        neighbour = Neighbour(srv.url, voiced_source(8.0, seed=5), speed=1.0)
        res = stream(srv.url, source, pipelines=["vc"], speed=0, frame_ms=20)
        assert res.close_code == 1000 and res.fatal is None
        failed = [e for e in res.of_type("error") if e["code"] == "stage_failed"]
        assert failed and all(not e["fatal"] and e["fault"] == "server" for e in failed)
        evs, samples = audio_of(res)
        assert samples == len(source.data) // 2                   # nothing lost: failed blocks pass through
        flags = [e["converted"] for e in evs]
        assert not all(flags) and flags[-1] and sum(flags) > len(flags) // 2   # and the stage recovered
        near = neighbour.join(60)
        assert near.close_code == 1000 and vad_events(near) == solo
        assert srv.proc.poll() is None and "Traceback" not in srv.log()
    finally:
        srv.stop()


def test_hung_engine_call_is_failed_by_the_watchdog(tmp_path):
    srv = start_server(tmp_path, "--pipelines", "vad,vc", "--log-format", "text", "--no-admission",
                       "--inject-faults", "vc:hang:10", "--engine-timeout-s", "1")
    try:
        source = voiced_source(3.0, seed=4)
        res = stream(srv.url, source, pipelines=["vc"], speed=0, frame_ms=20)
        assert res.close_code == 1000 and res.fatal is None
        failed = [e for e in res.of_type("error") if e["code"] == "stage_failed"]
        assert len(failed) == 1 and "did not finish in 1 s" in failed[0]["message"]
        evs, samples = audio_of(res)
        assert samples == len(source.data) // 2
        assert evs[-1]["converted"] and sum(not e["converted"] for e in evs) == 1   # one block lost its turn
        assert metric(srv, 'voxserve_engine_timeouts_total{model="vc"}') == 1
        again = stream(srv.url, source, pipelines=["vc"], speed=0, frame_ms=20)    # the stage works on
        assert again.close_code == 1000 and all(e["converted"] for e in again.of_type("audio"))
    finally:
        srv.stop()


def test_flush_does_not_block_the_reader(tmp_path):
    """ASR finals decoding slowly (--engine-delay-ms): after a flush, the next utterance's audio is read
    and its VAD events arrive while the flush's final is still decoding; then flushed and the final."""
    srv = start_server(tmp_path, "--pipelines", "vad,asr", "--log-format", "text", "--no-admission",
                       "--engine-delay-ms", "60")
    try:
        first, second = voiced_source(1.6, seed=7), voiced_source(1.6, seed=8)

        async def go():
            async with VoxClient.connect(srv.url) as c:
                await c.start(sample_rate=16000, pipelines=["vad", "asr"],
                              options={"asr": {"interims": False}})
                for f in first.frames(100):
                    await c.send_audio(f)
                await c.flush()
                for f in second.frames(100):
                    await c.send_audio(f)
                await c.stop()
                return [e async for e in c.events()]
        events = asyncio.run(go())
        kinds = [(e["type"], e.get("event")) for e in events]
        flushed = kinds.index(("flushed", None))
        starts = [i for i, k in enumerate(kinds) if k == ("vad", "speech_start")]
        second_start = next(i for i in starts if events[i]["start_ms"] >= 1600)
        assert second_start < flushed, kinds                      # read while the flush was decoding
        assert events[flushed]["at_ms"] == pytest.approx(1600, abs=1)
        assert events[-1]["type"] == "stopped"
    finally:
        srv.stop()


def test_client_reset_mid_final_leaves_server_and_neighbour_running(tmp_path):
    srv = start_server(tmp_path, "--pipelines", "vad,asr", "--log-format", "text", "--no-admission",
                       "--engine-delay-ms", "30", "--resume-grace-s", "0")
    try:
        solo = vad_events(stream(srv.url, voiced_source(6.0, seed=3), speed=0, frame_ms=100))
        neighbour = Neighbour(srv.url, voiced_source(6.0, seed=3), speed=1.0)

        async def vanish():
            async with VoxClient.connect(srv.url) as c:
                await c.start(sample_rate=16000, pipelines=["vad", "asr"])
                for f in voiced_source(2.0, seed=9).frames(100):
                    await c.send_audio(f)
                await c.flush()                                  # a final starts decoding ...
                await asyncio.sleep(0.05)
                c.ws.transport.abort()                           # ... and the client is gone (TCP reset)
        for _ in range(5):
            asyncio.run(vanish())
        near = neighbour.join(60)
        assert near.close_code == 1000 and vad_events(near) == solo
        ok = asyncio.run(stream_source(srv.url, voiced_source(2.0, seed=1), pipelines=["vad", "asr"], speed=0))
        assert ok.close_code == 1000
        assert srv.get_json("/v1/info")["load"]["streams"] == 0
        assert srv.proc.poll() is None and "Traceback" not in srv.log()
    finally:
        srv.stop()


def test_unencodable_event_becomes_a_typed_error():
    """The writer's encoder: an event JSON cannot carry goes with NaN as null; one nothing can encode is
    replaced by a typed stage_failed with the same eid (the writer never dies silently)."""
    import json

    from voxserve.server.app import encode_or_explain
    from voxserve.server.protocol import SUBPROTOCOL_JSON, Codec

    enc = Codec(SUBPROTOCOL_JSON).encode
    assert json.loads(encode_or_explain(enc, {"type": "wakeword", "score": float("nan"), "eid": 3}, {})) == \
        {"type": "wakeword", "score": None, "eid": 3}
    out = json.loads(encode_or_explain(enc, {"type": "x", "v": np.zeros(1), "eid": 4}, {}))
    assert out["type"] == "error" and out["code"] == "stage_failed" and out["eid"] == 4 and not out["fatal"]
