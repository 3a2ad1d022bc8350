"""``voxserve-client mic`` against a real server, with a capture command standing in for the microphone."""

import shutil
import time
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import shared_or_skip, start_server

pytestmark = pytest.mark.slow


def test_mic_client_streams_and_runs_wakeword_command(tmp_path):
    if shutil.which("sox") is None:
        pytest.skip("sox is not installed (apt-get install sox): it plays the recording into the client")
    heads = shared_or_skip("wakeword", "heads")
    srv = start_server(tmp_path, "--pipelines", "vad,wakeword", "--wakeword-models", str(heads), "--log-format", "text")
    marker = tmp_path / "woke.txt"
    # sox stands in for arecord: it writes the recording as raw s16le 16 kHz mono (not paced)
    capture = f"sox {heads / 'positive.wav'} -t raw -r 16000 -e signed -b 16 -c 1 - pad 1 1"
    exe = Path(sys.executable).parent / "voxserve-client"
    try:
        out = subprocess.run([str(exe), "mic", "--url", srv.url, "--capture-cmd", capture, "--json",
                              "--options", '{"wakeword": {"models": ["hey_livekit"]}}',
                              "--on-wakeword", f"echo $VOXSERVE_WAKEWORD >> {marker}", "--no-reconnect"],
                             capture_output=True, text=True, timeout=60)
    finally:
        srv.stop()
    assert out.returncode == 0, out.stderr
    types = [line.split('"type": "')[1].split('"')[0] for line in out.stdout.splitlines() if '"type": "' in line]
    assert "ready" in types and "vad" in types and "wakeword" in types and types[-1] == "stopped", types
    import time
    for _ in range(20):
        if marker.exists():
            break
        time.sleep(0.1)
    assert marker.read_text().strip() == "hey_livekit"


def test_mic_client_resumes_after_a_network_drop(tmp_path, jfk_path):
    """A TCP proxy between client and server cuts the connection mid-utterance; the client resumes."""
    import asyncio
    import json
    import threading


    from .helpers import resampled_source

    srv = start_server(tmp_path, "--pipelines", "vad,asr", "--log-format", "text", "--no-admission")
    raw = tmp_path / "jfk16k.raw"
    raw.write_bytes(resampled_source(jfk_path, 16000).data)
    pace = (f"{sys.executable} -c \"import sys,time; d=open('{raw}','rb').read(); "
            f"[(sys.stdout.buffer.write(d[i:i+640]), sys.stdout.flush(), time.sleep(0.005)) "
            f"for i in range(0,len(d),640)]\"")
    port_box, cut_done = {}, threading.Event()

    async def proxy():
        cut_after = [120_000]                      # client->server bytes before the first connection is cut

        async def handle(reader, writer):
            up_r, up_w = await asyncio.open_connection("127.0.0.1", srv.port)

            async def pipe(src, dst, count):
                try:
                    while data := await src.read(4096):
                        if count is not None:
                            cut_after[0] -= len(data)
                            if cut_after[0] < 0 and not cut_done.is_set():
                                cut_done.set()
                                writer.transport.abort()
                                up_w.transport.abort()
                                return
                        dst.write(data)
                        await dst.drain()
                except (ConnectionError, OSError):
                    pass
                finally:
                    dst.close()

            await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, None))

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_box["port"] = server.sockets[0].getsockname()[1]
        async with server:
            await asyncio.sleep(60)

    t = threading.Thread(target=lambda: asyncio.run(proxy()), daemon=True)
    t.start()
    while "port" not in port_box:
        time.sleep(0.05)
    exe = Path(sys.executable).parent / "voxserve-client"
    try:
        out = subprocess.run([str(exe), "mic", "--url", f"ws://127.0.0.1:{port_box['port']}/v1/stream",
                              "--pipelines", "vad,asr", "--capture-cmd", pace, "--json",
                              "--options", '{"asr": {"interims": false}}'],
                             capture_output=True, text=True, timeout=90)
    finally:
        srv.stop()
    assert cut_done.is_set()
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    types = [e["type"] for e in events]
    assert "resumed" in types and "reconnecting" in out.stderr, (types, out.stderr)
    finals = [e["text"] for e in events if e["type"] == "transcript"]
    text = " ".join(finals).lower()
    assert "americans" in text and "country" in text, finals
    ids = [e["id"] for e in events if e["type"] == "transcript"]
    assert ids == list(range(len(ids)))                                  # nothing lost, nothing doubled
    assert out.returncode == 0, out.stderr


def test_mic_client_starts_anew_after_the_server_is_killed_and_restarted(tmp_path):
    """SIGKILL the server mid-stream and start it again on the same port: the device client says it
    lost the connection, reconnects with backoff, learns its stream is gone, starts a new one from the
    live capture position (no re-sent old audio), and ends normally."""
    import json
    import signal

    import numpy as np

    from .helpers import voiced_signal

    raw = tmp_path / "capture.raw"
    raw.write_bytes((np.clip(voiced_signal(10.0, seed=4), -1, 1) * 32767).astype("<i2").tobytes())
    pacer = tmp_path / "pace.py"                     # a microphone: 20 ms of audio every 20 ms
    pacer.write_text("import sys, time\nd = open(sys.argv[1], 'rb').read()\nt0 = time.time()\n"
                     "for i in range(0, len(d), 640):\n    sys.stdout.buffer.write(d[i:i + 640]); sys.stdout.flush()\n"
                     "    time.sleep(max(0, t0 + (i // 640 + 1) * 0.02 - time.time()))\n")
    srv = start_server(tmp_path, "--pipelines", "vad", "--log-format", "text")
    port = srv.port
    exe = Path(sys.executable).parent / "voxserve-client"
    client = subprocess.Popen([str(exe), "mic", "--url", srv.url, "--pipelines", "vad", "--json", "--no-playback",
                               "--capture-cmd", f"{sys.executable} {pacer} {raw}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        time.sleep(3.0)
        srv.proc.send_signal(signal.SIGKILL)          # no drain, no close frames: the process is gone
        srv.proc.wait(10)
        time.sleep(1.0)
        second = start_server(tmp_path, "--pipelines", "vad", "--log-format", "text", port=port)
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
        if second is not None:
            second.stop()
        srv.stop()
    assert client.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    readies = [e for e in events if e["type"] == "ready"]
    assert len(readies) == 2 and readies[0]["session_id"] != readies[1]["session_id"], err
    assert "reconnecting" in err and "starting a new one" in err
    assert events[-1]["type"] == "stopped"
    # The new stream got the audio from where capture was when it started, not the lost stream's again:
    assert events[-1]["audio_ms"] < 8500, events[-1]
