"""A userspace UDP proxy that delays and drops datagrams: an impaired browser leg.

    python -m bench.impaired_link --listen 127.0.0.2:40000 --to 127.0.0.1:40000 \\
        --delay-ms 20 --jitter-ms 5 --loss 0.01 --seed 1

This kernel has no netem (FACTS.md), so the impairment is a process of its
own. It listens on ``--listen`` (the media address the server *advertises*
to browsers) and forwards to ``--to`` (where the relay really listens); each
client address gets its own upstream socket on the ``--listen`` address, so
the relay sees one address per browser (as behind a NAT) and its answers go
back the same way. Both
directions go through a seeded ``botcall.demo.netsim.SimLink``: one-way delay
uniform in ``delay ± jitter`` and i.i.d. loss. ``--fifo`` (the default) keeps
order, as one queue does: jitter without reordering.

Bounded: at most ``MAX_CLIENTS`` client addresses and ``MAX_IN_FLIGHT``
datagrams held per direction (beyond that a datagram is dropped and counted).
Runs until killed; prints its counters to stderr on SIGTERM.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import select
import signal
import socket
import sys
import time
from types import FrameType

from botcall.demo.netsim import Jitter, NetworkProfile, SimLink

MAX_CLIENTS = 64
MAX_IN_FLIGHT = 10_000
MAX_DATAGRAM = 2048


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def profile(delay_ms: float, jitter_ms: float, loss: float, fifo: bool) -> NetworkProfile:
    """``delay ± jitter`` uniform (netsim's UNIFORM jitter is ``[0, 2 * mean]``) and ``loss``."""
    return NetworkProfile(
        base_delay=(delay_ms - jitter_ms) / 1000,
        jitter=Jitter.UNIFORM if jitter_ms > 0 else Jitter.NONE,
        jitter_mean=jitter_ms / 1000,
        loss=loss,
        fifo=fifo,
    )


class Proxy:
    """The proxy's state: sockets, two links, the datagrams in flight."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], link: NetworkProfile, seed: int) -> None:
        self.target = target
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(listen)
        self.front.setblocking(False)
        self.upstream: dict[tuple[str, int], socket.socket] = {}
        self.client_of: dict[socket.socket, tuple[str, int]] = {}
        self.to_server = SimLink(link, seed)
        self.to_client = SimLink(link, seed + 1)
        # (due, order, socket, payload, destination)
        self.due: list[tuple[float, int, socket.socket, bytes, tuple[str, int]]] = []
        self.order = itertools.count()
        self.counters = {"forwarded": 0, "lost": 0, "overflow": 0, "too_many_clients": 0}

    def _upstream_for(self, client: tuple[str, int]) -> socket.socket | None:
        sock = self.upstream.get(client)
        if sock is None:
            if len(self.upstream) >= MAX_CLIENTS:
                self.counters["too_many_clients"] += 1
                return None
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # From the front's own address: the relay's Binding answers map the
            # client to it, so a browser never learns a loopback address (Firefox
            # drops pairs with one).
            sock.bind((self.front.getsockname()[0], 0))
            sock.setblocking(False)
            self.upstream[client] = sock
            self.client_of[sock] = client
        return sock

    def _enqueue(self, link: SimLink, now: float, sock: socket.socket, payload: bytes, destination: tuple[str, int]) -> None:
        if len(self.due) >= MAX_IN_FLIGHT:
            self.counters["overflow"] += 1
            return
        lost = link.lost
        link.send(None, now)
        if link.lost > lost:
            self.counters["lost"] += 1
            return
        for arrival, _ in link.deliver(float("inf")):
            heapq.heappush(self.due, (arrival, next(self.order), sock, payload, destination))

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                payload, source = sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            now = time.monotonic()
            if sock is self.front:
                upstream = self._upstream_for(source)
                if upstream is not None:
                    self._enqueue(self.to_server, now, upstream, payload, self.target)
            else:
                self._enqueue(self.to_client, now, self.front, payload, self.client_of[sock])

    def run(self) -> None:
        while True:
            now = time.monotonic()
            while self.due and self.due[0][0] <= now:
                _, _, sock, payload, destination = heapq.heappop(self.due)
                try:
                    sock.sendto(payload, destination)
                    self.counters["forwarded"] += 1
                except OSError:
                    self.counters["overflow"] += 1
            timeout = max(0.0, self.due[0][0] - time.monotonic()) if self.due else 1.0
            readable, _, _ = select.select([self.front, *self.client_of], [], [], timeout)
            for sock in readable:
                self._drain(sock)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT the browser reaches (the advertised media address)")
    parser.add_argument("--to", required=True, help="HOST:PORT of the relay")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--jitter-ms", type=float, default=5.0)
    parser.add_argument("--loss", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reorder", action="store_true", help="let jitter reorder datagrams (default: one FIFO queue)")
    args = parser.parse_args()
    proxy = Proxy(parse_address(args.listen), parse_address(args.to), profile(args.delay_ms, args.jitter_ms, args.loss, not args.reorder), args.seed)

    def stop(signum: int, frame: FrameType | None) -> None:
        print(f"impaired_link: {proxy.counters}", file=sys.stderr, flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    proxy.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
