"""The front of ``botcall serve --workers N``: one HTTP port that routes each request
to the worker owning its room (Trio shell over h11).

Why a routing front (docs/architecture.md, "Workers"): clients keep one URL
(invite links, ``websocket_url``, a TLS proxy in front see one port), the
front learns every room's and session's worker from the responses it forwards,
and answers for a lost worker's rooms itself (``410 room_closed``, reason
``worker_lost``) — which no ``SO_REUSEPORT`` scheme could, because the kernel
picks the worker before anyone has read the room id.

Routing (``route``):

* ``POST /v1/rooms/create`` (and ``/v1/rooms``): the least-loaded worker
  (``Directory.place``); a ``201`` teaches the directory the room.
* ``GET``/``DELETE /v1/rooms/<room>``, ``/v1/signal/<room>`` (WebSocket): the room's worker.
* ``POST /v1/join``: the worker of the body's ``room_id``; a ``200`` teaches the
  directory the session. The attestation's ``(iss, jti)`` is checked against the
  front's replay cache first and recorded after the worker accepted it, so a
  token used for a room on one worker is refused for a room on another.
* ``/v1/stream/<session>`` (WebSocket): the session's worker.
* everything else (health, version, metrics, the PWA): any running worker.

A room the directory does not know goes to any worker, whose own answer
(``404 room_not_found``...) is the right one. HTTP requests are read whole
(bodies up to ``max_body_bytes``), sent to the worker on a fresh loopback
connection with ``Connection: close`` and answered whole (responses up to
``MAX_RESPONSE_BYTES``); client connections stay alive between requests. A
WebSocket upgrade is sent on as it came and the two sockets are then spliced
byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import collections
import dataclasses
import hmac
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from botcall.auth.attestation import ReplayCache
from botcall.config import Config
from botcall.errors import ApiError
from botcall.signaling import tls
from botcall.signaling.serving import ConnectionBudget, _refuse
from botcall.cluster.directory import WORKER_LOST, Directory, Lost, Worker
from botcall.cluster.metrics_merge import merge_expositions
from botcall.cluster.nodes import NODE_LOST, NodeDirectory
from botcall.cluster.resp import RedisUnavailable

log = logging.getLogger("botcall.cluster")

# A worker's whole response is held at most this long (the PWA's largest asset is far smaller).
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Request headers at most (as the workers' own limit, docs/protocol.md).
MAX_HEADER_BYTES = 16 * 1024
# Seconds a worker gets to answer (a join may fetch a JWKS first).
UPSTREAM_TIMEOUT_S = 30.0
# Carries the cluster's peer secret on requests one node forwards to another.
PEER_HEADER = b"x-botcall-peer"
# Seconds a spliced WebSocket waits, once its worker's socket ended abruptly, to learn the worker died.
LOST_WAIT_S = 2.0
# Close code for a closed room (docs/protocol.md, "Close codes").
CLOSE_ROOM_CLOSED = 4410
# Seconds a client connection may stay idle between requests.
IDLE_TIMEOUT_S = 75.0
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length"}
)
_ROOM_PATH = re.compile(r"^/v1/rooms/([^/?]+)$")
_SIGNAL_PATH = re.compile(r"^/v1/signal/([^/?]+)$")
_STREAM_PATH = re.compile(r"^/v1/stream/([^/?]+)$")


class JoinTokenError(Exception):
    """A join body or its token could not be read (the worker then gives the real error)."""


@dataclass(frozen=True)
class Route:
    """Where a request goes: a worker, or an answer of the front's own.

    Attributes:
        worker: the worker to forward to (``None`` with ``answer``).
        answer: ``(status, JSON body, extra headers)`` the front sends itself.
        learn: ``"room"`` or ``"session"``: what a success response teaches the directory.
        replay_key: ``(iss, jti, exp)`` of a join's attestation (checked by this front).
        remote: the public URL of the peer node holding the room (``--redis``):
            spoken to over TLS when it is ``https://``.
        claim: ``(iss, jti)`` claimed in Redis for this join: released if it fails.
    """

    worker: Worker | None = None
    answer: tuple[int, dict[str, Any], dict[str, str]] | None = None
    learn: str | None = None
    replay_key: tuple[str, str, float] | None = None
    remote: str | None = None
    claim: tuple[str, str] | None = None


def error_body(code: str, message: str, **extra: str) -> dict[str, Any]:
    """``{"error": {"code", "message", ...}}`` (docs/protocol.md, "Error codes")."""
    return {"error": {"code": code, "message": message, **extra}}


def lost_answer(room_id: str, lost: Lost) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``410 room_closed`` for a room whose worker (or node) was lost, with its ``reason``."""
    return 410, error_body("room_closed", f"the room was closed ({lost.reason})", reason=lost.reason), {}


def join_token_untrusted(body: bytes) -> tuple[str, str, float, str]:
    """``(iss, jti, exp, room_id)`` read, unverified, from a ``POST /v1/join`` body.

    Only for routing and the shared replay check: the worker verifies the token.

    Raises:
        JoinTokenError: not a join body with a readable JWT.
    """
    try:
        obj = json.loads(body)
        room_id = obj["room_id"]
        token = obj["attestation"]["token"]
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        iss, jti, exp = claims["iss"], claims["jti"], float(claims["exp"])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, binascii.Error, RecursionError) as exc:
        raise JoinTokenError(str(exc)) from None
    if not all(isinstance(v, str) for v in (iss, jti, room_id)) or not math.isfinite(exp):
        raise JoinTokenError("iss, jti and room_id must be strings, exp a number")
    return iss, jti, exp, room_id


def _no_worker() -> tuple[int, dict[str, Any], dict[str, str]]:
    return 503, error_body("worker_unavailable", "no worker is running; retry shortly"), {"Retry-After": "1"}


class Front:
    """Routes requests to workers (see the module docstring).

    Args:
        directory: the room directory (shared with the supervisor).
        config: the supervisor's configuration (limits and timeouts).
        replay: the replay cache shared by every worker (without ``cluster``).
        clock: Unix time.
        cluster: the node directory in Redis (``--redis``): rooms on other nodes
            are forwarded there, the replay cache is Redis's.
        budget: the client connection budget (default: ``config``'s totals, no rate).
    """

    def __init__(
        self,
        directory: Directory,
        config: Config,
        replay: ReplayCache,
        clock: Callable[[], float] = time.time,
        cluster: NodeDirectory | None = None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self.directory = directory
        # The connection budgets a single server applies (total, per address, rate per
        # address): workers exempt the front, so the front applies them for them.
        self.budget = budget or ConnectionBudget(max_total=config.max_connections, max_per_ip=config.max_connections_per_ip)
        self.contained: collections.Counter[str] = collections.Counter()
        self.cluster = cluster
        self.config = config
        self.replay = replay
        self.clock = clock
        self.in_flight: set[tuple[str, str]] = set()
        # How peers' https:// URLs are verified (--cluster-ca, else the system's CAs).
        self.peer_tls = tls.peer_client_context(config.cluster_ca) if cluster is not None else None
        self.connections = 0
        self.accepting = True
        # (worker, generation) -> set when that worker process is gone; spliced
        # WebSockets wait on it to tell their client why the socket ended.
        self._lost: dict[tuple[int, int], trio.Event] = {}

    def worker_lost(self, index: int, generation: int) -> None:
        """The supervisor saw worker ``index`` (``generation``) exit."""
        self._lost.setdefault((index, generation), trio.Event()).set()
        for key in [key for key in self._lost if key[0] == index and key[1] < generation]:
            del self._lost[key]

    # --- routing ---------------------------------------------------------------------------

    async def route(self, method: str, path: str, body: bytes, *, from_peer: bool = False) -> Route:
        """Where ``method path`` (with ``body``) goes; see the module docstring.

        Args:
            from_peer: the request was forwarded by another node (``--redis``):
                place a new room here, and its join's token is already claimed.
        """
        directory = self.directory
        if method == "POST" and path in ("/v1/rooms/create", "/v1/rooms"):
            if self.cluster is not None and not from_peer:
                try:
                    node = await self.cluster.place(sum(w.load for w in directory.table if w.running))
                except RedisUnavailable:
                    return Route(answer=_cluster_unavailable())
                if node is not None and node.node_id != self.cluster.node_id:
                    return Route(remote=node.url)
                if node is None and self.cluster.draining:
                    return Route(answer=(503, error_body("draining", "every node is draining; no new rooms"), {"Retry-After": "5"}))
            worker = directory.place(self.clock())
            return Route(worker=worker, learn="room") if worker is not None else Route(answer=_no_worker())
        if method == "GET" and path == "/metrics":
            return Route(answer=(200, {}, {}), learn="metrics")
        if method == "GET" and path == "/v1/cluster/workers":
            return Route(answer=(200, {"workers": [self.worker_json(w) for w in directory.table]}, {}))
        if method == "POST" and path == "/v1/join":
            try:
                iss, jti, exp, room_id = join_token_untrusted(body)
            except JoinTokenError:
                return self._any()
            if self.cluster is not None:
                if from_peer:
                    return await self._room(room_id, learn="session")
                try:
                    claimed = await self.cluster.claim_token(iss, jti, exp + self.config.leeway_s)
                except RedisUnavailable:
                    return Route(answer=_cluster_unavailable())
                if not claimed:
                    return Route(answer=_replayed())
                route = await self._room(room_id, learn="session")
                if route.answer is not None:
                    await self._release((iss, jti))
                    return route
                return dataclasses.replace(route, claim=(iss, jti))
            if (iss, jti) in self.in_flight:
                return Route(answer=_replayed())
            try:
                self.replay.check(iss, jti, self.clock())
            except ApiError as exc:
                return Route(answer=(exc.status, exc.to_json(), exc.headers))
            return await self._room(room_id, learn="session", replay_key=(iss, jti, exp))
        match = _ROOM_PATH.match(path) or _SIGNAL_PATH.match(path)
        if match:
            return await self._room(match.group(1))
        match = _STREAM_PATH.match(path)
        if match:
            worker = directory.session(match.group(1))
            return Route(worker=worker) if worker is not None else self._any()
        return self._any()

    async def _room(self, room_id: str, **kwargs: Any) -> Route:
        where = self.directory.room(room_id)
        if isinstance(where, Lost):
            return Route(answer=lost_answer(room_id, where))
        if where is not None:
            return Route(worker=where, **kwargs)
        if self.cluster is not None:
            try:
                entry = await self.cluster.room(room_id)
                if entry is not None and entry.state == "closed" and entry.reason:
                    return Route(answer=lost_answer(room_id, Lost(entry.reason, 0.0)))
                if entry is not None and entry.node != self.cluster.node_id:
                    url = await self.cluster.node_url(entry.node)
                    if url is None:  # its heartbeat expired; the reaper closes its rooms next
                        return Route(answer=lost_answer(room_id, Lost(NODE_LOST, 0.0)))
                    return Route(remote=url)
            except RedisUnavailable:
                return Route(answer=_cluster_unavailable())
        return self._any(**kwargs)

    def _any(self, **kwargs: Any) -> Route:
        worker = self.directory.any_running()
        return Route(worker=worker, **kwargs) if worker is not None else Route(answer=_no_worker())

    async def metrics(self) -> str:
        """Every running worker's ``/metrics``, merged, each series labelled by node and worker."""
        node = self.cluster.node_id if self.cluster is not None else (self.config.node_name or os.uname().nodename)
        parts: list[tuple[dict[str, str], str]] = []

        async def scrape(worker: Worker) -> None:
            try:
                with trio.fail_after(UPSTREAM_TIMEOUT_S):
                    upstream = await trio.open_tcp_stream("127.0.0.1", worker.http_port)
                    status, _, body = await _exchange(
                        upstream, b"GET", b"/metrics", [(b"host", b"127.0.0.1"), (b"connection", b"close")], b""
                    )
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError, _BodyTooLarge) as exc:
                log.warning("worker %d's metrics not read (%s)", worker.index, type(exc).__name__)
                return
            if status == 200:
                parts.append(({"node": node, "worker": str(worker.index)}, body.decode("utf-8", "replace")))

        async with trio.open_nursery() as nursery:
            for worker in self.directory.table:
                if worker.running:
                    nursery.start_soon(scrape, worker)
        parts.sort(key=lambda part: int(part[0]["worker"]))
        return merge_expositions(parts)

    async def _release(self, claim: tuple[str, str] | None) -> None:
        if claim is None or self.cluster is None:
            return
        try:
            await self.cluster.release_token(*claim)
        except RedisUnavailable:
            log.warning("could not release a refused join's token in Redis; it stays used until it expires")

    def is_peer(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether a request carries the cluster's peer secret (forwarded by another node)."""
        if self.cluster is None or not self.cluster.peer_secret:
            return False
        given = next((v for k, v in headers if k == PEER_HEADER), None)
        return given is not None and hmac.compare_digest(given, self.cluster.peer_secret.encode())

    @staticmethod
    def worker_json(worker: Worker) -> dict[str, Any]:
        return {
            "index": worker.index,
            "generation": worker.generation,
            "running": worker.running,
            "media_port": worker.media_port,
            "rooms": worker.rooms,
            "sessions": worker.sessions,
            "packets_per_second": round(worker.packets_per_second, 1),
            "load": round(worker.load, 2),
        }

    async def learn(self, route: Route, status: int, body: bytes) -> None:
        """Record what a worker's success response says (a new room or session)."""
        assert route.worker is not None
        if route.replay_key is not None and status == 200:
            iss, jti, exp = route.replay_key
            self.replay.record(iss, jti, exp + self.config.leeway_s)
        if route.learn is None or status not in (200, 201):
            return
        try:
            payload = json.loads(body)
            expires_at = _unix(payload["expires_at"])
            if route.learn == "room":
                self.directory.room_created(payload["room_id"], route.worker, expires_at)
                if self.cluster is not None:
                    await self.cluster.room_created(payload["room_id"], route.worker.index, expires_at)
            else:
                self.directory.session_joined(payload["session_id"], route.worker, expires_at)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("worker %d's %s response was not understood (%s)", route.worker.index, route.learn, exc)
        except RedisUnavailable as exc:
            log.warning("room not written to Redis (%s); the next heartbeat writes it", exc)

    # --- serving ---------------------------------------------------------------------------

    async def serve(self, listener: trio.abc.Listener[trio.abc.Stream], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled (or ``accepting`` is cleared)."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while self.accepting:
                stream = await listener.accept()
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.abc.Stream) -> None:
        transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        try:
            assert isinstance(transport, trio.SocketStream)
            peer = str(transport.socket.getpeername()[0])
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        refusal = self.budget.admit(peer, trio.current_time())
        if refusal is not None:
            await _refuse(stream, refusal)
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        try:
            async with stream:
                await self._requests(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, trio.TooSlowError):
            self.contained["client_gone"] += 1  # the client went away or was too slow: nothing to answer
        except Exception as exc:  # containment: one connection's failure stays with it
            name = type(exc).__name__
            if not self.contained[name]:
                log.error("a front connection failed and was closed (%s); further ones are counted", name, exc_info=exc)
            self.contained[name] += 1
        finally:
            self.connections -= 1
            self.budget.release(peer)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _requests(self, stream: trio.abc.Stream, peer: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            try:
                with trio.fail_after(IDLE_TIMEOUT_S if conn.their_state is h11.IDLE else self.config.header_timeout_s):
                    request = await _next_event(conn, stream)
                if not isinstance(request, h11.Request):
                    return
                if _is_upgrade(request):
                    await self._websocket(stream, conn, request, peer)
                    return
                with trio.fail_after(self.config.body_timeout_s):
                    body = await self._body(conn, stream)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    code = "body_too_large" if status == 413 else "headers_too_large" if status == 431 else "bad_request"
                    await _respond(conn, stream, status, error_body(code, str(exc) or "malformed request"), {}, close=True)
                return
            except _BodyTooLarge:
                await _respond(conn, stream, 413, error_body("body_too_large", "the body exceeds the limit"), {}, close=True)
                return
            method, target = request.method.decode("ascii", "replace"), request.target.decode("ascii", "replace")
            from_peer = self.is_peer(list(request.headers))
            route = await self.route(method, target.partition("?")[0], body, from_peer=from_peer)
            if route.learn == "metrics":
                text = (await self.metrics()).encode()
                out = conn.send(h11.Response(status_code=200, headers=[
                    ("content-type", "text/plain; version=0.0.4; charset=utf-8"), ("content-length", str(len(text)))
                ]))
                await stream.send_all(out + conn.send(h11.Data(data=text)) + conn.send(h11.EndOfMessage()))
            elif route.answer is not None:
                status, payload, headers = route.answer
                await _respond(conn, stream, status, payload, headers)
            else:
                await self._forward(conn, stream, request, body, route, peer, from_peer)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _body(self, conn: h11.Connection, stream: trio.abc.Stream) -> bytes:
        if conn.they_are_waiting_for_100_continue:
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.config.max_body_bytes:
                    raise _BodyTooLarge
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise h11.RemoteProtocolError("connection closed in the body")

    async def _forward(
        self, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request, body: bytes, route: Route, peer: str, from_peer: bool
    ) -> None:
        worker = route.worker
        key = route.replay_key[:2] if route.replay_key is not None else None
        if key is not None:
            self.in_flight.add(key)
        status = 0
        try:
            headers = self._upstream_headers(list(request.headers), peer, from_peer, route)
            headers += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
            try:
                with trio.fail_after(UPSTREAM_TIMEOUT_S):
                    upstream = await self._connect(route)
                    status, response_headers, response_body = await _exchange(upstream, request.method, request.target, headers, body)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError, _BodyTooLarge) as exc:
                log.warning("%s did not answer %s %s (%s)", _where(route), request.method.decode(), request.target.decode(), _reason(exc))
                room_route = await self.route(request.method.decode(), request.target.decode().partition("?")[0], body, from_peer=True)
                answer = room_route.answer if room_route.answer is not None and room_route.answer[0] == 410 else _no_worker()
                await _respond(conn, stream, *answer)
                return
            if worker is not None:
                await self.learn(route, status, response_body)
        finally:
            if key is not None:
                self.in_flight.discard(key)
            if route.claim is not None and status != 200:
                await self._release(route.claim)
        kept = [(k, v) for k, v in response_headers if k not in _HOP_BY_HOP]
        if request.method != b"HEAD":
            kept.append((b"content-length", str(len(response_body)).encode()))
        else:
            kept += [(k, v) for k, v in response_headers if k == b"content-length"]
        out = conn.send(h11.Response(status_code=status, headers=kept))
        if request.method != b"HEAD" and response_body:
            out += conn.send(h11.Data(data=response_body))
        out += conn.send(h11.EndOfMessage())
        await stream.send_all(out)

    async def _connect(self, route: Route) -> trio.abc.Stream:
        """A fresh connection to the route's worker (plain, on loopback) or peer
        node (TLS, verified with ``peer_tls``, when its URL is ``https://``).

        Raises:
            OSError: no connection.
            trio.BrokenResourceError: the TLS handshake failed (a certificate
                the cluster CA does not vouch for, or not TLS at all).
        """
        if route.remote is None:
            return await trio.open_tcp_stream("127.0.0.1", route.worker.http_port if route.worker else 0)
        parts = urlsplit(route.remote)
        https = parts.scheme == "https"
        host = parts.hostname or "127.0.0.1"
        stream = await trio.open_tcp_stream(host, parts.port or (443 if https else 80))
        if not https:
            return stream
        assert self.peer_tls is not None  # remote routes exist only with a cluster
        secure = trio.SSLStream(stream, self.peer_tls, server_hostname=host, https_compatible=True)
        try:
            await secure.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return secure

    def _upstream_headers(self, headers: list[tuple[bytes, bytes]], peer: str, from_peer: bool, route: Route) -> list[tuple[bytes, bytes]]:
        """The request's end-to-end headers for the next hop: the client appended to
        ``X-Forwarded-For`` (unless a peer node already did), the peer secret to a peer."""
        upgrade = _is_upgrade_headers(headers)  # an upgrade keeps its Connection/Upgrade headers
        kept = [(k, v) for k, v in headers if k != PEER_HEADER and (upgrade or k not in _HOP_BY_HOP)]
        if not from_peer:
            kept = _forwarded_for(kept, peer)
        if route.remote is not None and self.cluster is not None:
            kept.append((PEER_HEADER, self.cluster.peer_secret.encode()))
        return kept

    async def _websocket(self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request, peer: str) -> None:
        target = request.target.decode("ascii", "replace")
        from_peer = self.is_peer(list(request.headers))
        route = await self.route(request.method.decode("ascii", "replace"), target.partition("?")[0], b"", from_peer=from_peer)
        if route.answer is not None:
            status, payload, headers = route.answer
            await _respond(conn, stream, status, payload, headers, close=True)
            return
        while True:  # an upgrade request has no body: its end, then h11 pauses
            event = await _next_event(conn, stream)
            if isinstance(event, h11.EndOfMessage):
                break
            if not isinstance(event, h11.Data):
                return
        leftover = conn.trailing_data[0]
        head = [request.method + b" " + request.target + b" HTTP/1.1"]
        head += [k + b": " + v for k, v in self._upstream_headers(list(request.headers), peer, from_peer, route)]
        try:
            with trio.fail_after(UPSTREAM_TIMEOUT_S):
                upstream = await self._connect(route)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            log.warning("%s did not accept a WebSocket (%s)", _where(route), _reason(exc))
            await _respond(conn, stream, *_no_worker(), close=True)
            return
        worker = route.worker
        frames = ServerFrames()
        if worker is None:  # a peer node's socket: spliced as it is, that node speaks for its rooms
            async with upstream:
                await upstream.send_all(b"\r\n".join(head) + b"\r\n\r\n" + leftover)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(_pipe, stream, upstream, nursery.cancel_scope, frames, from_worker=False))
                    nursery.start_soon(partial(_pipe, upstream, stream, nursery.cancel_scope, frames, from_worker=True))
            return
        async with upstream:
            await upstream.send_all(b"\r\n".join(head) + b"\r\n\r\n" + leftover)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(_pipe, stream, upstream, nursery.cancel_scope, frames, from_worker=False))
                nursery.start_soon(partial(_pipe, upstream, stream, nursery.cancel_scope, frames, from_worker=True))
        log.debug("websocket to worker %d ended: %s", worker.index, vars(frames))
        if frames.abrupt_end_between_frames:
            # The worker's socket ended with no close frame: if the worker died, say so.
            lost = self._lost.setdefault((worker.index, worker.generation), trio.Event())
            with trio.move_on_after(LOST_WAIT_S):
                await lost.wait()
            if lost.is_set():
                event = json.dumps({"type": "room_closed", "reason": WORKER_LOST}).encode()
                await stream.send_all(ws_frame(0x1, event) + ws_frame(0x8, CLOSE_ROOM_CLOSED.to_bytes(2, "big") + b"room closed"))


class _BodyTooLarge(Exception):
    pass


class ServerFrames:
    """Follows the frame boundaries of a server-to-client WebSocket stream (RFC 6455
    §5.2; server frames are unmasked), to know whether it ended cleanly: after a
    close frame, or abruptly at a frame boundary (where the front may still
    append frames of its own)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._head = True  # the worker's HTTP response head comes first
        self._skip = 0  # payload bytes of the current frame still to come
        self.close_seen = False
        self.ended = False  # the worker's side ended or failed

    def feed(self, data: bytes) -> None:
        if self.close_seen:
            return
        if self._skip >= len(data):
            self._skip -= len(data)
            return
        self._buffer += data[self._skip:]
        self._skip = 0
        if self._head:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self._buffer.startswith(b"HTTP/1.1 101"):
                self.close_seen = True  # the upgrade was refused: an HTTP answer, not frames
                return
            self._head, self._buffer = False, self._buffer[end + 4:]
        while len(self._buffer) >= 2:
            opcode, length = self._buffer[0] & 0x0F, self._buffer[1] & 0x7F
            header = 2 + (2 if length == 126 else 8 if length == 127 else 0)
            if len(self._buffer) < header:
                return
            if length == 126:
                length = int.from_bytes(self._buffer[2:4], "big")
            elif length == 127:
                length = int.from_bytes(self._buffer[2:10], "big")
            if opcode == 0x8:
                self.close_seen = True
                return
            rest = self._buffer[header:]
            if len(rest) >= length:
                self._buffer = rest[length:]
            else:
                self._skip, self._buffer = length - len(rest), b""

    @property
    def abrupt_end_between_frames(self) -> bool:
        """The worker's side ended (EOF) with no close frame, between two frames."""
        return self.ended and not self._head and not self.close_seen and self._skip == 0 and not self._buffer


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final WebSocket frame (RFC 6455 §5.2) of a short payload (< 126 bytes)."""
    assert len(payload) < 126
    return bytes((0x80 | opcode, len(payload))) + payload


def _unix(rfc3339: str) -> float:
    return float(calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ")))


def _is_upgrade(request: h11.Request) -> bool:
    return _is_upgrade_headers(list(request.headers))


def _is_upgrade_headers(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k == b"upgrade" and v.lower() == b"websocket" for k, v in headers)


def _where(route: Route) -> str:
    """The next hop of ``route``, for a log line."""
    return route.remote if route.remote is not None else f"worker {route.worker.index if route.worker else '?'}"


def _reason(exc: BaseException) -> str:
    """Why a hop failed, for a log line: the TLS error under a broken handshake."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None else exc
    return f"{type(cause).__name__}: {cause}" if cause is not exc else type(exc).__name__


def _replayed() -> tuple[int, dict[str, Any], dict[str, str]]:
    return 401, error_body("attestation_replayed", "this attestation was already used to join"), {}


def _cluster_unavailable() -> tuple[int, dict[str, Any], dict[str, str]]:
    return 503, error_body("cluster_unavailable", "the cluster directory (Redis) cannot be reached; retry shortly"), {"Retry-After": "2"}


def _forwarded_for(headers: list[tuple[bytes, bytes]], peer: str) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``peer`` appended to ``X-Forwarded-For`` (workers trust the front)."""
    chain = [v for k, v in headers if k == b"x-forwarded-for"]
    rest = [(k, v) for k, v in headers if k != b"x-forwarded-for"]
    return rest + [(b"x-forwarded-for", b", ".join([*chain, peer.encode()]))]


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
            continue
        return event


async def _respond(conn: h11.Connection, stream: trio.abc.Stream, status: int, payload: dict[str, Any], headers: dict[str, str], *, close: bool = False) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    all_headers = [("content-type", "application/json"), ("content-length", str(len(body))), *headers.items()]
    if close:
        all_headers.append(("connection", "close"))
    try:
        out = conn.send(h11.Response(status_code=status, headers=all_headers)) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return  # h11 cannot answer in this state (the request was not read far enough): just close
    await stream.send_all(out)


async def _exchange(
    upstream: trio.abc.Stream, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request to a worker (or peer node) on ``upstream``, a fresh connection
    closed after; the whole response."""
    client = h11.Connection(h11.CLIENT)
    async with upstream:
        out = client.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            out += client.send(h11.Data(data=body))
        out += client.send(h11.EndOfMessage())
        await upstream.send_all(out)
        response: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(bytes(await upstream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_RESPONSE_BYTES:
                    raise _BodyTooLarge
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the worker closed the connection")
    assert response is not None
    return response.status_code, list(response.headers), b"".join(chunks)


async def _pipe(source: trio.abc.Stream, sink: trio.abc.Stream, scope: trio.CancelScope, frames: ServerFrames, *, from_worker: bool) -> None:
    """Copy ``source`` to ``sink`` until either ends, then end both directions;
    ``frames`` follows what the worker sends and learns when its side failed."""
    try:
        while True:
            try:
                data = bytes(await source.receive_some(65536))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""  # reset: an end like any other
            if not data:
                frames.ended = frames.ended or from_worker
                return
            if from_worker:
                frames.feed(data)
            try:
                await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                frames.ended = frames.ended or not from_worker
                return
    finally:
        scope.cancel()
