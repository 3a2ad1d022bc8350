"""``voxserve serve --workers N``: N worker processes on one port (SO_REUSEPORT: the kernel spreads new
connections), each with its own event loop and engines, and one whole-server view.

The parent creates a shared table (:class:`WorkerTable`, a small memory-mapped file): one row per worker
with its pid, open sessions, engine-busy cores and admission target, written by that worker on every session change and
every housekeeping tick. ``--max-sessions`` and the machine-wide admission check read the sums, so they
hold for the whole server; ``/v1/info`` and ``/metrics`` report each worker and the totals. The parent
forwards SIGTERM/SIGINT to the workers (each drains its streams) and waits for them.
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import asdict

ROW = struct.Struct("<qqddd")        # pid, sessions, busy cores, heartbeat (unix time), machine target


class WorkerTable:
    def __init__(self, path: str, workers: int, index: int | None = None):
        self.path, self.workers, self.index = path, workers, index
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, ROW.size * workers)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, workers: int) -> "WorkerTable":
        fd, path = tempfile.mkstemp(prefix="voxserve-workers-")
        os.write(fd, b"\0" * ROW.size * workers)
        os.close(fd)
        return cls(path, workers)

    def write(self, sessions: int, busy: float, target: float = 0.0) -> None:
        """This worker's row; ``target``: its admission's machine target now (the tightest among the
        pipelines of its open streams), which the other workers' admission also applies."""
        assert self.index is not None
        self._map[self.index * ROW.size:(self.index + 1) * ROW.size] = ROW.pack(os.getpid(), sessions, busy,
                                                                                time.time(), target)

    def rows(self) -> list[dict]:
        out = []
        for i in range(self.workers):
            pid, sessions, busy, beat, target = ROW.unpack_from(self._map, i * ROW.size)
            alive = pid > 0 and time.time() - beat < 5.0
            out.append({"worker": i, "pid": pid, "alive": alive, "sessions": sessions if alive else 0,
                        "busy_cores": round(busy, 3) if alive else 0.0,
                        "machine_target": target if alive and target > 0 else None})
        return out

    def others(self, key: str) -> float:
        """The sum of ``key`` over the other live workers."""
        return sum(r[key] for r in self.rows() if r["worker"] != self.index)

    def others_target(self, default: float) -> float:
        """The tightest machine target the other live workers publish (``default`` if none)."""
        return min((r["machine_target"] for r in self.rows() if r["worker"] != self.index
                    and r["machine_target"] is not None), default=default)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def worker_main(settings_fields: dict, index: int, table_path: str, workers: int) -> None:
    from .cli import make_server
    from .logs import configure
    from .settings import Settings

    settings = Settings(**settings_fields)
    configure(settings.log_level, settings.log_format, secrets=(*settings.api_key_list, settings.jwt_secret))
    table = WorkerTable(table_path, workers, index)
    from voxserve.engines.base import EngineError
    try:
        server, app = make_server(settings, table=table)
    except EngineError as exc:                 # as in a single process: the reason, not a traceback
        print(f"voxserve worker {index}: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    sock = reuse_port_socket(settings.host, settings.port)
    server.run(sockets=[sock])


def run_workers(settings, workers: int) -> int:
    import multiprocessing as mp

    table = WorkerTable.create(workers)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(asdict(settings), i, table.path, workers), name=f"voxserve-{i}")
             for i in range(workers)]
    for p in procs:
        p.start()

    def forward(signum, frame):
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for p in procs:
            p.join()
    finally:
        os.unlink(table.path)
    bad = [p.exitcode for p in procs if p.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT)]
    if bad:
        print(f"voxserve: worker exit codes {bad}", file=sys.stderr)
    return 1 if bad else 0
