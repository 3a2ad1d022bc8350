"""``voxserve-client mic``: a dependency-light client for small Linux devices and voice satellites.

Audio in: ``arecord`` (ALSA utils) as a raw s16le pipe by default, or any command that writes raw
s16le mono PCM to stdout (``--capture-cmd``, e.g. ``sox -d -t raw -r 16000 -e signed -b 16 -c 1 -``), or
PortAudio through ``sounddevice`` when it is installed (``--capture sounddevice``). Audio out
(voice conversion): ``aplay`` or ``--play-cmd``. Events print like ``voxserve-client stream`` (or as
JSON lines); ``--on-wakeword CMD`` runs a shell command with ``VOXSERVE_WAKEWORD`` set for each wake
word. Reconnects with exponential backoff when the connection drops.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time

from .client import VoxClient, VoxError


def capture_command(args) -> list[str]:
    if args.capture_cmd:
        return shlex.split(args.capture_cmd)
    cmd = ["arecord", "-q", "-f", "S16_LE", "-r", str(args.rate), "-c", "1", "-t", "raw"]
    if args.device:
        cmd += ["-D", args.device]
    return cmd + ["-"]


async def run_once(args, on_line) -> int:
    """One connection: start capture, stream until the capture ends or the server closes."""
    frame_bytes = int(args.rate * args.frame_ms / 1000) * 2
    pipelines = [p for p in args.pipelines.split(",") if p]
    options = json.loads(args.options) if args.options else {}
    player = None
    async with VoxClient.connect(args.url) as client:
        ready = await client.start(sample_rate=args.rate, pipelines=pipelines, options=options,
                                   output_sample_rate=args.rate, client="voxserve-client mic")
        on_line(ready)
        if "vc" in pipelines and not args.no_playback:
            play = shlex.split(args.play_cmd) if args.play_cmd else ["aplay", "-q", "-f", "S16_LE", "-r",
                                                                     str(args.rate), "-c", "1", "-t", "raw", "-"]
            player = subprocess.Popen(play, stdin=subprocess.PIPE)
        proc = await asyncio.create_subprocess_exec(*capture_command(args), stdout=asyncio.subprocess.PIPE)

        async def pump():
            try:
                while True:
                    chunk = await proc.stdout.readexactly(frame_bytes)
                    await client.send_audio(chunk)
            except asyncio.IncompleteReadError as e:
                if e.partial and len(e.partial) % 2 == 0:
                    await client.send_audio(e.partial)
                await client.stop()

        task = asyncio.create_task(pump())
        async for ev in client.events():
            on_line(ev)
            if ev.get("type") == "wakeword" and args.on_wakeword:
                subprocess.Popen(args.on_wakeword, shell=True, env={**os.environ, "VOXSERVE_WAKEWORD": ev["name"]})
            if ev.get("type") == "audio" and player is not None and player.stdin:
                try:
                    player.stdin.write(ev["pcm"])
                    player.stdin.flush()
                except BrokenPipeError:
                    player = None
        task.cancel()
        if proc.returncode is None:
            proc.terminate()
        if player is not None and player.stdin:
            player.stdin.close()
        return client.close_code or 1006


def main_mic(args) -> int:
    from .cli import format_event

    t0 = time.perf_counter()

    def on_line(ev):
        if args.json:
            shown = {k: (len(v) if k == "pcm" else v) for k, v in ev.items()}
            print(json.dumps(shown, default=str), flush=True)
        else:
            line = format_event(ev, time.perf_counter() - t0)
            if line:
                print(line, flush=True)

    backoff = 0.5
    while True:
        try:
            code = asyncio.run(run_once(args, on_line))
        except VoxError as exc:
            print(f"voxserve-client: {exc}", file=sys.stderr)
            code = exc.close_code or 1
            if code not in (1012, 1013):
                return 1
        except (OSError, asyncio.TimeoutError) as exc:
            print(f"voxserve-client: connection failed: {exc}", file=sys.stderr)
            code = 1006
        except KeyboardInterrupt:
            return 0
        if code == 1000 or args.no_reconnect:
            return 0 if code == 1000 else 1
        print(f"voxserve-client: disconnected ({code}); reconnecting in {backoff:.1f} s", file=sys.stderr)
        time.sleep(backoff)
        backoff = min(backoff * 2, 30.0)
