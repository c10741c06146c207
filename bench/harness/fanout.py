"""One speaker, K browser-style subscribers: the SRTP fan-out measurement.

:func:`drive_fanout` is the load for BotCall's side of the aiortc comparison:
one UDP bot sends paced RTP (50 packets/s, each carrying its send time and
index), the relay forwards every packet to K DTLS-SRTP legs, and every
subscriber socket is drained and every packet decrypted with that leg's SRTP
context (so a packet the relay mangled is counted as bad, not delivered). The
relay's CPU over the measured window comes from ``/proc``.

:class:`FanoutResult` is shared with the aiortc side (:mod:`bench.peers.aiortc`)
so both print in one table.

Bounded: at most ``MAX_PACKETS`` sends, the send loop stops by its schedule
plus a lag allowance, the drain waits at most ``DRAIN_S``.
"""

from __future__ import annotations

import math
import os
import select
import struct
import time
from dataclasses import dataclass

import numpy

from botcall.errors import BadPacket
from tests.kit.system import read_proc_stat

# RTP header (RFC 3550 §5.1), then the send time (perf_counter_ns) and the packet index.
PACKET_HEAD = struct.Struct("!BBHIIqI")
RTP_VERSION_BITS = 0x80
RTP_CLOCK = 48_000
MAX_PACKETS = 1_000_000
MAX_LAG_FRACTION = 0.5
DRAIN_S = 0.5
RECV_PER_SOCKET = 64
RECV_BUFFER = 2048


@dataclass(frozen=True)
class FanoutResult:
    """A fan-out window: one speaker at ``rate`` packets/s to ``subscribers`` legs.

    Attributes:
        relay: which relay.
        subscribers: K.
        window_s: the measured window's length.
        relay_cpu_s: relay CPU (user + system) over the window.
        forwarded: packets delivered to all subscribers in the window.
        per_subscriber_pps: mean packets (or frames) per second one subscriber got.
        min_subscriber_pps: the worst subscriber's.
        loss: share of the window's packets that did not reach a subscriber
            (NaN where the receiver cannot tell, as with aiortc's frames).
        latency_p50_ms / latency_p99_ms: send to decrypted receive (NaN for aiortc).
        bad: packets that arrived but failed SRTP or carried unknown indexes.
        load_cpu_percent: the load side's CPU (sender and subscribers) as a
            share of its core: near 100 the load, not the relay, is the limit.
        send_blocked: packets the speaker's own socket refused (kernel buffer full).
    """

    relay: str
    subscribers: int
    window_s: float
    relay_cpu_s: float
    forwarded: int
    per_subscriber_pps: float
    min_subscriber_pps: float
    loss: float = math.nan
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    bad: int = 0
    load_cpu_percent: float = math.nan
    send_blocked: int = 0

    @property
    def cpu_us_per_packet(self) -> float:
        """Relay CPU per forwarded packet, µs."""
        return self.relay_cpu_s / self.forwarded * 1e6 if self.forwarded else math.nan

    @property
    def relay_cpu_percent(self) -> float:
        """Relay CPU as a share of one core over the window."""
        return self.relay_cpu_s / self.window_s * 100 if self.window_s else math.nan

    def subscribers_per_core(self, rate: float = 50.0) -> float:
        """Subscribers one fully busy core would carry at this cost per packet."""
        cost = self.cpu_us_per_packet
        return 1e6 / (rate * cost) if cost and math.isfinite(cost) else math.nan


def drive_fanout(
    speaker,
    legs: list,
    *,
    rate: float = 50.0,
    duration: float = 10.0,
    warmup: float = 1.0,
    packet_size: int = 172,
    cpu_pid: int | None = None,
    relay: str = "botcall",
    first_seq: int = 0,
) -> FanoutResult:
    """Send from ``speaker`` on schedule; receive and decrypt on every leg.

    Args:
        speaker: a :class:`~bench.harness.server.Bot` (its ``sock``, ``ssrc`` and ``relay_addr``).
        legs: :class:`~tests.kit.browser.Browser` subscribers (``sock``, ``srtp``, ``out_ssrc``).
        rate: packets per second.
        duration: seconds measured after ``warmup``.
        warmup: seconds sent before the window opens.
        packet_size: RTP packet size in bytes.
        cpu_pid: the relay process, for its CPU over the window.
        relay: the name in the result.
        first_seq: RTP sequence number of the first packet. A later run from the
            same speaker must continue where the last one stopped: the relay
            keeps the stream toward each browser continuous, and SRTP's
            replay protection (RFC 3711 §3.3.2) refuses numbers that go back.

    Returns:
        The window's figures.

    Raises:
        ValueError: bad arguments or too many packets.
    """
    if not legs or rate <= 0 or duration <= 0 or warmup < 0 or packet_size < PACKET_HEAD.size:
        raise ValueError("need legs, a positive rate and duration, and room for the packet head")
    total = math.ceil((warmup + duration) * rate)
    if total > MAX_PACKETS:
        raise ValueError(f"{total} packets asked for; at most {MAX_PACKETS}")
    window_first = round(warmup * rate)
    interval_ns = 1e9 / rate
    ts_step = round(RTP_CLOCK / rate)
    buffer = bytearray(packet_size)
    sendto, dest, ssrc = speaker.sock.sendto, speaker.relay_addr, speaker.ssrc
    by_fd = {leg.sock.fileno(): (position, leg) for position, leg in enumerate(legs)}
    poller = select.epoll(len(by_fd))
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    seen = [bytearray(total) for _ in legs]
    counts = [0] * len(legs)
    latencies: list[int] = []
    bad = send_blocked = 0
    now_ns = time.perf_counter_ns
    t0 = now_ns()
    send_deadline = t0 + (warmup + duration) * 1e9 * (1 + MAX_LAG_FRACTION)
    next_index = 0
    sent_in_window = 0
    cpu_start = cpu_end = math.nan
    first_send = last_send = 0
    end_ns = 0
    own_start = own_end = 0.0
    try:
        while True:
            now = now_ns()
            if next_index < total:
                if now > send_deadline:
                    next_index = total
                elif now >= t0 + next_index * interval_ns:
                    if next_index == window_first:
                        own_start = _own_cpu()
                        if cpu_pid is not None:
                            cpu_start = read_proc_stat(cpu_pid).cpu_s
                    stamp = now_ns()
                    seq = first_seq + next_index
                    PACKET_HEAD.pack_into(
                        buffer, 0, RTP_VERSION_BITS, 111, seq & 0xFFFF, (seq * ts_step) & 0xFFFFFFFF, ssrc, stamp, next_index
                    )
                    try:
                        sendto(buffer, dest)
                    except BlockingIOError:
                        send_blocked += 1  # never reaches the relay: loss at the far end too
                    if next_index >= window_first:
                        if sent_in_window == 0:
                            first_send = stamp
                        last_send = stamp
                        sent_in_window += 1
                    next_index += 1
                if next_index >= total and end_ns == 0:
                    own_end = _own_cpu()
                    if cpu_pid is not None:
                        cpu_end = read_proc_stat(cpu_pid).cpu_s
                    end_ns = now_ns() + DRAIN_S * 1e9
            elif now > end_ns or all(count >= sent_in_window for count in counts):
                break
            if next_index < total:
                timeout = max(0.0, min((t0 + next_index * interval_ns - now_ns()) / 1e9, 0.001))
            else:
                timeout = max(0.0, (end_ns - now_ns()) / 1e9)
            for fd, _ in poller.poll(timeout):
                position, leg = by_fd[fd]
                recv, unprotect, expected_ssrc, seen_here = leg.sock.recv, leg.srtp.unprotect_untrusted, leg.out_ssrc, seen[position]
                for _ in range(RECV_PER_SOCKET):
                    try:
                        data = recv(RECV_BUFFER)
                    except BlockingIOError:
                        break
                    arrived = now_ns()
                    try:
                        plain = unprotect(data)
                    except BadPacket:
                        bad += 1
                        continue
                    if len(plain) < PACKET_HEAD.size:
                        bad += 1
                        continue
                    first, _, _, _, got_ssrc, stamp, index = PACKET_HEAD.unpack_from(plain)
                    if first & 0xC0 != RTP_VERSION_BITS or got_ssrc != expected_ssrc or index >= total or seen_here[index]:
                        bad += 1
                        continue
                    seen_here[index] = 1
                    if index >= window_first:
                        counts[position] += 1
                        latencies.append(arrived - stamp)
    finally:
        poller.close()
    if end_ns == 0:
        own_end = _own_cpu()
        if cpu_pid is not None:
            cpu_end = read_proc_stat(cpu_pid).cpu_s
    window_s = (last_send - first_send) / 1e9 * sent_in_window / (sent_in_window - 1) if sent_in_window > 1 else duration
    forwarded = sum(counts)
    lat = numpy.asarray(latencies, dtype=numpy.float64) / 1e6
    return FanoutResult(
        relay=relay,
        subscribers=len(legs),
        window_s=window_s,
        relay_cpu_s=cpu_end - cpu_start,
        forwarded=forwarded,
        per_subscriber_pps=forwarded / len(legs) / window_s,
        min_subscriber_pps=min(counts) / window_s,
        loss=1.0 - forwarded / (sent_in_window * len(legs)) if sent_in_window else math.nan,
        latency_p50_ms=float(numpy.percentile(lat, 50)) if lat.size else math.nan,
        latency_p99_ms=float(numpy.percentile(lat, 99)) if lat.size else math.nan,
        bad=bad,
        load_cpu_percent=(own_end - own_start) / window_s * 100,
        send_blocked=send_blocked,
    )


def packets_per_run(*, rate: float = 50.0, duration: float = 10.0, warmup: float = 1.0) -> int:
    """How many packets :func:`drive_fanout` sends with these arguments (to continue ``first_seq``)."""
    return math.ceil((warmup + duration) * rate)


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system
