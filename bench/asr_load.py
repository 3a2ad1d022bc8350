"""ASR capacity: N concurrent real-time streams of real speech, latency measured at the client.

Each stream is one WebSocket session that plays a playlist of the sentences of ../shared/eval/speech
(every stream starts at a different sentence), each followed by ``--gap`` seconds of silence, at real-time
pace (20 ms frames), for ``--seconds``; the streams start within the first 3 s. The load generator runs
in this process, on the same machine as the server (``voxserve serve``, pipelines vad,asr).

Reported per stream count:

- **final latency** measured at the client: arrival of a final minus the send time of the frame at which
  the end of speech is known, i.e. the VAD's hangover after the last speech frame (``min_silence_ms``,
  300 ms by default) has been sent. The final's ``end`` is the last speech frame + 80 ms of tail, so the
  end is known at ``end + hangover - 80 ms``; for a final of speech split at ``max_segment_s`` (reason
  ``max_length``, cut at the quietest point before it), when the segment reached that length. The server's
  own figure (``latency.total_ms``, from its end-of-utterance decision) is shown beside it.
- **interim gaps**: seconds between consecutive interims while a segment is open (the first from the
  VAD's ``speech_start`` event), as the client sees them; those over 600 ms by what preceded them: the
  segment's first interim, a skipped (stale) interim in the gap, or neither.
- **interim age**: how old the newest audio an interim shows is when it arrives (arrival minus the send
  time of the frame holding its ``end``): what a user reading the captions waits for a word, beside the gaps.
- **WER** of the finals over the sentences sent completely (sentences and the finals overlapping them in
  time are compared as groups: a sentence split into several finals, or one final over several sentences
  with ``--gap`` shorter than the VAD's hangover), normalised as in ``bench/asr_eval.py``; ``last_interim_wer`` the same for each
  segment's last interim (what users read just before the final; it misses the words after it).
- server CPU, budget events, errors.

    python bench/asr_load.py --streams 4 8 12 --seconds 60 [--server-arg=--asr-precision=fp32] [--record]
    python bench/asr_load.py --streams 12 --baseline /tmp/old      # a checkout of older code, same run

``--baseline DIR`` also runs, before each level, a server made of the source checkout ``DIR`` (its
``server/ engines/ clients/ models/`` put on ``PYTHONPATH`` as ``voxserve.*`` ahead of the installed
package; same dependencies), so before and after are measured in one run on the same machine.

``--admission`` runs the server as users run it (admission on, where the other runs turn it off to measure
the stage alone), warmed up first by two streams until admission has measured the pipeline's cost per
stream: the figure then also says how many of the offered streams admission let in.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import psutil
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asr_eval import load16  # noqa: E402
from common import SHARED, install_uvloop, percentiles, record, start_server  # noqa: E402
from textnorm import wer  # noqa: E402

FRAME = 320                      # 20 ms at 16 kHz
ASR_OPTIONS: dict = {}           # per-stream asr options every stream sends (--asr-option)
TAIL_MS = 80                     # what the ASR stage adds after the last speech frame (server/stages/asr.py)
MAX_SEGMENT_S = 20.0             # asr.max_segment_s by default (server/stages/asr.py)


def playlist(sentences, refs, first: int, seconds: float, gap_s: float):
    """(pcm int16 bytes, [(start_sample, end_sample, reference)]) of sentences from ``first`` on, looped."""
    parts, spans, pos, k = [], [], 0, first
    silence = np.zeros(int(gap_s * 16000), np.float32)
    while pos < seconds * 16000:
        x = sentences[k % len(sentences)]
        spans.append((pos, pos + len(x), refs[k % len(refs)]))
        parts += [x, silence]
        pos += len(x) + len(silence)
        k += 1
    pcm = (np.clip(np.concatenate(parts), -1, 1) * 32767).astype("<i2").tobytes()
    return pcm, spans


async def one(url, pcm, spans, seconds, delay, hangover_ms, out):
    await asyncio.sleep(delay)
    n = min(int(seconds * 1000 / 20), len(pcm) // (FRAME * 2))
    sent = np.zeros(n + 1)
    finals, events = [], []
    async with websockets.connect(url, subprotocols=["voxserve.v1.msgpack"], compression=None, max_size=None) as ws:
        start = {"type": "start", "sample_rate": 16000, "pipelines": ["asr"]}
        if ASR_OPTIONS:
            start["options"] = {"asr": dict(ASR_OPTIONS)}
        await ws.send(msgpack.packb(start))
        if msgpack.unpackb(await ws.recv()).get("type") != "ready":
            out["refused"] += 1
            return

        async def reader():
            async for m in ws:
                ev = msgpack.unpackb(m)
                now = time.perf_counter()
                events.append((now, ev))
                t = ev.get("type")
                if t == "transcript":
                    finals.append(ev)
                    known = ev["end_sample"] + (hangover_ms - TAIL_MS) * 16
                    if ev.get("reason") == "max_length":
                        # split at the quietest point of a segment that reached max_segment_s: the server
                        # decides when the segment reaches that length, after the cut it then makes
                        known = ev["start_sample"] + int(ASR_OPTIONS.get("max_segment_s", MAX_SEGMENT_S) * 16000)
                    idx = known // FRAME
                    if idx <= n and sent[min(idx, n)]:
                        out["final_client_ms"].append((now - sent[min(idx, n)]) * 1000)
                    out["final_server_ms"].append(ev["latency"]["total_ms"])
                elif t == "budget":
                    out["budget"] += 1
                elif t == "error":
                    out["errors"].append(ev.get("code"))

        rt = asyncio.create_task(reader())
        t0 = time.perf_counter()
        for i in range(n):
            d = t0 + i * 0.02 - time.perf_counter()
            if d > 0:
                await asyncio.sleep(d)
            sent[i] = time.perf_counter()
            await ws.send(msgpack.packb({"type": "audio", "pcm": pcm[i * FRAME * 2:(i + 1) * FRAME * 2]}))
        await ws.send(msgpack.packb({"type": "stop"}))
        await rt
    # interim gaps as the client saw them
    # and, for those over 600 ms, what came before them: the segment's first interim (counted from
    # speech_start), a skipped interim (budget event) in the gap, or neither (then the interim's own
    # latency and the audio it advanced over the previous one say whether a decode or a pause was slow)
    last, open_, skipped, first, last_end = None, False, False, False, None
    for t, e in events:
        if e.get("type") == "vad" and e.get("event") == "speech_start":
            open_, last, skipped, first, last_end = True, t, False, True, None
        elif e.get("type") == "vad" and e.get("event") == "speech_end":
            open_ = False
        elif e.get("type") == "budget" and e.get("stage") == "asr_partial":
            skipped = True
        elif e.get("type") == "transcript_interim" and open_ and last is not None:
            g = (t - last) * 1000
            out["gaps_ms"].append(g)
            if g > 600:
                cause = "first" if first else "after_skip" if skipped else "other"
                out["slow_gaps"].append({"cause": cause, "gap_ms": round(g), "latency_ms": e["latency"]["total_ms"],
                                         "audio_ms": None if last_end is None else e["end_ms"] - last_end})
            last, skipped, first, last_end = t, False, False, e["end_ms"]
        if e.get("type") == "transcript_interim" and 0 < e["end_sample"] <= n * FRAME:
            # how old the newest audio it shows is when it arrives (from the send of the frame holding it)
            out["interim_age_ms"].append((t - sent[(e["end_sample"] - 1) // FRAME]) * 1000)
    # finals, and each segment's last interim, to the sentences sent completely
    sent_end = n * FRAME
    last_interims: dict[int, dict] = {}
    for _, e in events:
        if e.get("type") == "transcript_interim":
            last_interims[e["start_sample"]] = e
    for key, results in (("pairs", finals), ("interim_pairs", list(last_interims.values()))):
        out[key] += aligned_pairs(spans, results, sent_end)


def baseline_env(checkout: str) -> dict:
    """Environment that makes ``voxserve.*`` resolve to the source folders of ``checkout``."""
    root = Path(tempfile.mkdtemp(prefix="voxserve-baseline-"))
    (root / "voxserve").mkdir()
    for name in ("server", "engines", "clients", "models"):
        (root / "voxserve" / name).symlink_to(Path(checkout).resolve() / name)
    return {"PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def baseline_rev(checkout: str) -> str:
    """The short commit id of the baseline checkout (for the result block), or ``?``."""
    import subprocess
    return subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() or "?"


def load_info(port) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=10) as r:
        return json.loads(r.read())["load"]


def new_out() -> dict:
    return {"final_client_ms": [], "final_server_ms": [], "gaps_ms": [], "interim_age_ms": [], "slow_gaps": [], "pairs": [], "interim_pairs": [], "errors": [], "budget": 0,
            "refused": 0}


def warm_up(url, port, sentences, refs) -> dict:
    """Two real-time streams, repeated until admission has measured the ASR pipeline's cost (or 120 s);
    then 3 s of quiet so the warm-up leaves the utilisation window. Returns the server's load report."""
    t0 = time.time()
    while time.time() - t0 < 120:
        lists = [playlist(sentences, refs, 7 * i + 1, 12.0, 1.0) for i in range(2)]

        async def go():
            await asyncio.gather(*[one(url, pcm, spans, 12.0, 0.5 * i, 300, new_out())
                                   for i, (pcm, spans) in enumerate(lists)])
        asyncio.run(go())
        if load_info(port)["pipelines"].get("asr", {}).get("cost_per_stream"):
            break
    time.sleep(3.0)
    return load_info(port)


def aligned_pairs(spans, results, sent_end: int) -> list[tuple[str, str]]:
    """(reference, hypothesis) pairs for WER: sentences and results (``start_sample``/``end_sample``,
    ``text``) that overlap in time form groups (a sentence split into several segments, or one segment
    over several sentences when they follow with short pauses), each group one pair, references and
    texts in time order; groups with a sentence not sent completely (and 1 s after it) are left out."""
    results = sorted(results, key=lambda r: r["start_sample"])
    groups: list[tuple[list[int], list[int]]] = []          # (sentence indices, result indices)
    for k, (s, e, _) in enumerate(spans):
        touching = [i for i, r in enumerate(results) if min(e, r["end_sample"]) - max(s, r["start_sample"]) > 0]
        joined = [g for g in groups if set(g[1]) & set(touching)]
        merged = ([j for g in joined for j in g[0]] + [k], sorted({i for g in joined for i in g[1]} | set(touching)))
        groups = [g for g in groups if g not in joined] + [merged]
    pairs = []
    for ks, rs in groups:
        if all(spans[k][1] + 16000 <= sent_end for k in ks):
            pairs.append((" ".join(spans[k][2] for k in sorted(ks)), " ".join(results[i]["text"] for i in rs)))
    return pairs


def run_level(streams, seconds, gap_s, extra_args, sentences, refs, env=None, admission=False):
    """One server, ``streams`` streams. With ``admission`` the server runs as users run it (admission on)
    and is warmed up first, so its measured cost per stream decides who is admitted; refusals are counted."""
    proc, port = start_server(["--pipelines", "vad,asr", "--max-sessions", str(streams + 10),
                               *([] if admission else ["--no-admission"]), *extra_args], env=env)
    sp = psutil.Process(proc.pid)
    out = new_out()
    before = {}
    try:
        url = f"ws://127.0.0.1:{port}/v1/stream"
        if admission:
            before = warm_up(url, port, sentences, refs)["pipelines"].get("asr", {})
        lists = [playlist(sentences, refs, 3 * i, seconds, gap_s) for i in range(streams)]
        c0, t0 = sp.cpu_times(), time.perf_counter()

        async def go():
            await asyncio.gather(*[one(url, pcm, spans, seconds, 3.0 * i / streams, 300, out)
                                   for i, (pcm, spans) in enumerate(lists)])
        asyncio.run(go())
        c1, t1 = sp.cpu_times(), time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(30)
    gaps = out["gaps_ms"]
    return {"streams": streams, "server_cpu_cores": round((c1.user + c1.system - c0.user - c0.system) / (t1 - t0), 3),
            "finals": len(out["final_server_ms"]),
            "final_client_ms": percentiles(out["final_client_ms"], (50, 95, 99)),
            "final_server_ms": percentiles(out["final_server_ms"], (50, 95, 99)),
            "interim_gap_ms": percentiles(gaps, (50, 95, 99)), "interim_gap_max_ms": round(max(gaps), 1) if gaps else None,
            "interims_over_600ms": round(sum(g > 600 for g in gaps) / max(1, len(gaps)), 4),
            "interim_age_ms": percentiles(out["interim_age_ms"], (50, 95, 99)),
            "over_600ms_by_cause": {c: sum(1 for x in out["slow_gaps"] if x["cause"] == c)
                                    for c in ("first", "after_skip", "other")},
            "sentences": len(out["pairs"]), "wer": round(wer(out["pairs"]), 4),
            "last_interim_wer": round(wer(out["interim_pairs"]), 4), "budget_events": out["budget"],
            "errors": len(out["errors"]), "refused": out["refused"], "admission": admission,
            "cost_per_stream": before.get("cost_per_stream"), "capacity_estimate": before.get("remaining_streams_estimate")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, nargs="+", default=[12])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--gap", type=float, default=1.0, help="silence after each sentence (s)")
    ap.add_argument("--server-arg", action="append", default=[])
    ap.add_argument("--baseline", help="a source checkout of older code, measured before each level")
    ap.add_argument("--admission", action="store_true",
                    help="run the server with admission on (as users do), warmed up first; refusals are reported")
    ap.add_argument("--asr-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a per-stream asr option every stream sets, e.g. interim_max_interval_ms=400 or "
                         "interim_latest_audio=true (a number, true or false)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    for kv in args.asr_option:
        key, _, value = kv.partition("=")
        ASR_OPTIONS[key] = (value == "true" if value in ("true", "false")
                            else float(value) if "." in value else int(value))
    install_uvloop()
    rows = [r for r in csv.DictReader(open(SHARED / "eval" / "speech" / "manifest.tsv"), delimiter="\t")
            if "alphanumeric" not in r["path"]]
    sentences = [load16(SHARED / "eval" / "speech" / r["path"]) for r in rows]
    refs = [r["reference"] for r in rows]
    results = []
    env = baseline_env(args.baseline) if args.baseline else None
    for n in args.streams:
        for code, e in ((["baseline"], env), (["current"], None)) if env else ((["current"], None),):
            r = run_level(n, args.seconds, args.gap, args.server_arg, sentences, refs, env=e, admission=args.admission)
            r["code"] = code[0]
            print(json.dumps(r), flush=True)
            results.append(r)
    if args.record:
        lines = ["| code | streams | server CPU (cores) | finals | final latency at client p50/p95/p99 ms | server p50/p95/p99 ms "
                 "| interim gap p50/p95/max ms | interims > 600 ms | of which first / after a skip / other "
                 "| WER (sentences) | budget events | errors | refused |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results:
            fc, fs, g = r["final_client_ms"], r["final_server_ms"], r["interim_gap_ms"]
            lines.append(f"| {r['code']} | {r['streams']} | {r['server_cpu_cores']} | {r['finals']} | {fc['p50']} / {fc['p95']} / "
                         f"{fc['p99']} | {fs['p50']} / {fs['p95']} / {fs['p99']} | {g['p50']} / {g['p95']} / "
                         f"{r['interim_gap_max_ms']} | {r['interims_over_600ms'] * 100:.1f} % | "
                         f"{' / '.join(str(v) for v in r['over_600ms_by_cause'].values())} | {r['wer'] * 100:.1f} % "
                         f"({r['sentences']}) | {r['budget_events']} | {r['errors']} | {r['refused']} |")
        server = " ".join(args.server_arg + [f"stream option asr.{kv}" for kv in args.asr_option])
        if args.baseline:
            server = (server + " " if server else "") + f"(baseline = commit {baseline_rev(args.baseline)})"
        cmd = (f"python bench/asr_load.py --streams {' '.join(map(str, args.streams))} --seconds {args.seconds:g}"
               + "".join(f" --server-arg={a}" for a in args.server_arg) + (" --admission" if args.admission else "")
               + "".join(f" --asr-option {kv}" for kv in args.asr_option)
               + (f" --baseline {args.baseline}" if args.baseline else "") + " --record")
        if args.admission:
            server = (server + "; " if server else "") + "admission on, warmed up first: " + ", ".join(
                f"{r['streams']} streams: measured cost {r['cost_per_stream']} engine-s per stream-s, capacity "
                f"estimate {r['capacity_estimate']}" for r in results)
        record("ASR capacity: real-time streams, latency at the client", cmd,
               (f"Server: {server}.\n\n" if server else "") + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
