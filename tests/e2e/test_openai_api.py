"""OpenAI-compatible transcription through the official ``openai`` SDK against a real server: every
response format, streaming, uploads in every common format, credentials, and typed errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from ..conftest import SHARED, start_server

openai = pytest.importorskip("openai", reason="the openai SDK is a dev dependency (pip install '.[dev]')")
pytestmark = pytest.mark.slow

KEY = "oai-test-key-51c0e9d2a7"


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """(16 kHz float32 speech, words that must be in its transcript): JFK from ../shared, else espeak-ng."""
    import soxr

    jfk = SHARED / "eval" / "speech" / "openai-whisper" / "jfk.flac"
    if jfk.exists():
        x, rate = sf.read(str(jfk), dtype="float32", always_2d=True)
        return soxr.resample(x.mean(axis=1), rate, 16000).astype(np.float32), "ask not what your country can do for you"
    if shutil.which("espeak-ng"):
        wav = tmp_path_factory.mktemp("tts") / "s.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), "the weather today is sunny and warm"],
                       check=True)
        x, rate = sf.read(str(wav), dtype="float32")
        return soxr.resample(x, rate, 16000).astype(np.float32), "sunny and warm"   # "weather" is heard "whether"
    pytest.skip("needs speech: ../shared (jfk.flac) or espeak-ng (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("oai"), "--pipelines", "vad,asr", "--log-format", "text",
                       "--api-key", KEY, "--max-upload-bytes", "4000000")
    yield srv
    srv.stop()


def client(server, key=KEY):
    return openai.OpenAI(base_url=server.http + "/v1", api_key=key, max_retries=0)


def words(text: str) -> str:
    return re.sub(r"[^a-z' ]", "", text.lower()).replace("  ", " ")


def encoded(speech, tmp_path, name: str, **sf_kwargs):
    x, _ = speech
    path = tmp_path / name
    sf.write(path, x, 16000, **sf_kwargs)
    return path


def ffmpeg_encoded(speech, tmp_path, name: str, *codec):
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg; .ci/run installs it)")
    src = encoded(speech, tmp_path, "src.wav")
    out = tmp_path / name
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *codec, str(out)], check=True)
    return out


def test_json_and_models(server, speech, tmp_path):
    c = client(server)
    r = c.audio.transcriptions.create(model="whisper-1", file=open(encoded(speech, tmp_path, "a.flac"), "rb"))
    assert speech[1] in words(r.text)
    assert [m.id for m in c.models.list()] == ["moonshine-base-en"]


def test_credentials_are_required(server, speech, tmp_path):
    path = encoded(speech, tmp_path, "a.wav")
    for key in ("wrong-key", "x"):
        with pytest.raises(openai.AuthenticationError):
            client(server, key).audio.transcriptions.create(model="whisper-1", file=open(path, "rb"))
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").models.list()
    assert KEY not in server.log()


@pytest.mark.parametrize("name, make", [
    ("a.ogg", lambda s, t: encoded(s, t, "a.ogg", format="OGG", subtype="VORBIS")),
    ("a.opus", lambda s, t: encoded(s, t, "a.opus", format="OGG", subtype="OPUS")),
    ("a.mp3", lambda s, t: encoded(s, t, "a.mp3", format="MP3")),
    ("a.m4a", lambda s, t: ffmpeg_encoded(s, t, "a.m4a", "-c:a", "aac")),
    ("a.webm", lambda s, t: ffmpeg_encoded(s, t, "a.webm", "-c:a", "libopus")),
    ("stereo8k.wav", None),
])
def test_text_from_every_common_format(server, speech, tmp_path, name, make):
    if make is None:
        x = np.stack([speech[0][::2], speech[0][::2]], axis=1)            # 8 kHz stereo (a rough decimation)
        path = tmp_path / name
        sf.write(path, x, 8000)
    else:
        path = make(speech, tmp_path)
    text = client(server).audio.transcriptions.create(model="whisper-1", file=open(path, "rb"), response_format="text")
    assert isinstance(text, str) and speech[1] in words(text), (name, text)


def test_srt_vtt_and_verbose_segments(server, speech, tmp_path):
    c = client(server)
    path = encoded(speech, tmp_path, "a.flac")
    srt = c.audio.transcriptions.create(model="whisper-1", file=open(path, "rb"), response_format="srt")
    cues = [b.split("\n") for b in srt.strip().split("\n\n")]
    assert [int(q[0]) for q in cues] == list(range(1, len(cues) + 1))
    stamp = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"

    def secs(m):
        h, mi, s, ms = map(int, m)
        return h * 3600 + mi * 60 + s + ms / 1000
    spans = []
    for q in cues:
        m = re.fullmatch(stamp + " --> " + stamp, q[1])
        assert m and q[2].strip(), q
        spans.append((secs(m.groups()[:4]), secs(m.groups()[4:])))
    assert all(a < b for a, b in spans) and all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
    vtt = c.audio.transcriptions.create(model="whisper-1", file=open(path, "rb"), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == len(cues)
    v = c.audio.transcriptions.create(model="whisper-1", file=open(path, "rb"), response_format="verbose_json",
                                      timestamp_granularities=["segment"])
    assert v.duration == pytest.approx(len(speech[0]) / 16000, abs=0.01)
    assert [(s.start, s.end) for s in v.segments] == [pytest.approx(sp, abs=0.002) for sp in spans]
    assert " ".join(s.text for s in v.segments) == v.text


def test_streamed_deltas_add_up_to_the_text(server, speech, tmp_path):
    c = client(server)
    path = encoded(speech, tmp_path, "a.flac")
    events = list(c.audio.transcriptions.create(model="whisper-1", file=open(path, "rb"), stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert deltas and len(done) == 1 and events[-1] is done[0]
    whole = c.audio.transcriptions.create(model="whisper-1", file=open(path, "rb")).text
    assert "".join(deltas) == done[0].text == whole


def test_typed_errors(server, speech, tmp_path):
    c = client(server)
    path = encoded(speech, tmp_path, "a.wav")
    cases = [
        (dict(file=("x.wav", b"not audio at all" * 50)), 400, "unsupported_format"),
        (dict(file=("x.wav", b"")), 400, "empty_file"),
        (dict(file=open(path, "rb"), language="fr"), 400, "unsupported_language"),
        (dict(file=open(path, "rb"), timestamp_granularities=["word"]), 400, "unsupported_granularity"),
        (dict(file=open(path, "rb"), response_format="xml"), 400, "bad_value"),
        (dict(file=("big.wav", b"\0" * 4_200_000)), 413, "file_too_large"),
    ]
    for kwargs, status, code in cases:
        with pytest.raises(openai.APIStatusError) as info:
            c.audio.transcriptions.create(model="whisper-1", **kwargs)
        assert info.value.status_code == status, (code, info.value)
        assert info.value.body["code"] == code, info.value.body
    # prompt and temperature are accepted (and cannot change what this model does)
    r = c.audio.transcriptions.create(model="whisper-1", file=open(path, "rb"), prompt="JFK", temperature=0.2)
    assert speech[1] in words(r.text)
    assert server.proc.poll() is None and "Traceback" not in server.log()


def test_curl_multipart(server, speech, tmp_path):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    path = encoded(speech, tmp_path, "a.wav")
    out = subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {KEY}", "-F", f"file=@{path}",
                          "-F", "model=whisper-1", server.http + "/v1/audio/transcriptions"],
                         capture_output=True, text=True, timeout=120)
    assert speech[1] in words(json.loads(out.stdout)["text"])
