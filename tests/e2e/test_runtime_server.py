"""A real server on the shared engine runtime (``--engine-workers``): every pipeline's results arrive for
two streams at once, as with per-model threads (needs no sample audio: espeak-ng speaks the input)."""

import shutil

import numpy as np
import pytest

from voxserve.clients.audiofile import pcm_from_array

from ..conftest import start_server
from .helpers import stream

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("workers", ["0", "1"])
def test_all_pipelines_on_one_shared_pool(tmp_path, workers):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; make test installs it as root)")
    from voxserve.models import tts

    speech = tts.synth("the weather today is sunny and warm", tts.Voice("espeak", "en-us", 150, 50))
    x = np.concatenate([np.zeros(8000, np.float32), speech * 0.5, np.zeros(16000, np.float32)])
    srv = start_server(tmp_path, "--engine-workers", workers, "--log-format", "text",
                       "--max-frames-per-second", "1000", "--frame-burst", "5000")
    try:
        info = srv.get_json("/v1/info")
        assert set(info["pipelines"]) >= {"vad", "wakeword", "asr", "vc"}
        res = stream(srv.url, pcm_from_array(x, 16000), pipelines=["vad", "wakeword", "asr", "vc"], speed=0,
                     frame_ms=40)
        finals = " ".join(e["text"].lower() for e in res.of_type("transcript"))
        assert "sunny and warm" in finals, finals
        audio = res.of_type("audio")
        assert audio and [a["seq"] for a in audio] == list(range(len(audio)))       # every block came back
        assert audio[-1]["end_ms"] >= len(x) / 16 * 0.95
        assert not [e for e in res.of_type("error")], res.of_type("error")
        assert "Traceback" not in srv.log()
    finally:
        srv.stop()
