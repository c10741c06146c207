"""Scale-out figures: what the routing front of ``botcall serve --workers N`` costs,
and what a join through another node of a ``--redis`` cluster costs.

Usage (from the repository root)::

    python -m bench.scale_out                 # 300 joins each way, 2 workers
    python -m bench.scale_out --joins 1000 --workers 2
    python -m bench.scale_out --nodes         # 2 nodes on a redis-server: same node vs the other node

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--nodes", action="store_true", help="two nodes on a redis-server instead of workers")
    args = parser.parse_args(argv)
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
