"""Three voxserve replicas behind Debian's nginx with the shipped ``deploy/nginx/voxserve.conf``.

- Resume through the balancer: connections cut mid-utterance reconnect with their routing key and land
  on the replica that holds the stream; every VAD event arrives exactly once.
- Draining: SIGTERM on the replica holding a stream: the stream gets its events and ``shutting_down``;
  the client goes on with a new stream on another replica from the first frame the old one did not
  process (nothing lost, nothing doubled); new connections skip the draining replica; a stream on
  another replica is untouched.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from voxserve.clients.client import stream_source

from ..conftest import REPO, free_port, start_server
from .helpers import Neighbour, stream, vad_events, voiced_source

pytestmark = pytest.mark.slow


def nginx_exe() -> str | None:
    return shutil.which("nginx") or (str(Path("/usr/sbin/nginx")) if Path("/usr/sbin/nginx").exists() else None)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    exe = nginx_exe()
    if exe is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("lb")
    replicas = [start_server(tmp, "--pipelines", "vad", "--log-format", "text", "--drain-timeout-s", "5")
                for _ in range(3)]
    port = free_port()
    conf = (REPO / "deploy" / "nginx" / "voxserve.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{r.port} max_fails=1 fail_timeout=5s;\n" for r in replicas)
    conf = re.sub(r"(    server 127\.0\.0\.1:800\d max_fails=1 fail_timeout=5s;\n)+", servers, conf)
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    assert conf.count("server 127.0.0.1:") == 3
    (tmp / "voxserve.conf").write_text(conf)
    (tmp / "nginx.conf").write_text(
        f"daemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\nevents {{}}\n"
        f"http {{\n access_log {tmp}/access.log;\n client_body_temp_path {tmp}/body;\n proxy_temp_path {tmp}/proxy;\n"
        f" include {tmp}/voxserve.conf;\n}}\n")
    proc = subprocess.Popen([exe, "-p", str(tmp), "-c", str(tmp / "nginx.conf")], stderr=subprocess.PIPE)
    deadline = time.time() + 10
    import urllib.request
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.1)
    yield {"url": f"ws://127.0.0.1:{port}/v1/stream", "replicas": replicas, "tmp": tmp}
    proc.send_signal(signal.SIGQUIT)
    proc.wait(10)
    for r in replicas:
        r.stop()


def holders(cluster) -> list:
    return [r for r in cluster["replicas"] if r.proc.poll() is None and r.get_json("/v1/info")["load"]["streams"]]


def test_cut_connections_resume_on_the_same_replica_exactly_once(cluster):
    source = voiced_source(8.0, seed=5)
    solo = vad_events(stream(cluster["replicas"][0].url, source, speed=0, frame_ms=100))
    for _ in range(3):                                   # three streams, three random routing keys
        res = asyncio.run(stream_source(cluster["url"], source, speed=4.0, frame_ms=20, cut_at=(60, 150, 260)))
        assert res.resumes == 3 and res.restarts == 0 and res.close_code == 1000, res.events[-3:]
        assert vad_events(res) == solo                   # every event once: none lost, none doubled
        assert res.ready["route"] and len({e["eid"] for e in res.events}) == len(res.events)


def test_drain_moves_the_stream_to_another_replica(cluster):
    source = voiced_source(14.0, seed=6)
    solo = vad_events(stream(cluster["replicas"][1].url, source, speed=0, frame_ms=100))
    bystander_source = voiced_source(10.0, seed=7)
    bystander_solo = vad_events(stream(cluster["replicas"][2].url, bystander_source, speed=0, frame_ms=100))
    result = {}

    async def streamer():
        result["res"] = await stream_source(cluster["url"], source, speed=2.0, frame_ms=20)
    import threading
    t = threading.Thread(target=lambda: asyncio.run(streamer()))
    t.start()
    time.sleep(2.0)
    [victim] = holders(cluster)
    others = [r for r in cluster["replicas"] if r is not victim]
    bystander = Neighbour(others[0].url, bystander_source, speed=1.0)      # directly on a surviving replica
    victim.proc.send_signal(signal.SIGTERM)
    t.join(60)
    res = result["res"]
    victim.proc.wait(20)             # uvicorn re-raises SIGTERM after its graceful shutdown: exit -15
    assert res.restarts == 1 and res.close_code == 1000, res.events[-3:]
    assert res.fatal is None and not [e for e in res.events if e["type"] == "error"]
    near = bystander.join(60)
    assert near.close_code == 1000 and vad_events(near) == bystander_solo
    got = [e for e in res.events if e["type"] == "stopped"]
    assert len(got) == 1 and got[0]["audio_ms"] < 14000                     # the second stream: the rest only
    assert len(vad_events(res)) >= len(solo) - 2                            # a segment at the seam may be split
    # New streams while one replica is gone still work (nginx skips it).
    for _ in range(3):
        again = asyncio.run(stream_source(cluster["url"], voiced_source(2.0, seed=1), speed=0, frame_ms=100))
        assert again.close_code == 1000


def test_killed_replica_clients_start_anew_elsewhere(cluster):
    """SIGKILL the replica holding a stream (no drain, no close frames): the client's reconnect is routed
    by nginx to a live replica, which does not know the stream; the client starts a new one there from
    where it was and ends normally. (Runs after the drain test: one replica is already gone.)"""
    import threading

    source = voiced_source(10.0, seed=9)
    result = {}
    t = threading.Thread(target=lambda: result.update(
        res=asyncio.run(stream_source(cluster["url"], source, speed=2.0, frame_ms=20))))
    t.start()
    time.sleep(1.5)
    [victim] = holders(cluster)
    victim.proc.kill()
    t.join(60)
    res = result["res"]
    assert res.restarts == 1 and res.close_code == 1000, res.events[-3:]
    assert res.fatal is None and len(res.of_type("stopped")) == 1
