"""Message codecs for the two negotiated subprotocols.

``voxserve.v1.msgpack`` (default): events are msgpack maps in binary frames.
``voxserve.v1.json``: events are JSON objects in text frames (debugging and simple clients).

Client frames, in both subprotocols: a text frame is always a JSON control message; a binary frame is
either a msgpack message or raw PCM, as the session's ``binary_frames`` setting says (``msgpack`` by
default under the msgpack subprotocol, ``pcm`` under JSON; before ``start`` it is the default). Byte
fields (``pcm``) travel base64-encoded inside JSON (debugging only: 4/3 the size and slower).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import msgpack

from .errors import ErrorCode, ProtocolError

SUBPROTOCOL_MSGPACK = "voxserve.v1.msgpack"
SUBPROTOCOL_JSON = "voxserve.v1.json"
SUBPROTOCOLS = (SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON)

_BYTES_FIELDS = ("pcm",)


@dataclass(frozen=True)
class Codec:
    """Encodes and decodes protocol messages (dicts) for one subprotocol."""

    subprotocol: str

    @property
    def is_json(self) -> bool:
        return self.subprotocol == SUBPROTOCOL_JSON

    def encode(self, message: dict) -> bytes | str:
        """Return the frame payload: ``bytes`` (binary frame) or ``str`` (text frame)."""
        if self.is_json:
            if any(isinstance(message.get(k), (bytes, bytearray, memoryview)) for k in _BYTES_FIELDS):
                message = dict(message)
                for k in _BYTES_FIELDS:
                    v = message.get(k)
                    if isinstance(v, (bytes, bytearray, memoryview)):
                        message[k] = base64.b64encode(bytes(v)).decode("ascii")
            return json.dumps(message, separators=(",", ":"), allow_nan=False)
        return msgpack.packb(message, use_bin_type=True)

    def decode_text(self, text: str) -> dict:
        """Decode a text frame (JSON in both subprotocols: text frames are always JSON)."""
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"text frame is not valid JSON: {exc}") from None
        except RecursionError:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "text frame nests too deeply") from None
        if not isinstance(obj, dict):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
        for k in _BYTES_FIELDS:
            v = obj.get(k)
            if isinstance(v, str):
                try:
                    obj[k] = base64.b64decode(v, validate=True)
                except ValueError:
                    raise ProtocolError(ErrorCode.BAD_VALUE, f"field {k!r} must be base64 in JSON") from None
        return obj

    def decode_binary(self, data: bytes) -> dict:
        """Decode a msgpack control message carried in a binary frame."""
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except RecursionError:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "binary control frame nests too deeply") from None
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"binary control frame is not valid msgpack: {exc}") from None
        if not isinstance(obj, dict):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a msgpack map")
        return obj

    def decode_event(self, payload: bytes | str) -> dict:
        """Client side: decode one server event from a frame payload."""
        if isinstance(payload, str):
            obj = json.loads(payload)
            if isinstance(obj.get("pcm"), str):
                obj["pcm"] = base64.b64decode(obj["pcm"])
            return obj
        return msgpack.unpackb(payload, raw=False)


def codec_for_subprotocol(offered: list[str] | tuple[str, ...] | None) -> Codec:
    """Pick the codec for the client's offered subprotocols: first one we know, else msgpack."""
    for name in offered or ():
        if name in SUBPROTOCOLS:
            return Codec(name)
    return Codec(SUBPROTOCOL_MSGPACK)
