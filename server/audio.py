"""Per-stream audio plumbing: streaming resampler and an absolute-index ring buffer.

Units: positions are sample indices at ``MODEL_RATE`` (16 kHz) counted from the start of the
stream unless a name says otherwise; ``*_ms`` values are milliseconds.
"""

from __future__ import annotations

import numpy as np
import soxr

MODEL_RATE = 16000


def samples_to_ms(samples: int | float, rate: int = MODEL_RATE) -> float:
    return 1000.0 * samples / rate


class StreamResampler:
    """Streaming anti-aliased resampler (libsoxr, HQ) from ``in_rate`` to ``out_rate``.

    Output sample ``k`` corresponds to input time ``k / out_rate`` (soxr compensates its own delay),
    so absolute positions survive resampling. Output is exactly independent of how the input is
    chunked. soxr holds back up to ~30 ms (rate dependent) until more input or ``finish()``.
    Equal rates pass through untouched.
    """

    def __init__(self, in_rate: int, out_rate: int = MODEL_RATE):
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._rs = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32",
                                                                         quality="HQ")
        self.finished = False

    def process(self, x: np.ndarray) -> np.ndarray:
        """Float32 mono at ``in_rate`` -> float32 mono at ``out_rate`` (possibly empty)."""
        if self.finished:
            raise RuntimeError("resampler already finished")
        if self._rs is None:
            return x
        return self._rs.resample_chunk(np.ascontiguousarray(x, dtype=np.float32), last=False)

    def finish(self) -> np.ndarray:
        """End of stream: return the held-back tail."""
        if self.finished:
            return np.zeros(0, np.float32)
        self.finished = True
        if self._rs is None:
            return np.zeros(0, np.float32)
        return self._rs.resample_chunk(np.zeros(0, np.float32), last=True)


class RingBuffer:
    """Fixed-capacity float32 ring with absolute indices.

    ``end`` is the absolute index one past the newest sample; samples in
    ``[max(0, end - capacity), end)`` are readable. Reading anything older raises ``IndexError``
    (a stage fell further behind than the buffer holds).
    """

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, np.float32)
        self.end = 0

    def release(self) -> None:
        """Free the buffer now (the stream ended; its session may live on a while in reference cycles
        until the garbage collector's next full pass). Later appends are ignored and reads fail."""
        self._buf = np.zeros(0, np.float32)
        self.capacity = 0

    @property
    def start(self) -> int:
        """Oldest readable absolute index."""
        return max(0, self.end - self.capacity)

    def append(self, x: np.ndarray) -> None:
        n = int(x.shape[0])
        if n == 0 or self.capacity == 0:
            return
        if n >= self.capacity:
            x = x[-self.capacity:]
            self.end += n - self.capacity
            n = self.capacity
        pos = self.end % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[pos:pos + first] = x[:first]
        if first < n:
            self._buf[:n - first] = x[first:]
        self.end += n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Copy of absolute range ``[start, stop)``. Negative ``start`` is zero-padded (stream start)."""
        if stop < start:
            raise ValueError("stop < start")
        if stop > self.end:
            raise IndexError(f"range ends at {stop}, buffer ends at {self.end}")
        pad = 0
        if start < 0:
            pad, start = -start, 0
        if self.capacity == 0:
            raise IndexError("the stream has ended: its audio was released")
        if start < self.start:
            raise IndexError(f"samples from {start} are overwritten (oldest kept is {self.start})")
        n = stop - start
        out = np.empty(pad + n, np.float32)
        out[:pad] = 0.0
        pos = start % self.capacity
        first = min(n, self.capacity - pos)
        out[pad:pad + first] = self._buf[pos:pos + first]
        if first < n:
            out[pad + first:] = self._buf[:n - first]
        return out
