"""Event counting of the wakeword evaluation: the server's threshold, patience and refractory rules."""

import numpy as np

from voxserve.models.wakeword_eval import REFRACTORY_STEPS, count_events, rolling_min, streak_ok


def test_patience_needs_consecutive_steps():
    s = np.array([0.9, 0.1, 0.9, 0.1, 0.9, 0.9, 0.1])
    assert count_events(s, 0.5) == 1                      # 0.9 at 0 fires; 2 and 4 are inside the refractory time
    assert count_events(s, 0.5, patience=2) == 1           # only steps 4-5 are two in a row
    assert count_events(s, 0.5, patience=3) == 0
    assert list(streak_ok(s, 0.5, 2)) == [False, False, False, False, False, True, False]


def test_refractory_counts_from_the_firing_step():
    s = np.full(3 * REFRACTORY_STEPS, 0.9)
    assert count_events(s, 0.5) == 3                       # fires at 0, 25, 50
    assert count_events(s, 0.5, patience=3) == 3           # at 2, 27, 52
    s[REFRACTORY_STEPS + 1] = 0.0                          # a dip resets the streak, not the refractory clock
    assert count_events(s, 0.5, patience=3) == 3           # 2, 28, 53


def test_rolling_min_is_what_a_run_must_clear():
    s = np.array([0.2, 0.8, 0.7, 0.95, 0.1])
    assert list(rolling_min(s, 2)) == [0.2, 0.7, 0.7, 0.1]
    best = rolling_min(s, 2).max()
    assert count_events(s, best, patience=2) == 1 and count_events(s, best + 0.01, patience=2) == 0
    assert len(rolling_min(s[:1], 2)) == 0
