"""The compiled fast path's Python side (issue 17): its table, its counts.

``_fastpath.c`` reads the media socket with ``recvmmsg`` and forwards with
``sendmmsg``, in C, the RTP of the speakers :meth:`MediaRelay.fast_routes`
names: latched UDP peers whose packets need nothing but forwarding (no
playout, not muted, listeners all latched UDP bots). Everything else, and
every datagram after the first one it does not route in a batch, comes back
to :meth:`MediaRelay.handle_datagram` in arrival order, so the relay sees
exactly what it would without the helper.

The relay owns the state. :class:`FastForwarder` reprograms the helper's
whole table whenever ``MediaRelay.routes_generation`` moved (before the next
datagram is read: a peer that left, moved or was muted is never forwarded
from a stale route). At each reprogramming and at least every
``STATS_INTERVAL`` it folds the helper's per-route counts into the peers'
``rx_packets``/``rx_bytes``/``tx_packets`` and ``rate_limited`` drops, with
the rate window (it goes to the helper with the route and comes back, so a
reprogramming never restarts a speaker's window). Each forwarded packet of a
speaker with a speech tracker goes to :meth:`MediaRelay.track_forwarded`.

Bounds (the helper's): ``MAX_ROUTES`` routes (beyond, the rest stay on the
Python path), ``MAX_FANOUT`` listeners a route, IPv4 only.

Without the compiled module (not built: no compiler or headers at install),
:func:`available` is False and the transport keeps its Python read loop.
"""

from __future__ import annotations

import collections
import errno
import socket
from types import ModuleType

from botcall.relay.core import Address, MediaPeer, MediaRelay

_helper_module: ModuleType | None
try:
    from botcall.relay import _fastpath as _helper_module
except ImportError:  # not built: the Python path serves
    _helper_module = None

# How often the helper's counts reach the peers when nothing else makes them.
STATS_INTERVAL = 1.0


def available() -> bool:
    """Whether the compiled helper is built and importable here."""
    return _helper_module is not None


def _ipv4(addr: Address) -> bool:
    return ":" not in addr[0]


class FastForwarder:
    """The helper for one socket and one relay.

    Args:
        sock: the relay's bound non-blocking UDP socket.
        relay: the relay whose routes it forwards.
        counters: where the helper's own drops are counted (``oversized``,
            ``send_error_<ERRNO>``): the transport's counters; a new one if None.

    Raises:
        RuntimeError: the helper is not built (see :func:`available`).
    """

    def __init__(self, sock: socket.socket, relay: MediaRelay, counters: collections.Counter[str] | None = None) -> None:
        if _helper_module is None:
            raise RuntimeError("the compiled fast path (botcall.relay._fastpath) is not built")
        self._module = _helper_module
        self._helper = _helper_module.FastPath(sock.fileno())
        self.relay = relay
        self.max_fanout: int = _helper_module.MAX_FANOUT
        self.max_routes: int = _helper_module.MAX_ROUTES
        self._generation = -1
        self._routes: list[tuple[MediaPeer, tuple[MediaPeer, ...]]] = []
        self._next_stats = 0.0
        self.counters: collections.Counter[str] = collections.Counter() if counters is None else counters

    @property
    def route_count(self) -> int:
        return len(self._routes)

    def drain(
        self, now: float, forward: bool, limit: int
    ) -> tuple[int, bool, list[tuple[bytes, Address]], list[tuple[bytes, Address]], int]:
        """Read up to ``limit`` datagrams; forward what the table routes.

        Args:
            now: the time the batch is read at (the rate limit's clock).
            forward: False while the transport has a send backlog (forwarded
                datagrams would overtake it): everything goes to Python.
            limit: datagrams to read at most.

        Returns:
            (received, emptied, to_python, unsent, receive errno): the
            datagrams for ``handle_datagram`` in arrival order, those the
            kernel refused (EAGAIN) for the transport's backlog, and the errno
            of a failed receive (0 if none).
        """
        if self.relay.routes_generation != self._generation:
            self._reprogram()
        elif now >= self._next_stats:
            self.take_stats(now)
        received, emptied, to_python, mirrored, unsent, error = self._helper.drain(now, forward, limit)
        if mirrored:
            routes, track = self._routes, self.relay.track_forwarded
            for data, route_id in mirrored:
                track(routes[route_id][0], data, now)
        return received, emptied, to_python, unsent, error

    def take_stats(self, now: float = 0.0) -> None:
        """Fold what the helper counted since the last call into the relay and ``counters``."""
        self._next_stats = now + STATS_INTERVAL
        rows, counters = self._helper.take_stats()
        routes, count = self._routes, self.relay.count_forwarded
        for route_id, packets, size, rate_limited, window_start, window_packets in rows:
            peer, listeners = routes[route_id]
            count(peer, listeners, packets, size, rate_limited)
            peer.window_start, peer.window_packets = window_start, window_packets
        for name, value in counters.items():
            if name.isdigit():
                code = int(name)
                name = f"send_error_{errno.errorcode.get(code, code)}"
            self.counters[name] += value

    def _reprogram(self) -> None:
        """Fold the old table's counts, then give the helper the relay's current routes."""
        self.take_stats(self._next_stats - STATS_INTERVAL)
        generation = self.relay.routes_generation
        kept: list[tuple[MediaPeer, tuple[MediaPeer, ...]]] = []
        table = []
        for peer, listeners in self.relay.fast_routes(self.max_fanout):
            if len(kept) >= self.max_routes:
                break
            source = peer.addr
            assert source is not None  # fast_routes gives latched peers only
            destinations = [listener.addr[:2] for listener in listeners if listener.addr is not None]
            if not _ipv4(source) or len(destinations) != len(listeners) or not all(map(_ipv4, destinations)):
                continue
            table.append(
                (
                    len(kept),
                    (source[0], source[1]),
                    peer.ssrc,
                    peer.payload_type,
                    self.relay.max_packets_per_second,
                    peer.speech is not None,
                    [(host, port) for host, port in destinations],
                    peer.window_start,
                    peer.window_packets,
                )
            )
            kept.append((peer, listeners))
        self._helper.set_routes(table)
        self._routes = kept
        self._generation = generation
