"""Protocol v1 core, tested with literal bytes (no sockets, no asyncio)."""

import json

import msgpack
import numpy as np
import pytest

from voxserve.server.protocol import (
    SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, AudioIn, ClientConnection, Codec, ConnectionState, ErrorCode, Flush,
    ProtocolError, ServerConnection, Start, Stop, Update, codec_for_subprotocol,
)
from voxserve.server.protocol.connection import ConnectionLimits
from voxserve.server.vad import VAD_SCHEMA

MP = Codec(SUBPROTOCOL_MSGPACK)
JS = Codec(SUBPROTOCOL_JSON)
SCHEMAS = {"vad": VAD_SCHEMA}


def server(codec=MP, **limits):
    return ServerConnection(codec, SCHEMAS, ConnectionLimits(**limits) if limits else None)


def started(codec=MP, **start):
    c = server(codec)
    msg = {"type": "start", "sample_rate": 16000, "pipelines": ["vad"], **start}
    evs = c.receive(codec.encode(msg), 0.0)
    assert isinstance(evs[0], Start), evs
    return c


def test_literal_msgpack_flush_and_stop():
    c = started()
    assert c.receive(b"\x81\xa4type\xa5flush", 0.0) == [Flush()]
    assert c.receive(b"\x81\xa4type\xa4stop", 0.0) == [Stop()]
    assert c.state is ConnectionState.STOPPING


def test_literal_json_start_fills_defaults():
    c = server(JS)
    [ev] = c.receive('{"type":"start","sample_rate":48000,"channels":2,"pipelines":["vad"]}', 0.0)
    assert isinstance(ev, Start)
    cfg = c.config
    assert cfg.audio.sample_rate == 48000 and cfg.audio.channels == 2 and cfg.audio.encoding == "s16le"
    assert cfg.options["vad"] == {"aggressiveness": 2, "frame_ms": 30, "min_speech_ms": 90, "min_silence_ms": 300,
                                  "events": True}
    assert cfg.binary_frames == "pcm"          # JSON subprotocol: binary frames are raw PCM
    assert cfg.output_sample_rate == 48000


def test_null_fields_in_start_mean_their_defaults():
    """A null field is an absent one (the fuzzer found that a null "channels" was stored as None, and the
    first audio frame then raised TypeError: an internal error for client bytes)."""
    def start():
        c = server(JS)
        [ev] = c.receive('{"type":"start","sample_rate":null,"channels":null,"output_sample_rate":null,'
                         '"pipelines":["vad"]}', 0.0)
        assert isinstance(ev, Start)
        return c
    c = start()
    assert (c.config.audio.sample_rate, c.config.audio.channels, c.config.output_sample_rate) == (16000, 1, 16000)
    [a] = c.receive(b"\x00\x40", 0.01)
    assert isinstance(a, AudioIn) and list(a.samples) == [0.5]
    [e] = start().receive('{"type": "audio", "seq": 0, "pcm": "", "ts": 0.0}', 0.01)     # the fuzzer's frame
    assert isinstance(e, ProtocolError) and e.code is ErrorCode.BAD_AUDIO, e


def test_literal_raw_pcm_frame_positions_and_downmix():
    c = started(JS, channels=2)
    # two stereo frames: (L=16384, R=0) and (L=-32768, R=-32768), little-endian int16
    [a] = c.receive(b"\x00\x40\x00\x00\x00\x80\x00\x80", 1.0)
    assert isinstance(a, AudioIn)
    np.testing.assert_allclose(a.samples, [0.25, -1.0])
    assert a.start == 0 and a.seq == 0
    [b] = c.receive(b"\x00\x00\x00\x00", 1.0)
    assert b.start == 2 and b.seq == 1 and c.samples_received == 3


def test_msgpack_audio_message_with_seq_and_duplicate_dropped():
    c = started()
    pcm = np.zeros(160, "<i2").tobytes()
    frame = msgpack.packb({"type": "audio", "seq": 0, "pcm": pcm, "ts": 5.0})
    [ev] = c.receive(frame, 0.0)
    assert ev.seq == 0 and ev.client_ts == 5.0 and ev.samples.shape == (160,)
    assert c.receive(frame, 0.0) == []          # replay of seq 0 is idempotent
    assert c.duplicates == 1 and c.samples_received == 160


def test_f32le_decoding_and_nan_rejected():
    c = started(encoding="f32le")
    [ev] = c.receive(msgpack.packb({"type": "audio", "pcm": np.array([0.5, -2.0], "<f4").tobytes()}), 0.0)
    np.testing.assert_allclose(ev.samples, [0.5, -1.0])   # clipped to [-1, 1]
    [err] = c.receive(msgpack.packb({"type": "audio", "pcm": np.array([np.nan], "<f4").tobytes()}), 0.0)
    assert isinstance(err, ProtocolError) and err.code is ErrorCode.BAD_AUDIO and err.fatal
    assert c.state is ConnectionState.CLOSED
    assert c.receive(b"\x81\xa4type\xa5flush", 0.0) == []


@pytest.mark.parametrize("payload,code", [
    (b"\xc1", ErrorCode.BAD_MESSAGE),                              # 0xc1 is never valid msgpack
    (b"\x93\x01\x02\x03", ErrorCode.BAD_MESSAGE),                  # an array, not a map
    (b"\x81\xa4type\xa4jump", ErrorCode.BAD_MESSAGE),              # unknown type
    (msgpack.packb({"type": "start", "color": "red"}), ErrorCode.UNKNOWN_FIELD),
    (msgpack.packb({"type": "start", "sample_rate": 4000}), ErrorCode.UNSUPPORTED_SAMPLE_RATE),
    (msgpack.packb({"type": "start", "sample_rate": 96000}), ErrorCode.UNSUPPORTED_SAMPLE_RATE),
    (msgpack.packb({"type": "start", "encoding": "mulaw"}), ErrorCode.UNSUPPORTED_ENCODING),
    (msgpack.packb({"type": "start", "pipelines": ["teleport"]}), ErrorCode.UNKNOWN_PIPELINE),
    (msgpack.packb({"type": "start", "options": {"vad": {"speed": 3}}}), ErrorCode.UNKNOWN_FIELD),
    (msgpack.packb({"type": "start", "options": {"vad": {"aggressiveness": 9}}}), ErrorCode.BAD_VALUE),
    (msgpack.packb({"type": "start", "channels": 6}), ErrorCode.BAD_VALUE),
    (msgpack.packb({"type": "flush"}), ErrorCode.NOT_STARTED),
])
def test_bad_messages_before_start_are_typed_and_not_fatal(payload, code):
    c = server()
    [err] = c.receive(payload, 0.0)
    assert isinstance(err, ProtocolError) and err.code is code and not err.fatal
    assert c.state is ConnectionState.AWAITING_START     # the client may try again
    ev = err.to_event()
    assert ev["type"] == "error" and ev["code"] == code.value and ev["fatal"] is False and ev["message"]


def test_odd_length_pcm_is_fatal_bad_audio_with_close_1007():
    c = started(JS)
    [err] = c.receive(b"\x00\x01\x02", 0.0)
    assert err.code is ErrorCode.BAD_AUDIO and err.fatal and err.code.close_code == 1007


def test_frame_longer_than_one_second_rejected():
    c = started()
    [err] = c.receive(msgpack.packb({"type": "audio", "pcm": b"\x00\x00" * 16001}), 0.0)
    assert err.code is ErrorCode.BAD_FRAME_LENGTH and err.fatal


def test_message_size_limit():
    c = server(MP, max_message_bytes=100)
    [err] = c.receive(b"\x00" * 101, 0.0)
    assert err.code is ErrorCode.MESSAGE_TOO_LARGE and err.fatal and err.code.close_code == 1009


def test_flood_token_bucket_on_explicit_clock():
    c = server(JS, max_frames_per_second=100, frame_burst=5)
    c.receive('{"type":"start"}', 0.0)
    frame = b"\x00\x00" * 160
    for _ in range(4):                         # the start message took one token of the burst of 5
        assert isinstance(c.receive(frame, 0.0)[0], AudioIn)
    [err] = c.receive(frame, 0.0)
    assert err.code is ErrorCode.RATE_LIMITED and err.fatal and err.code.close_code == 1008
    paced = server(JS, max_frames_per_second=100, frame_burst=5)
    paced.receive('{"type":"start"}', 0.0)
    for i in range(1000):                      # exactly the allowed rate for 10 s: never limited
        assert isinstance(paced.receive(frame, i * 0.01)[0], AudioIn)


def test_update_validated_against_schema_and_applied():
    c = started()
    [ev] = c.receive(msgpack.packb({"type": "update", "options": {"vad": {"min_silence_ms": 500}}}), 0.0)
    assert ev == Update({"vad": {"min_silence_ms": 500}})
    assert c.config.options["vad"]["min_silence_ms"] == 500
    [err] = c.receive(msgpack.packb({"type": "update", "options": {"vad": {"frame_ms": 10}}}), 0.0)
    assert err.code is ErrorCode.BAD_VALUE and "mid-stream" in err.message
    [err] = c.receive(msgpack.packb({"type": "update", "options": {"asr": {}}}), 0.0)
    assert err.code is ErrorCode.UNKNOWN_FIELD


def test_second_start_rejected():
    c = started()
    [err] = c.receive(msgpack.packb({"type": "start"}), 0.0)
    assert err.code is ErrorCode.ALREADY_STARTED


def test_subprotocol_choice():
    assert codec_for_subprotocol(None).subprotocol == SUBPROTOCOL_MSGPACK
    assert codec_for_subprotocol(["x", SUBPROTOCOL_JSON]).subprotocol == SUBPROTOCOL_JSON


def test_client_connection_round_trip():
    cl = ClientConnection(MP)
    msg = msgpack.unpackb(cl.start(sample_rate=8000, pipelines=["vad"]))
    assert msg["type"] == "start" and msg["sample_rate"] == 8000 and msg["version"] == 1
    assert msgpack.unpackb(cl.audio(b"\x01\x00"))["seq"] == 0
    assert msgpack.unpackb(cl.audio(b"\x01\x00"))["seq"] == 1
    ev = cl.decode(msgpack.packb({"type": "vad", "event": "speech_start"}))
    assert ev["event"] == "speech_start"


def test_json_events_carry_bytes_as_base64():
    text = JS.encode({"type": "audio", "pcm": b"\x01\x02"})
    assert json.loads(text)["pcm"] == "AQI="
    assert JS.decode_event(text)["pcm"] == b"\x01\x02"


def test_dict_option_validates_keys_and_nested_fields():
    from voxserve.server.protocol.errors import ProtocolError
    from voxserve.server.protocol.options import Option, PipelineSchema, merge_options, validate_options

    fields = (Option("threshold", float, 0.5, min=0.0, max=1.0), Option("patience", int, 1, min=1))
    schema = PipelineSchema("ww", (Option("threshold", float, 0.5), Option("heads", dict, {}, choices=("a", "b"),
                                                                             fields=fields)))
    assert validate_options(schema, {"heads": {"a": {"threshold": 1, "patience": 2.0}}}) == \
        {"heads": {"a": {"threshold": 1.0, "patience": 2}}}
    for bad, code, text in (({"heads": {"c": {}}}, "bad_value", "'c' is not one of"),
                            ({"heads": {"a": {"thresh": 0.2}}}, "unknown_field", "ww.heads.a.thresh"),
                            ({"heads": {"a": {"threshold": 2}}}, "bad_value", "above the maximum"),
                            ({"heads": ["a"]}, "bad_value", "must be a map")):
        with pytest.raises(ProtocolError) as err:
            validate_options(schema, bad)
        assert err.value.code.value == code and text in str(err.value), (bad, str(err.value))
    a, b = merge_options(schema, {}), merge_options(schema, {})
    a["heads"]["x"] = {}
    assert b["heads"] == {}                                    # defaults are not shared between streams


def test_null_restores_an_option_whose_default_is_decided_elsewhere():
    from voxserve.server.protocol.errors import ProtocolError
    from voxserve.server.protocol.options import Option, PipelineSchema, merge_options, validate_options

    schema = PipelineSchema("ww", (Option("threshold", float, None, min=0.0, max=1.0),
                                   Option("patience", int, 1, min=1)))
    assert merge_options(schema, {}) == {"threshold": None, "patience": 1}
    assert validate_options(schema, {"threshold": None}) == {"threshold": None}
    assert validate_options(schema, {"threshold": 1}) == {"threshold": 1.0}
    with pytest.raises(ProtocolError) as err:                 # null is no value for an option with a real default
        validate_options(schema, {"patience": None})
    assert err.value.code.value == "bad_value"
