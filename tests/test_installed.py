"""voxserve as users get it: the built wheel installed (not editable) into fresh virtual environments,
run from a directory outside the source tree.

1. Full install (``pip install voxserve-*.whl``): ``voxserve serve`` starts on its default models (every
   pipeline), ``/readyz`` turns ready, and the installed ``voxserve-client`` streams real speech and gets the
   right final transcript. The code that runs is the installed copy, not this checkout.
2. Minimal device install (``pip install --no-deps voxserve-*.whl websockets msgpack numpy``): the protocol
   core and the client import with no model runtime present, and ``voxserve-client mic`` streams to the
   server above.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import REPO, SHARED, free_port

pytestmark = pytest.mark.slow

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("VOXSERVE_", "PYTHON", "VIRTUAL_ENV"))}


def run(cmd, *, cwd, timeout=900, env=None, check=True):
    out = subprocess.run(cmd, cwd=cwd, env={**CLEAN_ENV, **(env or {})}, capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        cwd=out)
    [whl] = out.glob("voxserve-*.whl")
    return whl


def fresh_venv(folder: Path) -> Path:
    run([sys.executable, "-m", "venv", str(folder)], cwd=folder.parent)
    return folder / "bin"


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A working directory with nothing of the checkout in it."""
    d = tmp_path_factory.mktemp("outside")
    assert not str(d).startswith(str(REPO))
    return d


@pytest.fixture(scope="module")
def full_install(wheel, tmp_path_factory) -> Path:
    bin_dir = fresh_venv(tmp_path_factory.mktemp("venv") / "full")
    run([str(bin_dir / "pip"), "install", "-q", str(wheel)], cwd=wheel.parent)
    return bin_dir


def speech_file(tmp: Path) -> tuple[Path, str]:
    """Real speech with its expected transcript: JFK from ../shared, else a sentence spoken by espeak-ng."""
    jfk = SHARED / "eval" / "speech" / "openai-whisper" / "jfk.flac"
    if jfk.exists():
        return jfk, "ask not what your country can do for you"
    if shutil.which("espeak-ng"):
        wav = tmp / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav),
                        "the weather today is sunny and warm"], check=True)
        return wav, "sunny and warm"          # espeak-ng's "weather" is heard as "whether"
    pytest.skip("needs speech: ../shared (jfk.flac) or espeak-ng (apt-get install espeak-ng) for the transcript")


@pytest.fixture(scope="module")
def installed_server(full_install, outside, tmp_path_factory):
    port = free_port()
    cache = tmp_path_factory.mktemp("cache")                      # a first start: nothing cached before
    log = open(outside / "server.log", "w")
    proc = subprocess.Popen([str(full_install / "voxserve"), "serve", "--port", str(port), "--log-format", "text"],
                            cwd=outside, stdout=log, stderr=subprocess.STDOUT,
                            env={**CLEAN_ENV, "VOXSERVE_CACHE": str(cache)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    try:
        while True:
            assert proc.poll() is None, (outside / "server.log").read_text()
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                    if json.loads(r.read())["status"] == "ready":
                        break
            except OSError:
                pass
            assert time.time() < deadline, "installed server not ready in 300 s"
            time.sleep(0.5)
        yield port, proc, outside / "server.log"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_installed_code_is_the_wheel_not_the_checkout(full_install, outside):
    out = run([str(full_install / "python"), "-c",
               "import voxserve.server.app as a, voxserve.models, voxserve.server.asr.moonshine as m; "
               "print(a.__file__); print(a.STATIC_DIR.is_dir())"], cwd=outside).stdout.split()
    assert "site-packages" in out[0] and not out[0].startswith(str(REPO)) and out[1] == "True"


def test_installed_server_serves_defaults_and_transcribes(installed_server, full_install, outside):
    port, _, log = installed_server
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as r:
        assert set(json.loads(r.read())["pipelines"]) == {"vad", "wakeword", "asr", "vc"}
    audio, expected = speech_file(outside)
    out = run([str(full_install / "voxserve-client"), "stream", str(audio), "--url",
               f"ws://127.0.0.1:{port}/v1/stream", "--pipelines", "vad,asr", "--speed", "0", "--json"],
              cwd=outside, timeout=180)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    finals = " ".join(e["text"] for e in events if e["type"] == "transcript").lower()
    assert expected in finals.replace(",", ""), finals
    assert events[-1] == {"type": "closed", "code": 1000, "reason": "stopped"}


def test_minimal_device_install_streams_without_a_model_runtime(wheel, installed_server, outside,
                                                                tmp_path_factory):
    import numpy as np

    from .e2e.helpers import voiced_signal

    port = installed_server[0]
    bin_dir = fresh_venv(tmp_path_factory.mktemp("venv") / "device")
    run([str(bin_dir / "pip"), "install", "-q", "--no-deps", str(wheel), "websockets", "msgpack", "numpy"],
        cwd=outside)
    probe = run([str(bin_dir / "python"), "-c",
                 "import importlib.util as u, voxserve.server.protocol, voxserve.clients.client, "
                 "voxserve.clients.device; print([m for m in ('onnxruntime', 'starlette', 'soundfile', 'torch') "
                 "if u.find_spec(m)])"], cwd=outside)
    assert probe.stdout.strip() == "[]"
    raw = outside / "capture.raw"
    raw.write_bytes((np.clip(voiced_signal(4.0), -1, 1) * 32767).astype("<i2").tobytes())
    out = run([str(bin_dir / "voxserve-client"), "mic", "--url", f"ws://127.0.0.1:{port}/v1/stream",
               "--pipelines", "vad", "--capture-cmd", f"cat {raw}", "--no-playback", "--json"], cwd=outside,
              timeout=120)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e["type"] == "vad"][:2] == ["speech_start", "speech_end"]
    assert any(e["type"] == "stopped" for e in events)
