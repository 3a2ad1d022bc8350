"""The ASR load benchmark's WER pairing (bench/asr_load.py): a figure is only as honest as the way its
hypotheses are matched to references."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from asr_load import aligned_pairs  # noqa: E402


def test_sentences_and_results_that_overlap_are_compared_as_one_group():
    spans = [(0, 100, "a b"), (150, 300, "c d"), (400, 500, "e"), (600, 700, "f")]
    results = [{"start_sample": 70, "end_sample": 320, "text": "b c d"},      # one result over two sentences
               {"start_sample": 0, "end_sample": 60, "text": "a"},
               {"start_sample": 410, "end_sample": 450, "text": "e"},           # one sentence, two results
               {"start_sample": 455, "end_sample": 490, "text": "ee"}]
    assert aligned_pairs(spans, results, 700 + 16000) == [("a b c d", "a b c d"), ("e", "e ee"), ("f", "")]


def test_a_sentence_not_sent_completely_is_left_out_with_its_group():
    spans = [(0, 100, "a"), (150, 16300, "b")]
    results = [{"start_sample": 0, "end_sample": 200, "text": "a b"}]
    assert aligned_pairs(spans, results, 16300) == []
    assert aligned_pairs(spans, results, 32300) == [("a b", "a b")]
