"""Capacity search: the most concurrent calls one relay process carries within bounds.

Usage (from the repository root)::

    python -m bench.capacity                                  # bot <-> browser calls, SRTP on the human leg
    python -m bench.capacity --mode bots --start 500 --step 250 --max 2000
    python -m bench.capacity --mode calls --start 250 --step 250 --max 1000 --resolution 25 --repeat 3

A probe of N runs ``bench.relay_latency.run_cells`` (a fresh server, N calls
set up over HTTP, the signaling WebSocket, ICE and DTLS, then ``--repeat``
measured runs beside a direct baseline). It passes when a majority of its runs
stay within the bounds: loss below ``--max-loss`` (0.1 %) and relay-added p99
below ``--max-added-p99`` (5 ms). The search steps up from ``--start`` by
``--step`` until a probe fails or ``--max`` is reached, then bisects between
the last pass and the first failure down to ``--resolution``.

The load generator is one process on the other core; when the direct
baseline of a probe is itself out of bounds, or the generator fell behind its
schedule, the probe says so (``generator-bound``) and the search stops there:
the relay then carries at least the last passing N, and the true figure needs
a faster generator.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

from bench.harness.machine import GENERATOR_CORE, machine_description, run_isolated
from bench.harness.machine import pin_to_core
from bench.relay_latency import DEFAULT_GENERATOR, GENERATORS, HEADER, MODES, Cell, format_cell, run_cells

# The generator is behind when its sends lag their schedule by more than this.
GENERATOR_MAX_LAG_MS = 50.0
MAX_PROBES = 40


@dataclass
class Probe:
    """The outcome of measuring N calls (or legs)."""

    n: int
    passed: bool
    generator_bound: bool
    cells: list[Cell]


@dataclass
class Bounds:
    max_loss: float = 0.001
    max_added_p99_ms: float = 5.0


def judge(n: int, cells: list[Cell], bounds: Bounds) -> Probe:
    """Pass when a majority of the runs are within bounds; flag a generator that could not keep up."""
    within = sum(cell.within(bounds.max_loss, bounds.max_added_p99_ms) for cell in cells)
    direct = cells[0].direct
    generator_bound = (
        direct.loss >= bounds.max_loss
        or direct.max_send_lag_ms > GENERATOR_MAX_LAG_MS
        or any(cell.relay.max_send_lag_ms > GENERATOR_MAX_LAG_MS for cell in cells)
    )
    return Probe(n=n, passed=2 * within > len(cells), generator_bound=generator_bound, cells=cells)


def search(probe: Callable[[int], Probe], *, start: int, step: int, maximum: int, resolution: int) -> tuple[int | None, list[Probe]]:
    """Step up, then bisect, for the largest N whose probe passes.

    Args:
        probe: measures N.
        start, step, maximum: the upward scan.
        resolution: stop bisecting when the gap between pass and failure is this small.

    Returns:
        ``(largest passing N or None, every probe in order)``. The search stops
        early at a generator-bound probe (the answer is then a lower bound).

    Raises:
        ValueError: bad scan parameters.
    """
    if start < 1 or step < 1 or resolution < 1 or maximum < start:
        raise ValueError("need 1 <= start <= maximum, step >= 1, resolution >= 1")
    probes: list[Probe] = []
    best: int | None = None
    failed: int | None = None
    n = start
    while n <= maximum and len(probes) < MAX_PROBES:
        result = probe(n)
        probes.append(result)
        if result.generator_bound:
            return (n if result.passed else best), probes
        if not result.passed:
            failed = n
            break
        best = n
        n += step
    if failed is None:
        return best, probes
    low = best if best is not None else 0
    high = failed
    while high - low > resolution and len(probes) < MAX_PROBES:
        middle = (low + high) // 2
        if middle < 1:
            break
        result = probe(middle)
        probes.append(result)
        if result.generator_bound:
            return (middle if result.passed else best), probes
        if result.passed:
            low = best = middle
        else:
            high = middle
    return best, probes


def _generator_extra(cell: Cell) -> str:
    """The light generator's CPU before and after the window, and the load's lag (ms), for a row's end."""
    before = getattr(cell.relay, "prepare_cpu_s", None)
    after = getattr(cell.relay, "verify_cpu_s", None)
    extra = f"  lag {cell.relay.max_send_lag_ms:.1f} ms"
    if before is not None:
        extra += f"; gen CPU before {before:.2f} s, after {after:.2f} s"
    return extra


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_isolated(lambda: _main(argv)))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description="The most concurrent calls one relay carries within loss and latency bounds.")
    parser.add_argument("--mode", choices=MODES, default="calls")
    parser.add_argument("--start", type=int, default=250)
    parser.add_argument("--step", type=int, default=250)
    parser.add_argument("--max", type=int, default=1500)
    parser.add_argument("--resolution", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per probe; a majority must pass")
    parser.add_argument("--max-loss", type=float, default=0.001)
    parser.add_argument("--max-added-p99", type=float, default=5.0, help="milliseconds")
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--generator", choices=sorted(GENERATORS), default=DEFAULT_GENERATOR,
                        help="light: packets built and protected before the window, checked after it (bench/harness/lightgen.py); native: the same, its window in C (nativegen.py)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="a server Config field (repeatable), e.g. media_fast_path='\"thread\"'")
    parser.add_argument("--audio-level", action=argparse.BooleanOptionalAction, default=None,
                        help="packets carry RFC 6464 audio levels (see bench.relay_latency); default: on in 'calls' mode")
    args = parser.parse_args(argv)
    config = {}
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            config[name] = json.loads(value)
        except ValueError:
            parser.error(f"--set {item}: the value must be JSON")
    if args.duration + args.warmup > 20:
        parser.error("warmup + duration must stay under 20 s (consent lasts 30 s)")
    pin_to_core(GENERATOR_CORE)
    bounds = Bounds(max_loss=args.max_loss, max_added_p99_ms=args.max_added_p99)
    print(machine_description())
    print(
        f"capacity search, mode {args.mode}: loss < {bounds.max_loss * 100:g} %, relay-added p99 < {bounds.max_added_p99_ms:g} ms,"
        f" a majority of {args.repeat} runs of {args.duration:g} s per probe; {args.generator} generator; server config {config or 'default'}"
    )
    print(HEADER + "  verdict", flush=True)

    def probe(n: int) -> Probe:
        cells = run_cells(
            args.mode,
            n,
            duration=args.duration,
            warmup=args.warmup,
            repeat=args.repeat,
            quiet_wait=args.quiet_wait,
            log=lambda line: print(line, flush=True),
            generator=args.generator,
            config=config,
            audio_levels=args.audio_level,
        )
        result = judge(n, cells, bounds)
        for cell in cells:
            print(format_cell(cell) + ("  ok" if cell.within(bounds.max_loss, bounds.max_added_p99_ms) else "  out")
                  + _generator_extra(cell), flush=True)
        verdict = "PASS" if result.passed else "FAIL"
        print(f"# N={n}: {verdict}{' (generator-bound)' if result.generator_bound else ''}", flush=True)
        return result

    best, probes = search(probe, start=args.start, step=args.step, maximum=args.max, resolution=args.resolution)
    bound = any(p.generator_bound for p in probes)
    if best is None:
        print(f"\nno probe passed (smallest tried: {min(p.n for p in probes)})")
    else:
        qualifier = "at least " if bound or best == args.max else ""
        print(f"\ncapacity ({args.mode}): {qualifier}{best}" + (" (the load generator was the limit)" if bound else ""))


if __name__ == "__main__":
    main()
