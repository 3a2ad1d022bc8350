"""Helpers for real-socket tests: run the project's client from a thread, open raw sockets."""

from __future__ import annotations

import asyncio
import threading

import soundfile as sf
import soxr

from voxserve.clients.audiofile import PcmSource, load_audio, pcm_from_array
from voxserve.clients.client import StreamResult, stream_source


def stream(url: str, source: PcmSource, **kw) -> StreamResult:
    return asyncio.run(stream_source(url, source, **kw))


def vad_events(result: StreamResult) -> list[tuple]:
    return [(e["event"], e["start_ms"], e.get("end_ms")) for e in result.of_type("vad")]


def resampled_source(path, rate: int) -> PcmSource:
    x, r = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    return pcm_from_array(soxr.resample(x, r, rate) if r != rate else x, rate)


class Neighbour:
    """A well-behaved stream running in a thread while a test misbehaves next to it."""

    def __init__(self, url: str, source: PcmSource, speed: float = 1.0, **kw):
        self.result: StreamResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url, source, speed, kw), daemon=True)
        self._thread.start()

    def _run(self, url, source, speed, kw):
        try:
            self.result = stream(url, source, speed=speed, frame_ms=20, **kw)
        except BaseException as exc:  # reported by join()
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = 120.0) -> StreamResult:
        self._thread.join(timeout)
        if self.error:
            raise self.error
        assert self.result is not None, "neighbour did not finish"
        return self.result


def loop_source(path, times: int) -> PcmSource:
    src = load_audio(path)
    return PcmSource(src.data * times, src.sample_rate, src.channels, src.encoding)
