"""Offline synthetic speech for wakeword training and evaluation (no downloads, ever).

Engines are Debian programs: ``espeak-ng`` (required; many voices x variants x rates x pitches) and
``flite`` (optional; five more natural-sounding voices). Everything is deterministic for a given
seed. All audio is returned as 16 kHz float32 mono.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from dataclasses import dataclass

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
    engine: str          # "espeak" or "flite"
    name: str            # espeak "voice+variant" or flite voice
    rate: float          # espeak words/min, or flite duration stretch
    pitch: float         # espeak 0-99, or flite f0 mean in Hz

    def key(self) -> str:
        return f"{self.engine}:{self.name}"


def have_flite() -> bool:
    return shutil.which("flite") is not None


def require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng")


def synth(text: str, voice: Voice) -> np.ndarray:
    if voice.engine == "espeak":
        cmd = ["espeak-ng", "-v", voice.name, "-s", str(int(voice.rate)), "-p", str(int(voice.pitch)), "--stdout", text]
    else:
        cmd = ["flite", "-voice", voice.name, "-t", text, "-o", "/dev/stdout",
               "--setf", f"duration_stretch={voice.rate:.3f}", "--setf", f"int_f0_target_mean={voice.pitch:.1f}"]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    x, rate = sf.read(io.BytesIO(out), dtype="float32")
    if x.ndim == 2:
        x = x.mean(axis=1)
    x = soxr.resample(x, rate, 16000).astype(np.float32) if rate != 16000 else x
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return x / peak * 0.7 if peak > 0 else x


def voice_pool(rng: random.Random, n: int, *, espeak_voices=ESPEAK_VOICES, variants=ESPEAK_VARIANTS,
               flite_voices=FLITE_VOICES, flite_share: float = 0.25) -> list[Voice]:
    """``n`` random voices: espeak voice x variant with random rate/pitch, and flite voices if present."""
    pool = []
    use_flite = have_flite() and flite_voices
    for _ in range(n):
        if use_flite and rng.random() < flite_share:
            pool.append(Voice("flite", rng.choice(flite_voices), rng.uniform(0.8, 1.3), rng.uniform(80, 220)))
        else:
            v = rng.choice(espeak_voices)
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
