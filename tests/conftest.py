"""Shared fixtures: the ../shared data folder, real speech, and a real ``voxserve serve`` process."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VOXSERVE_SHARED", REPO.parent / "shared"))
SPEECH = SHARED / "eval" / "speech"


def shared_or_skip(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found at {p} (the ../shared folder beside the checkout)")
    return p


@pytest.fixture(scope="session")
def speech_manifest() -> list[dict]:
    path = shared_or_skip("eval", "speech", "manifest.tsv")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="session")
def jfk_path() -> Path:
    return shared_or_skip("eval", "speech", "openai-whisper", "jfk.flac")


@pytest.fixture(scope="session")
def speech16k(jfk_path) -> "np.ndarray":  # noqa: F821
    """JFK's 11 s speech resampled to 16 kHz float32 (the file is 44.1 kHz)."""
    import numpy as np
    import soundfile as sf
    import soxr

    x, rate = sf.read(str(jfk_path), dtype="float32")
    if x.ndim == 2:
        x = x.mean(axis=1)
    return soxr.resample(x, rate, 16000).astype(np.float32)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def voxserve_exe() -> list[str]:
    exe = Path(sys.executable).parent / "voxserve"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("voxserve")
    if found:
        return [found]
    return [sys.executable, "-m", "voxserve.server.cli"]


class RunningServer:
    """A ``voxserve serve`` process. ``ssl_context`` (a client context trusting the server's CA) makes
    the URLs https/wss."""

    def __init__(self, port: int, proc: subprocess.Popen, log_path: Path, ssl_context=None):
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.ssl_context = ssl_context
        ws, web = ("wss", "https") if ssl_context else ("ws", "http")
        self.url = f"{ws}://127.0.0.1:{port}/v1/stream"
        self.http = f"{web}://127.0.0.1:{port}"

    def request(self, path: str, *, token: str | None = None, data: bytes | None = None,
                headers: dict | None = None):
        """(status, body bytes, headers) of an HTTP request; HTTP errors are returned, not raised."""
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.http + path, data=data, headers=hdrs, method="POST" if data is not None
                                     else "GET")
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ssl_context) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read(), dict(err.headers)

    def get_json(self, path: str, token: str | None = None) -> dict:
        status, body, _ = self.request(path, token=token)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status} {body[:200]!r}")
        return json.loads(body)

    def get_text(self, path: str, token: str | None = None) -> str:
        status, body, _ = self.request(path, token=token)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        return body.decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(subprocess.signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(tmp_path: Path, *args: str, env: dict | None = None, ready_timeout: float = 120.0,
                 ssl_context=None, port: int | None = None) -> RunningServer:
    port = port or free_port()
    log_path = tmp_path / f"server-{port}.log"
    fh = open(log_path, "w")
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(voxserve_exe() + ["serve", "--port", str(port), *args], stdout=fh, stderr=subprocess.STDOUT,
                            env=full_env)
    srv = RunningServer(port, proc, log_path, ssl_context)
    deadline = time.time() + ready_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{srv.log()}")
        try:
            if srv.get_json("/readyz").get("status") == "ready":
                return srv
        except Exception:
            time.sleep(0.1)
    srv.stop()
    raise RuntimeError(f"server not ready in {ready_timeout}s:\n{srv.log()}")


@pytest.fixture(scope="module")
def vad_server(tmp_path_factory):
    """A real ``voxserve serve`` (VAD only) shared by a test module."""
    srv = start_server(tmp_path_factory.mktemp("srv"), "--pipelines", "vad", "--log-format", "text",
                       "--max-frames-per-second", "400", "--frame-burst", "2000")
    yield srv
    srv.stop()
