"""The HTTP/WebSocket server: our accept loop with budgets around Hypercorn's connections.

Hypercorn 0.18's ``hypercorn.trio.serve`` runs every connection in one handler
nursery shared with the accept loop, so one exception raised on behalf of one
connection cancels the whole server. One such exception is reachable by any
client (reproduced on 2026-12-05, regression test in tests/attack): send
``GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 100000\\r\\n\\r\\n{`` and
close. The app answers the GET without reading the body; h11 then cannot recycle
the connection and Hypercorn's ``TCPServer._close`` calls
``SocketStream.send_eof()`` — *outside* ``TCPServer.send_lock`` — which holds
trio's send conflict detector across a checkpoint. Meanwhile the reader task
sees EOF, h11 raises ``RemoteProtocolError`` (incomplete body), and the error
path's ``protocol_send`` calls ``send_all`` on the same stream:
``trio.BusyResourceError``. ``protocol_send`` catches only Broken/Closed, and
``TCPServer.run`` only ``OSError``, so it escaped and took the process down.

What this module does instead:

* ``ContainedTCPServer``: ``_close`` sends EOF under ``send_lock`` (the root
  cause), ``protocol_send`` treats ``BusyResourceError`` like a broken stream
  (belt and braces), a request's headers must arrive within
  ``header_timeout_s`` of its first byte, and every error Hypercorn produces
  itself (400, 404, 408, 431, 500, 505…) leaves with a JSON body like ours.
* HTTP/2 is off unless ``Config.http2``: prior-knowledge ``PRI *`` gets a JSON
  505 and ``Upgrade: h2c`` is ignored (answered as HTTP/1.1).
* ``HttpServer``: our own accept loop. Each connection runs in its own task
  under a ``try`` that logs (once per error type) and counts anything it
  raises, so no exception leaves its connection. Before the app sees a
  connection it must fit the ``ConnectionBudget``: at most
  ``max_connections_per_ip`` per client address and a global ceiling kept below
  the open-file limit; beyond either, the client gets a JSON 503
  ``too_many_connections`` and the socket is closed at once.

Upstream: the send_eof race is Hypercorn's (``trio/tcp_server.py``: ``_close``
without ``send_lock``); worth reporting with the reproduction above.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import resource
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, Framework
from hypercorn.typing import TaskGroup as HypercornTaskGroup
from hypercorn.typing import WorkerContext as HypercornWorkerContext
from hypercorn.utils import parse_socket_addr, wrap_app

from botcall.auth.ratelimit import TokenBucket
from botcall.config import RateLimit
from botcall.errors import http_error_json
from botcall.signaling.forwarded import is_trusted

log = logging.getLogger("botcall.http")

_HTTP_MESSAGES = {
    400: "the request is not valid HTTP/1.1",
    404: "not found",
    408: "the request did not arrive in time",
    431: "the request headers are too large",
    500: "internal server error",
    505: "HTTP/2 is not enabled on this server; use HTTP/1.1",
}
# accept() errors that mean "out of descriptors or memory for now", not "broken".
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_DELAY = 0.05
_REFUSE_SEND_TIMEOUT = 1.0
# Longest a write to one client may take before the connection is dropped.
SEND_TIMEOUT = 10.0
# Longest a TLS handshake may take (docs/protocol.md, Connections).
TLS_HANDSHAKE_TIMEOUT = 10.0


def json_error_body(status: int, message: str | None = None, code: str | None = None) -> bytes:
    """The JSON error body for ``status`` (our shape: ``{"error": {"code", "message"}}``)."""
    text = message or _HTTP_MESSAGES.get(status) or f"HTTP error {status}"
    return json.dumps(http_error_json(status, text, code), separators=(",", ":")).encode()


def raw_json_response(
    status: int, reason: str, message: str, *, code: str | None = None, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A whole HTTP/1.1 error response (``Connection: close``) with a JSON body."""
    body = json_error_body(status, message, code)
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- budgets (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection was refused: the code sent in the 503 and the counter name."""

    code: str
    message: str


class ConnectionBudget:
    """Open connections, server-wide and per client address (sans-IO).

    Also how fast one address may open connections: a flood of short
    connections is refused before the app sees them (a refusal is one write of
    a prepared answer; a request the app answers costs about a millisecond).

    Args:
        max_total: the global ceiling.
        max_per_ip: the per-address ceiling.
        rate_per_ip: new connections per second per address (a token bucket).
        exempt: addresses (trusted proxies) that only count against the global ceiling.
        max_tracked: addresses whose connection rate is remembered at once;
            beyond it new addresses are not rate-tracked (their open
            connections still count), so the table cannot be grown without bound.
    """

    def __init__(
        self,
        *,
        max_total: int,
        max_per_ip: int,
        rate_per_ip: RateLimit | None = None,
        exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
        max_tracked: int = 20_000,
    ) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.rate_per_ip = rate_per_ip
        self._exempt = exempt
        self._per_ip: dict[str, int] = {}
        self._arrivals: dict[str, TokenBucket] = {}
        self._max_tracked = max_tracked
        self.total = 0
        self.refused: Counter[str] = Counter()

    def is_exempt(self, ip: str) -> bool:
        return bool(self._exempt) and is_trusted(ip, self._exempt)

    def admit(self, ip: str, now: float = 0.0) -> Refusal | None:
        """Count a new connection from ``ip`` at ``now`` (seconds), or say why it may not open.

        Returns:
            None when admitted (the caller must ``release(ip)`` later), else a ``Refusal``.
        """
        if self.total >= self.max_total:
            self.refused["server"] += 1
            return Refusal("too_many_connections", "the server holds as many connections as it may; retry shortly")
        count = self._per_ip.get(ip, 0)
        limited = not self.is_exempt(ip)
        if limited and count >= self.max_per_ip:
            self.refused["per_ip"] += 1
            return Refusal("too_many_connections", f"at most {self.max_per_ip} connections at once from one address")
        if limited and self.rate_per_ip is not None and not self._arrival_allowed(ip, now):
            self.refused["rate_per_ip"] += 1
            return Refusal("too_many_connections", "connections are opening too fast from this address; retry shortly")
        self._per_ip[ip] = count + 1
        self.total += 1
        return None

    def _arrival_allowed(self, ip: str, now: float) -> bool:
        limit = self.rate_per_ip
        assert limit is not None
        bucket = self._arrivals.get(ip)
        if bucket is None:
            if len(self._arrivals) >= self._max_tracked:
                self.prune(now)
                if len(self._arrivals) >= self._max_tracked:
                    return True  # untracked: the open-connection caps still hold
            bucket = self._arrivals[ip] = TokenBucket(tokens=float(limit.burst), updated_at=now)
        return bucket.take(limit, now) == 0.0

    def prune(self, now: float) -> None:
        """Forget the connection rate of addresses whose bucket has refilled."""
        limit = self.rate_per_ip
        if limit is None:
            return
        for ip in [ip for ip, bucket in self._arrivals.items() if bucket.level(limit, now) >= limit.burst]:
            del self._arrivals[ip]

    def release(self, ip: str) -> None:
        """Forget one admitted connection from ``ip``."""
        count = self._per_ip.get(ip, 0)
        if count <= 1:
            self._per_ip.pop(ip, None)
        else:
            self._per_ip[ip] = count - 1
        self.total = max(0, self.total - 1)

    def open_from(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)


def raise_open_file_limit() -> int:
    """Raise ``RLIMIT_NOFILE``'s soft limit to its hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_ceiling(max_connections: int, open_file_limit: int, reserve: int) -> int:
    """The connection ceiling: the configured maximum, but ``reserve`` descriptors below the limit."""
    return max(1, min(max_connections, open_file_limit - reserve))


# --- Hypercorn, contained -------------------------------------------------------------------------


class JsonErrorH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol with JSON error bodies, the header deadline's
    state, and HTTP/2 upgrades refused unless enabled."""

    allow_http2 = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending_error_body: bytes | None = None

    async def _send_error_response(self, status_code: int) -> None:
        body = json_error_body(status_code)
        await self._send_h11_event(
            h11.Response(
                status_code=status_code,
                headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *self.config.response_headers("h11"),
                ],
            )
        )
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    async def stream_send(self, event: StreamEvent) -> None:
        # HTTPStream/WSStream answer some errors themselves (404 for a bad Host,
        # 400 for a bad WebSocket handshake, 500 when the app sent nothing) with
        # an empty body: give those our JSON body.
        if isinstance(event, Response) and event.status_code >= 400 and (b"content-length", b"0") in event.headers:
            body = json_error_body(event.status_code)
            headers = [(name, value) for name, value in event.headers if name != b"content-length"]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            self._pending_error_body = body
            event = Response(stream_id=event.stream_id, headers=headers, status_code=event.status_code)
        elif isinstance(event, (Body, EndBody)) and self._pending_error_body is not None:
            body, self._pending_error_body = self._pending_error_body, None
            await super().stream_send(Body(stream_id=event.stream_id, data=body))
            if isinstance(event, Body):
                return  # an empty error response carries no body of its own
            await super().stream_send(event)
            # These responses say "Connection: close" but a refused WebSocket
            # handshake would otherwise leave the socket open (its stream never
            # reports closed): close it now.
            await self.send(Closed())
            return
        await super().stream_send(event)

    async def _check_protocol(self, event: h11.Request) -> None:
        if self.allow_http2:
            await super()._check_protocol(event)
            return
        if event.method == b"PRI" and event.target == b"*":
            # HTTP/2 with prior knowledge (RFC 9113 §3.3): refuse in HTTP/1.1.
            raise Http2Refused()
        # "Upgrade: h2c" is ignored: the request is answered as HTTP/1.1 (RFC 9110 §7.8).

    @property
    def h11_connection(self) -> h11.Connection | None:
        """The h11 state machine while this is plain HTTP/1.1 (None once a WebSocket)."""
        connection = self.connection
        return None if isinstance(connection, H11WSConnection) else connection


class Http2Refused(Exception):
    """A prior-knowledge HTTP/2 preface on a server without HTTP/2."""


class ContainedProtocolWrapper(ProtocolWrapper):
    """Picks our HTTP/1.1 protocol; HTTP/2 only when enabled (then Hypercorn's)."""

    def __init__(
        self,
        app: AppWrapper,
        config: HypercornConfig,
        context: HypercornWorkerContext,
        task_group: HypercornTaskGroup,
        state: ConnectionState,
        ssl: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        send: Callable[[Event], Awaitable[None]],
        *,
        allow_http2: bool,
        alpn_protocol: str | None,
    ) -> None:
        super().__init__(app, config, context, task_group, state, ssl, client, server, send, alpn_protocol=alpn_protocol)
        self.allow_http2 = allow_http2
        if alpn_protocol != "h2" or not allow_http2:
            protocol = JsonErrorH11Protocol(
                self.app, self.config, self.context, self.task_group, self.state,
                self.ssl, self.client, self.server, self.send,
            )
            protocol.allow_http2 = allow_http2
            self.protocol = protocol

    async def handle(self, event: Event) -> None:
        if self.allow_http2:
            await super().handle(event)
            return
        try:
            await self.protocol.handle(event)
        except Http2Refused:
            protocol = self.protocol
            assert isinstance(protocol, JsonErrorH11Protocol)
            await protocol._send_error_response(505)
            await self.send(Closed())


class ContainedTCPServer(TCPServer):
    """Hypercorn's per-connection server with the send_eof race fixed, a header
    deadline, and our protocol wrapper (see the module docstring)."""

    def __init__(self, *args: Any, header_timeout: float, body_timeout: float, allow_http2: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.allow_http2 = allow_http2
        self._request_started: float | None = None
        self._body_started: float | None = None

    def __await__(self) -> Generator[Any, None, None]:
        return self.run().__await__()

    async def run(self) -> None:
        # As TCPServer.run, with ContainedProtocolWrapper.
        try:
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                return
            alpn_protocol = self.stream.selected_alpn_protocol()
            sock = self.stream.transport_stream.socket
            ssl = True
        except AttributeError:  # not TLS
            alpn_protocol = "http/1.1"
            sock = self.stream.socket
            ssl = False
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = ContainedProtocolWrapper(
                    self.app, self.config, self.context, task_group, ConnectionState(self.state),
                    ssl, client, server, self.protocol_send,
                    allow_http2=self.allow_http2, alpn_protocol=alpn_protocol,
                )
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass  # the peer reset the connection: nothing to tell anyone
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            broken = False
            async with self.send_lock:
                # Shielded (a cancelled half-write would corrupt the stream) but
                # bounded: a client that stops reading cannot hold the task forever.
                with trio.CancelScope(shield=True), trio.move_on_after(SEND_TIMEOUT) as late:
                    try:
                        await self.stream.send_all(event.data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                        broken = True
            if broken or late.cancelled_caught:
                if late.cancelled_caught:
                    await self._close()
                await self.protocol.handle(Closed())
        elif isinstance(event, Closed):
            # Often sent from the app's task just as Quart cancels it: shield
            # the close, or the socket stays open until the client gives up.
            with trio.CancelScope(shield=True):
                await self._close()
            await self.protocol.handle(Closed())
        else:
            await super().protocol_send(event)

    async def _close(self) -> None:
        # The fix: send EOF under send_lock, so it never overlaps a send_all.
        # A task already holding the lock (closing from inside protocol_send)
        # sends it directly; trio's Lock is not re-entrant. Waiting for the
        # lock is bounded by SEND_TIMEOUT (the holder's own bound).
        if self.send_lock.statistics().owner is trio.lowlevel.current_task():
            await self._close_unlocked()
            return
        with trio.move_on_after(SEND_TIMEOUT * 2):
            async with self.send_lock:
                await self._close_unlocked()
                return
        await self.stream.aclose()

    async def _close_unlocked(self) -> None:
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, AttributeError, trio.BusyResourceError, trio.ClosedResourceError):
            pass  # already gone, or a TLS stream (no half-close)
        await self.stream.aclose()

    def _read_deadline(self) -> float:
        """When the request being read must be complete: headers within
        ``header_timeout`` of their first byte, a body within ``body_timeout``
        (+5 s, after Quart's own body timeout) of the headers."""
        protocol = self.protocol.protocol
        if not isinstance(protocol, JsonErrorH11Protocol):
            return math.inf
        connection = protocol.h11_connection
        if connection is None:
            self._request_started = self._body_started = None
            return math.inf
        state = connection.their_state
        if state is h11.IDLE and connection.trailing_data[0]:
            if self._request_started is None:
                self._request_started = trio.current_time()
            return self._request_started + self.header_timeout
        self._request_started = None
        if state is h11.SEND_BODY:
            if self._body_started is None:
                self._body_started = trio.current_time()
            return self._body_started + self.body_timeout + 5.0
        self._body_started = None
        return math.inf

    async def _read_data(self) -> None:
        while True:
            deadline = self._read_deadline()
            with trio.move_on_at(deadline) as late:
                try:
                    with trio.fail_after(self.config.read_timeout or math.inf):
                        data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                    break
            if late.cancelled_caught:
                await self._request_too_slow()
                return
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())
        # The client is gone: do not keep the connection (and its place in the
        # budget) until the keep-alive timer fires.
        await self.idle_task.stop()

    async def _request_too_slow(self) -> None:
        protocol = self.protocol.protocol
        connection = protocol.h11_connection if isinstance(protocol, JsonErrorH11Protocol) else None
        if isinstance(protocol, JsonErrorH11Protocol) and connection is not None and connection.our_state is h11.IDLE and connection.their_state is h11.IDLE:
            await protocol._send_error_response(408)
        await self.idle_task.stop()
        await self.protocol_send(Closed())


class HttpServer:
    """Serves the quart-trio app on a bound, listening TCP socket.

    Args:
        app: the ASGI app.
        sock: a bound stream socket (listen() is called here).
        hypercorn_config: Hypercorn settings (keep-alive, WebSocket message cap…).
        budget: the connection budget.
        header_timeout, body_timeout: see ``ContainedTCPServer``.
        allow_http2: keep Hypercorn's HTTP/2 (``Config.http2``).
        backlog: the listen backlog.
        contained: where connection failures are counted, by exception type.
        ssl_context: serve TLS (HTTPS, WSS) with it (``signaling/tls.py``); None: plain HTTP.
    """

    def __init__(
        self,
        app: Framework,
        sock: socket.socket,
        hypercorn_config: HypercornConfig,
        budget: ConnectionBudget,
        *,
        header_timeout: float,
        body_timeout: float,
        allow_http2: bool = False,
        backlog: int = 1024,
        contained: Counter[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = wrap_app(app, hypercorn_config.wsgi_max_body_size, None)
        self.ssl_context = ssl_context
        self.sock = sock
        self.config = hypercorn_config
        self.budget = budget
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.allow_http2 = allow_http2
        self.backlog = backlog
        # Shared across restarts by the caller, so the exported counter only grows.
        self.contained: Counter[str] = Counter() if contained is None else contained
        self.accept_errors: Counter[str] = Counter()
        self._logged_types: set[str] = set()
        self._listener: trio.SocketListener | None = None
        self._context = WorkerContext(None)
        self._accepting = trio.Event()
        self._stopped = trio.Event()

    @property
    def open_connections(self) -> int:
        return self.budget.total

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the app's lifespan, then accept until cancelled or ``stop_accepting``."""
        lifespan_state: dict[str, Any] = {}
        lifespan = Lifespan(self.app, self.config, lifespan_state)
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            self.sock.listen(self.backlog)
            self._listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
            try:
                async with trio.open_nursery() as connections:
                    task_status.started()
                    await self._accept_loop(connections, lifespan_state)
                    # Stopped accepting: existing connections go on until cancelled.
                    await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._context.terminated.set()
                    await trio.aclose_forcefully(self._listener)
            lifespan_nursery.cancel_scope.cancel()

    async def stop_accepting(self) -> None:
        """Close the listening socket and tell idle keep-alive connections to close."""
        self._stopped.set()
        await self._context.terminated.set()
        if self._listener is not None:
            await trio.aclose_forcefully(self._listener)

    async def _accept_loop(self, nursery: trio.Nursery, lifespan_state: dict[str, Any]) -> None:
        assert self._listener is not None
        listener = self._listener
        while not self._stopped.is_set():
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                self.accept_errors[name] += 1
                if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                    # Out of descriptors despite the ceiling (other files): wait
                    # for connections to finish instead of spinning.
                    await trio.sleep(_ACCEPT_RETRY_DELAY)
                    continue
                raise
            nursery.start_soon(self._serve_connection, stream, lifespan_state)

    async def _serve_connection(self, stream: trio.SocketStream, lifespan_state: dict[str, Any]) -> None:
        try:
            ip = _peer_ip(stream)
            refusal = self.budget.admit(ip, trio.current_time())
            if refusal is not None:
                if self.ssl_context is None:
                    await _refuse(stream, refusal)
                # Over TLS a plain-text 503 is unreadable, and a handshake is the
                # CPU a refusal exists to save: the connection is just closed.
                return
            served: trio.abc.Stream = stream
            if self.ssl_context is not None:
                # ContainedTCPServer.run does the handshake, under the config's timeout.
                served = trio.SSLStream(stream, self.ssl_context, server_side=True, https_compatible=True)
            try:
                server = ContainedTCPServer(
                    self.app, self.config, self._context, ConnectionState(lifespan_state.copy()), served,
                    header_timeout=self.header_timeout, body_timeout=self.body_timeout, allow_http2=self.allow_http2,
                )
                await server.run()
            finally:
                self.budget.release(ip)
        except Exception as exc:  # containment: whatever one connection raises stays with it
            name = type(exc).__name__
            self.contained[name] += 1
            if name not in self._logged_types:
                self._logged_types.add(name)
                log.error("a connection failed and was closed (%s); further %s are counted, not logged", name, name, exc_info=exc)
            else:
                log.debug("a connection failed and was closed: %s", name)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)


def _peer_ip(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "unknown"
    return str(address[0]) if isinstance(address, tuple) else "unix"


async def _refuse(stream: trio.abc.SendStream, refusal: Refusal) -> None:
    """Tell a client over budget why, in one write, and close (no request is read)."""
    response = raw_json_response(503, "Service Unavailable", refusal.message, code=refusal.code, headers=(("Retry-After", "1"),))
    with trio.move_on_after(_REFUSE_SEND_TIMEOUT):
        try:
            await stream.send_all(response)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client is already gone: nothing to tell


def hypercorn_config(
    *,
    keep_alive_timeout: float,
    ws_max_message_bytes: int,
    allow_http2: bool,
) -> HypercornConfig:
    """The Hypercorn settings our server runs with."""
    config = HypercornConfig()
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = None
    config.keep_alive_timeout = keep_alive_timeout
    config.websocket_max_message_size = ws_max_message_bytes
    config.alpn_protocols = ["h2", "http/1.1"] if allow_http2 else ["http/1.1"]
    # TLS only: a client that opens a connection and never finishes the handshake.
    config.ssl_handshake_timeout = TLS_HANDSHAKE_TIMEOUT
    # With HTTP/2 on, few streams per connection (rapid-reset floods cost less).
    config.h2_max_concurrent_streams = 16
    return config


__all__ = [
    "ConnectionBudget",
    "ContainedTCPServer",
    "HttpServer",
    "Refusal",
    "connection_ceiling",
    "hypercorn_config",
    "json_error_body",
    "raise_open_file_limit",
    "raw_json_response",
]
