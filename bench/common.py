"""Shared helpers for benchmarks: machine description, speech loading, server process, results file."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VOXSERVE_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "bench" / "RESULTS.md"


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpu = ", GPU " + "; ".join(line.strip() for line in out.stdout.strip().splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{platform.node() or 'host'}: {os.cpu_count()} cores ({cpu}){gpu}, Python {platform.python_version()}"


def today() -> str:
    return _dt.date.today().isoformat()


def speech_16k(seconds: float | None = None) -> np.ndarray:
    """Real speech from ../shared (JFK), 16 kHz float32, optionally looped to ``seconds``."""
    import soundfile as sf
    import soxr

    path = SHARED / "eval" / "speech" / "openai-whisper" / "jfk.flac"
    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = soxr.resample(x.mean(axis=1), rate, 16000).astype(np.float32)
    if seconds:
        reps = int(np.ceil(seconds * 16000 / len(x)))
        x = np.tile(x, reps)[: int(seconds * 16000)]
    return x


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], port: int | None = None, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    exe = Path(sys.executable).parent / "voxserve"
    cmd = [str(exe) if exe.exists() else "voxserve", "serve", "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except Exception:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError("server exited during start")
    proc.kill()
    raise RuntimeError("server not ready")


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def percentiles(values, ps=(50, 99, 99.9)) -> dict:
    if not len(values):
        return {f"p{p}": None for p in ps}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{p}": round(float(np.percentile(arr, p)), 3) for p in ps}


def record(section: str, command: str, body: str) -> None:
    """Append a dated, machine-stamped result block to bench/RESULTS.md."""
    block = f"\n### {section} ({today()})\n\n- machine: {machine()}\n- command: `{command}`\n\n{body.rstrip()}\n"
    with open(RESULTS, "a") as fh:
        fh.write(block)
    print(block)


def install_uvloop() -> None:
    """Use uvloop for the load generator when it is installed (it is a server dependency)."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
