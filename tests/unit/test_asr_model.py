"""Moonshine through our engines: tokenizer, .ort/.onnx parity, transcripts of real speech."""

import numpy as np
import pytest
import soundfile as sf

from voxserve.engines.factory import create_engine
from voxserve.engines.ort_to_onnx import converted, ort_to_onnx
from voxserve.server.asr.moonshine import MoonshineModel, _looping, model_dir
from voxserve.server.asr.tokenizer import Tokenizer

from ..conftest import shared_or_skip


@pytest.fixture(scope="module")
def model():
    return MoonshineModel()


def test_tokenizer_round_trip():
    tok = Tokenizer.load(model_dir() / "tokenizer.bin")
    assert len(tok) == 32000 and tok.decode([tok.bos, tok.eos]) == ""
    for text in ("Ever tried. Ever failed.", "six times ten equals sixty, not 600000 — café 12%"):
        ids = tok.encode(text)
        assert all(0 <= i < len(tok) for i in ids)
        assert tok.decode(ids) == text


def test_converted_graphs_are_standard_onnx_and_match_the_ort_originals():
    d = model_dir()
    for name in ("encoder_model.ort", "decoder_model_merged.ort"):
        m = ort_to_onnx(d / name)
        domains = {n.domain or "ai.onnx" for n in m.graph.node}
        for n in m.graph.node:
            for a in n.attribute:
                if a.type == 5:
                    domains |= {x.domain or "ai.onnx" for x in a.g.node}
        assert domains == {"ai.onnx"}, domains
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((1, 32000)) * 0.05).astype(np.float32)
    enc_ort = create_engine(d / "encoder_model.ort", "onnxruntime-cpu")
    enc_onnx = create_engine(converted(d / "encoder_model.ort"), "onnxruntime-cpu")
    h1 = enc_ort.infer({"input_values": audio})["last_hidden_state"]
    h2 = enc_onnx.infer({"input_values": audio})["last_hidden_state"]
    np.testing.assert_allclose(h1, h2, atol=1e-3, rtol=1e-3)
    dec_ort = create_engine(d / "decoder_model_merged.ort", "onnxruntime-cpu")
    dec_onnx = create_engine(converted(d / "decoder_model_merged.ort"), "onnxruntime-cpu")
    feeds = {s.name: np.zeros((1, 8, 1, 52), np.float32) for s in dec_ort.inputs if s.name.startswith("past")}
    feeds.update(encoder_hidden_states=h1, input_ids=np.array([[1]], np.int64), use_cache_branch=np.array([False]))
    l1 = dec_ort.infer(feeds)["logits"]
    l2 = dec_onnx.infer(feeds)["logits"]
    np.testing.assert_allclose(l1, l2, atol=1e-2, rtol=1e-3)
    assert l1[0, -1].argmax() == l2[0, -1].argmax()


def test_transcribes_real_speech(model):
    x, rate = sf.read(shared_or_skip("eval", "speech", "moonshine-test-assets", "beckett.wav"), dtype="float32")
    assert rate == 16000
    text = model.transcribe([x])[0].text.lower()
    for word in ("ever", "tried", "failed", "matter", "better"):
        assert word in text, text


def test_equal_lengths_batch_like_singles(model):
    x, _ = sf.read(shared_or_skip("eval", "speech", "moonshine-test-assets", "beckett.wav"), dtype="float32")
    a, b = x[:48000], x[48000:96000]
    batched = model.transcribe([a, b])
    assert [h.text for h in batched] == [model.transcribe([a])[0].text, model.transcribe([b])[0].text]


def test_loop_guard_cuts_repeats_but_keeps_real_repetition():
    t = [9, 1, 2, 3, 4, 1, 2, 3, 4]
    assert _looping(t) and t == [9, 1, 2, 3, 4]
    t = [7, 7]
    assert not _looping(t) and t == [7, 7]            # "five five"
    t = [7, 7, 7]
    assert not _looping(t) and t == [7, 7, 7]         # "no no no", or the zeros of "600,000"
    t = [3, 0, 0, 0, 0, 0, 0, 0, 0]
    assert _looping(t) and t == [3, 0]
    t = [5, 1, 2, 1, 2, 1, 2, 1, 2]
    assert _looping(t) and t == [5, 1, 2]


def _bench_audio():
    """The benchmarks' audio helpers (bench/asr_load.py): ``load16`` (any file of ../shared to 16 kHz float32)
    and ``playlist`` (sentences joined with pauses, as the load benchmark streams them)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from asr_load import load16, playlist
    return load16, playlist


def test_with_int8_a_transcript_does_not_depend_on_what_shares_its_call():
    """Dynamic int8 quantizes a MatMul's input with one scale over the whole tensor, so rows batched together
    would change each other's results: a stream's transcript would depend on other streams. Speech of the
    18 sentences joined with 0.15 s pauses, cut into 12 s segments, each decoded alone and beside the
    segment 3 s later (same length, so the same call if they were batched): the same tokens. (Batched, 4 of
    the 9 segments decoded differently.)"""
    import csv

    load16, _ = _bench_audio()
    root = shared_or_skip("eval", "speech")
    parts = []
    for row in csv.reader(open(root / "manifest.tsv"), delimiter="\t"):
        if row[0] == "path" or "alphanumeric" in row[0] or "cards" in row[0]:
            continue
        parts += [load16(root / row[0]), np.zeros(2400, np.float32)]
    speech = np.concatenate(parts)
    int8 = MoonshineModel("onnxruntime-cpu", int8=True)
    assert int8.rows_alone
    for start in range(0, len(speech) - 16 * 16000, 9 * 16000):
        a, other = speech[start:start + 12 * 16000], speech[start + 3 * 16000:start + 15 * 16000]
        assert int8.transcribe([a, other])[0].tokens == int8.transcribe([a])[0].tokens, start


def test_end_of_text_first_needs_half_the_probability():
    """An empty transcript (end of text right after BOS) only when end of text has at least half the
    probability; otherwise the likeliest other token starts the text. Other first tokens are left alone."""
    model = MoonshineModel("onnxruntime-cpu")
    eos, vocab = model.tokenizer.eos, 64
    logits = np.full((3, vocab), -10.0, np.float32)
    logits[0, eos], logits[0, 7] = np.log(0.24), np.log(0.23)     # near tie, the rest spread thin
    logits[0, 8:] = np.log(0.53 / (vocab - 8))
    logits[1, eos], logits[1, 7] = 3.0, 1.0                       # end of text dominates: kept
    logits[2, 9] = 2.0                                            # greedy chose a word: kept
    greedy = logits.argmax(axis=1)
    assert list(greedy) == [eos, eos, 9]
    assert list(model._first_token(logits, greedy)) == [7, eos, 9]


def test_int8_speech_at_a_near_tie_with_end_of_text_is_still_transcribed():
    """The dictation benchmark's playlist (bench/asr_load.py: sentences joined with 0.15 s pauses, from JFK
    on) holds 8.9 s of speech, JFK's last words then "Ever tried. Ever failed.", on which the int8 encoder
    leaves end of text and "Ask" at 0.24 / 0.23 after BOS: greedy decoding gave an empty transcript, so
    the final was lost. Speech-free clips (../shared/eval/noise, 3 s windows) must still give nothing."""
    import csv

    load16, playlist = _bench_audio()
    root = shared_or_skip("eval", "speech")
    rows = [r for r in csv.DictReader(open(root / "manifest.tsv"), delimiter="\t") if "alphanumeric" not in r["path"]]
    refs = [r["reference"] for r in rows]
    first = next(i for i, r in enumerate(refs) if "fellow Americans" in r)
    pcm, _ = playlist([load16(root / r["path"]) for r in rows], refs, first, 20.0, 0.15)
    x = (np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)[127840:270080]
    int8 = MoonshineModel("onnxruntime-cpu", int8=True)
    text = int8.transcribe([x], bucket_samples=4000)[0].text.lower()
    assert "your country" in text and "ever failed" in text, text
    for path in sorted(p for p in shared_or_skip("eval", "noise").rglob("*") if p.suffix in (".wav", ".ogg", ".opus")):
        y = load16(path)
        windows = [y[i:i + 48000] for i in range(0, len(y), 48000) if len(y[i:i + 48000]) >= 16000]
        assert [h.text for h in int8.transcribe(windows, bucket_samples=4000)] == [""] * len(windows), path


def test_teacher_forced_hint_gives_the_greedy_transcript_with_fewer_decoder_calls(speech16k):
    """Interims of a growing segment, each hinted with the previous one's tokens: every transcript equals
    the unhinted greedy decode, and the decoder runs far fewer times (the prefix is one call)."""
    from voxserve.server.asr.moonshine import MoonshineModel

    model = MoonshineModel("onnxruntime-cpu")
    calls = [0]
    infer = model.decoder.infer_device                # the merged graph serves both passes (fp32)
    assert model.decoder_step is model.decoder

    def counted(feeds, host):
        calls[0] += 1
        return infer(feeds, host)
    model.decoder.infer_device = counted
    plain_calls = hinted_calls = 0
    prev = None
    for n in range(16000, len(speech16k), 8000):
        calls[0] = 0
        plain = model.transcribe([speech16k[:n]])[0]
        plain_calls += calls[0]
        calls[0] = 0
        hinted = model.transcribe([speech16k[:n]], hints=[prev.tokens if prev else None])[0]
        hinted_calls += calls[0]
        assert hinted.tokens == plain.tokens, n
        prev = plain
    assert hinted_calls * 3 < plain_calls, (hinted_calls, plain_calls)
    wrong = model.transcribe([speech16k[:48000]], hints=[[5, 6, 7, 8]])[0]     # a hint that does not fit
    assert wrong.tokens == model.transcribe([speech16k[:48000]])[0].tokens


def test_a_hint_that_differs_midway_is_still_used_after_the_difference(speech16k):
    """A hint with a token replaced, dropped or added midway (an interim whose punctuation or one word
    changed): the transcript is the unhinted greedy one, and the hint after the difference still saves
    decoder calls (it is re-found and fed as a draft), so fewer calls than a hint cut at the difference."""
    model = MoonshineModel("onnxruntime-cpu")
    calls = [0]
    infer = model.decoder.infer_device

    def counted(feeds, host):
        calls[0] += 1
        return infer(feeds, host)
    model.decoder.infer_device = counted
    x = speech16k                                     # 11 s, about 25 tokens
    plain = model.transcribe([x])[0].tokens
    assert len(plain) > 15
    mid = len(plain) // 3
    for hint in (plain[:mid] + [plain[mid] + 1] + plain[mid + 1:],      # one token replaced
                 plain[:mid] + plain[mid + 1:],                           # one dropped
                 plain[:mid] + [plain[mid] + 1] + plain[mid:]):           # one added
        calls[0] = 0
        assert model.transcribe([x], hints=[hint])[0].tokens == plain
        drafted = calls[0]
        calls[0] = 0
        assert model.transcribe([x], hints=[plain[:mid]])[0].tokens == plain
        assert drafted + 4 <= calls[0], (drafted, calls[0])


def test_split_decoder_branches_match_the_merged_graph():
    """The no-cache and with-cache graphs cut out of the merged decoder give the merged graph's outputs
    (no sample audio needed: random encoder states and a random cache)."""
    import functools

    from voxserve.engines.graph_fixes import cached_derivative, if_branch

    merged_path = converted(model_dir() / "decoder_model_merged.ort")
    merged = create_engine(merged_path, "onnxruntime-cpu")
    rng = np.random.default_rng(0)
    names = [s.name for s in merged.inputs]
    base = {"encoder_hidden_states": rng.standard_normal((1, 50, 416)).astype(np.float32)}
    for branch, flag, past, ids in (("else_branch", False, 1, [[1, 300, 301]]), ("then_branch", True, 4, [[302]])):
        feeds = dict(base, input_ids=np.array(ids, np.int64), use_cache_branch=np.array([flag]))
        for n in names:
            if n.startswith("past_key_values"):
                t = 50 if ".encoder." in n else past
                feeds[n] = rng.standard_normal((1, 8, t, 52)).astype(np.float32)
        split = create_engine(cached_derivative(merged_path, "nocache" if not flag else "cache",
                                                functools.partial(if_branch, branch=branch)), "onnxruntime-cpu")
        want, got = merged.infer(feeds), split.infer(feeds)
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["present.0.decoder.key"], want["present.0.decoder.key"], rtol=1e-5, atol=1e-5)


def test_folded_decoder_graphs_compute_what_the_split_graphs_compute(monkeypatch):
    """Shape folding (the int8 CPU default's last rewrite) leaves far fewer nodes and the same values, for
    any batch, token count and cache length: bit for bit as written (ONNX Runtime's optimizer off); with
    the optimizer on, the folded graph lets it fuse more, which reorders float sums (the original graph
    moves as much between optimizer levels). No sample audio needed: random states and cache."""
    import functools

    import onnx
    import onnxruntime as ort

    from voxserve.engines.graph_fixes import cached_derivative, fold_shapes, if_branch

    def session(path, level):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    merged_path = converted(model_dir() / "decoder_model_merged.ort")
    rng = np.random.default_rng(0)
    plain, full = ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for tag, branch, cases in (("nocache", "else_branch", ((1, 3, 0), (2, 1, 0))),
                               ("cache", "then_branch", ((1, 1, 0), (1, 1, 13), (2, 1, 5), (1, 4, 7)))):
        split_path = cached_derivative(merged_path, tag, functools.partial(if_branch, branch=branch))
        folded_path = cached_derivative(split_path, "shapes", fold_shapes)
        assert len(onnx.load(str(folded_path)).graph.node) <= len(onnx.load(str(split_path)).graph.node) - 150
        sessions = {(p, lv): session(p, lv) for p in (split_path, folded_path) for lv in (plain, full)}
        names = [i.name for i in sessions[split_path, plain].get_inputs()]
        for batch, tokens, past in cases:
            feeds = {"encoder_hidden_states": rng.standard_normal((batch, 40, 416)).astype(np.float32),
                     "input_ids": rng.integers(0, 32768, (batch, tokens)).astype(np.int64),
                     "use_cache_branch": np.array([tag == "cache"])}
            for n in names:
                if n.startswith("past_key_values"):
                    feeds[n] = rng.standard_normal((batch, 8, 40 if ".encoder." in n else past, 52)).astype(np.float32)
            want, got = (sessions[split_path, plain].run(None, feeds), sessions[folded_path, plain].run(None, feeds))
            for w, g in zip(want, got):
                np.testing.assert_array_equal(g, w)
            optimized = sessions[folded_path, full].run(None, feeds)
            np.testing.assert_allclose(optimized[0], want[0], rtol=1e-3, atol=1e-3)
    import voxserve.engines.graph_fixes as gf

    made, real = [], gf.cached_derivative
    monkeypatch.setattr(gf, "cached_derivative", lambda path, tag, make: made.append(tag) or real(path, tag, make))
    MoonshineModel("onnxruntime-cpu", int8=True)
    assert made.count("shapes") == 2, made                    # the int8 CPU default runs both decoders folded


def _words(text: str) -> list[str]:
    return "".join(ch for ch in text.lower() if ch.isalnum() or ch in " '").split()


def test_int8_model_gives_the_fp32_transcripts(speech16k):
    """The shipped CPU default (asr_precision auto = int8) against the fp32 graphs on real speech: the
    same words for whole sentences (punctuation may differ); audio cut mid-word (an interim) may end in
    another guess at the cut word, but every word before it agrees."""
    fp32, int8 = MoonshineModel("onnxruntime-cpu"), MoonshineModel("onnxruntime-cpu", int8=True)
    assert int8.decoder_step is not int8.decoder and int8.encoder.describe()["precision"].startswith("int8")
    x, _ = sf.read(shared_or_skip("eval", "speech", "moonshine-test-assets", "beckett.wav"), dtype="float32")
    for audio in (speech16k, x):
        assert _words(int8.transcribe([audio])[0].text) == _words(fp32.transcribe([audio])[0].text)
    for n in (48000, 96000):
        a, b = (_words(m.transcribe([speech16k[:n]])[0].text) for m in (int8, fp32))
        assert a[:len(b) - 1] == b[:-1] and abs(len(a) - len(b)) <= 1, (a, b)


def test_kv_cache_kept_in_engine_buffers_gives_the_numpy_path_result(speech16k):
    """The decoder loop keeps its KV caches as ONNX Runtime buffers (I/O binding: on a GPU they never
    cross to the host); forced through the plain numpy path the tokens are the same, hinted or not."""
    from voxserve.engines.base import Engine

    model = MoonshineModel("onnxruntime-cpu", int8=True)
    bound = [model.transcribe([speech16k[:n]])[0].tokens for n in (40000, 96000, len(speech16k))]
    hinted = model.transcribe([speech16k], hints=[bound[1] + [5, 6]])[0].tokens     # a hint cut short
    for e in (model.decoder, model.decoder_step):
        e.infer_device = Engine.infer_device.__get__(e)
    plain = [model.transcribe([speech16k[:n]])[0].tokens for n in (40000, 96000, len(speech16k))]
    assert bound == plain and hinted == plain[2]
