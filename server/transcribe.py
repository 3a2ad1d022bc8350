"""Whole-file transcription on the shared ASR model (what ``POST /v1/audio/transcriptions`` runs).

Data path: uploaded bytes -> :func:`decode_audio` (libsndfile: WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF...;
anything else through ffmpeg when it is installed) -> 16 kHz float32 mono -> :func:`speech_segments`
(webrtcvad with the stream defaults, 200 ms pre-roll and 80 ms tail like a streamed final, segments
longer than 20 s split at their quietest 100 ms) -> every segment submitted at once to the ASR stage's
scheduler (the same one live streams use: segments of similar length share encoder/decoder calls; their
deadlines come after live streams' finals) -> :class:`Segment` results in order.
Units: sample positions at 16 kHz; times in seconds.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import numpy as np

from .audio import MODEL_RATE
from .protocol.errors import ErrorCode, ProtocolError
from .vad import VadSegmenter

PRE_ROLL = 3200          # 200 ms
TAIL = 1280              # 80 ms
MAX_SEGMENT = 20 * MODEL_RATE
SOUNDFILE_FORMATS = "WAV, FLAC, Ogg Vorbis, Ogg Opus, MP3, AIFF"
FFMPEG_FORMATS = "M4A/AAC, WebM, MP4, and whatever else ffmpeg reads"


class UnsupportedFormat(ProtocolError):
    def __init__(self, message: str):
        super().__init__(ErrorCode.BAD_VALUE, message)


@dataclass
class Segment:
    id: int
    start: int                 # 16 kHz samples
    end: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)

    @property
    def start_s(self) -> float:
        return round(self.start / MODEL_RATE, 3)

    @property
    def end_s(self) -> float:
        return round(self.end / MODEL_RATE, 3)


def decode_audio(data: bytes) -> np.ndarray:
    """Uploaded file bytes -> 16 kHz float32 mono. Raises :class:`UnsupportedFormat` with the formats
    that are understood here."""
    import soundfile as sf
    import soxr

    try:
        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:                                    # libsndfile cannot read it: try ffmpeg
        return _ffmpeg_decode(data)
    x = x.mean(axis=1)
    if rate != MODEL_RATE:
        x = soxr.resample(x, rate, MODEL_RATE, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def _ffmpeg_decode(data: bytes) -> np.ndarray:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise UnsupportedFormat(f"cannot decode this file: readable here are {SOUNDFILE_FORMATS}; install ffmpeg "
                                f"for {FFMPEG_FORMATS}")
    import tempfile

    # A file, not a pipe: MP4/M4A keep their index at the end, which a pipe cannot seek to.
    with tempfile.NamedTemporaryFile(prefix="voxserve-upload-") as tmp:
        tmp.write(data)
        tmp.flush()
        out = subprocess.run([exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", tmp.name, "-vn", "-f",
                              "f32le", "-ac", "1", "-ar", str(MODEL_RATE), "pipe:1"], capture_output=True, timeout=600)
    if out.returncode != 0 or not out.stdout:
        detail = out.stderr.decode(errors="replace").strip().replace(tmp.name, "upload")[-200:]
        raise UnsupportedFormat(f"cannot decode this file as audio (neither libsndfile nor ffmpeg reads it): {detail}")
    return np.frombuffer(out.stdout, dtype="<f4").astype(np.float32)


def speech_segments(x: np.ndarray) -> list[tuple[int, int]]:
    """Speech spans of a 16 kHz signal as a streamed final would see them: VAD segments widened by the
    pre-roll and tail, merged where they touch, longer ones split at their quietest point."""
    vad = VadSegmenter()
    events = []
    for i in range(0, len(x), MODEL_RATE):
        events += vad.process(x[i:i + MODEL_RATE])
    events += vad.finish()
    spans: list[list[int]] = []
    for ev in events:
        if ev.kind != "speech_end" or ev.end is None:
            continue
        lo, hi = max(0, ev.start - PRE_ROLL), min(len(x), ev.end + TAIL)
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        while hi - lo > MAX_SEGMENT:
            cut = _quietest(x, lo + MAX_SEGMENT // 2, lo + MAX_SEGMENT)
            out.append((lo, cut))
            lo = cut
        if hi - lo >= 1600:                              # under 100 ms: nothing to say
            out.append((lo, hi))
    return out


def _quietest(x: np.ndarray, lo: int, hi: int, hop: int = 1600) -> int:
    energies = [float(np.mean(x[i:i + hop] ** 2)) for i in range(lo, hi - hop + 1, hop // 2)]
    return lo + int(np.argmin(energies)) * hop // 2 + hop // 2 if energies else (lo + hi) // 2


async def transcribe_segments(asr_stage, x: np.ndarray, spans: list[tuple[int, int]]) -> AsyncIterator[Segment]:
    """Submit every span to the ASR stage's shared scheduler at once; yield the results in order."""
    from .scheduler import RUN_LATE

    sched = asr_stage.schedulers["asr"]
    now = time.perf_counter()
    # Live streams' finals have 1 s budgets: a file's segments queue behind them (deadline ordering).
    futures = [sched.submit(x[lo:hi], deadline=now + 5.0 + i * 0.01, policy=RUN_LATE, weight=(hi - lo) / MODEL_RATE)
               for i, (lo, hi) in enumerate(spans)]
    try:
        for i, ((lo, hi), fut) in enumerate(zip(spans, futures)):
            out = await fut
            yield Segment(i, lo, hi, out.value.text.strip(), list(getattr(out.value, "tokens", []) or []))
    finally:
        for fut in futures:
            if not fut.done():
                fut.cancel()


def _clock(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: list[Segment]) -> str:
    cues = [s for s in segments if s.text]
    return "".join(f"{i}\n{_clock(s.start_s, ',')} --> {_clock(s.end_s, ',')}\n{s.text}\n\n"
                   for i, s in enumerate(cues, 1))


def to_vtt(segments: list[Segment]) -> str:
    cues = [s for s in segments if s.text]
    return "WEBVTT\n\n" + "".join(f"{_clock(s.start_s, '.')} --> {_clock(s.end_s, '.')}\n{s.text}\n\n" for s in cues)


def full_text(segments: list[Segment]) -> str:
    return " ".join(s.text for s in segments if s.text)


def verbose(segments: list[Segment], duration_s: float) -> dict:
    """OpenAI's ``verbose_json`` shape. Fields this model cannot produce (log probabilities, no-speech
    probability, compression ratio) are null rather than invented."""
    return {"task": "transcribe", "language": "english", "duration": round(duration_s, 3), "text": full_text(segments),
            "segments": [{"id": s.id, "seek": 0, "start": s.start_s, "end": s.end_s, "text": s.text,
                          "tokens": s.tokens, "temperature": 0.0, "avg_logprob": None, "compression_ratio": None,
                          "no_speech_prob": None} for s in segments if s.text]}


async def decode_in_thread(data: bytes) -> np.ndarray:
    return await asyncio.to_thread(decode_audio, data)
