"""Scale-out figures: what the routing front of ``botcall serve --workers N`` costs,
and what a join through another node of a ``--redis`` cluster costs.

Usage (from the repository root)::

    python -m bench.scale_out                 # 300 joins each way, 2 workers
    python -m bench.scale_out --joins 1000 --workers 2
    python -m bench.scale_out --nodes         # 2 nodes on a redis-server: same node vs the other node
    python -m bench.scale_out --capacity --workers 1,2 --start 200 --step 100 --max 900
    python -m bench.scale_out --capacity --workers 1,2 --rounds 3 --start 1:400,2:700   # alternating 1,2,1,2,1,2

``--capacity``: bot <-> human call capacity (loss < 0.1 %, relay-added p99 <
5 ms, a majority of ``--repeat`` runs) of ``botcall serve --workers N`` for
each N given, searched as ``bench.capacity`` does (step up, then bisect); every
probe starts a fresh server, creates its rooms through the front and aims each
call's load at its own worker's media port (``bench/scale_calls.py``). Each
run prints the calls per worker, loss, added p50/p99, each worker's CPU, the
front's, the load generator's own, the rest of the machine's and the load
average. A probe whose direct baseline is out of bounds, or whose generator
lagged its schedule, is marked generator-bound and ends that search (the
figure is then a lower bound set by the generator, not by the server).
The load comes from the native generator by default (``bench/harness/nativegen.py``:
the light generator's window in C, about half its CPU). ``--rounds R``
repeats the searches in turn (1, 2, 1, 2, ...) and ends with each worker
count's median and spread, the ratio of the medians and of each round's pair,
and, labelled apart (it is not the goal), the workers' own scaling: calls
carried per core the workers used at their limit. ``--realtime`` runs the
workers' and the generator's main threads under ``SCHED_FIFO``, out of the
way of other sessions' CPU hogs on a shared machine (both worker counts alike).

Starts ``botcall serve --workers N`` (real processes on loopback, a temporary
data directory), creates rooms through the front, then measures ``POST /v1/join``
(the attestation verified, a session created) one at a time, alternating
between the front's port and the owning worker's private port, on fresh
connections (as a bot's first request). Prints p50/p95/p99 of each and the
difference: the front's own cost per request.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.relay_latency import GENERATORS

from tests.kit.cluster import serving_workers
from tests.kit.server import http_request


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(joins: int, workers: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        roomy = {"BOTCALL_ROOM_MAX_BOTS": "100000", "BOTCALL_MAX_LIVE_ROOMS_PER_CONTROLLER": "100000"}
        async with serving_workers(Path(tmp), workers=workers, env=roomy) as front:
            creator = front.token(agent="creator#1")
            rooms = []
            for _ in range(max(1, joins // 8)):
                created = await front.create_room(creator, max_human_participants=1)
                rooms.append(created.json()["room_id"])
            # Which worker holds each room: a probe join through the front.
            owner: dict[str, int] = {}
            for index, room in enumerate(rooms):
                joined = await front.join(front.token(agent=f"probe#{index}"), room, agent_id=f"probe#{index}")
                owner[room] = front.worker_with_media_port(joined.json()["media"]["port"]).http_port
            times: dict[str, list[float]] = {"front": [], "direct": []}
            for i in range(joins * 2):
                room = rooms[(i // 2) % len(rooms)]
                way = "front" if i % 2 == 0 else "direct"
                base = front.url if way == "front" else f"http://127.0.0.1:{owner[room]}"
                agent = f"bot{i}#1"
                body = {"agent_id": agent, "room_id": room, "attestation": {"token": front.token(agent=agent)}, "media": {"transport": "udp"}}
                started = time.perf_counter()
                response = await http_request(base + "/v1/join", "POST", json_body=body)
                elapsed = time.perf_counter() - started
                if response.status != 200:
                    raise RuntimeError(f"join via {way} refused: {response.status} {response.body[:200]!r}")
                times[way].append(elapsed * 1000)
            return times


async def measure_nodes(joins: int) -> dict[str, list[float]]:
    """Joins to rooms on node A, sent to node A ("same node") or to node B ("other node")."""
    from contextlib import AsyncExitStack

    from tests.kit.redis import running_redis

    with tempfile.TemporaryDirectory() as tmp:
        roomy = {"BOTCALL_ROOM_MAX_BOTS": "100000", "BOTCALL_MAX_LIVE_ROOMS_PER_CONTROLLER": "100000"}
        async with running_redis(Path(tmp)) as redis, AsyncExitStack() as stack:
            nodes = []
            for name in ("node-a", "node-b"):
                nodes.append(await stack.enter_async_context(serving_workers(
                    Path(tmp), workers=1, env=roomy, extra=("--redis", redis.url, "--node-name", name)
                )))
            a, b = nodes
            room = (await a.create_room(a.token(agent="creator#1"))).json()["room_id"]  # the first room: node A
            times: dict[str, list[float]] = {"same node": [], "other node": []}
            for i in range(joins * 2):
                way = "same node" if i % 2 == 0 else "other node"
                base = a.url if way == "same node" else b.url
                agent = f"bot{i}#1"
                body = {"agent_id": agent, "room_id": room, "attestation": {"token": a.token(agent=agent)}, "media": {"transport": "udp"}}
                started = time.perf_counter()
                response = await http_request(base + "/v1/join", "POST", json_body=body)
                elapsed = time.perf_counter() - started
                if response.status != 200 or response.json()["media"]["port"] != a.workers[0].media_port:
                    raise RuntimeError(f"join via {way}: {response.status} {response.body[:200]!r}")
                times[way].append(elapsed * 1000)
            return times


@dataclass
class Limit:
    """One search's outcome for one worker count, with the figures at its limit.

    Attributes:
        workers: the worker count searched.
        calls: the largest passing N (None: none passed).
        bound: whether the search stopped at a generator-bound probe.
        runs: the passing probe's runs (empty when none passed).
    """

    workers: int
    calls: int | None
    bound: bool
    runs: list = field(default_factory=list)

    def median(self, figure) -> float:
        """The median over the limit's runs of ``figure(run)`` (NaN without runs)."""
        values = [figure(run) for run in self.runs]
        return statistics.median(values) if values else math.nan

    @property
    def worker_cores(self) -> float:
        """The workers' CPU at the limit over the measured window, all workers together,
        in cores (median of the runs)."""
        return self.median(lambda run: run.extra["workers_window_percent"] / 100)

    @property
    def calls_per_worker_core(self) -> float:
        """Calls carried per core the workers used at the limit: the workers' own scaling,
        apart from what the generator and the rest of the machine took."""
        return self.calls / self.worker_cores if self.calls and self.worker_cores > 0 else math.nan


def parse_starts(text: str, workers_list: list[int]) -> dict[int, int]:
    """``--start``: one count for every worker count (``300``) or one each (``1:300,2:600``)."""
    if ":" not in text:
        return {workers: int(text) for workers in workers_list}
    starts = {int(w): int(n) for w, n in (part.split(":") for part in text.split(","))}
    missing = set(workers_list) - set(starts)
    if missing:
        raise ValueError(f"no start for {sorted(missing)} worker(s)")
    return starts


def capacity(args: argparse.Namespace, workers_list: list[int]) -> list[Limit]:
    """The ``--capacity`` search for each worker count, ``--rounds`` times in turn
    (1, 2, 1, 2, ...); prints every run and a summary. Returns every search's outcome."""
    from bench.capacity import Bounds, judge, search
    from bench.harness.machine import machine_description
    from bench.scale_calls import HEADER, format_run, measure_calls

    bounds = Bounds()
    starts = parse_starts(args.start, workers_list)
    print(machine_description())
    pinning = "worker i on core i, a lone worker's generator on the other core" if args.pin else "nothing pinned"
    if args.realtime:
        pinning += "; workers and generator under SCHED_FIFO"
    print(f"capacity, bot <-> human calls: loss < 0.1 %, added p99 < 5 ms, a majority of {args.repeat} runs of {args.duration:g} s; {pinning};"
          f" {args.generator} generator (gen% = its CPU inside the window, g.run% = over the whole run, set-up excluded);"
          f" {args.rounds} round(s) of {','.join(map(str, workers_list))} worker(s)")
    print(HEADER, flush=True)
    limits: list[Limit] = []
    for round_index in range(args.rounds):
        for workers in workers_list:
            runs_at: dict[int, list] = {}

            def probe(n: int, workers: int = workers, runs_at: dict[int, list] = runs_at):
                runs = measure_calls(workers, n, duration=args.duration, warmup=args.warmup, repeat=args.repeat,
                                     quiet_wait=args.quiet_wait, log=lambda line: print(line, flush=True), pin=args.pin,
                                     generator=args.generator, realtime=args.realtime)
                for run in runs:
                    ok = run.cell.within(bounds.max_loss, bounds.max_added_p99_ms)
                    print(format_run(workers, run) + ("  ok" if ok else "  out"), flush=True)
                result = judge(n, [run.cell for run in runs], bounds)
                runs_at[n] = runs
                print(f"# {workers} worker(s), N={n}: {'PASS' if result.passed else 'FAIL'}{' (generator-bound)' if result.generator_bound else ''}", flush=True)
                return result

            best, probes = search(probe, start=starts[workers], step=args.step, maximum=args.max, resolution=args.resolution)
            bound = any(p.generator_bound for p in probes)
            limit = Limit(workers=workers, calls=best, bound=bound, runs=runs_at.get(best, []) if best else [])
            limits.append(limit)
            qualifier = "at least " if best is not None and (bound or best == args.max) else ""
            print(f"# round {round_index + 1}, capacity with {workers} worker(s): {qualifier}{best}"
                  + (" (the load generator was the limit)" if bound else "")
                  + (f"; at the limit workers {limit.worker_cores:.2f} cores, {limit.calls_per_worker_core:.0f} calls per worker core,"
                     f" gen {limit.median(lambda run: run.generator_cpu_percent):.1f} % in the window /"
                     f" {limit.median(lambda run: run.extra['generator_run_cpu_percent']):.1f} % over the run,"
                     f" other {limit.median(lambda run: run.other_cpu_percent):.0f} %, load {limit.median(lambda run: run.load_average):.1f}"
                     if limit.runs else ""), flush=True)
    print(summary(limits, workers_list))
    return limits


def summary(limits: list[Limit], workers_list: list[int]) -> str:
    """Median and spread per worker count, the ratio of the medians and of each round's pair,
    and the workers' own scaling (calls per worker core), labelled as such."""
    lines = ["# summary (median [min-max] over the rounds; a search with no passing N counts 0)"]
    medians: dict[int, float] = {}
    for workers in workers_list:
        mine = [limit for limit in limits if limit.workers == workers]
        calls = [limit.calls or 0 for limit in mine]
        per_core = [limit.calls_per_worker_core for limit in mine if not math.isnan(limit.calls_per_worker_core)]
        medians[workers] = statistics.median(calls)
        gen = [limit.median(lambda run: run.generator_cpu_percent) for limit in mine if limit.runs]
        lines.append(
            f"# {workers} worker(s): capacity {medians[workers]:g} [{min(calls)}-{max(calls)}] over {len(calls)} searches ({calls});"
            f" calls per worker core at the limit {_spread(per_core, '.0f')}; generator in the window {_spread(gen, '.1f')} % of a core"
        )
    if len(workers_list) == 2:
        one, two = sorted(workers_list)
        if medians[one] > 0:
            lines.append(f"# capacity ratio {two}/{one} workers, medians: {medians[two] / medians[one]:.2f}x")
        pairs = [(a.calls or 0, b.calls or 0) for a, b in zip([l for l in limits if l.workers == one], [l for l in limits if l.workers == two])]
        lines.append("# per round: " + ", ".join(f"{b}/{a} = {b / a:.2f}x" if a else f"{b}/{a}" for a, b in pairs))
        cores = {w: [l.calls_per_worker_core for l in limits if l.workers == w and not math.isnan(l.calls_per_worker_core)] for w in (one, two)}
        if cores[one] and cores[two]:
            lines.append(
                f"# NOT the goal, the workers' own scaling: calls per worker core, {two} workers / {one} worker ="
                f" {statistics.median(cores[two]) / statistics.median(cores[one]):.2f}"
            )
    return "\n".join(lines)


def _spread(values: list[float], spec: str) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}-{max(values):{spec}}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=300)
    parser.add_argument("--workers", default="2", help="workers; with --capacity a comma-separated list (1,2)")
    parser.add_argument("--nodes", action="store_true", help="two nodes on a redis-server instead of workers")
    parser.add_argument("--capacity", action="store_true", help="call capacity with each --workers count")
    parser.add_argument("--start", default="200", help="--capacity: first probe (calls); per worker count as 1:300,2:600")
    parser.add_argument("--step", type=int, default=100)
    parser.add_argument("--max", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0, help="--capacity: seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3, help="--capacity: runs per probe; a majority must pass")
    parser.add_argument("--pin", action="store_true", help="--capacity: worker i on core i (one worker: the generator on the other core)")
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="--capacity: wait this long at most for a quiet machine")
    parser.add_argument("--realtime", action="store_true",
                        help="--capacity: the workers' and the generator's main threads under SCHED_FIFO (root; see bench.scale_calls.realtime_scheduling)")
    parser.add_argument("--rounds", type=int, default=1, help="--capacity: search every worker count this many times, in turn (1,2,1,2...)")
    parser.add_argument("--generator", choices=sorted(GENERATORS), default="native",
                        help="--capacity: the load generator (bench/harness/nativegen.py, lightgen.py or loadgen.py)")
    args = parser.parse_args(argv)
    try:
        workers_list = [int(part) for part in args.workers.split(",")]
    except ValueError:
        parser.error("--workers: integers, comma-separated")
    if args.capacity:
        try:
            parse_starts(args.start, workers_list)
        except ValueError as error:
            parser.error(f"--start: {error}")
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        if args.duration + args.warmup > 20:
            parser.error("warmup + duration must stay under 20 s (consent lasts 30 s)")
        from bench.harness.machine import run_isolated

        sys.exit(run_isolated(lambda: capacity(args, workers_list)))
    if len(workers_list) != 1:
        parser.error("--workers takes one count without --capacity")
    args.workers = workers_list[0]
    if args.nodes:
        times = trio.run(measure_nodes, args.joins)
        print(f"POST /v1/join to a room on node A, {args.joins} each way, Redis on loopback, fresh connection per join (ms)")
    else:
        times = trio.run(measure, args.joins, args.workers)
        print(f"POST /v1/join, {args.joins} each way, {args.workers} workers, fresh connection per join (ms)")
    print(f"{'path':<8} {'p50':>7} {'p95':>7} {'p99':>7} {'mean':>7}")
    for way, values in times.items():
        print(f"{way:<8} {percentile(values, 0.5):7.2f} {percentile(values, 0.95):7.2f} {percentile(values, 0.99):7.2f} {statistics.mean(values):7.2f}")
    first, second = times
    print(f"difference at p50: {percentile(times[first], 0.5) - percentile(times[second], 0.5):+.2f} ms ({first} - {second})")


if __name__ == "__main__":
    main(sys.argv[1:])
