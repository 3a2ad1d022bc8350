"""Wyoming framing, sans-I/O: bytes in, events out; events in, bytes out. No asyncio here.

A Wyoming message is a JSON header line (``type``, optional ``data``, ``data_length``, ``payload_length``,
``version``), then ``data_length`` bytes of JSON merged into ``data``, then ``payload_length`` bytes of
payload (PCM for ``audio-chunk``). :class:`WyomingParser` accepts any chunking of that byte stream
(one byte at a time gives the same events) and enforces limits: a header line of at most
``max_header`` bytes, data of at most ``max_data``, payload of at most ``max_payload``. Anything else
is a :class:`FramingError`, after which the parser accepts nothing more (a byte stream that lost its
framing cannot be resynchronised).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

WYOMING_VERSION = "1.5.4"


@dataclass(frozen=True)
class WyEvent:
    type: str
    data: dict = field(default_factory=dict)
    payload: bytes | None = None


class FramingError(Exception):
    """Bad framing; ``code`` is stable (``bad_header``, ``bad_length``, ``too_large``, ``bad_data``)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def encode(event_type: str, data: dict | None = None, payload: bytes | None = None) -> bytes:
    """One message as bytes (data travels in the separate data section, as the reference library writes it)."""
    header: dict[str, Any] = {"type": event_type, "version": WYOMING_VERSION}
    body = b""
    if data:
        body = json.dumps(data, ensure_ascii=False).encode()
        header["data_length"] = len(body)
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header, ensure_ascii=False).encode() + b"\n" + body + (payload or b"")


def _length(header: dict, name: str, limit: int) -> int:
    v = header.get(name)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise FramingError("bad_length", f"{name} must be a non-negative integer, got {v!r:.40}")
    if v > limit:
        raise FramingError("too_large", f"{name} {v} is over the limit of {limit}")
    return v


class WyomingParser:
    def __init__(self, max_header: int = 64 * 1024, max_data: int = 1024 * 1024, max_payload: int = 4 * 1024 * 1024):
        self.max_header, self.max_data, self.max_payload = max_header, max_data, max_payload
        self._buf = bytearray()
        self._header: dict | None = None
        self._need_data = self._need_payload = 0
        self.failed: FramingError | None = None

    def feed(self, data: bytes) -> list[WyEvent | FramingError]:
        """Events completed by ``data``; a :class:`FramingError` is the last item when framing broke."""
        if self.failed is not None:
            return []
        self._buf += data
        out: list[WyEvent | FramingError] = []
        try:
            while True:
                ev = self._next()
                if ev is None:
                    return out
                out.append(ev)
        except FramingError as err:
            self.failed = err
            self._buf.clear()
            out.append(err)
            return out

    def _next(self) -> WyEvent | None:
        if self._header is None:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_header:
                    raise FramingError("too_large", f"header line longer than {self.max_header} bytes")
                return None
            if nl > self.max_header:
                raise FramingError("too_large", f"header line longer than {self.max_header} bytes")
            line = bytes(self._buf[:nl])
            del self._buf[:nl + 1]
            try:
                header = json.loads(line)
            except (ValueError, RecursionError):
                raise FramingError("bad_header", "the header line is not JSON") from None
            if not isinstance(header, dict) or not isinstance(header.get("type"), str) or not header["type"]:
                raise FramingError("bad_header", "the header must be a JSON object with a string 'type'")
            data = header.get("data", {})
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise FramingError("bad_data", "'data' must be a JSON object")
            header["data"] = data
            self._need_data = _length(header, "data_length", self.max_data)
            self._need_payload = _length(header, "payload_length", self.max_payload)
            self._header = header
        need = self._need_data + self._need_payload
        if len(self._buf) < need:
            return None
        header, self._header = self._header, None
        data = header["data"]
        if self._need_data:
            try:
                extra = json.loads(bytes(self._buf[:self._need_data]))
            except (ValueError, RecursionError, UnicodeDecodeError):
                raise FramingError("bad_data", "the data section is not JSON") from None
            if not isinstance(extra, dict):
                raise FramingError("bad_data", "the data section must be a JSON object")
            data = {**data, **extra}
        payload = bytes(self._buf[self._need_data:need]) if self._need_payload else None
        del self._buf[:need]
        return WyEvent(header["type"], data, payload)
