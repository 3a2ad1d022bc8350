"""Reading audio files for streaming: WAV/FLAC/OGG via soundfile, or headerless raw PCM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class PcmSource:
    """Interleaved PCM ready to send: ``data`` bytes in ``encoding`` at ``sample_rate`` with ``channels``."""

    data: bytes
    sample_rate: int
    channels: int
    encoding: str

    @property
    def bytes_per_frame(self) -> int:
        return (2 if self.encoding == "s16le" else 4) * self.channels

    @property
    def duration_s(self) -> float:
        return len(self.data) / self.bytes_per_frame / self.sample_rate

    def frames(self, frame_ms: float):
        """Yield chunks of ``frame_ms`` milliseconds (the last may be shorter)."""
        step = max(1, int(round(self.sample_rate * frame_ms / 1000.0))) * self.bytes_per_frame
        for i in range(0, len(self.data), step):
            yield self.data[i:i + step]


def load_audio(path: str | Path, *, raw_rate: int = 16000, raw_encoding: str = "s16le",
               raw_channels: int = 1) -> PcmSource:
    """Load ``path``; ``.raw``/``.pcm`` files use the ``raw_*`` layout. More than 2 channels are averaged."""
    path = Path(path)
    if path.suffix.lower() in (".raw", ".pcm"):
        return PcmSource(path.read_bytes(), raw_rate, raw_channels, raw_encoding)
    import soundfile as sf

    info = sf.info(str(path))
    is_float = info.subtype in ("FLOAT", "DOUBLE")
    data, rate = sf.read(str(path), dtype="float32" if is_float else "int16", always_2d=True)
    if data.shape[1] > 2:
        data = data.astype(np.float32).mean(axis=1, keepdims=True)
        if not is_float:
            data = np.clip(np.round(data), -32768, 32767).astype(np.int16)
    enc = "f32le" if data.dtype == np.float32 else "s16le"
    return PcmSource(np.ascontiguousarray(data).astype("<f4" if enc == "f32le" else "<i2").tobytes(), int(rate),
                     int(data.shape[1]), enc)


def pcm_from_array(x: np.ndarray, sample_rate: int) -> PcmSource:
    """Mono float array in [-1, 1] -> s16le source."""
    pcm = np.clip(np.round(np.asarray(x, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    return PcmSource(pcm.tobytes(), sample_rate, 1, "s16le")
