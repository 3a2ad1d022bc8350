"""``voxserve-client mic``: a dependency-light client for small Linux devices and voice satellites.

Audio in: ``arecord`` (ALSA utils) as a raw s16le pipe by default, or any command that writes raw
s16le mono PCM to stdout (``--capture-cmd``, e.g. ``sox -d -t raw -r 16000 -e signed -b 16 -c 1 -``).
Audio out (voice conversion): ``aplay`` or ``--play-cmd``. Events print like ``voxserve-client stream``
(or as JSON lines); ``--on-wakeword CMD`` runs a shell command with ``VOXSERVE_WAKEWORD`` set.

Dropped connections: capture keeps running; the last ``--replay-s`` seconds of frames are kept, and
the client reconnects with exponential backoff, resumes the session, re-sends the frames the server
says it is missing and drops events it already has (by ``eid``), so nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shlex
import subprocess
import sys
import uuid

from websockets.exceptions import ConnectionClosed

from .client import VoxClient, VoxError


def capture_command(args) -> list[str]:
    if args.capture_cmd:
        return shlex.split(args.capture_cmd)
    cmd = ["arecord", "-q", "-f", "S16_LE", "-r", str(args.rate), "-c", "1", "-t", "raw"]
    if args.device:
        cmd += ["-D", args.device]
    return cmd + ["-"]


class MicSession:
    """Capture once, stream over as many connections as it takes."""

    def __init__(self, args, on_event):
        self.args = args
        self.on_event = on_event
        self.frame_bytes = int(args.rate * args.frame_ms / 1000) * 2
        self.frames: collections.deque[tuple[int, bytes]] = collections.deque(
            maxlen=max(1, int(args.replay_s * 1000 / args.frame_ms)))
        self.next_frame = 0
        self.captured_all = False
        self.new_frame = asyncio.Event()
        self.session_id: str | None = None
        self.resume_token = ""
        self.restart_at = 0                 # capture frame a new stream starts from
        self.route = ""
        self.last_eid = -1
        self.acked = -1
        self.player = None

    async def capture(self) -> None:
        proc = await asyncio.create_subprocess_exec(*capture_command(self.args), stdout=asyncio.subprocess.PIPE)
        try:
            while True:
                try:
                    chunk = await proc.stdout.readexactly(self.frame_bytes)
                except asyncio.IncompleteReadError as e:
                    if e.partial and len(e.partial) % 2 == 0:
                        self.frames.append((self.next_frame, e.partial))
                        self.next_frame += 1
                    break
                self.frames.append((self.next_frame, chunk))
                self.next_frame += 1
                self.new_frame.set()
        finally:
            self.captured_all = True
            self.new_frame.set()
            if proc.returncode is None:
                proc.terminate()

    async def connection(self) -> int:
        a = self.args
        pipelines = [p for p in a.pipelines.split(",") if p]
        from .cli import ssl_context

        if self.session_id is None:
            self.route = uuid.uuid4().hex          # ?session=ROUTE: a balancer brings reconnects back here
        url = a.url + ("&" if "?" in a.url else "?") + "session=" + self.route
        async with VoxClient.connect(url, token=a.token, token_via=a.token_via, ssl=ssl_context(a)) as client:
            if self.session_id is None:
                options = json.loads(a.options) if a.options else {}
                if "vc" in pipelines and not a.no_playback:          # live playback: late audio is no use
                    options.setdefault("vc", {}).setdefault("delivery", "realtime")
                ev = await client.start(sample_rate=a.rate, pipelines=pipelines, options=options,
                                        output_sample_rate=a.rate, client="voxserve-client mic")
                self.session_id, seq = ev["session_id"], self.restart_at
                self.resume_token = ev.get("resume_token", "")
            else:
                try:
                    ev = await client.resume(self.session_id, self.last_eid, self.resume_token)
                    seq = ev["next_seq"]
                except VoxError as exc:
                    if exc.event.get("code") != "unknown_session":
                        raise
                    # The server no longer has the stream (it restarted, or the grace period passed): start a
                    # new one from the live capture position, not by re-sending audio of the lost one.
                    print("voxserve-client: the server no longer has this stream; starting a new one",
                          file=sys.stderr, flush=True)
                    self.session_id, self.last_eid, self.restart_at = None, -1, self.next_frame
                    return 1006
            self.last_eid = max(self.last_eid, ev.get("eid", -1))
            self.on_event(ev)
            if "vc" in pipelines and not a.no_playback and self.player is None:
                play = shlex.split(a.play_cmd) if a.play_cmd else ["aplay", "-q", "-f", "S16_LE", "-r", str(a.rate),
                                                                   "-c", "1", "-t", "raw", "-"]
                self.player = subprocess.Popen(play, stdin=subprocess.PIPE)
            client.conn.seq = seq

            async def send() -> None:
                nonlocal seq
                while True:
                    sent_any = False
                    for s, pcm in list(self.frames):
                        if s >= seq:
                            client.conn.seq = s
                            await client.send_audio(pcm)
                            seq = s + 1
                            sent_any = True
                    if self.captured_all and seq >= self.next_frame:
                        await client.stop()
                        return
                    if not sent_any:
                        self.new_frame.clear()
                        await self.new_frame.wait()

            sender = asyncio.create_task(send())
            try:
                async for ev in client.events():
                    eid = ev.get("eid")
                    if eid is not None:
                        if eid <= self.last_eid:
                            continue
                        self.last_eid = eid
                        if eid - self.acked >= 32:
                            self.acked = eid
                            await client.ack(eid)
                    self.on_event(ev)
                    if ev.get("type") == "wakeword" and a.on_wakeword:
                        subprocess.Popen(a.on_wakeword, shell=True,
                                         env={**os.environ, "VOXSERVE_WAKEWORD": ev["name"]})
                    if ev.get("type") == "audio" and self.player is not None and self.player.stdin:
                        try:
                            self.player.stdin.write(ev["pcm"])
                            self.player.stdin.flush()
                        except BrokenPipeError:
                            self.player = None
            except ConnectionClosed:
                pass
            sender.cancel()
            return client.close_code or 1006

    async def run(self) -> int:
        cap = asyncio.create_task(self.capture())
        backoff = 0.5
        try:
            while True:
                try:
                    code = await self.connection()
                except VoxError as exc:
                    print(f"voxserve-client: {exc}", file=sys.stderr)
                    code = exc.close_code or 1
                    if code not in (1012, 1013):
                        return 1
                except (OSError, asyncio.TimeoutError, ConnectionClosed) as exc:
                    print(f"voxserve-client: connection failed: {exc}", file=sys.stderr)
                    code = 1006
                if code == 1000:
                    return 0
                if self.args.no_reconnect:
                    return 1
                print(f"voxserve-client: disconnected ({code}); reconnecting in {backoff:.1f} s", file=sys.stderr)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        finally:
            cap.cancel()
            if self.player is not None and self.player.stdin:
                self.player.stdin.close()


def main_mic(args) -> int:
    from .cli import event_printer

    try:
        return asyncio.run(MicSession(args, event_printer(args.json)).run())
    except KeyboardInterrupt:
        return 0
