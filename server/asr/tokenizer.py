"""Reader for Moonshine's ``tokenizer.bin`` (shipped in the ``moonshine-cpp`` package): no hub download.

Format (read off the file): a sequence of entries, one per token id in order, each a length (a
varint: 7 bits per byte, high bit = more) followed by that many bytes of UTF-8. Ids 0-2 are
``<unk>``, ``<s>``, ``</s>``; ids 3-258 are the byte-fallback tokens (one raw byte each); the rest are
SentencePiece pieces where U+2581 (``▁``) marks a word boundary.
"""

from __future__ import annotations

from pathlib import Path

SPACE = "\u2581"


class Tokenizer:
    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces
        self.unk, self.bos, self.eos = 0, 1, 2
        self.byte_base = 3
        self._index = {p: i for i, p in enumerate(pieces) if i >= self.byte_base + 256}

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        data = Path(path).read_bytes()
        pieces, i = [], 0
        while i < len(data):
            n, shift = 0, 0
            while True:
                b = data[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            pieces.append(data[i:i + n])
            i += n
        if i != len(data) or len(pieces) < 259:
            raise ValueError(f"{path}: not a Moonshine tokenizer.bin")
        return cls(pieces)

    def __len__(self) -> int:
        return len(self.pieces)

    def decode(self, ids) -> str:
        """Token ids -> text (special tokens dropped, byte tokens joined, ``▁`` -> space)."""
        out = bytearray()
        for t in ids:
            t = int(t)
            if t < self.byte_base or t >= len(self.pieces):
                continue
            if t < self.byte_base + 256:
                out += bytes([t - self.byte_base])
            else:
                out += self.pieces[t]
        return out.decode("utf-8", errors="replace").replace(SPACE, " ").strip()

    def encode(self, text: str) -> list[int]:
        """Greedy longest-match encoding (for round-trip tests; the model never needs it)."""
        data = (SPACE + text.replace(" ", SPACE)).encode()
        ids, i = [], 0
        longest = max(len(p) for p in self._index)
        while i < len(data):
            for n in range(min(longest, len(data) - i), 0, -1):
                t = self._index.get(data[i:i + n])
                if t is not None:
                    ids.append(t)
                    i += n
                    break
            else:
                ids.append(self.byte_base + data[i])
                i += 1
        return ids
