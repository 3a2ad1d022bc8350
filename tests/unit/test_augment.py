"""Training-data augmentation (models/augment.py): backgrounds are finite, unit RMS and seeded; the SNR
rule measures speech where it is."""

import numpy as np
import pytest
from voxserve.models import augment as au


@pytest.mark.parametrize("kind", [k for k in au.BACKGROUND_KINDS if k != "babble"])
def test_every_background_kind_is_finite_unit_rms_and_seeded(kind):
    banks = [au.background_bank(np.random.default_rng(7), [], per_kind=3, seconds=2.0, kinds=(kind,))
             for _ in range(2)]
    assert len(banks[0]) == 3
    for a, b in zip(*banks):
        assert a.shape == (32000,) and a.dtype == np.float32 and np.isfinite(a).all()
        assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
        np.testing.assert_array_equal(a, b)                    # same seed, same audio
    assert not np.array_equal(banks[0][0], banks[0][1])       # clips of one kind differ


def test_babble_mixes_the_given_talkers_and_unknown_kinds_are_refused():
    rng = np.random.default_rng(0)
    talker = np.sin(2 * np.pi * 200 * np.arange(8000) / 16000).astype(np.float32)
    (bab,) = au.background_bank(rng, [talker], per_kind=1, seconds=1.0, kinds=("babble",))
    spec = np.abs(np.fft.rfft(bab))
    assert abs(int(np.argmax(spec)) - 200) <= 1                 # 1 s at 16 kHz: bin = Hz
    with pytest.raises(ValueError, match="unknown background kinds"):
        au.background_bank(rng, [], kinds=("music", "thunder"))


def test_snr_is_measured_on_the_speech_span_not_on_the_silence_around_it():
    """A clip placed in a mostly silent stream must hear the noise level a bare clip would: with
    ``speech`` given, the reference power is the span's, so the noise is sqrt(32000/8000) = 2 times
    louder than when the whole (3/4 silent) stream is the reference; every random draw is the same."""
    tone = (0.05 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)).astype(np.float32)
    stream = np.concatenate([np.zeros(24000, np.float32), tone])
    noisy = 0
    for seed in range(12):
        whole = au.augment(np.random.default_rng(seed), stream)
        span = au.augment(np.random.default_rng(seed), stream, speech=(24000, 32000))
        lead_whole, lead_span = whole[:24000], span[:24000]
        if not np.any(lead_span):
            assert not np.any(lead_whole)                    # this draw added no noise at all
            continue
        noisy += 1
        np.testing.assert_allclose(lead_span, 2 * lead_whole, rtol=1e-4, atol=1e-7)
    assert noisy >= 6                                        # noise is added 80 % of the time


def test_training_refuses_unknown_noise_modes_and_backgrounds_before_any_work(tmp_path):
    from voxserve.models.wakeword_train import TrainConfig, train

    with pytest.raises(ValueError, match="noise_over modes"):
        train(TrainConfig("hey test", noise_over="clip,everywhere"), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="unknown background kinds"):
        train(TrainConfig("hey test", backgrounds="music,thunder"), tmp_path / "x.onnx")
    assert not any(tmp_path.iterdir())
