"""``voxserve serve --workers 2``: two processes on one port, streams spread over both, one whole-server
view (``/v1/info``, ``/metrics``) and ``--max-sessions`` held across workers."""

import asyncio
import time

import pytest

from voxserve.clients.client import VoxClient, VoxError

from ..conftest import start_server
from .helpers import stream, vad_events, voiced_source

pytestmark = pytest.mark.slow


def test_two_workers_serve_one_port_with_whole_server_limits_and_totals(tmp_path):
    srv = start_server(tmp_path, "--pipelines", "vad", "--workers", "2", "--max-sessions", "6",
                       "--log-format", "text")
    try:
        deadline = time.time() + 30                      # both workers up (each answers /v1/info for itself)
        seen = set()
        while len(seen) < 2 and time.time() < deadline:
            seen.add(srv.get_json("/v1/info")["worker"]["pid"])
        assert len(seen) == 2, seen
        source = voiced_source(4.0, seed=1)
        solo = vad_events(stream(srv.url, source, speed=0, frame_ms=100))

        async def close(cm, c):
            await c.stop()
            async for _ in c.events():
                pass
            await cm.__aexit__(None, None, None)

        async def hold_six_then_one_more():
            """Three streams held on each worker (each alone has room for six), then a seventh."""
            clients, per = [], {0: 0, 1: 0}
            for _ in range(100):
                if min(per.values()) >= 3:
                    break
                cm = VoxClient.connect(srv.url)
                c = await cm.__aenter__()
                w = (await c.start(pipelines=["vad"]))["worker"]
                if per[w] >= 3:
                    await close(cm, c)               # that worker has its three: try again
                    await asyncio.sleep(0.3)
                    continue
                per[w] += 1
                clients.append((cm, c))
            assert per == {0: 3, 1: 3}, per
            await asyncio.sleep(0.6)                     # heartbeats reach the shared table
            info = srv.get_json("/v1/info")
            try:
                async with VoxClient.connect(srv.url) as extra:
                    await extra.start(pipelines=["vad"])
                refused = None
            except VoxError as exc:
                refused = exc
            for cm, c in clients:
                await close(cm, c)
            return info, refused
        info, refused = asyncio.run(hold_six_then_one_more())
        assert info["totals"]["sessions"] == 6                        # counted over both workers
        assert [w["sessions"] for w in info["workers"]] == [3, 3] and all(w["alive"] for w in info["workers"])
        assert refused is not None and refused.code == "server_busy"  # the limit is the server's, not a worker's
        # Streams on both workers get the same events as a single-process server would give.
        for _ in range(4):
            assert vad_events(stream(srv.url, source, speed=0, frame_ms=100)) == solo
        metrics = srv.get_text("/metrics")
        assert 'voxserve_worker_sessions{worker="0"}' in metrics and 'voxserve_worker_sessions{worker="1"}' in metrics
        assert "voxserve_server_sessions" in metrics and "voxserve_answering_worker" in metrics
    finally:
        code = srv.stop()
    assert code in (0, -15)
