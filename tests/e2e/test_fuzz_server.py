"""The hypothesis generators of the unit fuzz tests, replayed against a real server: a few hundred
hostile sessions, up to 100 at once, beside a neighbour stream whose VAD events must equal a solo run.
No session may get an error the server blames on itself, or a close 1011. (``bench/fuzz.py`` is the
long version.)"""

import asyncio
import collections

import pytest

from voxserve.clients.client import stream_source

from ..conftest import start_server
from ..fuzzgen import draw_sequences, fuzz_server
from .helpers import vad_events, voiced_source

pytestmark = pytest.mark.slow


def test_hostile_sessions_beside_a_neighbour(tmp_path):
    srv = start_server(tmp_path, "--pipelines", "vad,vc", "--log-format", "text", "--max-connections-per-ip",
                       "400", "--handshake-burst", "1000", "--handshakes-per-ip-per-s", "1000", "--no-admission")
    try:
        source = voiced_source(12.0, seed=8)

        async def go():
            solo = vad_events(await stream_source(srv.url, source, speed=0, frame_ms=100))
            neighbour = asyncio.ensure_future(stream_source(srv.url, source, speed=1.0, frame_ms=20))
            reports = await fuzz_server(srv.url, draw_sequences(300, seed=1), concurrency=100)
            return solo, await neighbour, reports
        solo, near, reports = asyncio.run(go())
        faults = [r for r in reports if r["server_faults"] or r["close"] == 1011]
        assert not faults, faults[:3]
        codes = collections.Counter(c for r in reports for c in r["errors"])
        assert len(codes) >= 5 and "internal" not in codes, codes      # many kinds of typed refusal, no bug
        assert near.close_code == 1000 and vad_events(near) == solo
        assert srv.proc.poll() is None and "Traceback" not in srv.log()
    finally:
        srv.stop()
