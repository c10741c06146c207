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

**Live mode** (``--live [--humans 1,3,8] [--tracks 3] [--seconds 5] [--start 4]
[--bisect 2] [--max-rooms 512] [--quick]``): the real server in a subprocess
pinned to core 0 (``bench.harness.server.RelayProcess``), this process the
load generator pinned to core 1. Per ``H`` in ``--humans``, a fresh server
gets rooms of one latched UDP bot and ``H`` simulated browsers joined over
the signaling WebSocket with a ``--tracks``-track offer (the PWA's recvonly
sections), ICE-checked and DTLS-handshaken over UDP. Everyone talks at
50 packets/s (a voiced RFC 6464 level; the payload starts with a valid Opus
TOC byte, as the relay reads it), the browsers' packets SRTP-protected.
Each packet carries its send time, sender and index; a bot must hear every
other participant, a browser ``min(tracks, H)`` of them, each arrival
unprotected with the browser's own SRTP context (a damaged packet or one
from another room counts as ``bad``). Per run: packets sent and expected
per second, loss (``1 - received / expected``), latency p50/p99 send to
receive (the last listener included), the direct baseline's p99
(``bench.harness.loadgen.measure_direct`` with one flow per sender, same
rate, just before), the relay-added p99 (their difference), the relay's CPU
(/proc) as a share of one core and per room, and the rest of the machine's
busy CPU. The number of rooms doubles from ``--start`` while a run stays
within loss < 0.1 % and added p99 < 5 ms, then bisects ``--bisect`` times;
``--quick`` is 2 s runs from 2 rooms with one bisection step. The live
figure is the machine's (generator, scheduler, other load) as much as the
relay's: compare ``%/room`` across sizes of one run, and read the relay's
CPU share at the largest passing step for headroom.
"""

from __future__ import annotations

import argparse
import gc
import math
import select
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy

from bench.harness.machine import machine_busy_seconds
from botcall.audio.vad import BOT_AUDIO_LEVEL_ID, build_audio_level
from botcall.relay.core import MediaRelay
from botcall.relay.service import MediaService
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.leg import DownstreamSlots, OutboundStream
from botcall.webrtc.srtp import SrtpContext

if TYPE_CHECKING:
    from bench.harness.server import RelayProcess
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
    parser.add_argument("--live", action="store_true", help="the real server in a subprocess on core 0, real UDP (see the module docstring)")
    parser.add_argument("--humans", default="1,3,8", help="live: browsers per room (each room has one bot)")
    parser.add_argument("--start", type=int, default=4, help="live: rooms of the first step (then doubled while within bounds)")
    parser.add_argument("--max-rooms", type=int, default=LIVE_MAX_ROOMS, help="live: stop doubling past this")
    parser.add_argument("--bisect", type=int, default=2, help="live: bisection steps after the first step out of bounds")
    parser.add_argument("--quick", action="store_true", help="live: 2 s runs, from 2 rooms, one bisection step (a few minutes)")
    args = parser.parse_args(argv)
    if args.live:
        if args.seconds + 1.0 > 20:
            parser.error("--live: --seconds must stay under 19 (the relay forgets addresses after 30 s without STUN)")
        live_main(args)
        return
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


# --- live mode: the real server in a subprocess, real UDP ---------------------------------

LIVE_MAGIC = 0x000C6A11  # first byte 0: a valid Opus TOC (SILK), as the relay may look at it
LIVE_HEAD = struct.Struct("!IqII")  # magic, send time (perf_counter_ns), sender index, packet index
LIVE_PAYLOAD_SIZE = 160
LIVE_DRAIN_S = 0.5
LIVE_MAX_SENDS_PER_PASS = 64
LIVE_RECV_PER_POLL = 64
LIVE_MAX_ROOMS = 512
RTP_PT_MIN, RTP_PT_MAX = 96, 127  # dynamic payload types: RTCP (200-204 with the marker bit) is skipped


@dataclass
class LiveSender:
    send: Callable[[bytes], int]
    buffer: bytearray
    payload_offset: int
    protect: Callable[[bytes], bytes] | None
    room: int
    seq: int = 0


@dataclass
class LiveReceiver:
    room: int
    unprotect: Callable[[bytes], bytes] | None
    expects: int  # senders it should hear: every other participant (a bot), at most ``tracks`` (a browser)


@dataclass
class LiveResult:
    """One live run over ``rooms`` rooms of 1 bot + ``humans`` browsers, everyone talking."""

    humans: int
    rooms: int
    sent: int
    expected: int
    received: int
    received_by_bots: int
    bad: int
    duplicates: int
    latency_p50_ms: float
    latency_p99_ms: float
    direct_p99_ms: float
    relay_cpu_percent: float
    other_cpu_percent: float
    window_s: float

    @property
    def loss(self) -> float:
        return max(0.0, 1.0 - self.received / self.expected) if self.expected else math.nan

    @property
    def added_p99_ms(self) -> float:
        return self.latency_p99_ms - self.direct_p99_ms

    @property
    def cpu_per_room_percent(self) -> float:
        return self.relay_cpu_percent / self.rooms

    def within(self, max_loss: float = 0.001, max_added_p99_ms: float = 5.0) -> bool:
        """Issue 14's bounds: loss below 0.1 % and relay-added p99 below 5 ms."""
        return self.loss < max_loss and self.added_p99_ms < max_added_p99_ms


def _rtp_payload_offset(data: bytes) -> int:
    """Where an RTP packet's payload starts (CSRCs and header extension skipped)."""
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    return offset


class LiveRooms:
    """Rooms of 1 UDP bot + ``humans`` simulated browsers on a :class:`RelayProcess`; grown on demand."""

    def __init__(self, relay: RelayProcess, humans: int, tracks: int) -> None:
        from bench.harness.server import Api

        self.relay = relay
        self.humans = humans
        self.tracks = tracks
        self.api = Api(relay.http_url, relay.data_dir)
        self.certificate = DtlsCertificate.generate()
        self.rooms: list[tuple[Any, list[Any]]] = []  # (bot, browsers)
        # Runs go on numbering where the last one stopped, as a real sender does:
        # an SRTP context refuses to protect a sequence number twice.
        self.seq_base = 0

    def grow(self, count: int) -> None:
        """Open rooms until there are ``count``."""
        from bench.harness.server import join_bot, join_browsers, latch_bots

        first = len(self.rooms)
        if count <= first:
            return
        bots, invites = [], []
        for index in range(first, count):
            agent = f"group-bot{index}"
            room_id, invite = self.api.create_room(agent, max_humans=self.humans)
            bots.append(join_bot(self.api, agent, room_id, self.relay.media_addr))
            invites += [(room_id, invite)] * self.humans
        latch_bots(bots)
        browsers = join_browsers(self.relay, invites, self.certificate, receive_tracks=self.tracks)
        for offset, bot in enumerate(bots):
            self.rooms.append((bot, browsers[offset * self.humans : (offset + 1) * self.humans]))

    def refresh(self, count: int) -> None:
        """Consent freshness for the first ``count`` rooms before a run."""
        from bench.harness.server import drain, latch_bots, refresh_browsers

        active = self.rooms[:count]
        latch_bots([bot for bot, _ in active])
        refresh_browsers([browser for _, browsers in active for browser in browsers])
        drain([bot.sock for bot, _ in active] + [browser.sock for _, browsers in active for browser in browsers])

    def close(self) -> None:
        self.api.close()
        for bot, browsers in self.rooms:
            bot.sock.close()
            for browser in browsers:
                browser.sock.close()


def _live_template(ssrc: int) -> tuple[bytearray, int]:
    packet = bytes(RtpPacket(111, 0, 0, ssrc, payload=bytes(LIVE_PAYLOAD_SIZE), extension=LEVEL))
    return bytearray(packet), len(packet) - LIVE_PAYLOAD_SIZE


def run_live(world: LiveRooms, rooms: int, *, duration: float, warmup: float, direct_p99_ms: float, rate: float = 50.0) -> LiveResult:
    """Everyone in the first ``rooms`` rooms talks for ``warmup + duration`` s; the window is measured.

    Each packet carries its send time, sender and index; a browser's arrival is
    unprotected with its SRTP context (a wrong track or a damaged packet counts
    as ``bad``). A bot expects every other participant, a browser
    ``min(tracks, others)`` of them (docs/protocol.md "Group calls").
    """
    world.grow(rooms)
    world.refresh(rooms)
    senders: list[LiveSender] = []
    receivers: dict[int, tuple[Any, LiveReceiver]] = {}
    size = world.humans + 1
    for room_index, (bot, browsers) in enumerate(world.rooms[:rooms]):
        buffer, offset = _live_template(bot.ssrc)
        senders.append(LiveSender(bot.sock.send, buffer, offset, None, room_index))
        receivers[bot.sock.fileno()] = (bot.sock, LiveReceiver(room_index, None, size - 1))
        for browser in browsers:
            buffer, offset = _live_template(browser.send_ssrc)
            senders.append(LiveSender(browser.sock.send, buffer, offset, browser.srtp.protect, room_index))
            receivers[browser.sock.fileno()] = (browser.sock, LiveReceiver(room_index, browser.srtp.unprotect_untrusted, min(world.tracks, size - 1)))
    n = len(senders)
    per_sender = round((warmup + duration) * rate)
    warm = round(warmup * rate)
    window_first = warm * n
    total = per_sender * n
    interval_ns = 1e9 / (n * rate)
    poller = select.epoll()
    for fd in receivers:
        poller.register(fd, select.EPOLLIN)
    seen: set[tuple[int, int, int]] = set()
    latencies: list[int] = []
    bad = duplicates = to_bots = 0
    clock = time.perf_counter_ns
    pack_into = LIVE_HEAD.pack_into
    unpack_from = LIVE_HEAD.unpack_from
    cpu_start = machine_start = window_start = None
    seq_base = world.seq_base
    world.seq_base += per_sender
    gc.collect()
    gc.disable()
    try:
        t0 = clock() + 20_000_000
        next_index = 0
        end_ns = None
        while True:
            now = clock()
            if next_index < total:
                due = min(total, int((now - t0) / interval_ns) + 1) if now >= t0 else 0
                stop = min(due, next_index + LIVE_MAX_SENDS_PER_PASS)
                while next_index < stop:
                    if next_index == window_first:
                        cpu_start, machine_start, window_start = world.relay.cpu_seconds(), machine_busy_seconds(), time.monotonic()
                    packet_index, sender_index = divmod(next_index, n)
                    sender = senders[sender_index]
                    buffer = sender.buffer
                    struct.pack_into("!HI", buffer, 2, (seq_base + packet_index) & 0xFFFF, ((seq_base + packet_index) * 960) & 0xFFFFFFFF)
                    pack_into(buffer, sender.payload_offset, LIVE_MAGIC, clock(), sender_index, packet_index)
                    data = bytes(buffer)
                    sender.send(sender.protect(data) if sender.protect is not None else data)
                    next_index += 1
                if next_index >= total:
                    end_ns = clock() + int(LIVE_DRAIN_S * 1e9)
                    cpu_end, machine_end, window_end = world.relay.cpu_seconds(), machine_busy_seconds(), time.monotonic()
                timeout = 0.0 if next_index < due else max(0.0, min(0.001, (t0 + next_index * interval_ns - clock()) / 1e9))
            else:
                if clock() >= end_ns:
                    break
                timeout = 0.05
            for fd, _ in poller.poll(timeout):
                sock, receiver = receivers[fd]
                for _ in range(LIVE_RECV_PER_POLL):
                    try:
                        data = sock.recv(2048)
                    except BlockingIOError:
                        break
                    arrived = clock()
                    if len(data) < 12 or data[0] >> 6 != 2 or not RTP_PT_MIN <= data[1] & 0x7F <= RTP_PT_MAX:
                        continue  # STUN, DTLS, RTCP: not media
                    try:
                        plain = receiver.unprotect(data) if receiver.unprotect is not None else data
                        magic, stamp, sender_index, packet_index = unpack_from(plain, _rtp_payload_offset(plain))
                    except Exception:
                        bad += 1
                        continue
                    if magic != LIVE_MAGIC or sender_index >= n or senders[sender_index].room != receiver.room:
                        bad += 1
                        continue
                    if packet_index < warm:
                        continue
                    key = (fd, sender_index, packet_index)
                    if key in seen:
                        duplicates += 1
                        continue
                    seen.add(key)
                    latencies.append(arrived - stamp)
                    if receiver.unprotect is None:
                        to_bots += 1
    finally:
        gc.enable()
        poller.close()
    window_s = window_end - window_start
    relay_cpu = cpu_end - cpu_start
    other = machine_end - machine_start - relay_cpu
    measured = per_sender - warm
    expected = measured * sum(receiver.expects for _, receiver in receivers.values())
    values = numpy.array(latencies, dtype=numpy.float64) / 1e6
    return LiveResult(
        humans=world.humans,
        rooms=rooms,
        sent=measured * n,
        expected=expected,
        received=len(seen),
        received_by_bots=to_bots,
        bad=bad,
        duplicates=duplicates,
        latency_p50_ms=float(numpy.percentile(values, 50)) if values.size else math.nan,
        latency_p99_ms=float(numpy.percentile(values, 99)) if values.size else math.nan,
        direct_p99_ms=direct_p99_ms,
        relay_cpu_percent=relay_cpu / window_s * 100,
        other_cpu_percent=max(0.0, other) / window_s * 100,
        window_s=window_s,
    )


def live_search(
    humans: int,
    *,
    tracks: int = 3,
    duration: float = 5.0,
    warmup: float = 1.0,
    start: int = 4,
    max_rooms: int = LIVE_MAX_ROOMS,
    bisect_steps: int = 2,
    log: Callable[[str], None] = print,
) -> tuple[list[LiveResult], int]:
    """Rooms of 1 bot + ``humans`` browsers on a fresh server: double from ``start`` while
    within bounds, then bisect ``bisect_steps`` times.

    Returns:
        Every run, and the most rooms that were within bounds (0 if none).
    """
    from bench.harness.loadgen import measure_direct
    from bench.harness.server import RelayProcess

    runs: list[LiveResult] = []
    with RelayProcess(max_humans=max(humans, 1)) as relay:
        world = LiveRooms(relay, humans, tracks)
        try:

            def probe(rooms: int) -> LiveResult:
                direct = measure_direct(rooms * (humans + 1), rate_per_flow=50.0, duration=duration, warmup=warmup)
                result = run_live(world, rooms, duration=duration, warmup=warmup, direct_p99_ms=direct.latency_p99_ms)
                runs.append(result)
                log(format_live(result))
                return result

            good, bad_at = 0, None
            rooms = start
            while rooms <= max_rooms:
                if probe(rooms).within():
                    good = rooms
                    rooms *= 2
                else:
                    bad_at = rooms
                    break
            if bad_at is not None:
                for _ in range(bisect_steps):
                    middle = (good + bad_at) // 2
                    if middle <= good or middle >= bad_at:
                        break
                    if probe(middle).within():
                        good = middle
                    else:
                        bad_at = middle
        finally:
            world.close()
    return runs, good


LIVE_HEADER = (
    f"{'size':>5}{'rooms':>6}{'in/s':>7}{'expect/s':>9}{'loss%':>8}{'p50':>7}{'p99':>7}{'d.p99':>7}{'+p99':>7}"
    f"{'relay%':>7}{'%/room':>7}{'other%':>7}{'ok':>4}"
)


def format_live(result: LiveResult) -> str:
    """One row under :data:`LIVE_HEADER`; latencies in ms, CPU as a share of one core."""
    return (
        f"{result.humans + 1:>5}{result.rooms:>6}{result.sent / result.window_s:>7.0f}{result.expected / result.window_s:>9.0f}"
        f"{result.loss * 100:>8.3f}{result.latency_p50_ms:>7.2f}{result.latency_p99_ms:>7.2f}{result.direct_p99_ms:>7.2f}"
        f"{result.added_p99_ms:>7.2f}{result.relay_cpu_percent:>7.1f}{result.cpu_per_room_percent:>7.2f}"
        f"{result.other_cpu_percent:>7.1f}{'yes' if result.within() else 'no':>4}"
    )


def live_main(args: argparse.Namespace) -> None:
    from bench.harness.machine import GENERATOR_CORE, machine_description, pin_to_core

    pin_to_core(GENERATOR_CORE)
    humans_list = [int(value) for value in args.humans.split(",")]
    duration, warmup, bisect_steps, start = (2.0, 0.5, 1, 2) if args.quick else (args.seconds, 1.0, args.bisect, args.start)
    print(machine_description())
    print(f"LIVE: relay on core 0, generator on core {GENERATOR_CORE}; rooms of 1 UDP bot + H browsers ({args.tracks} tracks each), "
          f"everyone talking at 50 packets/s; {duration:g} s per run; bounds: loss < 0.1 %, added p99 < 5 ms")
    print(LIVE_HEADER, flush=True)
    found = {}
    for humans in humans_list:
        _, good = live_search(humans, tracks=args.tracks, duration=duration, warmup=warmup, start=start,
                              max_rooms=args.max_rooms, bisect_steps=bisect_steps, log=lambda line: print(line, flush=True))
        found[humans] = good
    for humans, good in found.items():
        print(f"1 bot + {humans}: {good} rooms within bounds (coarse search)")


if __name__ == "__main__":
    main()
