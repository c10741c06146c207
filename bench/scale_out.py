"""Scale-out figures: what the routing front of ``botcall serve --workers N`` costs.

Usage (from the repository root)::

    python -m bench.scale_out                 # 300 joins each way, 2 workers
    python -m bench.scale_out --joins 1000 --workers 2

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    times = trio.run(measure, args.joins, args.workers)
    print(f"POST /v1/join, {args.joins} each way, {args.workers} workers, fresh connection per join (ms)")
    print(f"{'path':<8} {'p50':>7} {'p95':>7} {'p99':>7} {'mean':>7}")
    for way, values in times.items():
        print(f"{way:<8} {percentile(values, 0.5):7.2f} {percentile(values, 0.95):7.2f} {percentile(values, 0.99):7.2f} {statistics.mean(values):7.2f}")
    print(f"front's cost (p50 difference): {percentile(times['front'], 0.5) - percentile(times['direct'], 0.5):.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
