"""The load generators' own CPU per bot <-> human call, with no relay.

Usage (from the repository root)::

    python -m bench.generator_cost --calls 250,500,1000 --duration 5 --repeat 2

For each N: the shape of N calls of ``bench.relay_latency``'s calls mode (a
bot's plain RTP toward a browser that unprotects SRTP, a browser's SRTP toward
a bot), sent socket to socket as the direct baseline does
(``bench.relay_latency.DirectFlows``: the same SRTP work in the generator as
through a relay), by the classic generator (``bench.harness.loadgen.run_load``),
the light one (``bench.harness.lightgen.run_light``) and the native one
(``bench.harness.nativegen.run_native``, ``--generators classic,light,native``), alternating,
``--repeat`` times each. Printed per run: loss, p50/p99, the generator's CPU
inside the window (share of one core, and per call), and for the light one
the CPU it spent before (building, protecting) and after (unprotecting,
checking) the window. Pinned to the generator core, at the bench's priority.
"""

from __future__ import annotations

import argparse
import sys

from bench.harness.lightgen import run_light
from bench.harness.loadgen import Flow, packets_per_flow, run_load
from bench.harness.nativegen import run_native
from bench.harness.machine import GENERATOR_CORE, machine_description, pin_to_core, run_isolated, wait_for_quiet
from bench.relay_latency import DirectFlows

GENERATORS = {"classic": run_load, "light": run_light, "native": run_native}


def call_shapes(calls: int) -> list[Flow]:
    """Flows shaped like ``calls`` bot <-> browser calls (only their SRTP roles matter to DirectFlows)."""
    def unprotect(data: bytes) -> bytes:  # a marker: DirectFlows gives each flow its own contexts
        return data

    shapes = [Flow(send_sock=None, dest=("127.0.0.1", 0), recv_sock=None, unprotect=unprotect) for _ in range(calls)]  # type: ignore[arg-type]
    shapes += [Flow(send_sock=None, dest=("127.0.0.1", 0), recv_sock=None, protect=bytes) for _ in range(calls)]  # type: ignore[arg-type]
    return shapes


HEADER = f"{'calls':>6} {'generator':<8}{'loss%':>7}{'p50':>7}{'p99':>7}{'lag ms':>8}{'gen% in window':>16}{'µs/call·s':>11}{'before s':>9}{'after s':>8}{'other%':>7}"


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_isolated(lambda: _main(argv)))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="250,500,1000")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--generators", default="classic,light,native")
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    args = parser.parse_args(argv)
    pin_to_core(GENERATOR_CORE)
    print(machine_description())
    print("direct call-shaped flows (half SRTP-protected, half SRTP-unprotected), 50 packets/s each, no relay")
    print(HEADER, flush=True)
    per_flow = packets_per_flow(50.0, args.duration, args.warmup)
    for calls in (int(value) for value in args.calls.split(",")):
        direct = DirectFlows(call_shapes(calls))
        try:
            run = 0
            for _ in range(args.repeat):
                for name in args.generators.split(","):
                    wait_for_quiet(max_wait=args.quiet_wait)
                    result = GENERATORS[name](direct.flows, rate_per_flow=50.0, duration=args.duration, warmup=args.warmup, seq_base=run * per_flow)
                    run += 1
                    before = getattr(result, "prepare_cpu_s", float("nan"))
                    after = getattr(result, "verify_cpu_s", float("nan"))
                    print(
                        f"{calls:>6} {name:<8}{result.loss * 100:>7.3f}{result.latency_p50_ms:>7.2f}{result.latency_p99_ms:>7.2f}"
                        f"{result.max_send_lag_ms:>8.1f}{result.generator_cpu_percent:>16.1f}"
                        f"{result.generator_cpu_percent / 100 / calls * 1e6:>11.1f}{before:>9.2f}{after:>8.2f}{result.other_cpu_percent:>7.1f}",
                        flush=True,
                    )
        finally:
            direct.close()


if __name__ == "__main__":
    main()
