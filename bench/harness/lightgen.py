"""A lighter load generator: the same flows and figures as :func:`~bench.harness.loadgen.run_load`,
with the per-packet work moved out of the measured window.

On this two-core machine the generator shares the CPU with the relay (or the
relays' workers) it measures, so every microsecond it spends per packet inside
the window is taken from what it measures. :func:`run_light` keeps the
classic generator's schedule, packets, checks and result, and changes *when*
the work is done:

* **Before the window** every packet of the run is built (RTP header, flow and
  packet index in the payload) and, for a flow that sends SRTP (a browser),
  protected by the flow's own SRTP context, in send order. The window then
  costs one ``send`` per packet and one clock read.
* **The send time is not in the payload** (it could not be: the packet is
  protected ahead of time). It is kept per packet in an array; the payload's
  flow and packet indexes find it when the packet comes back.
* **Inside the window** the generator wakes once a tick (``TICK_S``, 0.25 ms),
  whatever the load: it sends what is due, reads what has arrived (one
  ``recvmsg`` per ready socket, ``epoll`` polled without waiting) and sleeps
  out the tick. The classic generator woke for every datagram the relay sent
  it (tens of thousands of wakeups a second, each dear on this virtual
  machine). Each datagram is kept, as it arrived, in its socket's list with
  the kernel's receive time (``SO_TIMESTAMPNS``); nothing is parsed or
  unprotected. Because the arrival time is the kernel's, reading up to a tick
  late adds nothing to the latency; send times are taken on the same clock
  (``time.time_ns``, CLOCK_REALTIME) just before each ``send``.
* **After the window** every kept datagram goes through exactly the classic
  checks, in arrival order per socket: the flow's ``unprotect`` (libsrtp: the
  relay's SRTP is authenticated and replay-checked, packet by packet, as a
  browser would), the RTP version, the SSRC the flow expects, the flow and
  packet indexes, duplicates. Latency = kernel receive time - send time.

What it does not change: loss, duplicates, strangers and latency are counted
per packet, both directions of every call, every SRTP packet authenticated.
What it moves: the SRTP protect of what is sent (before the window) and the
unprotect and parsing of what is received (after it). What differs: the
latency ends when the kernel queued the datagram on the generator's socket,
not when the generator read it (the classic figure also held the generator's
own delay in reading, in the relay runs and the direct baseline alike), and
sends go out in bursts of one tick's worth (at most a tick late, each stamped
when it is really sent), as the classic generator's did whenever it slept.
The CPU before and after the window is reported apart (``prepare_cpu_s``,
``verify_cpu_s`` of :class:`LightResult`), so the
generator's whole cost stays visible; only its share *inside the window*,
which is what competes with the relay, is ``generator_cpu_percent``.

Bounds: the classic generator's (``MAX_PACKETS``, ``MAX_FLOWS``, the lag
allowance, ``DRAIN_S``); what is kept per run is at most ``MAX_PACKETS``
send times and received datagrams (a stranger flooding a socket is cut at
``MAX_KEPT``, and the rest counted ``bad``).
"""

from __future__ import annotations

import ctypes
import gc
import math
import select
import socket
import struct
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy

from bench.harness.loadgen import (
    DRAIN_S,
    MAX_LAG_FRACTION,
    MAX_PACKETS,
    MIN_PACKET_SIZE,
    PACKET_HEAD,
    RECV_BUFFER,
    RECV_PER_SOCKET,
    RTP_CLOCK,
    RTP_VERSION_BITS,
    Flow,
    level_octet,
    LoadResult,
    _own_cpu,
    processes_cpu,
    window_figures,
    _sender,
    _validate,
    packets_per_flow,
)
from bench.harness.machine import machine_busy_seconds

# Datagrams kept per run, over all sockets: the packets of the run plus room
# for strangers (STUN, RTCP) before the rest is dropped and counted bad.
MAX_KEPT = MAX_PACKETS + 100_000
# The generator's tick: it wakes once per tick and sends what is due by then. A
# relay receives each tick's sends as one burst, which it then works through
# in turn: at 100k packets/s and ~12 µs a packet, a 1 ms tick made bursts of
# ~100 and added ~0.5 ms to the relay's median latency (measured), the
# classic generator's finer pacing did not. A quarter of a millisecond keeps
# bursts to ~25 packets (~0.3 ms of relay work) at 4,000 wakeups a second.
TICK_S = 0.00025
# Linux's default timer slack (50 µs) would stretch such a sleep by a fifth;
# prctl(PR_SET_TIMERSLACK) asks for this much instead, for the run.
TIMER_SLACK_NS = 1_000
PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30
# Once as many datagrams came as were sent, the run ends after this long without one
# (strangers and duplicates count in that number, so it may be reached early).
QUIET_END_NS = 20_000_000
# Sends per tick at most, when the generator has fallen behind (reading must not starve).
MAX_SENDS_PER_TICK = 4096
# Linux's SO_TIMESTAMPNS (asm-generic/socket.h; the Python module does not name
# it): recvmsg then carries the kernel's receive time as SCM_TIMESTAMPNS (same
# value), a struct timespec (CLOCK_REALTIME).
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@qq")
TIMESTAMP_SPACE = socket.CMSG_SPACE(TIMESPEC.size)


@dataclass
class LightResult(LoadResult):
    """:class:`~bench.harness.loadgen.LoadResult` plus where the generator's other CPU went.

    Attributes:
        prepare_cpu_s: this process's CPU building (and protecting) the run's packets, before the window.
        verify_cpu_s: its CPU checking (unprotecting, attributing) what arrived, after the window.
    """

    prepare_cpu_s: float = math.nan
    verify_cpu_s: float = math.nan


def run_light(
    flows: list[Flow],
    *,
    rate_per_flow: float = 50.0,
    duration: float = 10.0,
    packet_size: int = 172,
    warmup: float = 1.0,
    cpu_pid: int | tuple[int, ...] | None = None,
    seq_base: int = 0,
) -> LightResult:
    """:func:`~bench.harness.loadgen.run_load`'s contract, lighter inside the window (see the module docstring).

    Args:
        flows, rate_per_flow, duration, packet_size, warmup, cpu_pid, seq_base: as ``run_load``.

    Returns:
        The window's figures, and the CPU spent before and after it.

    Raises:
        ValueError: bad arguments, or more than ``MAX_PACKETS`` packets asked for.
    """
    _validate(flows, rate_per_flow, duration, packet_size, warmup)
    n = len(flows)
    per_flow = packets_per_flow(rate_per_flow, duration, warmup)
    total = per_flow * n
    if total > MAX_PACKETS:
        raise ValueError(f"{total} packets asked for; at most {MAX_PACKETS}")
    window_first = round(warmup * rate_per_flow) * n
    interval_ns = 1e9 / (n * rate_per_flow)

    prepare_started = _own_cpu()
    packets = _build_packets(flows, per_flow, packet_size, seq_base, round(RTP_CLOCK / rate_per_flow))
    sends = [_sender(flow) for flow in flows]
    stamps = array("q", bytes(8 * total))  # send time of packet k (global index), 0 = never sent

    sharing: dict[int, int] = {}
    for flow in flows:
        sharing[flow.recv_sock.fileno()] = sharing.get(flow.recv_sock.fileno(), 0) + 1
    kept: dict[int, tuple[list[bytes], list, Flow]] = {}
    receivers: dict[int, tuple] = {}
    for flow in flows:
        fd = flow.recv_sock.fileno()
        if fd in kept:
            continue
        datagrams: list[bytes] = []
        arrivals: list = []  # each datagram's ancillary data: its kernel receive time
        kept[fd] = (datagrams, arrivals, flow)
        reads = range(1 if sharing[fd] == 1 else RECV_PER_SOCKET)
        receivers[fd] = (flow.recv_sock.recvmsg, datagrams.append, arrivals.append, reads)
    poller = select.epoll(len(receivers))
    for fd in receivers:
        poller.register(fd, select.EPOLLIN)
    prepare_cpu = _own_cpu() - prepare_started

    # Send times and arrival times on one clock: the kernel stamps each datagram as
    # it reaches the socket (SO_TIMESTAMPNS, CLOCK_REALTIME), so the generator reads
    # them once a tick instead of waking for every datagram, and the latency does
    # not include how late it read.
    now_ns = time.time_ns
    for fd in receivers:
        kept[fd][2].recv_sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    tick_ns = TICK_S * 1e9
    slack = _TimerSlack(TIMER_SLACK_NS)
    raw_received = overflow = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    t0 = now_ns()
    send_deadline_ns = t0 + (warmup + duration) * 1e9 * (1 + MAX_LAG_FRACTION)
    next_index = 0
    sent_through = 0  # packets 0 .. sent_through - 1 had their turn (sent, or refused by a full buffer)
    window_started = False
    cpu_at_start = cpu_at_end = math.nan
    own_at_start = own_at_end = machine_at_start = machine_at_end = 0.0
    end_ns = 0
    last_arrival_ns = t0
    try:
        while True:
            tick_start = now = now_ns()
            if next_index < total:
                due = min(total, int((now - t0) / interval_ns) + 1, next_index + MAX_SENDS_PER_TICK)
                if now > send_deadline_ns:
                    due = total  # out of time: the rest is never sent (offered_pps shows it)
                    sent_through = next_index
                    next_index = total
                if not window_started and due > window_first:
                    # Open the window just before its first packet goes out.
                    while next_index < window_first:
                        stamp = now_ns()
                        try:
                            sends[next_index % n](packets[next_index])
                        except BlockingIOError:
                            pass  # the local buffer is full: lost, as on a wire
                        stamps[next_index] = stamp
                        next_index += 1
                    window_started = True
                    if cpu_pid is not None:
                        cpu_at_start = processes_cpu(cpu_pid)
                    own_at_start = _own_cpu()
                    machine_at_start = machine_busy_seconds()
                while next_index < due:
                    stamp = now_ns()
                    try:
                        sends[next_index % n](packets[next_index])
                    except BlockingIOError:
                        pass
                    stamps[next_index] = stamp
                    next_index += 1
                if next_index >= total and end_ns == 0:
                    if sent_through == 0:
                        sent_through = total
                    if cpu_pid is not None:
                        cpu_at_end = processes_cpu(cpu_pid)
                    own_at_end = _own_cpu()
                    machine_at_end = machine_busy_seconds()
                    end_ns = now_ns() + DRAIN_S * 1e9
            elif now > end_ns:
                break
            # Read what has arrived, without waiting: one read per ready socket
            # (epoll is level-triggered: the next tick reads the rest).
            ready = poller.poll(0)
            for fd, _ in ready:
                recv, store, arrive, reads = receivers[fd]
                for _ in reads:
                    try:
                        data, ancillary, _, _ = recv(RECV_BUFFER, TIMESTAMP_SPACE)
                    except BlockingIOError:
                        break
                    raw_received += 1
                    if raw_received <= MAX_KEPT:
                        store(data)
                        arrive(ancillary)
                    else:
                        overflow += 1
            if ready:
                last_arrival_ns = tick_start
            elif next_index >= total and raw_received >= sent_through and tick_start - last_arrival_ns > QUIET_END_NS:
                break  # everything sent may be in (strangers and duplicates count too), and a while passed quietly
            # Sleep out the tick: the generator wakes at most once a tick, whatever the load.
            rest = (tick_start + tick_ns - now_ns()) / 1e9
            if rest > 0:
                time.sleep(rest)
    finally:
        poller.close()
        if gc_was_enabled:
            gc.enable()
        for fd in receivers:
            kept[fd][2].recv_sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
        slack.restore()
    if end_ns == 0:  # left by an exception before the last send
        own_at_end = _own_cpu()
        machine_at_end = machine_busy_seconds()
        if cpu_pid is not None:
            cpu_at_end = processes_cpu(cpu_pid)
    del packets

    verify_started = _own_cpu()
    arrivals = (
        (_kernel_time(ancillary), data[flow.strip :], flow.unprotect)
        for datagrams, times, flow in kept.values()
        for data, ancillary in zip(datagrams, times)
    )
    received, duplicates, bad, latencies_ns = check_arrivals(arrivals, flows, per_flow, stamps, sent_through, window_first)
    bad += overflow
    verify_cpu = _own_cpu() - verify_started

    sent = max(0, sent_through - window_first)
    stamped = numpy.frombuffer(stamps, dtype=numpy.int64)[:sent_through]
    schedule = t0 + numpy.arange(sent_through, dtype=numpy.float64) * interval_ns
    max_lag_ns = float((stamped - schedule).max()) if sent_through else 0.0
    if sent > 1:
        window_s = max((stamps[sent_through - 1] - stamps[window_first]) / 1e9, 1e-9) * sent / (sent - 1)
    else:
        window_s = duration
    latencies_ms = numpy.frombuffer(latencies_ns, dtype=numpy.int64).astype(numpy.float64) / 1e6
    relay_cpu = cpu_at_end - cpu_at_start
    own_cpu = own_at_end - own_at_start
    others = machine_at_end - machine_at_start - own_cpu - (relay_cpu if cpu_pid is not None else 0.0)
    return LightResult(
        **window_figures(sent, received, window_s, latencies_ms, relay_cpu, own_cpu, others, max_lag_ns, duplicates, bad),
        prepare_cpu_s=prepare_cpu,
        verify_cpu_s=verify_cpu,
    )


def check_arrivals(
    arrivals: Iterable[tuple[int, bytes, Callable[[bytes], bytes] | None]],
    flows: Sequence[Flow],
    per_flow: int,
    stamps: Sequence[int],
    sent_through: int,
    window_first: int,
) -> tuple[int, int, int, array]:
    """Check what came back after the window, as ``run_load`` does (both light generators).

    Args:
        arrivals: ``(kernel receive time in ns or 0, datagram after the flow's strip,
            the flow's unprotect or None)`` for every datagram kept.
        flows, per_flow: the run's flows and packets per flow.
        stamps: the send time (ns) of every packet slot; 0 for one never sent.
        sent_through, window_first: slots sent, and the first slot of the measured window.

    Returns:
        ``(received, duplicates, bad, latencies_ns)``: packets of the window received
        once, repeats, datagrams that are not the generator's (or carry no receive
        time), and each received window packet's latency.
    """
    n = len(flows)
    seen = bytearray(per_flow * n)
    latencies_ns = array("q")
    received = duplicates = bad = 0
    expected_ssrc = [(flow.ssrc if flow.recv_ssrc is None else flow.recv_ssrc) & 0xFFFFFFFF for flow in flows]
    unpack_from = PACKET_HEAD.unpack_from
    unpack_payload_head = PAYLOAD_HEAD.unpack_from
    for arrived, data, unprotect in arrivals:
        if arrived == 0:
            bad += 1  # no receive time from the kernel: cannot be measured
            continue
        try:
            plain = data if unprotect is None else unprotect(data)
            if len(plain) < MIN_PACKET_SIZE:
                bad += 1
                continue
            first, _, _, _, ssrc, _, index, packet_index = unpack_from(plain)
            if first & 0x10:  # an audio level's extension block (toward a bot): the payload head follows it
                extension_words = (plain[14] << 8) | plain[15]
                _, index, packet_index = unpack_payload_head(plain, 16 + 4 * extension_words)
        except Exception:  # noqa: BLE001 - any unprotect failure is a bad packet, as in run_load
            bad += 1
            continue
        if first & 0xC0 != RTP_VERSION_BITS or index >= n or packet_index >= per_flow or ssrc != expected_ssrc[index]:
            bad += 1
            continue
        slot = packet_index * n + index
        sent_at = stamps[slot] if slot < sent_through else 0
        if sent_at == 0:
            bad += 1  # a packet the generator never sent
            continue
        if seen[slot]:
            duplicates += 1
            continue
        seen[slot] = 1
        if slot >= window_first:
            received += 1
            latencies_ns.append(arrived - sent_at)
    return received, duplicates, bad, latencies_ns


class _TimerSlack:
    """This thread's timer slack set to ``slack_ns`` until :meth:`restore` (a no-op where prctl is missing)."""

    def __init__(self, slack_ns: int) -> None:
        try:
            self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            self._prctl = None
            return
        self._previous = self._prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
        self._prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(slack_ns), 0, 0, 0)

    def restore(self) -> None:
        if self._prctl is not None and self._previous > 0:
            self._prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(self._previous), 0, 0, 0)


def _kernel_time(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The SCM_TIMESTAMPNS receive time (ns since the epoch) in ``recvmsg``'s ancillary data, or 0."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            seconds, nanoseconds = TIMESPEC.unpack_from(data)
            return seconds * 1_000_000_000 + nanoseconds
    return 0


def _build_packets(flows: list[Flow], per_flow: int, packet_size: int, seq_base: int, ts_step: int) -> list[bytes]:
    """Every packet of the run in send order (global index ``k = packet_index * n + flow``),
    framed and, for a flow with ``protect``, protected (in order, as its SRTP context requires).

    The payload head carries 0 for the send time (kept by the generator instead),
    then the flow and packet indexes; the rest is zero filler, as ``run_load``'s.
    A flow with ``audio_level_id`` has the X bit and an RFC 8285 one-byte block
    with its RFC 6464 level (``level_octet``) before the payload head, as
    Chromium and the SDK's bots send (same packet size).
    """
    n = len(flows)
    buffer = bytearray(packet_size)
    pack_into = PACKET_HEAD.pack_into
    pack_levelled = LEVELLED_HEAD.pack_into
    heads = [
        (RTP_VERSION_BITS, flow.payload_type & 0x7F, flow.ssrc & 0xFFFFFFFF, flow.prefix, flow.protect, flow.audio_level_id)
        for flow in flows
    ]
    packets: list[bytes] = []
    add = packets.append
    for packet_index in range(per_flow):
        seq = (seq_base + packet_index) & 0xFFFF
        timestamp = ((seq_base + packet_index) * ts_step) & 0xFFFFFFFF
        octet = level_octet(seq_base + packet_index)
        for index in range(n):
            first, second, ssrc, prefix, protect, level_id = heads[index]
            if level_id is None:
                pack_into(buffer, 0, first, second, seq, timestamp, ssrc, 0, index, packet_index)
            else:
                pack_levelled(buffer, 0, first | 0x10, second, seq, timestamp, ssrc, 0xBEDE, 1, level_id << 4, octet, 0, index, packet_index)
            packet = bytes(buffer) if protect is None else protect(bytes(buffer))
            add(prefix + packet if prefix else packet)
    return packets


# The RTP header, a one-byte extension block of one word (the level element,
# two octets of padding) and the payload head (RFC 3550 §5.3.1, RFC 8285 §4.2).
LEVELLED_HEAD = struct.Struct("!BBHIIHHBBxxqII")
PAYLOAD_HEAD = struct.Struct("!qII")
