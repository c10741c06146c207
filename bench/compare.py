"""BotCall against coturn, rtpengine (userspace) and aiortc, in one run.

Usage (from the repository root, as root on Debian 12)::

    python -m bench.compare                      # the full comparison (about 25 minutes)
    python -m bench.compare --quick              # a few seconds per cell, to try it
    python -m bench.compare --flows 100,1000 --repeat 5 --no-fanout

What it does:

1. Installs what is missing: ``coturn`` and ``rtpengine-daemon`` from Debian
   (``apt-get``), and a separate virtualenv with aiortc and matplotlib
   (``~/.cache/botcall-bench/venv``; never BotCall's own dependencies). A
   peer that cannot be installed is skipped, and the table says why.
2. **Plain forwarding.** Starts BotCall, coturn and rtpengine at once, each
   pinned to core 0 (``taskset``) with a fixed configuration on 127.0.0.1
   (coturn's and rtpengine's ports in blocks of 10240-32767 reserved per run:
   below the ephemeral range, far from BotCall's default 40000, never shared
   with a concurrent run; see ``bench.harness.process.reserve_ports``),
   and sets up the flows once: a room of two latched UDP bots per flow
   (BotCall), one TURN allocation with a channel per flow driven with
   ChannelData (coturn), one ng-protocol call per flow (rtpengine). This
   process, the load generator (``bench/harness/loadgen.py``), pins itself to core 1.
   Then for every repeat and every offered load (N flows of 50 packets/s,
   172-byte RTP packets carrying their send time) it measures a direct
   socket-to-socket send and each relay in turn (the order rotates between
   repeats, so slow drifts of the machine do not favour one relay). Each
   cell: delivered packets/s, loss, latency p50/p99 minus the direct send's
   of the same repeat ("added"), and the relay's CPU (utime + stime from
   ``/proc/<pid>/stat``) per forwarded packet.
3. **SRTP fan-out.** aiortc's documented ``MediaRelay`` forwarding one
   sender's Opus track to K subscriber RTCPeerConnections over DTLS-SRTP,
   beside BotCall carrying one UDP bot to K browser-style DTLS-SRTP legs
   (our DTLS endpoint in the client role). Relay CPU per forwarded packet,
   and packets (frames) per second each subscriber got, as K grows.
4. Prints the tables, the goals and BotCall's ratio to each peer, writes the
   raw figures as JSON (``--json``) and the plot (``--plot``, drawn by
   ``bench/plot.py`` in the bench virtualenv).

The machine is shared: before each cell the run waits (up to ``--quiet-wait``
seconds) for other processes to go quiet, and every cell records how much CPU
everything else used during it (``other%``). Every load loop is bounded in
packets and time; every subprocess is killed at the end, even on error or
Ctrl-C. The benchmark reports; it never fails on timing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.harness.machine import cpu_model
from bench.harness.loadgen import LoadResult, measure_direct, run_load
from bench.harness.machine import machine_busy_seconds
from bench.peers.aiortc import AiortcFanout, ensure_bench_venv
from bench.peers.botcall_relay import BotCallRelay, variant_config
from bench.peers.coturn import CoturnRelay
from bench.harness.fanout import drive_fanout, FanoutResult, packets_per_run
from bench.harness.machine import cores, pin_current_process
from bench.harness.process import ensure_debian_packages
from tests.kit.system import HarnessError, read_proc_stat
from bench.peers.rtpengine import RtpengineRelay

REPO_ROOT = Path(__file__).resolve().parent.parent
RATE = 50.0
PACKET_SIZE = 172
PLAIN_RELAYS = ("botcall", "coturn", "rtpengine")
PEER_PACKAGES = {"coturn": {"turnserver": "coturn"}, "rtpengine": {"rtpengine": "rtpengine-daemon"}}
DEFAULT_FLOWS = "100,500,1000,1500"
DEFAULT_FANOUT = "1,2,5,10,20,50"
DEFAULT_BOTCALL_FANOUT = "100,200,500,1000"
# Goals of the issue, on this 2-core machine.
GOAL_VS_COTURN = 1.2  # BotCall CPU per packet <= 1.2x coturn's
GOAL_VS_RTPENGINE = 1.0  # ... and <= rtpengine-userspace's
GOAL_SRTP_CPU_FACTOR = 4.0  # aiortc's CPU per forwarded packet >= 4x BotCall's, every K
GOAL_SUBSCRIBERS_FACTOR = 25.0  # BotCall carries >= 25x more subscribers per core
# A subscriber is served when it gets this share of the packets sent.
SERVED_SHARE = 0.95
QUIET_OTHER_CORES = 0.15  # other processes' CPU, in cores, that counts as quiet
QUIET_SAMPLE_S = 0.5


@dataclass(frozen=True)
class PlainCell:
    """One measurement of the plain-forwarding comparison."""

    relay: str
    flows: int
    repeat: int
    offered_pps: float
    delivered_pps: float
    loss: float
    latency_p50_ms: float
    latency_p99_ms: float
    added_p50_ms: float
    added_p99_ms: float
    cpu_us_per_packet: float
    relay_cpu_percent: float
    generator_cpu_percent: float
    other_cpu_percent: float

    @classmethod
    def from_result(cls, relay: str, flows: int, repeat: int, result: LoadResult, direct: LoadResult | None) -> "PlainCell":
        return cls(
            relay=relay,
            flows=flows,
            repeat=repeat,
            offered_pps=result.offered_pps,
            delivered_pps=result.delivered_pps,
            loss=result.loss,
            latency_p50_ms=result.latency_p50_ms,
            latency_p99_ms=result.latency_p99_ms,
            added_p50_ms=result.latency_p50_ms - direct.latency_p50_ms if direct else 0.0,
            added_p99_ms=result.latency_p99_ms - direct.latency_p99_ms if direct else 0.0,
            cpu_us_per_packet=result.relay_cpu_us_per_packet,
            relay_cpu_percent=result.relay_cpu_percent,
            generator_cpu_percent=result.generator_cpu_percent,
            other_cpu_percent=result.other_cpu_percent,
        )


@dataclass(frozen=True)
class FanoutCell:
    """One fan-out window (see :class:`~bench.harness.fanout.FanoutResult`)."""

    relay: str
    subscribers: int
    repeat: int
    window_s: float
    relay_cpu_s: float
    forwarded: int
    cpu_us_per_packet: float
    relay_cpu_percent: float
    per_subscriber_pps: float
    min_subscriber_pps: float
    loss: float
    latency_p50_ms: float
    latency_p99_ms: float
    load_cpu_percent: float
    setup_s: float
    other_cpu_percent: float = math.nan

    @classmethod
    def from_result(cls, result: FanoutResult, repeat: int, setup_s: float, other_cpu_percent: float = math.nan) -> "FanoutCell":
        return cls(
            relay=result.relay,
            subscribers=result.subscribers,
            repeat=repeat,
            window_s=result.window_s,
            relay_cpu_s=result.relay_cpu_s,
            forwarded=result.forwarded,
            cpu_us_per_packet=result.cpu_us_per_packet,
            relay_cpu_percent=result.relay_cpu_percent,
            per_subscriber_pps=result.per_subscriber_pps,
            min_subscriber_pps=result.min_subscriber_pps,
            loss=result.loss,
            latency_p50_ms=result.latency_p50_ms,
            latency_p99_ms=result.latency_p99_ms,
            load_cpu_percent=result.load_cpu_percent,
            setup_s=setup_s,
            other_cpu_percent=other_cpu_percent,
        )


# --- small helpers ------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError("counts must be positive")
    return values


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def median(values) -> float:
    values = _finite(values)
    return statistics.median(values) if values else math.nan


def spread(values, fmt: str = "{:.1f}") -> str:
    """``median [min-max]`` of the finite values, or ``-``."""
    values = _finite(values)
    if not values:
        return "-"
    mid = fmt.format(statistics.median(values))
    if len(values) == 1:
        return mid
    return f"{mid} [{fmt.format(min(values))}..{fmt.format(max(values))}]"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds of this process and ``pids`` (processes that exited count 0)."""
    total = sum(os.times()[:2])
    for pid in pids:
        try:
            total += read_proc_stat(pid).cpu_s
        except HarnessError:
            continue  # it exited: nothing more of it to count
    return total


class OtherLoad:
    """CPU used by everything but this run over a window, as % of one core.

    ``with OtherLoad(pids) as other: ...`` then ``other.percent``.
    """

    def __init__(self, own_pids: list[int]) -> None:
        self.own_pids = own_pids
        self.percent = math.nan

    def __enter__(self) -> "OtherLoad":
        self._start = (machine_busy_seconds(), _cpu_of(self.own_pids), time.monotonic())
        return self

    def __exit__(self, *exc_info) -> None:
        busy, ours, start = self._start
        elapsed = time.monotonic() - start
        others = (machine_busy_seconds() - busy) - (_cpu_of(self.own_pids) - ours)
        self.percent = max(0.0, others) / elapsed * 100 if elapsed > 0 else math.nan


def wait_for_quiet(max_wait: float, own_pids: list[int]) -> float:
    """Wait until other processes use less than ``QUIET_OTHER_CORES`` of the machine.

    Args:
        max_wait: give up after this many seconds (0: do not wait).
        own_pids: processes of this run, not counted as others (idle relays).

    Returns:
        The other processes' CPU, in cores, over the last sample.
    """
    deadline = time.monotonic() + max_wait
    while True:
        with OtherLoad(own_pids) as other:
            time.sleep(QUIET_SAMPLE_S)
        others = other.percent / 100
        if others < QUIET_OTHER_CORES or time.monotonic() >= deadline:
            return others


def machine_description() -> dict:
    """What the numbers were measured on."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def _debian_package_version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "not installed"


# --- the plain-forwarding comparison ----------------------------------------------------------


def _workdir(args, name: str) -> Path:
    """A directory for one relay's configuration and log, kept after the run."""
    path = args.logs / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _drop(name: str, reason: str, relays: dict, order: list, skipped: dict[str, str]) -> None:
    """Stop measuring a relay that broke mid-run; the report says why."""
    process = relays[name].process
    skipped[name] = f"{reason} (log: {process.log_path})"
    log(f"[plain] {name} dropped from the remaining cells: {reason}{process.log_tail()}")
    if name in order:
        order.remove(name)


def run_plain(args, skipped: dict[str, str], relay_core: int) -> list[PlainCell]:
    """Set every relay up once, then measure every (repeat, load, relay) cell."""
    cells: list[PlainCell] = []
    most = max(args.flows)
    factories = {
        **{
            name: (lambda name=name: BotCallRelay(core=relay_core, workdir=_workdir(args, name), variant=name))
            for name in args.relays
            if name.startswith("botcall")
        },
        "coturn": lambda: CoturnRelay(core=relay_core, workdir=_workdir(args, "coturn"), max_flows=most),
        "rtpengine": lambda: RtpengineRelay(core=relay_core, workdir=_workdir(args, "rtpengine"), max_flows=most),
    }
    with ExitStack() as stack:
        relays, flows = {}, {}
        for name in args.relays:
            if name in skipped:
                continue
            log(f"[plain] starting {name} and setting up {most} flows...")
            started = time.monotonic()
            try:
                relay = stack.enter_context(factories[name]())
                flows[name] = relay.create_flows(most, packet_size=PACKET_SIZE)
            except HarnessError as exc:
                skipped[name] = f"could not start or set up: {exc}"
                log(f"[plain] {name} skipped: {exc}")
                continue
            relays[name] = relay
            log(f"[plain] {name}: {most} flows in {time.monotonic() - started:.1f} s")
        own_pids = [relay.pid for relay in relays.values()]
        order = list(relays)
        kwargs = dict(rate_per_flow=RATE, duration=args.duration, warmup=args.warmup, packet_size=PACKET_SIZE)
        for repeat in range(args.repeat):
            for n in args.flows:
                for name in list(order):
                    try:
                        relays[name].keep_alive()
                    except HarnessError as exc:
                        _drop(name, f"refresh failed: {exc}", relays, order, skipped)
                wait_for_quiet(args.quiet_wait, own_pids)
                direct = measure_direct(n, **kwargs)
                cells.append(PlainCell.from_result("direct", n, repeat, direct, None))
                log(f"[plain] repeat {repeat + 1}/{args.repeat} N={n} direct: p50 {direct.latency_p50_ms:.3f} ms p99 {direct.latency_p99_ms:.3f} ms")
                rotation = order[repeat % len(order) :] + order[: repeat % len(order)] if order else []
                for name in rotation:
                    wait_for_quiet(args.quiet_wait, own_pids)
                    if not relays[name].process.alive():
                        _drop(name, "exited", relays, order, skipped)
                        continue
                    result = run_load(flows[name][:n], cpu_pid=relays[name].pid, **kwargs)
                    cell = PlainCell.from_result(name, n, repeat, result, direct)
                    cells.append(cell)
                    if result.received == 0:
                        log(f"[plain] {name} delivered nothing; its log: {relays[name].process.log_path}")
                    log(
                        f"[plain] repeat {repeat + 1}/{args.repeat} N={n} {name}: delivered {cell.delivered_pps:.0f}/s "
                        f"loss {cell.loss * 100:.3f}% added p99 {cell.added_p99_ms:.3f} ms "
                        f"cpu {cell.cpu_us_per_packet:.2f} us/pkt other {cell.other_cpu_percent:.0f}%"
                    )
    return cells


# --- the fan-out comparison -------------------------------------------------------------------


def run_fanout(args, skipped: dict[str, str], relay_core: int, load_core: int) -> list[FanoutCell]:
    """aiortc and BotCall at every K; BotCall alone at the larger K."""
    cells: list[FanoutCell] = []
    botcall_ks = sorted(set(args.fanout) | set(args.botcall_fanout))
    aiortc_ks = sorted(set(args.fanout))
    kwargs = dict(rate=RATE, duration=args.fanout_duration, warmup=args.warmup, packet_size=PACKET_SIZE)
    kwargs_seq = dict(rate=RATE, duration=args.fanout_duration, warmup=args.warmup)
    for k in botcall_ks:
        if "aiortc" not in skipped and k in aiortc_ks:
            log(f"[fanout] aiortc K={k}: setting up...")
            try:
                with AiortcFanout(k, relay_core=relay_core, load_core=load_core, workdir=_workdir(args, f"aiortc-{k}")) as fanout:
                    for repeat in range(args.repeat):
                        wait_for_quiet(args.quiet_wait, [fanout.pid, fanout.clients.pid])
                        with OtherLoad([fanout.pid, fanout.clients.pid]) as other:
                            result = fanout.measure(args.fanout_duration)
                        cells.append(FanoutCell.from_result(result, repeat, fanout.setup_s, other.percent))
                        log(
                            f"[fanout] aiortc K={k} repeat {repeat + 1}: {result.cpu_us_per_packet:.0f} us/pkt, "
                            f"{result.min_subscriber_pps:.1f}-{result.per_subscriber_pps:.1f} frames/s per subscriber, "
                            f"relay {result.relay_cpu_percent:.0f}% load {result.load_cpu_percent:.0f}%"
                        )
            except HarnessError as exc:
                log(f"[fanout] aiortc K={k} failed: {exc}")
                cells.append(_failed_fanout("aiortc", k))
        log(f"[fanout] botcall K={k}: setting up...")
        try:
            with BotCallRelay(core=relay_core, max_humans=max(botcall_ks), workdir=_workdir(args, f"botcall-fanout-{k}")) as relay:
                started = time.monotonic()
                speaker, legs = relay.create_subscribers(k)
                setup_s = time.monotonic() - started
                for repeat in range(args.repeat):
                    wait_for_quiet(args.quiet_wait, [relay.pid])
                    with OtherLoad([relay.pid]) as other:
                        result = drive_fanout(speaker, legs, cpu_pid=relay.pid, relay="botcall", first_seq=repeat * packets_per_run(**kwargs_seq), **kwargs)
                    cells.append(FanoutCell.from_result(result, repeat, setup_s, other.percent))
                    log(
                        f"[fanout] botcall K={k} repeat {repeat + 1}: {result.cpu_us_per_packet:.1f} us/pkt, "
                        f"{result.min_subscriber_pps:.1f}-{result.per_subscriber_pps:.1f} packets/s per subscriber, "
                        f"loss {result.loss * 100:.3f}% relay {result.relay_cpu_percent:.0f}% load {result.load_cpu_percent:.0f}%"
                    )
        except HarnessError as exc:
            log(f"[fanout] botcall K={k} failed: {exc}")
            cells.append(_failed_fanout("botcall", k))
    return cells


def _failed_fanout(relay: str, k: int) -> FanoutCell:
    nan = math.nan
    return FanoutCell(relay, k, -1, nan, nan, 0, nan, nan, 0.0, 0.0, nan, nan, nan, nan, nan)


# --- reporting ----------------------------------------------------------------------------------


def plain_table(cells: list[PlainCell], flows: tuple[int, ...]) -> list[str]:
    """The plain-forwarding table, one row per (load, relay)."""
    lines = [
        "Plain forwarding: N flows x 50 packets/s of 172-byte RTP; median [min..max] over repeats",
        f"{'flows':>6} {'offered/s':>9} {'relay':<22} {'delivered/s':>11} {'loss %':>18} {'added p50 ms':>22} "
        f"{'added p99 ms':>24} {'CPU us/pkt':>22} {'relay CPU%':>10} {'other%':>7} {'BotCall CPU ratio':>17}",
    ]
    variants = sorted({c.relay for c in cells if c.relay.startswith("botcall+")})
    relays = [r for r in ("direct", *PLAIN_RELAYS, *variants) if any(c.relay == r for c in cells)]
    for n in flows:
        botcall_cost = median(c.cpu_us_per_packet for c in cells if c.relay == "botcall" and c.flows == n)
        coturn_cost = median(c.cpu_us_per_packet for c in cells if c.relay == "coturn" and c.flows == n)
        for relay in relays:
            mine = [c for c in cells if c.relay == relay and c.flows == n]
            if not mine:
                continue
            cost = median(c.cpu_us_per_packet for c in mine)
            if relay.startswith("botcall+"):
                # A variant's row: its own cost against coturn's.
                ratio = cost / coturn_cost if coturn_cost and math.isfinite(coturn_cost) else math.nan
            else:
                ratio = botcall_cost / cost if relay not in ("botcall", "direct") and cost and math.isfinite(cost) else math.nan
            lines.append(
                f"{n:>6} {median(c.offered_pps for c in mine):>9.0f} {relay:<22} {median(c.delivered_pps for c in mine):>11.0f} "
                f"{spread([c.loss * 100 for c in mine], '{:.3f}'):>18} "
                f"{spread([c.latency_p50_ms if relay == 'direct' else c.added_p50_ms for c in mine], '{:.3f}'):>22} "
                f"{spread([c.latency_p99_ms if relay == 'direct' else c.added_p99_ms for c in mine], '{:.2f}'):>24} "
                f"{spread([c.cpu_us_per_packet for c in mine], '{:.2f}'):>22} {median(c.relay_cpu_percent for c in mine):>10.0f} "
                f"{median(c.other_cpu_percent for c in mine):>7.0f} {'' if math.isnan(ratio) else f'{ratio:.2f}x':>17}"
            )
    lines.append("(direct rows: absolute p50/p99 of a socket-to-socket send; relay rows: minus the direct send of the same repeat)")
    return lines


def fanout_table(cells: list[FanoutCell]) -> list[str]:
    """The fan-out table, one row per (K, relay)."""
    lines = [
        "SRTP fan-out: one sender at 50 packets/s to K DTLS-SRTP subscribers; median [min..max] over repeats",
        f"{'K':>5} {'relay':<8} {'CPU us/pkt':>26} {'relay CPU%':>10} {'per sub /s':>10} {'worst sub /s':>12} "
        f"{'loss %':>8} {'p99 ms':>8} {'load CPU%':>9} {'other%':>7} {'aiortc/BotCall':>14}",
    ]
    ks = sorted({c.subscribers for c in cells})
    for k in ks:
        aiortc_cost = median(c.cpu_us_per_packet for c in cells if c.relay == "aiortc" and c.subscribers == k)
        for relay in ("aiortc", "botcall"):
            mine = [c for c in cells if c.relay == relay and c.subscribers == k]
            if not mine:
                continue
            cost = median(c.cpu_us_per_packet for c in mine)
            factor = aiortc_cost / cost if relay == "botcall" and math.isfinite(aiortc_cost) and cost else math.nan
            lines.append(
                f"{k:>5} {relay:<8} {spread([c.cpu_us_per_packet for c in mine]):>26} {median(c.relay_cpu_percent for c in mine):>10.0f} "
                f"{median(c.per_subscriber_pps for c in mine):>10.1f} {median(c.min_subscriber_pps for c in mine):>12.1f} "
                f"{median(c.loss * 100 for c in mine):>8.3f} {median(c.latency_p99_ms for c in mine):>8.2f} "
                f"{median(c.load_cpu_percent for c in mine):>9.0f} {median(c.other_cpu_percent for c in mine):>7.0f} "
                f"{'' if math.isnan(factor) else f'{factor:.1f}x':>14}"
            )
    lines.append("(aiortc: frames decoded per subscriber; BotCall: packets decrypted per subscriber. load CPU% near 100: the load side, not the relay, limited the cell)")
    return lines


def subscribers_per_core(cells: list[FanoutCell], relay: str) -> tuple[int, float]:
    """(largest K measured with every subscriber served, subscribers one core carries at that K's cost).

    A K is served when, in the median repeat, the worst subscriber got at least
    95 % of the packets sent (the median: one repeat stalled by other work on
    the shared machine does not decide it). The per-core figure is
    1 s / (50 packets/s x CPU per packet) at the largest K served.
    """
    served = 0
    cost = math.nan
    for k in sorted({c.subscribers for c in cells if c.relay == relay}):
        mine = [c for c in cells if c.relay == relay and c.subscribers == k]
        if mine and median(c.min_subscriber_pps for c in mine) >= SERVED_SHARE * RATE:
            served = k
            cost = median(c.cpu_us_per_packet for c in mine)
    per_core = 1e6 / (RATE * cost) if cost and math.isfinite(cost) else math.nan
    return served, per_core


def goals(plain: list[PlainCell], fanout: list[FanoutCell], flows: tuple[int, ...]) -> list[str]:
    """One line per goal of the issue: met or missed, by how much."""
    lines = ["Goals (this machine, one relay process):"]
    for peer, limit in (("coturn", GOAL_VS_COTURN), ("rtpengine", GOAL_VS_RTPENGINE)):
        ratios = []
        for n in flows:
            ours = median(c.cpu_us_per_packet for c in plain if c.relay == "botcall" and c.flows == n)
            theirs = median(c.cpu_us_per_packet for c in plain if c.relay == peer and c.flows == n)
            if math.isfinite(ours) and math.isfinite(theirs) and theirs > 0:
                ratios.append((n, ours / theirs))
        if not ratios:
            lines.append(f"  plain CPU/packet <= {limit}x {peer}: not measured")
            continue
        worst = max(ratio for _, ratio in ratios)
        verdict = "MET" if worst <= limit else "MISSED"
        detail = ", ".join(f"N={n}: {ratio:.2f}x" for n, ratio in ratios)
        lines.append(f"  plain CPU/packet <= {limit}x {peer}'s: {verdict} ({detail})")
    factors = []
    for k in sorted({c.subscribers for c in fanout if c.relay == "aiortc"}):
        theirs = median(c.cpu_us_per_packet for c in fanout if c.relay == "aiortc" and c.subscribers == k)
        ours = median(c.cpu_us_per_packet for c in fanout if c.relay == "botcall" and c.subscribers == k)
        if math.isfinite(ours) and math.isfinite(theirs) and ours > 0:
            factors.append((k, theirs / ours))
    if factors:
        worst = min(factor for _, factor in factors)
        verdict = "MET" if worst >= GOAL_SRTP_CPU_FACTOR else "MISSED"
        detail = ", ".join(f"K={k}: {factor:.1f}x" for k, factor in factors)
        lines.append(f"  SRTP CPU/packet >= {GOAL_SRTP_CPU_FACTOR:.0f}x less than aiortc at every K: {verdict} ({detail})")
        ours_k, ours_core = subscribers_per_core(fanout, "botcall")
        theirs_k, theirs_core = subscribers_per_core(fanout, "aiortc")
        if math.isfinite(ours_core) and math.isfinite(theirs_core) and theirs_core > 0:
            factor = ours_core / theirs_core
            verdict = "MET" if factor >= GOAL_SUBSCRIBERS_FACTOR else "MISSED"
            lines.append(
                f"  subscribers per core >= {GOAL_SUBSCRIBERS_FACTOR:.0f}x aiortc's: {verdict} ({factor:.0f}x: BotCall ~{ours_core:.0f} "
                f"per core, served up to K={ours_k} measured; aiortc ~{theirs_core:.0f} per core, served up to K={theirs_k})"
            )
    else:
        lines.append("  SRTP fan-out goals: not measured")
    return lines


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=_ints, default=DEFAULT_FLOWS, help="offered loads, in flows of 50 packets/s (default %(default)s)")
    parser.add_argument("--relays", default=",".join(PLAIN_RELAYS), help="plain-forwarding relays to run (default %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per plain cell (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent before each window (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per cell (default %(default)s)")
    parser.add_argument("--fanout", type=_ints, default=DEFAULT_FANOUT, help="K for aiortc and BotCall (default %(default)s)")
    parser.add_argument("--botcall-fanout", type=_ints, default=DEFAULT_BOTCALL_FANOUT, help="further K for BotCall alone (default %(default)s)")
    parser.add_argument("--fanout-duration", type=float, default=10.0, help="seconds per fan-out window (default %(default)s)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-forwarding comparison")
    parser.add_argument("--no-fanout", action="store_true", help="skip the SRTP fan-out comparison")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get or pip install missing peers")
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="seconds to wait for other work to calm down before a cell (default %(default)s)")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "out" / "bench-compare.json", help="raw results (default %(default)s)")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the PNG here (e.g. docs/bench-compare.png)")
    parser.add_argument("--logs", type=Path, default=None, help="relay configurations and logs (default out/bench-compare-logs/<time>)")
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="scheduling niceness of this run and every relay it starts (default %(default)s: ahead of other work on a shared machine; needs root, else ignored)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny loads and short windows, to try the command")
    args = parser.parse_args(argv)
    args.relays = tuple(name for name in args.relays.split(",") if name)
    unknown = {name for name in args.relays if name not in PLAIN_RELAYS and not _is_variant(name)}
    if unknown:
        parser.error(f"unknown relays {sorted(unknown)}; choose from {PLAIN_RELAYS} or botcall+TOKEN... (bench/peers/botcall_relay.py)")
    if args.quick:
        args.flows, args.duration, args.warmup, args.repeat = (20, 100), 2.0, 0.5, 1
        args.fanout, args.botcall_fanout, args.fanout_duration, args.quiet_wait = (1, 5), (20,), 2.0, 0.0
    if args.repeat < 1 or args.duration <= 0 or args.fanout_duration <= 0 or args.warmup < 0:
        parser.error("repeat, durations and warm-up must be positive")
    return args


def _is_variant(name: str) -> bool:
    """``botcall+TOKEN...``: the BotCall server with configuration changes (``bench/peers/botcall_relay.py``)."""
    try:
        variant_config(name)
    except ValueError:
        return False
    return True


def _json_safe(value):
    """NaN and infinities become null: strict JSON for any reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C, so every ``with`` block kills its relay.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = datetime.datetime.now(datetime.timezone.utc)
    if args.logs is None:
        args.logs = REPO_ROOT / "out" / "bench-compare-logs" / f"{started:%Y%m%d-%H%M%S}"
    relay_core, load_core = cores()
    pin_current_process(load_core)
    try:
        # Children inherit it: the relays run at the same priority as the load.
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    except PermissionError:
        log(f"[setup] cannot set niceness {args.nice} (not root): running at the default priority")
    skipped: dict[str, str] = {}

    if not args.no_plain:
        for relay in args.relays:
            missing = ensure_debian_packages(PEER_PACKAGES.get(relay, {}), install=not args.no_install)
            if missing:
                skipped[relay] = "; ".join(missing.values())
                log(f"[setup] {relay} not available on this machine: {skipped[relay]}")
    bench_python = None
    if not args.no_fanout or args.plot is not None:
        try:
            bench_python = ensure_bench_venv(install=not args.no_install)
        except HarnessError as exc:
            skipped["aiortc"] = str(exc)
            log(f"[setup] aiortc and matplotlib not available: {exc}")

    plain = [] if args.no_plain else run_plain(args, skipped, relay_core)
    fanout = [] if args.no_fanout else run_fanout(args, skipped, relay_core, load_core)

    machine = machine_description()
    machine["packages"] = {name: _debian_package_version(name) for name in ("coturn", "rtpengine-daemon")}
    if bench_python is not None:
        version = subprocess.run([str(bench_python), "-c", "import aiortc; print(aiortc.__version__)"], capture_output=True, text=True)
        machine["packages"]["aiortc"] = version.stdout.strip() or "?"
    report = [
        f"bench/compare.py, {started:%Y-%m-%d %H:%M} UTC; relays on core {relay_core}, load on core {load_core}, niceness {os.getpriority(os.PRIO_PROCESS, 0)}",
        f"machine: {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}, Python {machine['python']}",
        f"peers: coturn {machine['packages']['coturn']}, rtpengine-daemon {machine['packages']['rtpengine-daemon']} (--table=-1, userspace), "
        f"aiortc {machine['packages'].get('aiortc', 'not installed')} (bench virtualenv)",
        "",
    ]
    if plain:
        report += plain_table(plain, args.flows) + [""]
    if fanout:
        report += fanout_table(fanout) + [""]
    report += goals(plain, fanout, args.flows)
    for name, reason in skipped.items():
        report.append(f"  skipped {name}: {reason}")
    print("\n".join(report), flush=True)

    results = {
        "started": started.isoformat(),
        "command": " ".join(["python -m bench.compare", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "cores": {"relay": relay_core, "load": load_core},
        "settings": {
            "flows": list(args.flows),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeat": args.repeat,
            "rate_per_flow": RATE,
            "packet_size": PACKET_SIZE,
            "fanout": list(args.fanout),
            "botcall_fanout": list(args.botcall_fanout),
            "fanout_duration_s": args.fanout_duration,
            "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        },
        "skipped": skipped,
        "plain": [asdict(cell) for cell in plain],
        "fanout": [asdict(cell) for cell in fanout],
        "report": report,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_json_safe(results), indent=1, allow_nan=False))
    log(f"[done] raw results in {args.json}")
    if args.plot is not None and bench_python is not None:
        drawn = subprocess.run([str(bench_python), str(REPO_ROOT / "bench" / "plot.py"), str(args.json), str(args.plot)], text=True, capture_output=True)
        log(f"[done] plot: {drawn.stdout.strip() or drawn.stderr.strip()[-500:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
