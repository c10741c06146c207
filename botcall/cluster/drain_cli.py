"""``botcall drain --redis URL NODE``: tell a node of the cluster to stop taking rooms.

The node sees the request at its next heartbeat (within a third of its TTL):
it stops placement, lets its calls run up to its ``drain_timeout_s``, closes
the rest with ``server_shutdown`` and exits, as on SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

import trio

from botcall.cluster.nodes import NodeDirectory, request_drain
from botcall.cluster.resp import Redis, RedisUnavailable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", required=True, metavar="redis://HOST:PORT/DB", help="the cluster's Redis")
    parser.add_argument("node", nargs="?", help="the node's id (as in its log and `botcall drain --list`)")
    parser.add_argument("--list", action="store_true", help="list the live nodes and their load instead")


async def _drain(url: str, node: str | None, listing: bool) -> int:
    redis = Redis(url)
    try:
        if listing or node is None:
            for live in await NodeDirectory(redis, "", "", ttl=1, closed_for=0).nodes():
                state = "draining" if live.draining else "serving"
                print(f"{live.node_id}\t{live.url}\tload {live.load:.1f}\t{state}")
            return 0
        await request_drain(redis, node)
        print(f"drain requested for {node}")
        return 0
    finally:
        await redis.aclose()


def run(args: argparse.Namespace) -> int:
    try:
        return trio.run(_drain, args.redis, args.node, args.list)
    except (RedisUnavailable, ValueError) as exc:
        print(f"botcall drain: {exc}", file=sys.stderr)
        return 1
