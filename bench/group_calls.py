"""Group calls: the relay's CPU and added latency per packet for rooms of 2..8, everyone talking.

Usage (from the repository root)::

    python -m bench.group_calls [--sizes 2,3,4,6,8] [--rooms 20] [--seconds 2] [--tracks 3] [--repeat 3]

Sans-IO, in one process on one core, the way ``bench.srtp_hot_path`` measures
(``MediaRelay.handle_datagram`` called directly; no sockets, no Trio). Each
room has one UDP bot and ``size - 1`` simulated browsers
(``tests/kit/browser.py``: a real ICE-lite check and a real DTLS 1.2 handshake,
so SRTP is real libsrtp AEAD_AES_128_GCM) that offered ``--tracks``
downstream tracks, as the PWA does (docs/protocol.md "Group calls").
**Everyone talks at once**: every participant sends a 20 ms packet every
frame, with an RFC 6464 audio level saying "voice" (the speech detector then
calls them all talkers, as it would). ``size = 2`` is the 1:1 call (a bot and
a browser), printed in the same run for comparison.

Per room size, best of ``--repeat`` runs over the same packets (each run
numbers on, so libsrtp's replay checks pass; browsers' SRTP is protected
before the clock starts):

* ``in/s``: packets a room receives per second (``size`` x 50);
* ``out/pkt``: datagrams sent per packet received: ``size - 1`` while every
  other participant fits in a browser's tracks, fewer beyond (``no_slot``);
* ``µs/in``, ``µs/out``: relay CPU per packet received and per datagram sent;
* ``p50``/``p99 µs``: how long one ``handle_datagram`` took, from the packet's
  arrival to its last copy handed to the socket: the latency the relay's own
  work adds to the last listener (the socket and the kernel not included);
* ``rooms/core``: how many such rooms one core could route at this CPU cost
  (1 s / CPU per room-second), before the UDP socket's own cost, which
  FACTS.md puts at ~11 µs per forwarded packet for the drain loop.

Last, what the track policy itself costs: ``DownstreamSlots.route`` for a
speaker that holds its track, timed alone (best of many loops).

The output is checked after every run (the count of datagrams sent, that
each browser's tracks carry only SSRCs its answer announced, and a sample
unprotected back to its payload), so a broken path cannot post a fast number.
Numbers on a shared machine are indicative; compare rows of one run.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from dataclasses import dataclass, field

from botcall.audio.vad import BOT_AUDIO_LEVEL_ID, build_audio_level
from botcall.relay.core import MediaRelay
from botcall.relay.service import MediaService
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.leg import DownstreamSlots, OutboundStream
from botcall.webrtc.srtp import SrtpContext
from botcall.wire.rtp import RtpHeaderExtension, RtpPacket, parse_rtp_untrusted
from tests.kit.browser import BROWSER_SEND_SSRC, Browser
from tests.kit.relay import Wire, latch, make_session

FRAME = 0.020
PAYLOAD = bytes(range(100)) + bytes(60)  # 160 bytes, as bench.srtp_hot_path
LEVEL = RtpHeaderExtension.from_elements(((BOT_AUDIO_LEVEL_ID, build_audio_level(True, -20)),))


@dataclass
class Participant:
    """One sender: where from, its SSRC on the wire, how its packets are protected."""

    addr: tuple[str, int]
    ssrc: int
    srtp: SrtpContext | None = None  # the browser side's context (None: a bot)
    out_ssrcs: tuple[int, ...] = ()
    seq: int = 0
    got: list[bytes] = field(default_factory=list)


class GroupWorld:
    """``rooms`` rooms of ``size`` participants (a UDP bot and ``size - 1`` browsers) on one relay."""

    def __init__(self, rooms: int, size: int, tracks: int) -> None:
        self.wire = Wire()
        browsers = rooms * (size - 1)
        self.relay = MediaRelay(self.wire.transmit, max_handshakes=browsers + 1)
        self.media = MediaService(
            self.relay, self.wire.transmit, certificate=DtlsCertificate.generate(), hosts=("127.0.0.1",), port=40000, max_receive_tracks=tracks
        )
        browser_cert = DtlsCertificate.generate()
        self.size = size
        self.participants: list[Participant] = []
        self.by_addr: dict[tuple[str, int], Participant] = {}
        port = 20000
        for room_index in range(rooms):
            room = f"room-{size}-{room_index}"
            bot = make_session(f"bot{room_index}", "bot", "udp", 0x10000 + room_index, room_id=room)
            self.media.add_session(bot)
            bot_addr = ("127.0.0.1", port)
            latch(self.relay, self.wire, bot, bot_addr, bot_ufrag="bench")
            self._add(Participant(bot_addr, bot.ssrc))
            for human_index in range(size - 1):
                port += 1
                human = make_session(f"h{room_index}x{human_index}", "human", "webrtc", 0x20000 + room_index * 16 + human_index, room_id=room)
                addr = ("127.0.0.1", port)
                browser = Browser.join(self.media, human, self.wire, addr, certificate=browser_cert, receive_tracks=tracks)
                browser.ice_check(addr)
                srtp = browser.handshake()
                self._add(Participant(addr, BROWSER_SEND_SSRC, srtp, browser.out_ssrcs))
            port += 1
        self.wire.clear()

    def _add(self, participant: Participant) -> None:
        self.participants.append(participant)
        self.by_addr[participant.addr] = participant

    def packets(self, frames: int, start: float) -> list[tuple[bytes, tuple[str, int], float]]:
        """``frames`` frames in which every participant sends one packet (a voiced level)."""
        out = []
        for frame in range(frames):
            now = start + frame * FRAME
            for sender in self.participants:
                sender.seq += 1
                packet = bytes(RtpPacket(111, sender.seq & 0xFFFF, (sender.seq * 960) & 0xFFFFFFFF, sender.ssrc, payload=PAYLOAD, extension=LEVEL))
                out.append((sender.srtp.protect(packet) if sender.srtp is not None else packet, sender.addr, now))
        return out

    def run(self, frames: int, start: float) -> tuple[float, list[float], int]:
        """Route ``frames`` frames; returns (CPU seconds, per-datagram seconds, datagrams sent)."""
        batch = self.packets(frames, start)
        handle = self.relay.handle_datagram
        clock = time.perf_counter
        durations = [0.0] * len(batch)
        self.wire.clear()
        gc.collect()
        gc.disable()
        try:
            cpu_start = time.process_time()
            for index, (data, addr, now) in enumerate(batch):
                began = clock()
                handle(data, addr, now)
                durations[index] = clock() - began
            cpu = time.process_time() - cpu_start
        finally:
            gc.enable()
        sent = len(self.wire.sent)
        self.check(len(batch))
        return cpu, durations, sent

    def check(self, received: int) -> None:
        """What left the relay went to participants, on announced tracks, intact (raises otherwise)."""
        if not self.wire.sent:
            raise RuntimeError(f"nothing left the relay; {self.relay.counters}")
        unprotected = 0
        for data, dest in self.wire.sent:
            listener = self.by_addr.get(dest)
            if listener is None:
                raise RuntimeError("a packet went to a stranger")
            if listener.srtp is not None and unprotected < 200:
                packet = parse_rtp_untrusted(listener.srtp.unprotect_untrusted(data))
                unprotected += 1
                if packet.ssrc not in listener.out_ssrcs or packet.payload != PAYLOAD:
                    raise RuntimeError("a browser got a track it was not given, or a changed payload")
        if len(self.wire.sent) > received * (self.size - 1):
            raise RuntimeError("more datagrams out than listeners")


def measure(size: int, rooms: int, seconds: float, tracks: int, repeat: int) -> dict[str, float]:
    world = GroupWorld(rooms, size, tracks)
    frames = max(1, round(seconds / FRAME))
    best: dict[str, float] | None = None
    start = 1.0
    for _ in range(repeat):
        cpu, durations, sent = world.run(frames, start)
        start += frames * FRAME + 1.0
        received = len(durations)
        durations.sort()
        row = {
            "in_per_s": size * 50,
            "out_per_pkt": sent / received,
            "us_in": cpu / received * 1e6,
            "us_out": cpu / sent * 1e6,
            "p50": statistics.median(durations) * 1e6,
            "p99": durations[min(received - 1, int(received * 0.99))] * 1e6,
        }
        row["rooms_per_core"] = 1.0 / (row["us_in"] * 1e-6 * row["in_per_s"])
        if best is None or row["us_in"] < best["us_in"]:
            best = row
    assert best is not None
    return best


def route_cost(tracks: int, calls: int = 2000, repeat: int = 200) -> float:
    """Best µs per ``DownstreamSlots.route`` for a speaker that holds a track (the per-packet case).

    What the group-call policy adds to each packet sent to a browser, apart from
    the rewrite and SRTP it always had; minus the cost of building the packet.
    """
    slots = DownstreamSlots([OutboundStream(9000 + i, 111) for i in range(tracks)])
    data = bytes(RtpPacket(111, 1, 960, 0x1111, payload=PAYLOAD))
    route = slots.route
    route(0x1111, True, 0.0, data)
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        for _ in range(calls):
            route(0x1111, True, 1.0, data)
        best = min(best, time.perf_counter() - began)
    return best / calls * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,3,4,6,8", help="participants per room (2 = the 1:1 call)")
    parser.add_argument("--rooms", type=int, default=20, help="rooms of each size on the relay")
    parser.add_argument("--seconds", type=float, default=2.0, help="call seconds routed per run")
    parser.add_argument("--tracks", type=int, default=3, help="downstream tracks per browser (Config.max_receive_tracks)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the one with the least CPU is printed")
    args = parser.parse_args(argv)
    sizes = [int(value) for value in args.sizes.split(",")]
    print(f"{args.rooms} rooms per size, 1 bot + N-1 browsers ({args.tracks} tracks each), everyone talking, "
          f"{args.seconds:g} s per run, best of {args.repeat} (sans-IO, one core)")
    header = f"{'size':>5}{'in/s':>7}{'out/pkt':>9}{'µs/in':>8}{'µs/out':>8}{'p50 µs':>8}{'p99 µs':>8}{'rooms/core':>11}"
    print(header)
    for size in sizes:
        row = measure(size, args.rooms, args.seconds, args.tracks, args.repeat)
        print(
            f"{size:>5}{row['in_per_s']:>7.0f}{row['out_per_pkt']:>9.2f}{row['us_in']:>8.1f}{row['us_out']:>8.1f}"
            f"{row['p50']:>8.1f}{row['p99']:>8.1f}{row['rooms_per_core']:>11.0f}"
        )
    print(f"DownstreamSlots.route, a speaker on its track ({args.tracks} tracks): {route_cost(args.tracks):.3f} µs per packet per browser")


if __name__ == "__main__":
    main()
