"""Jitter-buffer quality: delay paid versus late loss, against fixed and hindsight-optimal buffers.

The measurement ``python -m bench.jitter_quality`` prints (its docstring says
what the network, the consumer and the columns are) and
``tests/audio/test_jitter_bench.py`` checks at a small size: :func:`run_cell`
plays one seeded trace through ``botcall.audio.jitter.JitterBuffer``, a fixed
buffer and the hindsight optimum; :func:`average` and :func:`table` make the
rows; :func:`measure_cost` times ``push`` and ``pop``.
"""

from __future__ import annotations

import math
import random
import struct
import time
from dataclasses import dataclass

from botcall.audio.jitter import FrameKind, JitterBuffer
from botcall.wire.rtp import RtpPacket
from botcall.demo.netsim import Jitter, NetworkProfile, merge_schedule, transmit

FRAME = 0.020
SAMPLES_PER_FRAME = 960
BASE_DELAY = 0.020
JITTERS = (0.005, 0.020, 0.050)
LOSSES = (0.0, 0.05, 0.15)
FIXED_DELAY = 0.060
LATE_GOAL = 0.01
RATIO_GOAL = 1.25
_INDEX = struct.Struct("!I")


@dataclass(frozen=True)
class CellResult:
    jitter: float
    loss: float
    rfc3550_jitter: float
    adaptive_delay: float
    adaptive_late: float
    adaptive_discarded: float
    fixed_delay: float
    fixed_late: float
    optimum_delay: float
    optimum_late: float
    p99: float


def profile_for(jitter: float, loss: float) -> NetworkProfile:
    """The network of one cell (see the module docstring)."""
    return NetworkProfile(
        base_delay=BASE_DELAY,
        jitter=Jitter.EXPONENTIAL,
        jitter_mean=jitter,
        loss=loss,
        spike_rate=0.1,
        spike_min=0.040,
        spike_max=0.120,
    )


def run_cell(jitter: float, loss: float, seed: int, duration: float, **buffer_args) -> CellResult:
    """Simulate one trace and measure the three buffers on it.

    Args:
        jitter: mean of the exponential jitter (seconds).
        loss: network loss probability.
        seed: seeds the trace, the stream's numbering and the pop phase.
        duration: seconds of audio.
        buffer_args: overrides for ``JitterBuffer`` (for tuning experiments).

    Returns:
        The cell's measurements.
    """
    rng = random.Random(seed)
    t0 = 1.0
    seq0 = rng.randrange(1 << 16)
    ts0 = rng.randrange(1 << 32)
    count = int(round(duration / FRAME))
    sent = []
    for i in range(count):
        packet = RtpPacket(
            payload_type=111,
            sequence_number=(seq0 + i) & 0xFFFF,
            timestamp=(ts0 + i * SAMPLES_PER_FRAME) & 0xFFFFFFFF,
            ssrc=0x5EED,
            payload=_INDEX.pack(i) + bytes(60),
        )
        sent.append((t0 + i * FRAME, packet))
    arrivals = transmit(sent, profile_for(jitter, loss), seed=rng.randrange(1 << 30))

    first_arrival: dict[int, float] = {}
    for arrival, packet in arrivals:
        first_arrival.setdefault(_INDEX.unpack_from(packet.payload)[0], arrival)
    arrived = len(first_arrival)
    relative = sorted(a - (t0 + i * FRAME) - BASE_DELAY for i, a in first_arrival.items())

    phase = rng.uniform(0.0, FRAME)
    start = t0 + phase
    jb = JitterBuffer(**buffer_args)
    played: dict[int, float] = {}
    for t, packet in merge_schedule(arrivals, FRAME, start, t0 + duration + 1.0):
        if packet is not None:
            jb.push(packet, t)
            continue
        frame = jb.pop(t)
        if frame is not None and frame.kind is FrameKind.AUDIO:
            played[_INDEX.unpack_from(frame.payload)[0]] = t
    delays = [t - (t0 + i * FRAME) - BASE_DELAY for i, t in played.items()]
    stats = jb.stats

    def fixed(ticks: int) -> tuple[float, float]:
        # Frame i plays at tick i + ticks: a constant delay for every frame.
        delay = phase + ticks * FRAME - BASE_DELAY
        late = sum(1 for r in relative if r > delay)
        return delay, late / arrived

    fixed_ticks = math.ceil((BASE_DELAY + FIXED_DELAY - phase) / FRAME - 1e-9)
    fixed_delay, fixed_late = fixed(fixed_ticks)
    ticks = math.ceil((BASE_DELAY - phase) / FRAME)
    while True:
        optimum_delay, optimum_late = fixed(ticks)
        if optimum_late < LATE_GOAL:
            break
        ticks += 1
    allowed = math.ceil(LATE_GOAL * arrived) - 1
    p99 = relative[arrived - 1 - allowed]
    return CellResult(
        jitter=jitter,
        loss=loss,
        rfc3550_jitter=stats.jitter,
        adaptive_delay=sum(delays) / len(delays),
        adaptive_late=(arrived - len(played)) / arrived,
        adaptive_discarded=(stats.discarded + stats.overflow) / arrived,
        fixed_delay=fixed_delay,
        fixed_late=fixed_late,
        optimum_delay=optimum_delay,
        optimum_late=optimum_late,
        p99=p99,
    )


def cell_seed(seed: int, jitter: float, loss: float) -> int:
    """A distinct seed per cell, so cells do not share their traces' randomness."""
    return seed + int(round(jitter * 1e4)) + int(round(loss * 100))


def average(results: list[CellResult]) -> CellResult:
    """Field-wise mean of one cell's results over several seeds."""
    n = len(results)
    first = results[0]
    return CellResult(
        **{
            name: sum(getattr(r, name) for r in results) / n
            for name in CellResult.__dataclass_fields__
        }
        | {"jitter": first.jitter, "loss": first.loss}
    )


def table(results: list[CellResult]) -> str:
    """Render the results as a Markdown table (delays in ms, losses in %)."""
    lines = [
        "| jitter | loss | RFC 3550 | adaptive delay | adaptive late | (discarded) "
        "| fixed 60 delay | fixed 60 late | optimum delay | optimum late | p99 | ratio | goal |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        ratio = r.adaptive_delay / r.optimum_delay
        ok = r.adaptive_late <= LATE_GOAL and ratio <= RATIO_GOAL
        lines.append(
            f"| {r.jitter * 1e3:.0f} ms | {r.loss * 100:.0f} % | {r.rfc3550_jitter * 1e3:.1f} ms "
            f"| {r.adaptive_delay * 1e3:.1f} ms | {r.adaptive_late * 100:.2f} % "
            f"| {r.adaptive_discarded * 100:.2f} % "
            f"| {r.fixed_delay * 1e3:.1f} ms | {r.fixed_late * 100:.2f} % "
            f"| {r.optimum_delay * 1e3:.1f} ms | {r.optimum_late * 100:.2f} % "
            f"| {r.p99 * 1e3:.1f} ms | {ratio:.2f} | {'ok' if ok else 'MISSED'} |"
        )
    return "\n".join(lines)


def measure_cost(repeats: int = 3) -> tuple[float, float]:
    """CPU cost of ``push`` and ``pop`` (seconds per call, best of ``repeats``).

    Replays one 60 s trace (20 ms jitter, 5 % loss) and times each call; the
    only figure here that depends on the machine.
    """
    rng = random.Random(7)
    sent = [
        (i * FRAME, RtpPacket(111, i & 0xFFFF, (i * SAMPLES_PER_FRAME) & 0xFFFFFFFF, 1, bytes(80)))
        for i in range(3000)
    ]
    arrivals = transmit(sent, profile_for(0.020, 0.05), seed=rng.randrange(1 << 30))
    events = list(merge_schedule(arrivals, FRAME, 0.007, 61.0))
    best_push = best_pop = math.inf
    clock = time.perf_counter
    for _ in range(repeats):
        jb = JitterBuffer()
        push_time = pop_time = 0.0
        pushes = pops = 0
        for t, packet in events:
            start = clock()
            if packet is not None:
                jb.push(packet, t)
                push_time += clock() - start
                pushes += 1
            else:
                jb.pop(t)
                pop_time += clock() - start
                pops += 1
        best_push = min(best_push, push_time / pushes)
        best_pop = min(best_pop, pop_time / pops)
    return best_push, best_pop
