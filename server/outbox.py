"""Bounded per-stream outbound event queue (pure, no I/O).

Policy for a client that reads too slowly: above ``soft`` queued events, the oldest *droppable*
event (interim transcripts, streamed audio, budget notices) is discarded for each new one; finals,
errors and state events are never dropped. Above ``hard`` queued events even after dropping,
:class:`SlowConsumer` is raised and the stream is closed with a typed reason.
"""

from __future__ import annotations

from collections import deque


class SlowConsumer(Exception):
    pass


class Outbox:
    def __init__(self, soft: int = 256, hard: int = 1024):
        self.soft = soft
        self.hard = hard
        self._q: deque[tuple[dict, bool]] = deque()
        self._droppable = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._q)

    def put(self, event: dict, droppable: bool = False) -> dict | None:
        """Queue ``event``; return the stale event dropped to make room, if one was."""
        dropped = None
        if len(self._q) >= self.soft and self._droppable:
            dropped = self._drop_oldest_droppable()
        if len(self._q) >= self.hard:
            raise SlowConsumer(f"{len(self._q)} events queued for a client that is not reading")
        self._q.append((event, droppable))
        self._droppable += droppable
        return dropped

    def _drop_oldest_droppable(self) -> dict | None:
        for i, (ev, d) in enumerate(self._q):
            if d:
                del self._q[i]
                self._droppable -= 1
                self.dropped += 1
                return ev
        return None

    @property
    def kept(self) -> int:
        """Queued events that will not be dropped."""
        return len(self._q) - self._droppable

    @property
    def backlogged(self) -> bool:
        """More events that must be delivered are queued than the soft limit: the producer should wait
        (backpressure). Droppable events never cause it: stale ones are shed instead."""
        return self.kept >= self.soft

    def pop(self) -> dict | None:
        if not self._q:
            return None
        event, d = self._q.popleft()
        self._droppable -= d
        return event
