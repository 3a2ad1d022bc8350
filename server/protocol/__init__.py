"""Protocol v1 core (sans-I/O): bytes and text in, typed events out; typed events in, frames out.

Nothing here performs I/O or imports asyncio. The server and the clients both use it.
The normative description is ``docs/protocol-v1.md``.
"""

from .errors import ErrorCode, ProtocolError
from .codec import Codec, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, SUBPROTOCOLS, codec_for_subprotocol
from .options import Option, PipelineSchema, validate_options, merge_options
from .messages import (
    PROTOCOL_VERSION,
    AudioFormat,
    AudioIn,
    Flush,
    Start,
    Stop,
    Update,
    Ack,
    Resume,
)
from .connection import ServerConnection, ClientConnection, ConnectionState

__all__ = [
    "ErrorCode", "ProtocolError", "Codec", "SUBPROTOCOL_JSON", "SUBPROTOCOL_MSGPACK", "SUBPROTOCOLS",
    "codec_for_subprotocol", "Option", "PipelineSchema", "validate_options", "merge_options",
    "PROTOCOL_VERSION", "AudioFormat", "AudioIn", "Flush", "Start", "Stop", "Update", "Ack", "Resume",
    "ServerConnection", "ClientConnection", "ConnectionState",
]
