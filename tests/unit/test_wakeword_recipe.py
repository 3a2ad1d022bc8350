"""The wakeword training recipe's pure parts: near-miss phrases."""

import pytest

from voxserve.models.wakeword_train import near_phrases

# The list the shipped models/wakeword/hey_jarvis.onnx was trained with: changing it changes the recipe
# (and breaks `voxserve-wakeword train "hey jarvis"` reproducing the shipped file byte for byte).
SHIPPED_HEY_JARVIS = [
    "a jarvis", "carcass", "hello", "hey", "hey charvis", "hey darvis", "hey davis", "hey garvis", "hey harvest",
    "hey harvis", "hey jar", "hey jarbis", "hey jarfis", "hey jarvi", "hey jarviss", "hey jarvith", "hey jarviz",
    "hey java", "hey jude", "hey marvin", "hey service", "hey there", "hey travis", "hi jarvis", "jars", "jarvi",
    "jarvis", "jarvis hey", "jervis bay", "nervous", "okay jarvis"]


def test_hey_jarvis_near_misses_are_the_shipped_recipe():
    assert near_phrases("hey jarvis") == SHIPPED_HEY_JARVIS


@pytest.mark.parametrize("phrase", ["computer", "alexa", "hey jarvis", "okay nabu", "hello home assistant", "Hey Mycroft"])
def test_no_near_miss_contains_the_wake_phrase(phrase):
    words = phrase.lower().split()
    got = near_phrases(phrase)
    assert len(got) >= 10 and len(set(got)) == len(got)
    for c in got:
        cw = c.split()
        assert not any(cw[i:i + len(words)] == words for i in range(len(cw))), (phrase, c)


def test_one_word_phrases_get_their_own_confusions_not_positives_in_disguise():
    got = near_phrases("computer")
    assert {"compute", "computers"} <= set(got)
    assert not {"okay computer", "hi computer", "a computer", "computer computer"} & set(got)
