"""An aiortc human for the interoperability tests; runs only in ``.venv-peers``.

Joins a room the way the PWA does — the signaling WebSocket's ``hello``,
``join``, one ``offer`` with every candidate in it (BotCall takes no trickle) —
sends a tone from its "microphone" and writes what it hears (48 kHz mono int16)
to ``--record``. Imports nothing from ``botcall``.

Line protocol (JSON, one object per line). Out on stdout: ``{"event":
"connected"}`` when ICE and DTLS are up, ``{"event": "renegotiated", "samples":
n}`` once the answer to a new offer is applied (``n``: samples recorded so
far), ``{"event": "recorded", "samples": n}`` every half second, ``{"event":
"error", "message": ...}``. In on stdin: ``{"cmd": "same_offer"}`` (offer the
same session again), ``{"cmd": "add_track"}`` (add a second audio track and
offer; BotCall rejects it, and aiortc then refuses the answer: see
``external.AIORTC``), ``{"cmd": "restart_ice"}`` (an ICE restart by hand,
see :func:`restart_ice`), ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import math
import secrets
import sys
import threading
import time

import numpy as np
import websockets
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame

RATE = 48000
FRAME = 960


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Tone(MediaStreamTrack):
    """A sine at ``frequency`` in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self, frequency: float) -> None:
        super().__init__()
        self.frequency = frequency
        self._sent = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._sent / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(FRAME) + self._sent) / RATE
        samples = (0.4 * 32767 * np.sin(2 * math.pi * self.frequency * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += FRAME
        return frame


class Recorder:
    def __init__(self, path: str) -> None:
        self.file = open(path, "wb")
        self.samples = 0

    async def consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:  # the track ended (MediaStreamError): the call is over
                return
            pcm = frame.to_ndarray()
            channels = len(frame.layout.channels)
            mono = pcm.reshape(-1, channels)[:, 0] if channels > 1 else pcm.reshape(-1)
            self.file.write(mono.astype("<i2").tobytes())
            self.file.flush()
            self.samples += len(mono)


async def offer(pc: RTCPeerConnection, ws: websockets.WebSocketClientProtocol) -> str:
    """One offer/answer exchange over the signaling socket (all candidates in the offer); the answer."""
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "answer":
            await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
            return message["sdp"]
        if message["type"] == "error":
            raise RuntimeError(f"the server refused the offer: {message}")


def ice_connections(pc: RTCPeerConnection) -> list:
    """The aioice connections under ``pc``'s transceivers (one under BUNDLE)."""
    found = {id(t.sender.transport.transport._connection): t.sender.transport.transport._connection for t in pc.getTransceivers()}
    return list(found.values())


def restart_ice(pc: RTCPeerConnection) -> list:
    """What ``restartIce()`` would do, which aiortc 1.16 lacks: new local ICE
    credentials (RFC 8445 §9; aiortc's next offer carries them). Returns the
    connections whose remote credentials the answer must then replace."""
    connections = ice_connections(pc)
    for connection in connections:
        # aioice keeps them read-only for its users; an ICE restart is the exception.
        connection._local_username = secrets.token_hex(4)
        connection._local_password = secrets.token_hex(16)
    return connections


async def adopt_answer_credentials(connections: list, sdp: str) -> None:
    """The answer's ``ice-ufrag``/``ice-pwd`` into aioice (aiortc starts ICE only
    once and ignores them), then one connectivity check on each nominated pair
    with the new credentials; raises if the relay refuses it."""
    fields = dict(line[2:].split(":", 1) for line in sdp.splitlines() if line.startswith(("a=ice-ufrag:", "a=ice-pwd:")))
    for connection in connections:
        connection.remote_username, connection.remote_password = fields["ice-ufrag"], fields["ice-pwd"]
        for pair in connection._nominated.values():
            request = connection.build_request(pair, nominate=False)
            # A few retransmissions (~4 s): the relay never answers a check with stale credentials.
            await pair.protocol.request(request, pair.remote_addr, integrity_key=connection.remote_password.encode(), retransmissions=3)


def read_commands(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[dict]) -> None:
    """Stdin's lines into ``queue`` (a daemon thread: it never holds up the exit)."""
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, json.loads(line))
    loop.call_soon_threadsafe(queue.put_nowait, {"cmd": "quit"})


async def main(args: argparse.Namespace) -> None:
    recorder = Recorder(args.record)
    async with websockets.connect(args.signal_url, max_size=2**20) as ws:
        await ws.send(json.dumps({"type": "hello", "invite": args.invite}))
        await ws.send(json.dumps({"type": "join", "display_name": args.name}))
        while json.loads(await ws.recv())["type"] != "joined":
            pass
        pc = RTCPeerConnection()
        connected = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and not tasks:
                tasks.append(asyncio.ensure_future(recorder.consume(track)))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState == "failed":
                emit(event="error", message="connection failed")

        pc.addTrack(Tone(args.tone))
        await offer(pc, ws)
        await asyncio.wait_for(connected.wait(), 20)
        emit(event="connected")

        commands: asyncio.Queue[dict] = asyncio.Queue()
        threading.Thread(target=read_commands, args=(asyncio.get_running_loop(), commands), daemon=True).start()

        async def report() -> None:
            while True:
                await asyncio.sleep(0.5)
                emit(event="recorded", samples=recorder.samples)

        reporter = asyncio.ensure_future(report())
        try:
            while True:
                command = (await commands.get())["cmd"]
                if command == "quit":
                    break
                if command == "add_track":
                    pc.addTrack(Tone(args.tone * 1.5))
                restarted = restart_ice(pc) if command == "restart_ice" else []
                answer = await offer(pc, ws)
                checked = 0
                if restarted:
                    await adopt_answer_credentials(restarted, answer)
                    checked = len(restarted)
                emit(event="renegotiated", samples=recorder.samples, checked_with_new_credentials=checked)
        finally:
            reporter.cancel()
            await pc.close()
            recorder.file.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--signal-url", required=True)
    parser.add_argument("--invite", required=True)
    parser.add_argument("--tone", type=float, default=660.0)
    parser.add_argument("--record", required=True)
    parser.add_argument("--name", default="aiortc")
    try:
        asyncio.run(main(parser.parse_args()))
    except Exception as exc:
        emit(event="error", message=repr(exc))
        raise
