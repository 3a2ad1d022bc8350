"""Helpers for real-socket tests: run the project's client from a thread, open raw sockets."""

from __future__ import annotations

import asyncio
import threading

import soundfile as sf
import soxr

from voxserve.clients.audiofile import PcmSource, load_audio, pcm_from_array
from voxserve.clients.client import StreamResult, stream_source


def stream(url: str, source: PcmSource, **kw) -> StreamResult:
    return asyncio.run(stream_source(url, source, **kw))


def vad_events(result: StreamResult) -> list[tuple]:
    return [(e["event"], e["start_ms"], e.get("end_ms")) for e in result.of_type("vad")]


def resampled_source(path, rate: int) -> PcmSource:
    x, r = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    return pcm_from_array(soxr.resample(x, r, rate) if r != rate else x, rate)


class Neighbour:
    """A well-behaved stream running in a thread while a test misbehaves next to it."""

    def __init__(self, url: str, source: PcmSource, speed: float = 1.0, **kw):
        self.result: StreamResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url, source, speed, kw), daemon=True)
        self._thread.start()

    def _run(self, url, source, speed, kw):
        try:
            self.result = stream(url, source, speed=speed, frame_ms=20, **kw)
        except BaseException as exc:  # reported by join()
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = 120.0) -> StreamResult:
        self._thread.join(timeout)
        if self.error:
            raise self.error
        assert self.result is not None, "neighbour did not finish"
        return self.result


def loop_source(path, times: int) -> PcmSource:
    src = load_audio(path)
    return PcmSource(src.data * times, src.sample_rate, src.channels, src.encoding)


def voiced_signal(seconds: float = 6.0, rate: int = 16000, seed: int = 0):
    """Speech-like audio that needs no sample files: harmonic bursts (110-220 Hz with vibrato) of
    0.6-1.2 s between pauses of 0.5-0.9 s, float32 at ``rate``. webrtcvad segments it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * rate), dtype=np.float32)
    pos = 0.3
    while pos < seconds - 0.5:
        dur = rng.uniform(0.6, 1.2)
        a, b = int(pos * rate), int(min(seconds, pos + dur) * rate)
        tt = np.arange(b - a) / rate
        f0 = rng.uniform(110, 220) * (1 + 0.05 * np.sin(2 * np.pi * 3 * tt))
        phase = 2 * np.pi * np.cumsum(f0) / rate
        sig = sum(np.sin(k * phase) / k for k in range(1, 20))
        env = np.sin(np.pi * np.arange(b - a) / (b - a)) ** 0.5
        out[a:b] = 0.3 * sig * env / np.max(np.abs(sig))
        pos += dur + rng.uniform(0.5, 0.9)
    return out


def voiced_source(seconds: float = 6.0, rate: int = 16000, seed: int = 0) -> PcmSource:
    return pcm_from_array(voiced_signal(seconds, rate, seed), rate)


def self_signed_cert(folder, name: str = "server", ca=None):
    """A certificate for 127.0.0.1/localhost written as ``name.pem``/``name.key`` under ``folder``.
    ``ca=(cert, key)`` signs it with that CA; otherwise it is a CA of its own. Returns (cert, key, paths)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = ca if ca else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                              critical=False)
               .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True))
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key, (cert_path, key_path)
