"""Prometheus metrics with a per-app ``CollectorRegistry``.

Each ``Metrics`` owns its registry (never prometheus-client's global one), so
several servers in one test process do not collide. Later layers (the relay,
the WebSocket routes) register their own collectors on ``metrics.registry``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


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
    """

    def __init__(self, *, live_rooms: Callable[[], int], live_sessions: Callable[[], int]) -> None:
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
        self.live_rooms = Gauge("botcall_live_rooms", "Open rooms.", registry=self.registry)
        self.live_rooms.set_function(live_rooms)
        self.live_sessions = Gauge("botcall_live_sessions", "Sessions in open rooms.", registry=self.registry)
        self.live_sessions.set_function(live_sessions)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
