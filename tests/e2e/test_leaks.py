"""No leaks: after 200 sessions that open and close every way (normal, dropped, dropped and resumed,
refused, never started), the server's registries and its asyncio task count return to their baseline."""

import asyncio
import time

import pytest
import websockets

from voxserve.clients.client import VoxClient, VoxError, stream_source

from ..conftest import start_server
from .helpers import voiced_source

pytestmark = pytest.mark.slow


def test_registries_and_tasks_return_to_baseline(tmp_path):
    srv = start_server(tmp_path, "--pipelines", "vad,vc", "--log-format", "text", "--resume-grace-s", "1",
                       "--start-timeout-s", "1", "--max-sessions", "30", "--no-admission")
    try:
        base = srv.get_json("/v1/info")["load"]
        source = voiced_source(1.0, seed=1)

        async def normal():
            r = await stream_source(srv.url, source, pipelines=["vad", "vc"], speed=0, frame_ms=100)
            assert r.close_code == 1000

        async def dropped(resume: bool):
            async with VoxClient.connect(srv.url) as c:
                ready = await c.start(pipelines=["vad", "vc"])
                await c.send_audio(source.data[:3200])
                c.ws.transport.abort()
            if resume:
                await asyncio.sleep(0.05)
                async with VoxClient.connect(srv.url) as c:
                    await c.resume(ready["session_id"], -1, ready["resume_token"])
                    await c.stop()
                    async for _ in c.events():
                        pass

        async def refused():
            async with VoxClient.connect(srv.url) as c:
                try:
                    await c.start(pipelines=["vad"], sample_rate=3)          # bad start: typed, then retry
                except VoxError:
                    pass
                await c.start(pipelines=["vad"])                                # the corrected one
                await c.stop()
                async for _ in c.events():
                    pass

        async def never_starts():
            ws = await websockets.connect(srv.url, subprotocols=["voxserve.v1.json"])
            await asyncio.sleep(1.5)                   # the start deadline closes it
            await ws.close()

        async def go():
            kinds = [normal, lambda: dropped(False), lambda: dropped(True), refused, never_starts]
            for round_ in range(4):                     # 4 x (10 of each kind) = 200 sessions, 10 at a time
                for kind in kinds:
                    await asyncio.gather(*(kind() for _ in range(10)))
        asyncio.run(go())
        deadline = time.time() + 15
        while time.time() < deadline:
            load = srv.get_json("/v1/info")["load"]
            if (load["streams"], load["detached"], load["pending"], load["connections"]) == (0, 0, 0, 0) \
                    and load["tasks"] <= base["tasks"]:
                break
            time.sleep(0.3)
        assert (load["streams"], load["detached"], load["pending"], load["connections"]) == (0, 0, 0, 0), load
        assert load["tasks"] <= base["tasks"], (load["tasks"], base["tasks"])
        metrics = srv.get_text("/metrics")
        assert "voxserve_sessions_active 0.0" in metrics
        assert srv.proc.poll() is None and "Traceback" not in srv.log()
    finally:
        srv.stop()
