"""The Wyoming door, driven by the ``wyoming`` package's own ``AsyncTcpClient`` (what Home Assistant uses):
describe, wake word detection, streaming transcription, odd audio formats, malformed frames beside a
neighbour, all on the same shared models as the WebSocket streams."""

from __future__ import annotations

import asyncio
import shutil
import socket

import numpy as np
import pytest
import soundfile as sf

from ..conftest import SHARED, free_port, start_server
from .helpers import Neighbour, stream, vad_events, voiced_source

wyoming = pytest.importorskip("wyoming", reason="the wyoming client is a dev dependency (pip install '.[dev]')")
from wyoming.asr import Transcribe  # noqa: E402
from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.ping import Ping  # noqa: E402
from wyoming.wake import Detect  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    srv = start_server(tmp_path_factory.mktemp("wy"), "--pipelines", "vad,wakeword,asr", "--log-format", "text",
                       "--wyoming-port", str(port), "--no-admission")
    srv.wyoming_port = port
    yield srv
    assert srv.proc.poll() is None
    srv.stop()


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


async def send_audio(c, pcm: bytes, rate=16000, width=2, channels=1, chunk_s=0.1):
    step = int(rate * chunk_s) * width * channels
    await c.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    for i in range(0, len(pcm), step):
        await c.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i:i + step]).event())
    await c.write_event(AudioStop().event())


async def read_until(c, last: str, timeout=30.0) -> list:
    out = []
    while True:
        ev = await asyncio.wait_for(c.read_event(), timeout)
        assert ev is not None, out
        out.append(ev)
        if ev.type == last:
            return out


def speech() -> tuple[np.ndarray, str]:
    import soxr

    jfk = SHARED / "eval" / "speech" / "openai-whisper" / "jfk.flac"
    if jfk.exists():
        x, rate = sf.read(str(jfk), dtype="float32", always_2d=True)
        return soxr.resample(x.mean(axis=1), rate, 16000).astype(np.float32), "what you can do for your country"
    if shutil.which("espeak-ng"):
        from voxserve.models import tts
        return tts.synth("the weather today is sunny and warm", tts.Voice("espeak", "en-us", 150, 50)), \
            "sunny and warm"                        # espeak-ng's "weather" is heard as "whether"
    pytest.skip("needs speech: ../shared (jfk.flac) or espeak-ng")


def wake_clips():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; make test installs it as root)")
    from voxserve.models import tts
    quiet = np.zeros(16000, np.float32)
    voices = [("en-us", "Annie"), ("en-gb", "Gene"), ("en-us", "f2"), ("en-gb-scotland", "Jacky"), ("en-029", "Quincy")]
    return [np.concatenate([quiet, tts.synth("hey jarvis", tts.Voice("espeak", f"{l}+{v}", 160, 50)) * 0.5, quiet])
            for l, v in voices]


def test_describe_lists_the_wake_and_asr_programs(server):
    async def go():
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(Describe().event())
            info = Info.from_event(await asyncio.wait_for(c.read_event(), 10))
            await c.write_event(Ping(text="hi").event())
            pong = await asyncio.wait_for(c.read_event(), 10)
            return info, pong
    info, pong = asyncio.run(go())
    [wake] = info.wake
    assert [(m.name, m.phrase, m.languages) for m in wake.models] == [("hey_jarvis", "hey jarvis", ["en"])]
    [asr] = info.asr
    assert asr.supports_transcript_streaming and asr.models[0].languages == ["en"]
    assert pong.type == "pong" and pong.data["text"] == "hi"


def test_home_assistant_flow_describe_detect_transcribe(server):
    """As Home Assistant does it: describe, then a wake word connection, then a speech connection."""
    clips = wake_clips()
    x, expected = speech()

    async def go():
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(Describe().event())
            assert (await c.read_event()).type == "info"
        hits = []
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:          # one connection, five turns
            for clip in clips:
                await c.write_event(Detect(names=["hey_jarvis"]).event())
                await send_audio(c, pcm16(clip))
                ev = await asyncio.wait_for(c.read_event(), 30)
                hits.append(ev.type == "detection" and ev.data["name"] == "hey_jarvis")
                if ev.type == "detection":
                    assert 1000 <= ev.data["timestamp"] <= len(clip) / 16
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(Transcribe(language="en").event())
            await send_audio(c, pcm16(x))
            events = await read_until(c, "transcript-stop")
        return hits, events
    hits, events = asyncio.run(go())
    assert sum(hits) >= 4, hits
    kinds = [e.type for e in events]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"]
    chunks = "".join(e.data["text"] for e in events if e.type == "transcript-chunk")
    final = events[-2].data["text"]
    assert chunks.strip() == final and expected in final.lower().replace(",", "").replace(".", "")


def test_speech_without_the_wake_word_is_not_detected(server):
    x, _ = speech()

    async def go():
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(Detect().event())
            await send_audio(c, pcm16(x))
            return await read_until(c, "not-detected")
    events = asyncio.run(go())
    assert [e.type for e in events] == ["not-detected"]


def test_any_rate_width_and_channels(server):
    """48 kHz, 32-bit, stereo is converted with the same resampler as the streams."""
    import soxr

    x, expected = speech()
    y = soxr.resample(x, 16000, 48000).astype(np.float32)
    pcm = (np.repeat(np.clip(y, -1, 1)[:, None], 2, axis=1) * 2**31 * 0.99).astype("<i4").tobytes()

    async def go():
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(Transcribe().event())
            await send_audio(c, pcm, rate=48000, width=4, channels=2)
            return await read_until(c, "transcript-stop")
    events = asyncio.run(go())
    assert expected in events[-2].data["text"].lower().replace(",", "").replace(".", "")


@pytest.mark.parametrize("frame, code", [
    (b"this is not json\n", "bad_header"),
    (b'["a list"]\n', "bad_header"),
    (b'{"type": "audio-chunk", "payload_length": -5}\n', "bad_length"),
    (b'{"type": "audio-chunk", "data_length": "ten"}\n', "bad_length"),
    (b'{"type": "audio-chunk", "payload_length": 999999999}\n', "too_large"),
    (b'{"type": "x", "data_length": 3}\nabc', "bad_data"),
    (b"x" * 70000, "too_large"),
])
def test_malformed_frames_get_a_typed_error_and_leave_a_neighbour_alone(server, frame, code):
    source = voiced_source(4.0, seed=2)
    solo = vad_events(stream(server.url, source, speed=0, frame_ms=100))
    neighbour = Neighbour(server.url, source, speed=2.0)
    with socket.create_connection(("127.0.0.1", server.wyoming_port), timeout=10) as s:
        s.sendall(frame)
        got = b""
        while True:
            part = s.recv(65536)
            if not part:
                break
            got += part
    from voxserve.server.wyoming.framing import WyomingParser
    [err] = WyomingParser().feed(got)
    assert err.type == "error" and err.data["code"] == code, err
    near = neighbour.join(30)
    assert near.close_code == 1000 and vad_events(near) == solo

    async def still_serves():
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(Ping().event())
            return (await asyncio.wait_for(c.read_event(), 10)).type
    assert asyncio.run(still_serves()) == "pong"


def test_bad_audio_format_is_an_error_not_a_disconnect(server):
    async def go():
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(AudioStart(rate=4000, width=2, channels=1).event())
            err = await asyncio.wait_for(c.read_event(), 10)
            await c.write_event(Ping().event())
            return err, await asyncio.wait_for(c.read_event(), 10)
    err, pong = asyncio.run(go())
    assert err.type == "error" and err.data["code"] == "bad_audio_format" and pong.type == "pong"
