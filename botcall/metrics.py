"""Prometheus metrics with a per-app ``CollectorRegistry``.

Each ``Metrics`` owns its registry (never prometheus-client's global one), so
several servers in one test process do not collide. Later layers (the relay,
the WebSocket routes) register their own collectors on ``metrics.registry``.

No ``*_created`` samples: prometheus-client would add a ``_created`` timestamp
to every counter and histogram (``botcall_rooms_created`` gave the confusing
``botcall_rooms_created_created``), and Prometheus' text format does not use
them. ``disable_created_metrics`` is process-wide in prometheus-client; the
first ``Metrics`` turns it off.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from botcall import counters


# What the collectors read, as Protocols: metrics.py imports no relay or server
# module (``relay.core.MediaRelay``, ``relay.transport.UdpTransport``,
# ``signaling.serving.ConnectionBudget`` and ``server.Parts`` fit these).


class _PeerPackets(Protocol):
    @property
    def rx_packets(self) -> int: ...
    @property
    def tx_packets(self) -> int: ...
    @property
    def addr(self) -> tuple[str, int] | None: ...
    @property
    def secure(self) -> object | None: ...  # set for a browser (WebRTC) leg


class MediaCounters(Protocol):
    """The relay as the metrics read it (``relay.core.MediaRelay``)."""

    @property
    def counters(self) -> collections.Counter[str]: ...
    @property
    def retired_rx_packets(self) -> int: ...
    @property
    def retired_tx_packets(self) -> int: ...
    def all_peers(self) -> Sequence[_PeerPackets]: ...
    def refresh_counts(self) -> None: ...


class TransportCounters(Protocol):
    """The UDP transport as the metrics read it (``relay.transport.UdpTransport``)."""

    @property
    def counters(self) -> collections.Counter[str]: ...


class HttpBudget(Protocol):
    """The connection budget as the metrics read it (``signaling.serving.ConnectionBudget``)."""

    @property
    def total(self) -> int: ...
    @property
    def refused(self) -> Mapping[str, int]: ...


class PartCounters(Protocol):
    """Supervised parts as the metrics read them (``server.Parts``)."""

    @property
    def contained(self) -> Mapping[str, int]: ...
    @property
    def restarts(self) -> Mapping[str, int]: ...


class TurnAddresses(Protocol):
    """The configured TURN servers as the metrics read them (``signaling.turn.TurnRelays``)."""

    def relays(self, addr: tuple[str, int]) -> bool: ...


class HubCounters(Protocol):
    """The bot WebSockets' event replay as the metrics read it (``signaling.ws.Hub``)."""

    @property
    def events_lost(self) -> int: ...


# A join verifies a signature and updates the registry (about a millisecond);
# a JWKS fetch after key rotation can take seconds.
JOIN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The API's counters and gauges.

    Args:
        live_rooms: returns the number of open rooms (read at scrape time).
        live_sessions: returns the number of sessions (read at scrape time).

    Attributes:
        registry: the ``CollectorRegistry`` ``render`` exposes.
        joins: ``botcall_joins_total{kind, transport}``.
        rejections: ``botcall_rejections_total{code}``, one per error response.
        rooms_created: ``botcall_rooms_created_total``.
        rooms_closed: ``botcall_rooms_closed_total{reason}``.
        join_seconds: ``botcall_join_duration_seconds{outcome}``, the time ``POST /v1/join``
            takes in the server (``joined`` or ``refused``).
    """

    def __init__(self, *, live_rooms: Callable[[], int], live_sessions: Callable[[], int]) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
        self.registry = CollectorRegistry()
        self.joins = Counter(
            "botcall_joins", "Successful joins.", ["kind", "transport"], registry=self.registry
        )
        self.rejections = Counter(
            "botcall_rejections", "Requests refused, by error code.", ["code"], registry=self.registry
        )
        self.rooms_created = Counter("botcall_rooms_created", "Rooms created.", registry=self.registry)
        self.rooms_closed = Counter(
            "botcall_rooms_closed", "Rooms closed, by reason.", ["reason"], registry=self.registry
        )
        self.join_seconds = Histogram(
            "botcall_join_duration_seconds",
            "Time to handle POST /v1/join, from the request read to the response (JWKS fetches included).",
            ["outcome"],
            buckets=JOIN_BUCKETS,
            registry=self.registry,
        )
        self.live_rooms = Gauge("botcall_live_rooms", "Open rooms.", registry=self.registry)
        self.live_rooms.set_function(live_rooms)
        self.live_sessions = Gauge("botcall_live_sessions", "Sessions in open rooms.", registry=self.registry)
        self.live_sessions.set_function(live_sessions)

    def attach_media(self, relay: MediaCounters, udp: TransportCounters, turn: TurnAddresses | None = None) -> None:
        """Expose the relay's and the UDP transport's counters, read at scrape time.

        ``botcall_media_events_total{event}`` holds every drop reason and
        protocol event the relay counts (``unknown_source``, ``wrong_ssrc``,
        ``stun_binding_success``, ``check_verified``, ``dtls_connected``...);
        packet totals are the live peers' counts plus those the relay kept
        from peers that left (a Prometheus counter never goes down), and live
        peers a gauge. ``botcall_browser_legs{path}`` counts the browser legs
        latched now, ``turn`` when their address is a configured TURN server's
        (``turn``; None: no TURN, all ``direct``), else ``direct``: classified at
        scrape time from the latched addresses, so the packet path pays nothing.
        """
        self.registry.register(_MediaCollector(relay, udp, turn))

    def attach_http(self, budget: HttpBudget, parts: PartCounters) -> None:
        """Expose the HTTP server's connection budget, contained failures and part
        restarts, read at scrape time (``signaling/serving.py``, ``server.py``)."""
        self.registry.register(_HttpCollector(budget, parts))

    def attach_hub(self, hub: HubCounters) -> None:
        """Expose ``botcall_ws_events_lost_total``: events bots asked for on resume
        that had already left their session's replay log (told as ``events_lost``)."""
        self.registry.register(_HubCollector(hub))

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _MediaCollector:
    def __init__(self, relay: MediaCounters, udp: TransportCounters, turn: TurnAddresses | None) -> None:
        self.relay = relay
        self.udp = udp
        self.turn = turn

    def collect(self) -> Iterator[Metric]:
        self.relay.refresh_counts()  # the fast path's counts, folded now rather than within a second
        events = CounterMetricFamily(
            "botcall_media_events", "Relay events and drops, by name (help: botcall_media_<name>_total).", labels=["event"]
        )
        # Summed, not merged: a name both count must not hide one of the two.
        counted = sorted((self.relay.counters + self.udp.counters).items())
        for name, value in counted:
            events.add_metric([name], value)
        yield events
        yield from _catalogued_families(counted)
        peers = self.relay.all_peers()
        # Peers that left took their counts with them: the relay keeps the sum.
        received = CounterMetricFamily("botcall_media_received_packets", "RTP packets accepted from peers.")
        received.add_metric([], self.relay.retired_rx_packets + sum(peer.rx_packets for peer in peers))
        yield received
        sent = CounterMetricFamily("botcall_media_sent_packets", "RTP packets sent to peers.")
        sent.add_metric([], self.relay.retired_tx_packets + sum(peer.tx_packets for peer in peers))
        yield sent
        live = GaugeMetricFamily("botcall_media_peers", "Media peers, latched or not.")
        live.add_metric([], len(peers))
        yield live
        yield browser_legs(peers, self.turn)


def browser_legs(peers: Sequence[_PeerPackets], turn: TurnAddresses | None) -> Metric:
    """``botcall_browser_legs{path}``: the latched browser legs, ``turn`` (at a configured
    TURN server's address) or ``direct``; both samples always present."""
    paths = {"turn": 0, "direct": 0}
    for peer in peers:
        addr = peer.addr
        if peer.secure is None or addr is None:
            continue  # a bot, or a browser not (or no longer) latched
        paths["turn" if turn is not None and turn.relays(addr) else "direct"] += 1
    family = GaugeMetricFamily(
        "botcall_browser_legs",
        "Browser legs latched now, by path: through a configured TURN server's address, or direct.",
        labels=["path"],
    )
    for path, count in paths.items():
        family.add_metric([path], count)
    return family


def _catalogued_families(counted: list[tuple[str, int]]) -> Iterator[Metric]:
    """Each catalogued name as its own family with its help text (``botcall/counters.py``),
    zero until counted; errno families labelled by errno; an uncatalogued name under
    ``botcall_media_uncatalogued_total{event}`` (the catalogue test keeps it empty)."""
    values = dict(counted)
    for name, entry in counters.CATALOGUE.items():
        family = CounterMetricFamily(f"botcall_media_{name}", f"{entry.help} ({entry.kind.value})")
        family.add_metric([], values.get(name, 0))
        yield family
    by_errno = {
        prefix: CounterMetricFamily(f"botcall_media_{prefix[:-1]}s", help_text, labels=["errno"])
        for prefix, help_text in counters.ERRNO_FAMILIES.items()
    }
    stray = CounterMetricFamily("botcall_media_uncatalogued", "Counted names missing from the catalogue.", labels=["event"])
    for name, value in counted:
        if name in counters.CATALOGUE:
            continue
        errno = counters.errno_family(name)
        if errno is not None:
            by_errno[errno[0]].add_metric([errno[1]], value)
        else:
            stray.add_metric([name], value)
    yield from by_errno.values()
    yield stray


class _HubCollector:
    def __init__(self, hub: HubCounters) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        lost = CounterMetricFamily(
            "botcall_ws_events_lost", "Events a resuming bot asked for that its session's replay log no longer held."
        )
        lost.add_metric([], self.hub.events_lost)
        yield lost


class _HttpCollector:
    def __init__(self, budget: HttpBudget, parts: PartCounters) -> None:
        self.budget = budget
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        open_ = GaugeMetricFamily("botcall_http_connections", "Open HTTP/WebSocket connections.")
        open_.add_metric([], self.budget.total)
        yield open_
        refused = CounterMetricFamily(
            "botcall_http_connections_refused", "Connections refused over a budget, by budget.", labels=["budget"]
        )
        for name in ("per_ip", "rate_per_ip", "server"):
            refused.add_metric([name], self.budget.refused[name])
        yield refused
        contained = CounterMetricFamily(
            "botcall_http_connection_failures",
            "Connections that raised and were closed on their own, by exception type.",
            labels=["type"],
        )
        for name, value in sorted(self.parts.contained.items()):
            contained.add_metric([name], value)
        yield contained
        restarts = CounterMetricFamily("botcall_part_restarts", "Supervised parts restarted after a failure.", labels=["part"])
        for name in ("http", "media", "housekeeping", "jwks"):
            restarts.add_metric([name], self.parts.restarts[name])
        yield restarts
