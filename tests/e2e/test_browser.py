"""The browser client in a real headless Chromium, with a real recording as the fake microphone.

The server runs as deployed: https/wss with a certificate the test makes (Chromium trusts it by its
public-key hash, so the page is a secure context for getUserMedia) and an API key. The key is pasted
into the page, which exchanges it for a short-lived token at POST /v1/tokens and streams with the token
as its second subprotocol. Asserts that, inside the page, VAD events arrive, a transcript is shown, converted audio is played
back through the jitter-buffered AudioWorklet, and a connection dropped mid-utterance is resumed
(same session, no final shown twice); saves a screenshot to bench/out/browser.png.
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ..conftest import REPO, free_port, shared_or_skip, start_server
from .cdp import Browser, find_chromium
from .helpers import resampled_source, self_signed_cert

API_KEY = "browser-test-key-7d3e9a1c5b"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return exe


def fake_mic(tmp_path: Path) -> Path:
    jfk = shared_or_skip("eval", "speech", "openai-whisper", "jfk.flac")
    src = resampled_source(jfk, 48000)
    x = np.frombuffer(src.data, "<i2")
    silence = np.zeros(48000, np.int16)
    path = tmp_path / "mic.wav"
    sf.write(path, np.concatenate([silence, x, silence, silence]), 48000, subtype="PCM_16")
    return path


def test_browser_client_end_to_end(tmp_path, chromium):
    import base64
    import hashlib
    import ssl

    from cryptography.hazmat.primitives import serialization

    mic = fake_mic(tmp_path)              # may skip (no ../shared): before the server starts, so none leaks
    cert, _, (cert_pem, key_pem) = self_signed_cert(tmp_path, "server")
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    spki_hash = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    srv = start_server(tmp_path, "--pipelines", "vad,asr,vc", "--log-format", "text", "--no-admission",
                       "--api-key", API_KEY, "--ssl-certfile", str(cert_pem), "--ssl-keyfile", str(key_pem),
                       ssl_context=ssl.create_default_context(cafile=str(cert_pem)))
    try:
        browser = Browser(chromium, tmp_path / "profile", free_port(), mic,
                          extra_args=(f"--ignore-certificate-errors-spki-list={spki_hash}",))
    except BaseException:
        srv.stop()
        raise
    try:
        assert srv.http.startswith("https://")
        browser.navigate(srv.http + "/")
        assert browser.evaluate("document.title") == "voxserve"
        assert browser.evaluate("window.isSecureContext") is True
        browser.evaluate(f"document.getElementById('apikey').value = {API_KEY!r}; true")
        browser.evaluate("document.querySelector('#pipes input[value=vc]').checked = true;"
                         "document.querySelector('#pipes input[value=wakeword]').checked = false; true")
        browser.evaluate("document.getElementById('start').click(); true", gesture=True)
        deadline = time.time() + 60
        state = {}
        dropped = False
        while time.time() < deadline:
            state = browser.evaluate("JSON.stringify(window.voxState)")
            state = json.loads(state)
            if not dropped and state["vadEvents"] >= 1:          # mid-utterance: drop the connection
                browser.evaluate("window.voxDebug.dropConnection(); true")
                dropped = True
            if (state["finals"] >= 2 and state["played"] > 48000 and state["vadEvents"] >= 4
                    and state.get("resumes", 0) >= 1):
                break
            time.sleep(0.5)
        out = REPO / "bench" / "out"
        out.mkdir(parents=True, exist_ok=True)
        browser.screenshot(out / "browser.png")
        assert state["connected"] and state["vadEvents"] >= 2, state
        assert state["finals"] >= 1 and any("country" in t.lower() or "americans" in t.lower()
                                            for t in state["finalTexts"]), state
        assert state["audioChunks"] > 10 and state["played"] > 48000, state          # > 1 s of converted audio played
        assert "vc" in state["latency"] and not state["errors"], state
        assert state.get("resumes", 0) >= 1 and state["reconnects"] >= 1, state          # resumed, not restarted
        assert len(state["finalTexts"]) == len(set(state["finalTexts"])), state          # no final shown twice
        html = browser.evaluate("document.getElementById('finals').textContent")
        assert html.strip()
        assert state["authenticated"] is True
        log = srv.log()
        assert log.count("token minted") >= 2                  # one token per connection, the resume included
        assert API_KEY not in log and "principal=key-" in log
    finally:
        browser.close()
        srv.stop()
