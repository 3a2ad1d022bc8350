"""Text normalisation for WER: case, punctuation, hyphens, numbers and a few spelling variants.

Both reference and hypothesis go through the same function, so the choices only decide what counts
as the same word (``Mr``/``mister``, ``6``/``six``, ``metres``/``meters``, ``ill-disposed``/``ill disposed``).
"""

from __future__ import annotations

import re

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SPELL = {"mr": "mister", "mrs": "missus", "dr": "doctor", "metres": "meters", "metre": "meter",
          "seatbelts": "seat belts", "seatbelt": "seat belt", "ok": "okay", "colour": "color"}
_SYMBOLS = {"×": " times ", "=": " equals ", "%": " percent ", "&": " and ", "+": " plus "}


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for size, name in ((10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand")):
        if n >= size:
            return number_words(n // size) + " " + name + ("" if n % size == 0 else " " + number_words(n % size))
    return str(n)


def normalize(text: str) -> list[str]:
    t = text.lower()
    for sym, word in _SYMBOLS.items():
        t = t.replace(sym, word)
    t = re.sub(r"\d+", lambda m: " " + number_words(int(m.group())) + " ", t)
    t = t.replace("-", " ")
    t = re.sub(r"[^a-z' ]", " ", t)
    words = []
    for w in t.split():
        w = w.strip("'")
        if w:
            words.extend(_SPELL.get(w, w).split())
    return words


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    d = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, d[0] = d[:], i
        for j in range(1, len(hyp) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (ref[i - 1] != hyp[j - 1]))
    return d[len(hyp)]


def wer(pairs: list[tuple[str, str]]) -> float:
    """Corpus WER over (reference, hypothesis) pairs."""
    errors = sum(edit_distance(normalize(r), normalize(h)) for r, h in pairs)
    words = sum(len(normalize(r)) for r, _ in pairs)
    return errors / max(1, words)
