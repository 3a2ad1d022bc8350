"""Pipeline stages. A :class:`Stage` is shared by all streams and owns models/schedulers;
``Stage.open`` creates the per-stream :class:`StageStream` that holds every piece of stream state."""

from .base import Stage, StageStream, StreamContext

__all__ = ["Stage", "StageStream", "StreamContext"]
