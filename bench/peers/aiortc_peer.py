"""The aiortc side of the fan-out comparison; runs only inside the bench virtualenv.

aiortc is a benchmark peer, never a BotCall dependency: this file imports it
and is started by :mod:`bench.peers.aiortc` with the bench virtualenv's Python,
from the repository root, as ``python -m bench.peers.aiortc_peer <mode>``.
It imports nothing from ``botcall``.

``relay --port P``
    The relay under test: aiortc's documented ``MediaRelay``. A TCP signaling
    server on 127.0.0.1:P takes one JSON line per connection,
    ``{"role": "sender" | "subscriber", "sdp": <offer>}``, and answers
    ``{"sdp": <answer>}``. The sender's Opus track arrives on one
    RTCPeerConnection; each subscriber's RTCPeerConnection gets
    ``relay.subscribe(track)`` (what aiortc's examples do), so the track is
    decoded once and re-encoded for every subscriber.

``clients --relay-port P``
    The load, in a second process on the other core: one sender
    RTCPeerConnection playing a 440 Hz tone (20 ms Opus frames, paced in real
    time) and K subscriber RTCPeerConnections counting the audio frames they
    receive. Driven by JSON lines on stdin, answered on stdout:
    ``{"cmd": "setup", "subscribers": K}``,
    ``{"cmd": "measure", "seconds": S}`` (frames and RTP packets received per
    subscriber over S seconds), ``{"cmd": "close"}``.

aioice skips 127.0.0.1 when gathering host candidates; both processes make it
gather 127.0.0.1 only, and no STUN server is configured, so every packet
stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import sys
import time

import aioice.ice
import av
import numpy
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

HOST = "127.0.0.1"
SAMPLE_RATE = 48000
FRAME_SAMPLES = 960
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
TONE_HZ = 440.0
SIGNAL_TIMEOUT = 30.0
FIRST_FRAME_TIMEOUT = 30.0
MAX_SUBSCRIBERS = 1000
MAX_MEASURE_S = 600.0
MAX_LINE = 1 << 20


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return [HOST] if use_ipv4 else []


aioice.ice.get_host_addresses = _loopback_only


def _configuration() -> RTCConfiguration:
    # No STUN server: aiortc would otherwise ask Google's for a reflexive candidate.
    return RTCConfiguration(iceServers=[])


class ToneTrack(MediaStreamTrack):
    """A 440 Hz mono tone in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        t = numpy.arange(SAMPLE_RATE) / SAMPLE_RATE
        self._second = (numpy.sin(2 * numpy.pi * TONE_HZ * t) * 8000).astype(numpy.int16)
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        offset = self._pts % SAMPLE_RATE
        frame = av.AudioFrame.from_ndarray(self._second[offset : offset + FRAME_SAMPLES].reshape(1, -1), format="s16", layout="mono")
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


# --- relay ------------------------------------------------------------------------------


class Relay:
    """aiortc's MediaRelay behind a one-line-per-connection signaling server."""

    def __init__(self) -> None:
        self.media_relay = MediaRelay()
        self.source: MediaStreamTrack | None = None
        self.source_ready = asyncio.Event()
        self.peers: list[RTCPeerConnection] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await asyncio.wait_for(reader.readline(), SIGNAL_TIMEOUT))
            answer = await asyncio.wait_for(self.answer(request["role"], request["sdp"]), SIGNAL_TIMEOUT)
            writer.write((json.dumps({"sdp": answer}) + "\n").encode())
        except (ValueError, KeyError, asyncio.TimeoutError) as exc:
            writer.write((json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
        await writer.drain()
        writer.close()

    async def answer(self, role: str, sdp: str) -> str:
        if len(self.peers) > MAX_SUBSCRIBERS:
            raise ValueError("too many peers")
        pc = RTCPeerConnection(_configuration())
        self.peers.append(pc)
        if role == "sender":

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                self.source = track
                self.source_ready.set()

            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        elif role == "subscriber":
            await self.source_ready.wait()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            pc.addTrack(self.media_relay.subscribe(self.source))
        else:
            raise ValueError(f"unknown role {role!r}")
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp


async def run_relay(port: int) -> None:
    relay = Relay()
    server = await asyncio.start_server(relay.handle, HOST, port, limit=MAX_LINE)
    async with server:
        print(json.dumps({"ready": True}), flush=True)
        await server.serve_forever()


# --- clients ----------------------------------------------------------------------------


class Clients:
    """The sender and the subscribers, driven by commands on stdin."""

    def __init__(self, relay_port: int) -> None:
        self.relay_port = relay_port
        self.peers: list[RTCPeerConnection] = []
        self.frames: list[int] = []
        self.tasks: list[asyncio.Task] = []
        self.first_frame: list[asyncio.Event] = []
        self.subscriber_pcs: list[RTCPeerConnection] = []

    async def negotiate(self, pc: RTCPeerConnection, role: str) -> None:
        await pc.setLocalDescription(await pc.createOffer())
        reader, writer = await asyncio.open_connection(HOST, self.relay_port, limit=MAX_LINE)
        writer.write((json.dumps({"role": role, "sdp": pc.localDescription.sdp}) + "\n").encode())
        await writer.drain()
        reply = json.loads(await asyncio.wait_for(reader.readline(), SIGNAL_TIMEOUT))
        writer.close()
        if "sdp" not in reply:
            raise RuntimeError(f"relay refused {role}: {reply.get('error')}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))

    async def setup(self, subscribers: int) -> dict:
        started = time.monotonic()
        sender = RTCPeerConnection(_configuration())
        self.peers.append(sender)
        sender.addTrack(ToneTrack())
        await self.negotiate(sender, "sender")
        for index in range(min(subscribers, MAX_SUBSCRIBERS)):
            pc = RTCPeerConnection(_configuration())
            self.peers.append(pc)
            self.subscriber_pcs.append(pc)
            pc.addTransceiver("audio", direction="recvonly")
            self.frames.append(0)
            event = asyncio.Event()
            self.first_frame.append(event)

            @pc.on("track")
            def on_track(track: MediaStreamTrack, index: int = index, event: asyncio.Event = event) -> None:
                self.tasks.append(asyncio.ensure_future(self.count(track, index, event)))

            await self.negotiate(pc, "subscriber")
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in self.first_frame)), FIRST_FRAME_TIMEOUT)
        return {"ok": True, "setup_s": time.monotonic() - started}

    async def count(self, track: MediaStreamTrack, index: int, first: asyncio.Event) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self.frames[index] += 1
            first.set()

    async def packets(self) -> list[int]:
        counts = []
        for pc in self.subscriber_pcs:
            stats = await pc.getStats()
            counts.append(sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp"))
        return counts

    async def measure(self, seconds: float) -> dict:
        seconds = min(max(seconds, 0.1), MAX_MEASURE_S)
        frames_before, packets_before = list(self.frames), await self.packets()
        started = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        frames_after, packets_after = list(self.frames), await self.packets()
        return {
            "seconds": elapsed,
            "frames": [after - before for before, after in zip(frames_before, frames_after)],
            "packets": [after - before for before, after in zip(packets_before, packets_after)],
        }

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(pc.close() for pc in self.peers), return_exceptions=True)


async def run_clients(relay_port: int) -> None:
    clients = Clients(relay_port)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            command = json.loads(line)
            if command["cmd"] == "setup":
                reply = await clients.setup(int(command["subscribers"]))
            elif command["cmd"] == "measure":
                reply = await clients.measure(float(command["seconds"]))
            elif command["cmd"] == "close":
                return
            else:
                reply = {"error": f"unknown command {command['cmd']!r}"}
            print(json.dumps(reply), flush=True)
    finally:
        await clients.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aiortc relay and clients for bench/compare.py")
    sub = parser.add_subparsers(dest="mode", required=True)
    relay = sub.add_parser("relay")
    relay.add_argument("--port", type=int, required=True)
    clients = sub.add_parser("clients")
    clients.add_argument("--relay-port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.mode == "relay":
        asyncio.run(run_relay(args.port))
    else:
        asyncio.run(run_clients(args.relay_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
