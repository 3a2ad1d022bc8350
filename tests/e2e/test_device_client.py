"""``voxserve-client mic`` against a real server, with a capture command standing in for the microphone."""

import shutil
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
