"""Scale-out figures: what the routing front of ``botcall serve --workers N`` costs,
and what a join through another node of a ``--redis`` cluster costs.

Usage (from the repository root)::

    python -m bench.scale_out                 # 300 joins each way, 2 workers
    python -m bench.scale_out --joins 1000 --workers 2
    python -m bench.scale_out --nodes         # 2 nodes on a redis-server: same node vs the other node
    python -m bench.scale_out --capacity --workers 1,2 --start 200 --step 100 --max 900

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

Starts ``botcall serve --workers N`` (real processes on loopback, a temporary
data directory), creates rooms through the front, then measures ``POST /v1/join``
(the attestation verified, a session created) one at a time, alternating
between the front's port and the owning worker's private port, on fresh
connections (as a bot's first request). Prints p50/p95/p99 of each and the
difference: the front's own cost per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

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


def capacity(args: argparse.Namespace, workers_list: list[int]) -> dict[int, int | None]:
    """The ``--capacity`` search for each worker count; prints every run. Returns the figures."""
    from bench.capacity import Bounds, judge, search
    from bench.harness.machine import machine_description
    from bench.scale_calls import HEADER, format_run, measure_calls

    bounds = Bounds()
    print(machine_description())
    pinning = "worker i on core i, a lone worker's generator on the other core" if args.pin else "nothing pinned"
    print(f"capacity, bot <-> human calls: loss < 0.1 %, added p99 < 5 ms, a majority of {args.repeat} runs of {args.duration:g} s; {pinning};"
          f" {args.generator} generator (gen% = its CPU inside the window, g.run% = over the whole run, set-up excluded)")
    print(HEADER, flush=True)
    figures: dict[int, int | None] = {}
    for workers in workers_list:
        def probe(n: int, workers: int = workers):
            runs = measure_calls(workers, n, duration=args.duration, warmup=args.warmup, repeat=args.repeat,
                                 quiet_wait=args.quiet_wait, log=lambda line: print(line, flush=True), pin=args.pin,
                                 generator=args.generator)
            for run in runs:
                ok = run.cell.within(bounds.max_loss, bounds.max_added_p99_ms)
                print(format_run(workers, run) + ("  ok" if ok else "  out"), flush=True)
            result = judge(n, [run.cell for run in runs], bounds)
            print(f"# {workers} worker(s), N={n}: {'PASS' if result.passed else 'FAIL'}{' (generator-bound)' if result.generator_bound else ''}", flush=True)
            return result

        best, probes = search(probe, start=args.start, step=args.step, maximum=args.max, resolution=args.resolution)
        bound = any(p.generator_bound for p in probes)
        figures[workers] = best
        qualifier = "at least " if best is not None and (bound or best == args.max) else ""
        print(f"# capacity with {workers} worker(s): {qualifier}{best}" + (" (the load generator was the limit)" if bound else ""), flush=True)
    if len(figures) == 2 and all(figures.values()):
        one, two = (figures[w] for w in sorted(figures))
        print(f"# ratio {max(figures)}/{min(figures)} workers: {two / one:.2f}x")  # type: ignore[operator]
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=300)
    parser.add_argument("--workers", default="2", help="workers; with --capacity a comma-separated list (1,2)")
    parser.add_argument("--nodes", action="store_true", help="two nodes on a redis-server instead of workers")
    parser.add_argument("--capacity", action="store_true", help="call capacity with each --workers count")
    parser.add_argument("--start", type=int, default=200, help="--capacity: first probe (calls)")
    parser.add_argument("--step", type=int, default=100)
    parser.add_argument("--max", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0, help="--capacity: seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3, help="--capacity: runs per probe; a majority must pass")
    parser.add_argument("--pin", action="store_true", help="--capacity: worker i on core i (one worker: the generator on the other core)")
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="--capacity: wait this long at most for a quiet machine")
    parser.add_argument("--generator", choices=("light", "classic"), default="light",
                        help="--capacity: the load generator (bench/harness/lightgen.py or bench/harness/loadgen.py)")
    args = parser.parse_args(argv)
    try:
        workers_list = [int(part) for part in args.workers.split(",")]
    except ValueError:
        parser.error("--workers: integers, comma-separated")
    if args.capacity:
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
