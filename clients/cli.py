"""``voxserve-client``: stream a file (or the microphone) to a voxserve server and show the events.

Stable interface (scripts depend on it)::

    voxserve-client stream FILE --url ws://HOST:PORT/v1/stream --pipelines vad,wakeword,asr,vc \\
        --set KEY=VALUE ... --json --out FILE.wav --speed N

``--set pipeline.option=value`` (repeatable; value parsed as JSON when it can be, else a string).
With ``--json`` every line is one JSON object with a ``type`` field. Exit status: 0 on a normal
close, 1 after a fatal error or an abnormal close, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np


def parse_sets(items: list[str]) -> dict:
    """``["asr.mode=always", "vad.aggressiveness=3"]`` -> ``{"asr": {"mode": "always"}, ...}``."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        pipe, dot, opt = key.partition(".")
        if not sep or not dot or not pipe or not opt:
            raise ValueError(f"--set expects pipeline.option=value, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(pipe, {})[opt] = value
    return out


def format_event(ev: dict, t: float) -> str:
    t_s = f"[{t:7.2f}s]"
    typ = ev.get("type")
    lat = ev.get("latency", {})
    lat_s = f" (latency {lat['total_ms']:.1f} ms)" if "total_ms" in lat else ""
    if typ == "ready":
        return f"{t_s} ready session={ev['session_id']} pipelines={','.join(ev['config']['pipelines'])}"
    if typ == "vad":
        where = f"{ev['start_ms'] / 1000:.2f}s" + (f"-{ev['end_ms'] / 1000:.2f}s" if "end_ms" in ev else "")
        return f"{t_s} vad {ev['event']:<12} {where}{lat_s}"
    if typ == "wakeword":
        return f"{t_s} WAKEWORD {ev['name']} score={ev['score']:.3f} at {ev['end_ms'] / 1000:.2f}s{lat_s}"
    if typ in ("transcript", "transcript_interim"):
        kind = "final  " if typ == "transcript" else "interim"
        return f"{t_s} {kind} {ev.get('text', '')!r}{lat_s}"
    if typ == "error":
        return f"{t_s} ERROR {ev['code']}: {ev['message']}{' (fatal)' if ev.get('fatal') else ''}"
    if typ == "audio":
        return ""
    rest = {k: v for k, v in ev.items() if k not in ("type", "pcm")}
    return f"{t_s} {typ} {json.dumps(rest, default=str)}"


def event_printer(as_json: bool):
    """A callback printing events as JSON lines (``pcm`` replaced by its length) or readable lines."""
    import time

    t0 = time.perf_counter()

    def show(ev: dict) -> None:
        if as_json:
            shown = dict(ev)
            if isinstance(shown.get("pcm"), (bytes, bytearray)):
                shown["pcm_bytes"] = len(shown.pop("pcm"))
            print(json.dumps(shown, default=str), flush=True)
        else:
            line = format_event(ev, time.perf_counter() - t0)
            if line:
                print(line, flush=True)
    return show


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """Credential and TLS flags shared by ``stream`` and ``mic``."""
    import os

    p.add_argument("--token", default=os.environ.get("VOXSERVE_TOKEN"),
                   help="API key or JWT (default: $VOXSERVE_TOKEN); sent as 'Authorization: Bearer'")
    p.add_argument("--token-via", choices=("header", "subprotocol", "query"), default="header",
                   help="how the token travels (browsers use the subprotocol)")
    p.add_argument("--ca-file", help="CA certificate(s) that signed the server's certificate (wss://)")
    p.add_argument("--cert", help="client certificate (PEM) for servers that require one")
    p.add_argument("--key", help="private key of --cert")


def ssl_context(args: argparse.Namespace):
    """An SSL context for wss:// from --ca-file/--cert/--key, or None for the system defaults."""
    if not (args.ca_file or args.cert):
        return None
    import ssl

    ctx = ssl.create_default_context(cafile=args.ca_file)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    return ctx


def cmd_stream(args: argparse.Namespace) -> int:
    from .audiofile import load_audio
    from .client import VoxError, stream_source

    try:
        options = parse_sets(args.set or [])
    except ValueError as exc:
        print(f"voxserve-client: {exc}", file=sys.stderr)
        return 2
    try:
        source = load_audio(args.file, raw_rate=args.raw_rate, raw_encoding=args.raw_encoding,
                            raw_channels=args.raw_channels)
    except Exception as exc:
        print(f"voxserve-client: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    pipelines = [p for p in args.pipelines.split(",") if p]
    audio_out: list[bytes] = []
    out_rate: list[int] = []
    show = event_printer(args.json)

    def on_event(ev: dict) -> None:
        if ev.get("type") == "audio" and isinstance(ev.get("pcm"), (bytes, bytearray)):
            audio_out.append(bytes(ev["pcm"]))
        if ev.get("type") == "ready":
            out_rate.append(int(ev["config"]["output_sample_rate"]))
        show(ev)

    try:
        result = asyncio.run(stream_source(args.url, source, pipelines=pipelines, options=options, speed=args.speed,
                                           frame_ms=args.frame_ms, subprotocol=args.subprotocol,
                                           output_sample_rate=args.output_rate, on_event=on_event,
                                           token=args.token, token_via=args.token_via, ssl=ssl_context(args)))
    except VoxError as exc:
        if args.json:
            print(json.dumps({"type": "error", **exc.event, "close_code": exc.close_code}), flush=True)
        else:
            print(f"voxserve-client: refused: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncio.TimeoutError) as exc:
        print(f"voxserve-client: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.out and audio_out:
        import soundfile as sf

        pcm = np.frombuffer(b"".join(audio_out), dtype="<i2")
        sf.write(args.out, pcm, out_rate[0] if out_rate else source.sample_rate, subtype="PCM_16")
    closing = {"type": "closed", "code": result.close_code, "reason": result.close_reason}
    if args.json:
        print(json.dumps(closing), flush=True)
    else:
        print(f"closed: {result.close_code} {result.close_reason or ''}".rstrip(), flush=True)
    return 1 if (result.fatal or result.close_code not in (1000, None)) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxserve-client", description="voxserve streaming client")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stream", help="stream an audio file (WAV/FLAC/OGG, or .raw/.pcm)")
    s.add_argument("file")
    s.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream")
    s.add_argument("--pipelines", default="vad", help="comma list: vad,wakeword,asr,vc")
    s.add_argument("--set", action="append", metavar="PIPELINE.OPTION=VALUE", help="per-pipeline option (repeat)")
    s.add_argument("--json", action="store_true", help="one JSON object per line, each with a 'type'")
    s.add_argument("--out", help="write returned audio (vc) to this WAV file")
    s.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as the server allows")
    s.add_argument("--frame-ms", type=float, default=20.0, help="audio per message (10 to 1000 ms)")
    s.add_argument("--subprotocol", choices=("msgpack", "json"), default="msgpack")
    s.add_argument("--output-rate", type=int, default=None, help="sample rate of returned audio")
    s.add_argument("--raw-rate", type=int, default=16000)
    s.add_argument("--raw-encoding", choices=("s16le", "f32le"), default="s16le")
    s.add_argument("--raw-channels", type=int, default=1)
    add_connection_args(s)
    m = sub.add_parser("mic", help="stream the microphone (arecord, a capture command, or sounddevice)")
    m.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream")
    m.add_argument("--pipelines", default="vad,wakeword")
    m.add_argument("--options", help='per-pipeline options as JSON, e.g. {"asr": {"mode": "after_wakeword"}}')
    m.add_argument("--rate", type=int, default=16000)
    m.add_argument("--frame-ms", type=float, default=20.0)
    m.add_argument("--device", help="ALSA capture device for arecord (-D)")
    m.add_argument("--capture-cmd", help="command writing raw s16le mono at --rate to stdout")
    m.add_argument("--play-cmd", help="command reading raw s16le mono at --rate (converted audio)")
    m.add_argument("--no-playback", action="store_true")
    m.add_argument("--on-wakeword", help="shell command run on each wake word ($VOXSERVE_WAKEWORD = name)")
    m.add_argument("--json", action="store_true")
    m.add_argument("--no-reconnect", action="store_true")
    m.add_argument("--replay-s", type=float, default=10.0, help="audio kept for resending after a drop")
    add_connection_args(m)
    args = p.parse_args(argv)
    if args.command == "mic":
        from .device import main_mic
        return main_mic(args)
    if args.command == "stream":
        if not (10 <= args.frame_ms <= 1000):
            print("voxserve-client: --frame-ms must be 10..1000", file=sys.stderr)
            return 2
        if not Path(args.file).exists():
            print(f"voxserve-client: no such file: {args.file}", file=sys.stderr)
            return 2
        return cmd_stream(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
