"""Quotas that are not message counts (pure; the caller passes a monotonic clock in seconds).

- :class:`AddressGate`: open WebSockets per client address and new WebSockets per second per address
  (token bucket), checked before a socket is accepted.
- :class:`AudioRate`: seconds of audio a stream may send per wall-clock second (token bucket in audio
  seconds). Faster input is *paced*: the reader waits before taking the next message, so TCP pushes back
  on the sender and nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    last: float


@dataclass
class AddressGate:
    max_open: int
    rate_per_s: float
    burst: int
    open: dict[str, int] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def admit(self, address: str, now: float) -> str | None:
        """Count a new connection from ``address``; the reason it is refused, or None (then call
        :meth:`release` when it closes)."""
        if self.open.get(address, 0) >= self.max_open:
            return f"{self.max_open} connections already open from this address"
        b = self._buckets.get(address)
        if b is None:
            b = self._buckets[address] = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.last) * self.rate_per_s)
        b.last = now
        if b.tokens < 1.0:
            return f"more than {self.rate_per_s:g} new connections per second from this address"
        b.tokens -= 1.0
        self.open[address] = self.open.get(address, 0) + 1
        return None

    def release(self, address: str) -> None:
        n = self.open.get(address, 0) - 1
        if n > 0:
            self.open[address] = n
        else:
            self.open.pop(address, None)

    def forget_idle(self, now: float) -> None:
        """Drop buckets that are full again (bounded memory under many addresses)."""
        for addr, b in list(self._buckets.items()):
            if addr not in self.open and b.tokens + (now - b.last) * self.rate_per_s >= self.burst:
                del self._buckets[addr]


@dataclass
class AudioRate:
    """``rate`` audio seconds per wall second with ``burst_s`` seconds of head room."""

    rate: float
    burst_s: float
    _tokens: float | None = None
    _last: float = 0.0

    def wait_for(self, audio_s: float, now: float) -> float:
        """Take ``audio_s`` seconds of audio; return how long (s) the reader should wait before the next
        message so that the stream stays within its rate (0 when it is within)."""
        if self._tokens is None:
            self._tokens, self._last = self.burst_s, now
        self._tokens = min(self.burst_s, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= audio_s
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
