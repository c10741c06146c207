"""A paced RTP load generator for relays: N voice flows, one core, bounded.

The third layer of the bench harness (machine <- process <- loadgen <- server).
Usage as a library (``bench/relay_latency.py`` and ``bench/compare.py`` drive it)::

    from bench.harness.loadgen import Flow, run_load, measure_direct
    result = run_load(flows, rate_per_flow=50.0, duration=10.0)
    baseline = measure_direct(len(flows), rate_per_flow=50.0, duration=10.0)

and from the command line, to measure the generator's own ceiling (no relay)::

    python -m bench.harness.loadgen --flows 1000,2000,3000 --duration 5

Each flow sends RTP packets of ``packet_size`` bytes from its ``send_sock`` to
``dest``: a 12-byte RTP header (V=2, the flow's payload type, sequence number,
timestamp, SSRC) and a payload that starts with the send time
(``time.perf_counter_ns``, 8 bytes), the flow index and the packet index
(4 bytes each), then filler. Packet ``k`` of flow ``i`` is due at
``t0 + (k * n + i) / (n * rate)``: the phases are staggered so the total load
is smooth. Sends are issued in ticks of at most ``SEND_TICK`` (the kernel's
1 ms poll resolution), each packet stamped when it is actually sent, so the
latency measured is the real one-way delay from ``sendto`` to ``recv``.

A received packet is read after ``strip`` bytes of framing (and after the
flow's ``unprotect``, for SRTP legs). Its header must carry the SSRC the flow
expects at the far end (``recv_ssrc``, by default its own ``ssrc``); the
payload's flow and packet indexes then identify it exactly (the sequence
number is not trusted for that: a relay toward a browser rewrites it).
Duplicates and strangers are counted, never measured twice.

Everything is bounded: a run sends at most ``MAX_PACKETS`` packets, stops
sending by ``warmup + duration`` plus a lag allowance, and waits at most
``DRAIN_S`` for stragglers, which then count as lost.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy

from bench.harness.machine import machine_busy_seconds, open_socket, pin_to_core, run_isolated
from tests.kit.system import read_proc_stat

# RTP header (RFC 3550 §5.1) and the payload head: send time, flow, packet index.
PACKET_HEAD = struct.Struct("!BBHIIqII")
PAYLOAD_HEAD_SIZE = 16
MIN_PACKET_SIZE = PACKET_HEAD.size
MAX_PACKET_SIZE = 1400
RTP_VERSION_BITS = 0x80
# Opus RTP clock (RFC 7587 §4.1).
RTP_CLOCK = 48_000

SEND_TICK_S = 0.001
# Sends per loop pass when the generator has fallen behind: receiving must not
# starve (a full socket buffer would look like relay loss).
MAX_SENDS_PER_PASS = 64
RECV_PER_SOCKET = 64
RECV_BUFFER = 2048
DRAIN_S = 0.5
# Sending may run this much past its schedule before the run stops anyway.
MAX_LAG_FRACTION = 0.5
MAX_PACKETS = 20_000_000
MAX_FLOWS = 20_000
# RFC 6464 audio levels as Chromium and the SDK's bots send them: a one-byte
# header extension block (RFC 8285 §4.2) with the level element and padding,
# between the RTP header and the payload head.
AUDIO_LEVEL_BLOCK_SIZE = 8
# The level pattern: talk spurts of 2 s at -20 dBov (V set), 1 s pauses at
# -70 dBov, at 50 packets/s (a level detector sees runs start and stop).
SPEECH_PACKETS, PAUSE_PACKETS = 100, 50
SPEECH_LEVEL, PAUSE_LEVEL = 0x80 | 20, 70


@dataclass
class Flow:
    """One RTP stream through the relay under test.

    Attributes:
        send_sock: non-blocking, bound; the generator sends from it.
        dest: where each packet is sent.
        recv_sock: non-blocking, bound; where the relayed packet arrives (may be
            shared by many flows, which must then agree on ``strip`` and ``unprotect``).
        prefix: framing before the RTP packet (a TURN ChannelData header); ``b""`` for plain RTP.
        ssrc: the RTP SSRC to send with.
        payload_type: the RTP payload type to send with.
        strip: bytes of framing to remove from what arrives before the RTP header.
        protect: turns the plain RTP packet into what is sent (SRTP ``protect``), or None.
        unprotect: turns what arrives (after ``strip``) back into plain RTP
            (SRTP ``unprotect``), or None; it may raise, which counts the packet as bad.
        recv_ssrc: the SSRC the packet carries when it arrives, when the relay
            rewrites it (a browser leg); None means ``ssrc``.
        audio_level_id: send an RFC 6464 level at this one-byte header
            extension id (Chromium's negotiated id; an SDK bot's
            ``BOT_AUDIO_LEVEL_ID``), or None for a bare 12-byte header. The
            light and native generators only (``level_octet`` gives the pattern).
    """

    send_sock: socket.socket
    dest: tuple[str, int]
    recv_sock: socket.socket
    prefix: bytes = b""
    ssrc: int = 0
    payload_type: int = 111
    strip: int = 0
    protect: Callable[[bytes], bytes] | None = None
    unprotect: Callable[[bytes], bytes] | None = None
    recv_ssrc: int | None = None
    audio_level_id: int | None = None


@dataclass
class LoadResult:
    """What one run measured, over the window after the warm-up.

    Attributes:
        offered_pps: packets sent in the window per second of the window as it really ran.
        delivered_pps: packets of the window received, per second of the window.
        sent / received: packets of the window sent and received (exactly once, intact).
        loss: ``1 - received / sent``.
        latency_p50_ms / latency_p99_ms / latency_max_ms: one-way delay, send to receive.
        duration_s: the window's real length (longer than asked when the generator lagged).
        relay_cpu_s: CPU seconds (user + system) of ``cpu_pid`` over the window, or NaN.
        relay_cpu_us_per_packet: ``relay_cpu_s`` per received packet, in µs, or NaN.
        relay_cpu_percent: ``relay_cpu_s`` as a share of one core over the window, or NaN.
        generator_cpu_percent: this process's CPU over the window, as a share of one core.
        other_cpu_percent: CPU used on the whole machine over the window by
            everything but this process and ``cpu_pid`` (other work disturbing
            the measurement), as a share of one core.
        max_send_lag_ms: how far behind schedule the latest send was.
        duplicates: packets received more than once.
        bad: packets that arrived but could not be attributed (short, wrong SSRC,
            failed ``unprotect``, unknown indexes).
    """

    offered_pps: float
    delivered_pps: float
    sent: int
    received: int
    loss: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    duration_s: float
    relay_cpu_s: float = math.nan
    relay_cpu_us_per_packet: float = math.nan
    relay_cpu_percent: float = math.nan
    generator_cpu_percent: float = math.nan
    other_cpu_percent: float = math.nan
    max_send_lag_ms: float = 0.0
    duplicates: int = 0
    bad: int = 0
    latencies_ms: numpy.ndarray = field(default_factory=lambda: numpy.empty(0), repr=False)


def packets_per_flow(rate_per_flow: float, duration: float, warmup: float) -> int:
    """How many packets each flow sends in one run (warm-up included)."""
    return math.ceil((warmup + duration) * rate_per_flow)


def level_octet(packet_index: int) -> int:
    """The RFC 6464 level octet of a flow's packet ``packet_index``: the talk-spurt pattern."""
    return SPEECH_LEVEL if packet_index % (SPEECH_PACKETS + PAUSE_PACKETS) < SPEECH_PACKETS else PAUSE_LEVEL


def _validate(flows: list[Flow], rate_per_flow: float, duration: float, packet_size: int, warmup: float) -> None:
    if not flows:
        raise ValueError("no flows")
    if len(flows) > MAX_FLOWS:
        raise ValueError(f"at most {MAX_FLOWS} flows")
    if not (math.isfinite(rate_per_flow) and rate_per_flow > 0):
        raise ValueError("rate_per_flow must be positive")
    if not (math.isfinite(duration) and duration > 0) or not (math.isfinite(warmup) and warmup >= 0):
        raise ValueError("duration must be positive and warmup non-negative")
    if not MIN_PACKET_SIZE <= packet_size <= MAX_PACKET_SIZE:
        raise ValueError(f"packet_size must be {MIN_PACKET_SIZE}-{MAX_PACKET_SIZE}")
    if any(flow.audio_level_id is not None for flow in flows):
        if packet_size < MIN_PACKET_SIZE + AUDIO_LEVEL_BLOCK_SIZE:
            raise ValueError(f"packet_size must be at least {MIN_PACKET_SIZE + AUDIO_LEVEL_BLOCK_SIZE} with audio levels")
        if any(not (flow.audio_level_id is None or 1 <= flow.audio_level_id <= 14) for flow in flows):
            raise ValueError("audio_level_id must be 1-14 (RFC 8285 §4.2)")
    per_socket: dict[int, tuple[int, object]] = {}
    for flow in flows:
        framing = (flow.strip, flow.unprotect)
        known = per_socket.setdefault(flow.recv_sock.fileno(), framing)
        if known[0] != framing[0] or known[1] is not framing[1]:
            raise ValueError("flows sharing a recv_sock must share strip and unprotect")


def run_load(
    flows: list[Flow],
    *,
    rate_per_flow: float = 50.0,
    duration: float = 10.0,
    packet_size: int = 172,
    warmup: float = 1.0,
    cpu_pid: int | tuple[int, ...] | None = None,
    seq_base: int = 0,
) -> LoadResult:
    """Send every flow's packets on schedule and measure what comes back.

    Args:
        flows: the flows (at most ``MAX_FLOWS``).
        rate_per_flow: packets per second per flow (50 = 20 ms voice frames).
        duration: seconds of the measured window, after the warm-up.
        packet_size: RTP packet size in bytes (header included, framing excluded).
        warmup: seconds sent before the window opens (not measured).
        cpu_pid: a process whose CPU time over the window is reported (the relay), or
            several (a server's workers), reported together.
        seq_base: the first RTP sequence number of every flow (and, times the
            frame size, its first timestamp). Runs repeated over the same flows
            continue where the last one stopped, as a real sender does: an SRTP
            context refuses to protect a sequence number twice.

    Returns:
        The window's figures.

    Raises:
        ValueError: bad arguments, or more than ``MAX_PACKETS`` packets asked for.
    """
    _validate(flows, rate_per_flow, duration, packet_size, warmup)
    if any(flow.audio_level_id is not None for flow in flows):
        raise ValueError("the classic generator sends no audio levels: use the light or native one")
    n = len(flows)
    per_flow = packets_per_flow(rate_per_flow, duration, warmup)
    warm_packets = round(warmup * rate_per_flow)
    total = per_flow * n
    if total > MAX_PACKETS:
        raise ValueError(f"{total} packets asked for; at most {MAX_PACKETS}")
    window_first = warm_packets * n  # global index of the window's first packet
    interval_ns = 1e9 / (n * rate_per_flow)
    ts_step = round(RTP_CLOCK / rate_per_flow)

    # Per flow: a send buffer with the framing prefix and filler already in place.
    buffers = []
    offsets = []
    for index, flow in enumerate(flows):
        buffer = bytearray(flow.prefix) + bytearray(packet_size)
        buffers.append(buffer)
        offsets.append(len(flow.prefix))
    # A socket connected to its flow's destination sends with send(): the kernel
    # skips the per-call route lookup (about 1 µs of 5 on loopback).
    sends = [_sender(flow) for flow in flows]
    ssrcs = [flow.ssrc & 0xFFFFFFFF for flow in flows]
    second_bytes = [flow.payload_type & 0x7F for flow in flows]
    protects = [flow.protect for flow in flows]
    prefixes = [flow.prefix for flow in flows]
    expected_ssrc = [(flow.ssrc if flow.recv_ssrc is None else flow.recv_ssrc) & 0xFFFFFFFF for flow in flows]

    # A socket of one flow is read once per readiness (epoll is level-triggered,
    # so a second packet wakes the next poll): no EAGAIN exception per packet.
    # A shared socket is drained in a bounded loop.
    sharing: dict[int, int] = {}
    for flow in flows:
        sharing[flow.recv_sock.fileno()] = sharing.get(flow.recv_sock.fileno(), 0) + 1
    receivers: dict[int, tuple] = {}
    for flow in flows:
        fd = flow.recv_sock.fileno()
        reads = range(1 if sharing[fd] == 1 else RECV_PER_SOCKET)
        receivers[fd] = (flow.recv_sock.recv_into, reads, flow.strip, flow.unprotect)
    poller = select.epoll(len(receivers))
    for fd in receivers:
        poller.register(fd, select.EPOLLIN)

    seen = bytearray(total)
    latencies_ns: list[int] = []
    record = latencies_ns.append
    received = duplicates = bad = 0
    recv_buffer = bytearray(RECV_BUFFER)
    recv_view = memoryview(recv_buffer)
    unpack_from = PACKET_HEAD.unpack_from
    pack_into = PACKET_HEAD.pack_into
    now_ns = time.perf_counter_ns
    max_lag_ns = 0

    # No cyclic GC pauses inside the timed loop (it allocates no cycles).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    t0 = now_ns()
    send_deadline_ns = t0 + (warmup + duration) * 1e9 * (1 + MAX_LAG_FRACTION)
    next_index = 0
    window_started = False
    window_first_send_ns = window_last_send_ns = 0
    cpu_at_start = cpu_at_end = math.nan
    own_at_start = own_at_end = machine_at_start = machine_at_end = 0.0
    end_ns = 0
    sent_in_window = 0

    try:
        while True:
            now = now_ns()
            # --- send what is due -------------------------------------------------
            if next_index < total:
                due = min(total, int((now - t0) / interval_ns) + 1, next_index + MAX_SENDS_PER_PASS)
                if now > send_deadline_ns:
                    # Out of time: the rest is never sent (offered_pps shows it).
                    due = next_index = total
                while next_index < due:
                    if next_index == window_first and not window_started:
                        window_started = True
                        if cpu_pid is not None:
                            cpu_at_start = processes_cpu(cpu_pid)
                        own_at_start = _own_cpu()
                        machine_at_start = machine_busy_seconds()
                    packet_index, index = divmod(next_index, n)
                    buffer = buffers[index]
                    stamp = now_ns()
                    pack_into(
                        buffer,
                        offsets[index],
                        RTP_VERSION_BITS,
                        second_bytes[index],
                        (seq_base + packet_index) & 0xFFFF,
                        ((seq_base + packet_index) * ts_step) & 0xFFFFFFFF,
                        ssrcs[index],
                        stamp,
                        index,
                        packet_index,
                    )
                    protect = protects[index]
                    try:
                        if protect is None:
                            sends[index](buffer)
                        else:
                            sends[index](prefixes[index] + protect(bytes(buffer[offsets[index]:])))
                    except BlockingIOError:
                        pass  # the local buffer is full: the packet is lost, as on a wire
                    lag = stamp - (t0 + next_index * interval_ns)
                    if lag > max_lag_ns:
                        max_lag_ns = lag
                    if next_index >= window_first:
                        if sent_in_window == 0:
                            window_first_send_ns = stamp
                        window_last_send_ns = stamp
                        sent_in_window += 1
                    next_index += 1
                if next_index >= total and end_ns == 0:
                    # The window closes with the last send.
                    if cpu_pid is not None:
                        cpu_at_end = processes_cpu(cpu_pid)
                    own_at_end = _own_cpu()
                    machine_at_end = machine_busy_seconds()
                    end_ns = now_ns() + DRAIN_S * 1e9
            elif received >= sent_in_window or now_ns() > end_ns:
                break
            # --- receive ----------------------------------------------------------
            if next_index < total:
                wait_ns = t0 + next_index * interval_ns - now_ns()
                timeout = 0 if wait_ns <= 0 else min(wait_ns / 1e9, SEND_TICK_S)
            else:
                timeout = max(0.0, (end_ns - now_ns()) / 1e9)
            for fd, _ in poller.poll(timeout):
                recv_into, reads, strip, unprotect = receivers[fd]
                for _ in reads:
                    try:
                        size = recv_into(recv_buffer)
                    except BlockingIOError:
                        break
                    arrived = now_ns()
                    try:
                        if unprotect is None:
                            if size - strip < MIN_PACKET_SIZE:
                                bad += 1
                                continue
                            first, _, seq, _, ssrc, stamp, index, packet_index = unpack_from(recv_buffer, strip)
                        else:
                            plain = unprotect(bytes(recv_view[strip:size]))
                            if len(plain) < MIN_PACKET_SIZE:
                                bad += 1
                                continue
                            first, _, seq, _, ssrc, stamp, index, packet_index = unpack_from(plain)
                    except Exception:  # noqa: BLE001 - any unprotect failure is a bad packet
                        bad += 1
                        continue
                    if (
                        first & 0xC0 != RTP_VERSION_BITS
                        or index >= n
                        or packet_index >= per_flow
                        or ssrc != expected_ssrc[index]
                    ):
                        bad += 1
                        continue
                    slot = packet_index * n + index
                    if seen[slot]:
                        duplicates += 1
                        continue
                    seen[slot] = 1
                    if slot >= window_first:
                        received += 1
                        record(arrived - stamp)
    finally:
        poller.close()
        if gc_was_enabled:
            gc.enable()

    if end_ns == 0:
        own_at_end = _own_cpu()
        machine_at_end = machine_busy_seconds()
        if cpu_pid is not None:
            cpu_at_end = processes_cpu(cpu_pid)
    sent = sent_in_window
    window_s = max((window_last_send_ns - window_first_send_ns) / 1e9, 1e-9) if sent > 1 else duration
    # A window of s packets spans s - 1 intervals; scale to whole intervals.
    if sent > 1:
        window_s *= sent / (sent - 1)
    latencies_ms = numpy.asarray(latencies_ns, dtype=numpy.float64) / 1e6
    relay_cpu = cpu_at_end - cpu_at_start
    own_cpu = own_at_end - own_at_start
    others = machine_at_end - machine_at_start - own_cpu - (relay_cpu if cpu_pid is not None else 0.0)
    return LoadResult(**window_figures(sent, received, window_s, latencies_ms, relay_cpu, own_cpu, others, max_lag_ns, duplicates, bad))


def window_figures(
    sent: int, received: int, window_s: float, latencies_ms: numpy.ndarray, relay_cpu: float, own_cpu: float,
    others: float, max_lag_ns: float, duplicates: int, bad: int,
) -> dict[str, Any]:
    """A :class:`LoadResult`'s fields from what a run counted over its window (every generator's)."""
    return dict(
        offered_pps=sent / window_s,
        delivered_pps=received / window_s,
        sent=sent,
        received=received,
        loss=1.0 - received / sent if sent else math.nan,
        latency_p50_ms=_percentile(latencies_ms, 50),
        latency_p99_ms=_percentile(latencies_ms, 99),
        latency_max_ms=float(latencies_ms.max()) if latencies_ms.size else math.nan,
        duration_s=window_s,
        relay_cpu_s=relay_cpu,
        relay_cpu_us_per_packet=relay_cpu / received * 1e6 if received else math.nan,
        relay_cpu_percent=relay_cpu / window_s * 100,
        generator_cpu_percent=own_cpu / window_s * 100,
        other_cpu_percent=max(0.0, others) / window_s * 100,
        max_send_lag_ms=max(0.0, max_lag_ns) / 1e6,
        duplicates=duplicates,
        bad=bad,
        latencies_ms=latencies_ms,
    )


def _sender(flow: Flow) -> Callable[[bytes], int]:
    """The cheapest call that sends one datagram of ``flow`` to its destination."""
    sock = flow.send_sock
    try:
        connected = sock.getpeername() == tuple(flow.dest)
    except OSError:
        connected = False
    if connected:
        return sock.send
    sendto, dest = sock.sendto, flow.dest
    return lambda data: sendto(data, dest)


def processes_cpu(cpu_pid: int | tuple[int, ...]) -> float:
    """CPU seconds (user + system) so far of a process, or of several together."""
    if isinstance(cpu_pid, int):
        return read_proc_stat(cpu_pid).cpu_s
    return sum(read_proc_stat(pid).cpu_s for pid in cpu_pid)


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _percentile(values: numpy.ndarray, q: float) -> float:
    return float(numpy.percentile(values, q)) if values.size else math.nan


def measure_direct(n_flows: int, **kwargs) -> LoadResult:
    """The same load sent socket to socket on loopback, with no relay: the baseline.

    Each flow gets its own sending and receiving socket, as bots through a relay
    do; the sender is connected to its receiver, as the benchmark's bots are
    connected to the relay.

    Args:
        n_flows: how many flows.
        **kwargs: passed to :func:`run_load` (``rate_per_flow``, ``duration``...).

    Returns:
        The direct run's figures.
    """
    sockets: list[socket.socket] = []
    try:
        flows = []
        for index in range(n_flows):
            sender, receiver = open_socket(), open_socket()
            sockets += (sender, receiver)
            sender.connect(receiver.getsockname())
            flows.append(Flow(send_sock=sender, dest=receiver.getsockname(), recv_sock=receiver, ssrc=index + 1))
        return run_load(flows, **kwargs)
    finally:
        for sock in sockets:
            sock.close()


def format_result(label: str, result: LoadResult) -> str:
    """One table row for a result (see :data:`RESULT_HEADER`)."""
    return (
        f"{label:>10} {result.offered_pps:>10.0f} {result.delivered_pps:>10.0f} {result.loss * 100:>7.3f}"
        f" {result.latency_p50_ms:>7.3f} {result.latency_p99_ms:>7.3f} {result.latency_max_ms:>8.2f}"
        f" {result.generator_cpu_percent:>6.1f} {result.other_cpu_percent:>6.1f} {result.max_send_lag_ms:>7.2f}"
    )


RESULT_HEADER = (
    f"{'flows':>10} {'offered':>10} {'delivered':>10} {'loss%':>7} {'p50ms':>7} {'p99ms':>7} {'maxms':>8}"
    f" {'gen%':>6} {'other%':>6} {'lagms':>7}"
)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_isolated(lambda: _main(argv)))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description="The load generator's own ceiling: direct sends, no relay.")
    parser.add_argument("--flows", default="100,1000,2000", help="comma-separated flow counts")
    parser.add_argument("--rate", type=float, default=50.0, help="packets per second per flow")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--packet-size", type=int, default=172)
    parser.add_argument("--core", type=int, default=1, help="pin the generator to this core (-1: do not pin)")
    args = parser.parse_args(argv)
    if args.core >= 0:
        pin_to_core(args.core)
    print("direct loopback sends, no relay (the generator's ceiling)")
    print(RESULT_HEADER)
    for n in (int(value) for value in args.flows.split(",")):
        result = measure_direct(n, rate_per_flow=args.rate, duration=args.duration, warmup=args.warmup, packet_size=args.packet_size)
        print(format_result(str(n), result), flush=True)


if __name__ == "__main__":
    main()
