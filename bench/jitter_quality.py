"""Jitter-buffer quality: delay paid versus late loss, against fixed and hindsight-optimal buffers.

Usage (from the repository root)::

    python -m bench.jitter_quality [--duration 60] [--seeds 5] [--seed 1]

The measurement is :mod:`tests.kit.jitter_quality` (a test runs it small).

The network (``botcall/demo/netsim.py``), for each cell of jitter J x loss L:

* one Opus-like stream of 20 ms packets for ``--duration`` seconds;
* one-way delay = 20 ms base + an i.i.d. exponential sample with mean J
  (|Laplace(0, J)|; its RFC 3550 interarrival jitter is about J) + delay
  spikes: link outages starting as a Poisson process once per 10 s on
  average, each 40-120 ms long, holding every packet sent during it until it
  ends (the spike decays linearly and the held packets arrive in a burst);
* i.i.d. loss L; with J above 20 ms the i.i.d. delays reorder packets heavily.

The consumer pops every 20 ms at a seeded random phase against the sender's
clock. A frame's *delay* is the time it is played minus the earliest it could
have arrived (send time + base delay), so every buffer is measured on the
same scale. *Late loss* is the share of packets that arrived but were not
played (late, or discarded by the buffer to cut its delay); network loss is
not counted.

Columns:

* ``adaptive``: ``botcall.audio.jitter.JitterBuffer`` with default settings:
  mean delay over played frames and late loss;
* ``fixed 60``: a buffer playing every frame at a fixed 60 ms (rounded up to
  the consumer's 20 ms tick grid, so its delay prints as 60-80 ms);
* ``optimum``: the hindsight optimum, the smallest fixed delay *on the same
  tick grid* that kept late loss under 1 % for this trace; ``p99`` is the same
  without the grid (the 99th percentile of delay, which no buffer popping every
  20 ms can realise exactly);
* ``ratio``: adaptive mean delay / optimum; the goal is late loss <= 1 % with
  ratio <= 1.25, marked ``ok``.

Each cell is averaged over ``--seeds`` traces (different seeds). The benchmark
prints; it never asserts. The table does not depend on machine speed; the last
line, the CPU cost per ``push`` and ``pop`` call, does.
"""

from __future__ import annotations

import argparse

from tests.kit.jitter_quality import JITTERS, LOSSES, average, cell_seed, measure_cost, run_cell, table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of audio per trace")
    parser.add_argument("--seeds", type=int, default=5, help="traces averaged per cell")
    parser.add_argument("--seed", type=int, default=1, help="first seed")
    args = parser.parse_args(argv)
    results = []
    for jitter in JITTERS:
        for loss in LOSSES:
            runs = [
                run_cell(jitter, loss, seed=cell_seed(args.seed + k * 1000, jitter, loss), duration=args.duration)
                for k in range(args.seeds)
            ]
            results.append(average(runs))
    print(
        f"{args.duration:.0f} s of 20 ms packets per trace, {args.seeds} trace(s) per cell; "
        "delays above the earliest possible arrival"
    )
    print(table(results))
    push_cost, pop_cost = measure_cost()
    print(f"\ncost on this machine: push {push_cost * 1e6:.1f} us, pop {pop_cost * 1e6:.1f} us per call")


if __name__ == "__main__":
    main()
