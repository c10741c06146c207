"""The native generator: the light generator's run with its measured window in C.

:func:`run_native` has :func:`~bench.harness.lightgen.run_light`'s contract,
schedule, packets, checks and result. Only the window differs: the loop that
sends what is due, reads what arrived and sleeps out the tick runs in
``_native_window.c`` with the GIL released, so inside the window the generator
costs the kernel's work per datagram and little else.

Why: on this 2-core machine the generator shares the cores with the relays it
measures (``bench.scale_out --capacity``: two workers and the generator). A
perf profile of the light generator's window (500 calls socket to socket,
6 December 2026; docs/bench-results.md §14) put 48 % of it in the kernel and
the rest in the interpreter: ``socket.recvmsg`` alone built a tuple, a bytes,
an ancillary list and an ``inet_ntop``-formatted source address for every
datagram (34 % of the window, 8 % of it the system call), the send loop's
Python (method calls, clock reads, array stores) about as much again. In C the
same work is one ``send`` per packet, one ``epoll_wait`` a tick, one
``recvmmsg`` per ready socket into preallocated buffers and one
``clock_nanosleep``.

What stays in Python, outside the window: building and protecting the packets
(``lightgen._build_packets``), laid out once in one buffer; and every check of
what arrived (SRTP unprotect, version, SSRC, indexes, duplicates), in arrival
order per socket, exactly as ``run_light`` does.

**The C part is built on first use**, not by ``pip install``: it is bench code
and must not ride in the product's wheel. :func:`window_module` compiles it
with the compiler and headers Python was built with (``scripts/setup.sh``
installs gcc and python3-dev) into ``bench/harness/build/`` (git-ignored), named
by a hash of the source and the interpreter, and loads it; a concurrent build
writes a temporary file and renames it. Where it cannot be built,
:class:`NativeUnavailable` says why (callers may fall back to ``run_light``).

Bounds: the received datagrams are kept in preallocated memory (numpy, so
pages are touched only when written): ``total * KEPT_FACTOR + KEPT_EXTRA``
slots and an arena of ``ARENA_BYTES_PER_SLOT`` bytes a slot, at most
``lightgen.MAX_KEPT`` slots; what does not fit is read and counted ``bad``,
as ``run_light`` counts what passes ``MAX_KEPT``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import socket
import subprocess
import sys
import sysconfig
import struct
import tempfile
from array import array
from pathlib import Path
from types import ModuleType

import numpy

from bench.harness.lightgen import (
    MAX_KEPT,
    MAX_SENDS_PER_TICK,
    QUIET_END_NS,
    SO_TIMESTAMPNS,
    TICK_S,
    TIMER_SLACK_NS,
    LightResult,
    _build_packets,
    _TimerSlack,
    check_arrivals,
)
from bench.harness.loadgen import (
    DRAIN_S,
    MAX_LAG_FRACTION,
    MAX_PACKETS,
    RECV_PER_SOCKET,
    RTP_CLOCK,
    Flow,
    _own_cpu,
    processes_cpu,
    _validate,
    packets_per_flow,
    window_figures,
)
from bench.harness.machine import machine_busy_seconds

SOURCE = Path(__file__).with_name("_native_window.c")
BUILD_DIR = Path(__file__).with_name("build")
CFLAGS = ("-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers")
BUILD_TIMEOUT_S = 120.0
# Received datagrams kept: the run's packets, half as many again (duplicates,
# strangers), and room for a short run's STUN and RTCP.
KEPT_FACTOR = 1.5
KEPT_EXTRA = 10_000
# Arena bytes per kept slot: a 172-byte packet with its SRTP tag and framing fits.
ARENA_BYTES_PER_SLOT = 320
# struct sockaddr_in (netinet/in.h): family (host order), port, address (network order), zero padding.
SOCKADDR_IN = struct.Struct("=H2s4s8x")


class NativeUnavailable(RuntimeError):
    """The C window could not be built or loaded here (the message says why)."""


@functools.cache
def window_module() -> ModuleType:
    """``_native_window``, compiled on first use (see the module docstring).

    Raises:
        NativeUnavailable: no compiler, no headers, or the build failed.
    """
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    include = sysconfig.get_paths()["include"]
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    digest = hashlib.sha256(SOURCE.read_bytes() + repr((sys.version, compiler, CFLAGS)).encode()).hexdigest()[:16]
    target = BUILD_DIR / f"_native_window_{digest}{suffix}"
    if not target.exists():
        BUILD_DIR.mkdir(exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=BUILD_DIR, suffix=suffix)
        os.close(handle)
        command = [*compiler, *CFLAGS, f"-I{include}", str(SOURCE), "-o", partial]
        try:
            built = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            os.unlink(partial)
            raise NativeUnavailable(f"cannot run {compiler[0]}: {error}") from error
        if built.returncode != 0:
            os.unlink(partial)
            raise NativeUnavailable(f"{' '.join(command)} failed:\n{built.stderr.strip()}")
        os.replace(partial, target)
    spec = importlib.util.spec_from_file_location("_native_window", target)
    if spec is None or spec.loader is None:
        raise NativeUnavailable(f"cannot load {target}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        raise NativeUnavailable(f"cannot load {target}: {error}") from error
    return module


def run_native(
    flows: list[Flow],
    *,
    rate_per_flow: float = 50.0,
    duration: float = 10.0,
    packet_size: int = 172,
    warmup: float = 1.0,
    cpu_pid: int | tuple[int, ...] | None = None,
    seq_base: int = 0,
) -> LightResult:
    """:func:`~bench.harness.lightgen.run_light`, its window in C (see the module docstring).

    Args:
        flows, rate_per_flow, duration, packet_size, warmup, cpu_pid, seq_base: as ``run_load``.

    Returns:
        The window's figures, and the CPU spent before and after it.

    Raises:
        ValueError: bad arguments, or more than ``MAX_PACKETS`` packets asked for.
        NativeUnavailable: the C window cannot be built here.
    """
    _validate(flows, rate_per_flow, duration, packet_size, warmup)
    native = window_module()
    n = len(flows)
    per_flow = packets_per_flow(rate_per_flow, duration, warmup)
    total = per_flow * n
    if total > MAX_PACKETS:
        raise ValueError(f"{total} packets asked for; at most {MAX_PACKETS}")
    window_first = round(warmup * rate_per_flow) * n
    interval_ns = 1e9 / (n * rate_per_flow)

    prepare_started = _own_cpu()
    built = _build_packets(flows, per_flow, packet_size, seq_base, round(RTP_CLOCK / rate_per_flow))
    packet_offsets = numpy.zeros(total + 1, dtype=numpy.int64)
    numpy.cumsum([len(packet) for packet in built], out=packet_offsets[1:])
    packets = b"".join(built)
    del built
    send_fds = array("i", (flow.send_sock.fileno() for flow in flows))
    send_dests = b"".join(_destination(flow) for flow in flows)
    stamps = numpy.zeros(total, dtype=numpy.int64)

    receive_flows: dict[int, Flow] = {}
    sharing: dict[int, int] = {}
    for flow in flows:
        fd = flow.recv_sock.fileno()
        receive_flows.setdefault(fd, flow)
        sharing[fd] = sharing.get(fd, 0) + 1
    recv_fds = array("i", receive_flows)
    recv_reads = array("i", (1 if sharing[fd] == 1 else RECV_PER_SOCKET for fd in receive_flows))
    slots = min(MAX_KEPT, math.ceil(total * KEPT_FACTOR) + KEPT_EXTRA)
    arena = numpy.zeros(slots * ARENA_BYTES_PER_SLOT, dtype=numpy.uint8)
    kept_offsets = numpy.zeros(slots + 1, dtype=numpy.int64)
    kept_source = numpy.zeros(slots, dtype=numpy.int32)
    kept_arrival = numpy.zeros(slots, dtype=numpy.int64)
    prepare_cpu = _own_cpu() - prepare_started

    marks: dict[str, float] = {}

    def window_started() -> None:
        if cpu_pid is not None:
            marks["cpu_start"] = processes_cpu(cpu_pid)
        marks["own_start"] = _own_cpu()
        marks["machine_start"] = machine_busy_seconds()

    def window_ended() -> None:
        if cpu_pid is not None:
            marks["cpu_end"] = processes_cpu(cpu_pid)
        marks["own_end"] = _own_cpu()
        marks["machine_end"] = machine_busy_seconds()

    for fd in receive_flows:
        receive_flows[fd].recv_sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    slack = _TimerSlack(TIMER_SLACK_NS)
    try:
        t0, sent_through, kept, _, overflow = native.run_window(
            send_fds, send_dests, packets, packet_offsets, stamps, recv_fds, recv_reads, arena, kept_offsets, kept_source,
            kept_arrival, window_first, interval_ns, TICK_S * 1e9, (warmup + duration) * 1e9 * (1 + MAX_LAG_FRACTION),
            DRAIN_S * 1e9, float(QUIET_END_NS), MAX_SENDS_PER_TICK, window_started, window_ended,
        )
    finally:
        for fd in receive_flows:
            receive_flows[fd].recv_sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
        slack.restore()
    del packets

    verify_started = _own_cpu()
    checks = [(receive_flows[fd].strip, receive_flows[fd].unprotect) for fd in recv_fds]
    arena_bytes = arena[: int(kept_offsets[kept])].tobytes()
    starts = kept_offsets[: kept + 1].tolist()
    sources = kept_source[:kept].tolist()
    stamp_list = stamps.tolist()
    arrivals = (
        (arrived, arena_bytes[starts[j] + checks[source][0] : starts[j + 1]], checks[source][1])
        for j, (arrived, source) in enumerate(zip(kept_arrival[:kept].tolist(), sources))
    )
    received, duplicates, bad, latencies_ns = check_arrivals(arrivals, flows, per_flow, stamp_list, sent_through, window_first)
    bad += overflow
    verify_cpu = _own_cpu() - verify_started

    sent = max(0, sent_through - window_first)
    schedule = t0 + numpy.arange(sent_through, dtype=numpy.float64) * interval_ns
    max_lag_ns = float((stamps[:sent_through] - schedule).max()) if sent_through else 0.0
    if sent > 1:
        window_s = max((stamp_list[sent_through - 1] - stamp_list[window_first]) / 1e9, 1e-9) * sent / (sent - 1)
    else:
        window_s = duration
    latencies_ms = numpy.frombuffer(latencies_ns, dtype=numpy.int64).astype(numpy.float64) / 1e6
    relay_cpu = marks.get("cpu_end", math.nan) - marks.get("cpu_start", math.nan)
    own_cpu = marks.get("own_end", 0.0) - marks.get("own_start", 0.0)
    others = marks.get("machine_end", 0.0) - marks.get("machine_start", 0.0) - own_cpu - (relay_cpu if cpu_pid is not None else 0.0)
    return LightResult(
        **window_figures(sent, received, window_s, latencies_ms, relay_cpu, own_cpu, others, max_lag_ns, duplicates, bad),
        prepare_cpu_s=prepare_cpu,
        verify_cpu_s=verify_cpu,
    )


def _destination(flow: Flow) -> bytes:
    """The flow's destination for C: 16 zero bytes when its socket is connected to it
    (``send``, no route lookup per packet, as ``run_load``), else a ``struct sockaddr_in``.

    Raises:
        ValueError: an unconnected flow whose destination is not IPv4.
    """
    try:
        if flow.send_sock.getpeername() == tuple(flow.dest):
            return bytes(SOCKADDR_IN.size)
    except OSError:
        pass
    host, port = flow.dest[0], flow.dest[1]
    try:
        address = socket.inet_aton(host)
    except OSError as error:
        raise ValueError(f"the native generator sends to IPv4 destinations only, not {flow.dest!r}") from error
    return SOCKADDR_IN.pack(socket.AF_INET, int(port).to_bytes(2, "big"), address)


__all__ = ["NativeUnavailable", "run_native", "window_module"]
