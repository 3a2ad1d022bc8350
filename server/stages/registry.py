"""Name -> stage factory. Stages import their models lazily so a VAD-only server starts fast."""

from __future__ import annotations

from typing import Any


def create_stage(name: str, settings: Any, metrics: Any, admission: Any = None):
    if name == "wakeword":
        from .wakeword import WakewordStage
        return WakewordStage(settings, metrics, admission)
    if name == "asr":
        from .asr import AsrStage
        return AsrStage(settings, metrics, admission)
    if name == "vc":
        from .vc import VcStage
        return VcStage(settings, metrics, admission)
    raise ValueError(f"unknown pipeline {name!r} in settings (known: vad, wakeword, asr, vc)")
