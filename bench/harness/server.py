"""What the relay benchmarks share: the server process, bots, browsers.

The top layer of the bench harness (machine <- process <- loadgen <- server).

* :func:`bench_config` and ``python -m bench.harness.server serve``: the real server
  (``botcall.server.run_server``, the code ``botcall serve`` runs) with a
  configuration fit for a load test. :class:`RelayProcess` starts it as a
  subprocess pinned to one core (``taskset -c 0``) at nice -20 in a
  scheduling group of its own (other work on a shared machine must not
  preempt it; see :func:`~bench.harness.machine.raise_priority`) and reads its CPU time and
  resident memory from /proc. The comparison with other relays
  (``bench/peers/botcall_relay.py``) starts the same server, at the
  comparison's own niceness like its peers.
* :class:`Api`: the HTTP API over one keep-alive connection, with attestations
  minted by the dev issuer of the server's data directory.
* :class:`Bot`: a joined UDP bot with its own socket, latched as the SDK does
  (:func:`latch`): a signed STUN Binding request, an answer to the relay's
  check of the address, the request again for the success. Sockets come connected to the relay
  (the generator then sends with ``send``); a caller may supply its own.
* :func:`join_browsers`: the simulated browser of the tests
  (:class:`tests.kit.browser.Browser`: our DTLS endpoint in the client role,
  SRTP, ICE checks with USE-CANDIDATE) on a UDP socket of its own, joined
  through the human signaling WebSocket.

What the bench configuration changes, and why (defaults stay untouched):

* room, rate and controller limits are raised so one controller can open
  thousands of rooms and join thousands of bots from 127.0.0.1 in seconds;
* ``ws_connect_grace_s`` is a day: bots in these benchmarks never open their
  control WebSocket (it carries no media for UDP bots, and a thousand idle
  sockets would only measure the WebSocket library), and simulated browsers
  close their signaling socket once the answer is in. ``time_to_talk.py``
  does open the WebSocket, as a real bot does.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import select
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.harness.machine import BENCH_NICE, RELAY_CORE, open_socket
from bench.harness.process import PinnedProcess
from botcall.auth.keys import ensure_dev_issuer
from botcall.config import Config, RateLimit
from botcall.errors import BadPacket
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.wire.stun import answer_check_untrusted, binding_request, parse_binding_response_untrusted
from tests.kit.browser import Browser, browser_offer

REPO = Path(__file__).resolve().parents[2]
AUDIENCE = "botcall"
CONTROLLER = "bench"
SCOPES = ("call:create", "call:voice")
TOKEN_TTL = 3000.0
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SNAPSHOT_TIMEOUT = 60.0
TRACEMALLOC_FRAMES = 12
HTTP_TIMEOUT = 30.0
LATCH_TIMEOUT = 20.0
LATCH_ATTEMPTS = 5
HANDSHAKE_TIMEOUT = 10.0
SIGNALING_TIMEOUT = 10.0
SIGNALING_CONCURRENCY = 16
_UNLIMITED = RateLimit(rate=1e6, burst=1_000_000)
# A bot's own ICE ufrag: its requests carry "<session ufrag>:bench", the relay's checks "bench:<session ufrag>".
BOT_UFRAG = "bench"


def bench_config(data_dir: Path, **overrides: Any) -> Config:
    """The server configuration of the benchmarks (see the module docstring).

    Args:
        data_dir: where the dev issuer key lives.
        **overrides: further ``Config`` fields.

    Returns:
        The configuration; HTTP and media on 127.0.0.1, any free ports.
    """
    values: dict[str, Any] = dict(
        http_host="127.0.0.1",
        http_port=0,
        media_host="127.0.0.1",
        media_port=0,
        data_dir=data_dir,
        ws_connect_grace_s=86_400.0,
        max_live_rooms_per_controller=100_000,
        max_rooms_total=100_000,
        max_sessions_total=100_000,
        create_limit_per_agent=_UNLIMITED,
        create_limit_per_ip=_UNLIMITED,
        join_limit_per_agent=_UNLIMITED,
        join_limit_per_ip=_UNLIMITED,
        query_limit_per_ip=_UNLIMITED,
        rate_limit_table_max=100_000,
        replay_cache_max=1_000_000,
        # Every simulated participant comes from 127.0.0.1: the per-address
        # budgets of the hardening are for strangers, not for the load generator.
        connection_rate_per_ip=_UNLIMITED,
        max_connections_per_ip=100_000,
        max_websockets_per_ip=100_000,
        max_lobby_sockets_per_room=100_000,
    )
    values.update(overrides)
    return Config(**values)


# --- the server process ----------------------------------------------------------------


async def _serve(config: Config, snapshot_dir: Path | None = None) -> None:
    import trio

    from botcall.server import run_server

    snapshots = 0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(run_server, config)
            state = info.state
            ready = {
                "pid": os.getpid(),
                "http_url": info.http_url,
                "media_host": state.media_host,
                "media_port": state.media_port,
            }
            print(json.dumps(ready), flush=True)
            async for signum in signals:
                if signum == signal.SIGUSR1 and snapshot_dir is not None:
                    _write_snapshot(snapshot_dir / f"snapshot-{snapshots}.pickle")
                    snapshots += 1
                    continue
                nursery.cancel_scope.cancel()
                break


def _write_snapshot(path: Path) -> None:
    """Dump a tracemalloc snapshot (written to a temporary name, then renamed)."""
    import tracemalloc

    partial = path.with_suffix(".partial")
    tracemalloc.take_snapshot().dump(str(partial))
    partial.rename(path)


def serve_main(argv: list[str]) -> None:
    """``python -m bench.harness.server serve --data-dir D [--consent-timeout S] [--max-humans N] [--tracemalloc]``: run the bench server.

    Prints one JSON line (pid, http_url, media host and port) once it accepts
    connections, then serves until SIGTERM. With ``--tracemalloc``, each
    SIGUSR1 writes ``snapshot-<n>.pickle`` into the data directory.
    """
    import logging

    import trio

    parser = argparse.ArgumentParser(prog="python -m bench.harness.server serve")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--consent-timeout", type=float, default=30.0)
    parser.add_argument("--max-humans", type=int, default=None, help="browsers one room may hold (default: the server's)")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--tracemalloc", action="store_true", help="trace allocations; SIGUSR1 writes a snapshot to the data directory")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a further Config field (repeatable), e.g. media_fast_path=true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="botcall: %(message)s", stream=sys.stderr)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(TRACEMALLOC_FRAMES)
    overrides: dict[str, Any] = {"media_consent_timeout_s": args.consent_timeout}
    if args.max_humans is not None:
        overrides["room_max_humans"] = args.max_humans
    for item in args.set:
        field_name, _, value = item.partition("=")
        overrides[field_name] = json.loads(value)
    config = bench_config(args.data_dir, **overrides)
    trio.run(_serve, config, args.data_dir if args.tracemalloc else None)


class RelayProcess(PinnedProcess):
    """The bench server in a subprocess, pinned to ``core``; started when constructed.

    Use as a context manager; leaving it stops the server (SIGTERM to its
    process group, then SIGKILL after a timeout) and removes a temporary data
    directory. Its stderr goes to ``server.log`` in the data directory.

    Args:
        core: the CPU core for the server (``taskset -c``); None leaves it free.
        data_dir: the server's data directory; a temporary one when None.
        consent_timeout: the media consent timeout (seconds).
        max_humans: the most browsers one room may hold (None: the server's default).
        trace_allocations: run under tracemalloc (see :meth:`snapshot`).
        nice: the server's niceness, its session's autogroup included
            (:data:`BENCH_NICE` by default; None inherits this process's).
        config: further ``Config`` fields for the server (``--set``).

    Raises:
        HarnessError: the server did not start (the message ends with its log).
    """

    def __init__(
        self,
        *,
        core: int | None = RELAY_CORE,
        data_dir: Path | None = None,
        consent_timeout: float = 30.0,
        max_humans: int | None = None,
        trace_allocations: bool = False,
        nice: int | None = BENCH_NICE,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="botcall-bench-") if data_dir is None else None
        self.data_dir = Path(self._tmp.name) if self._tmp is not None else data_dir
        command = [sys.executable, "-m", "bench.harness.server", "serve", "--data-dir", str(self.data_dir)]
        command += ["--consent-timeout", str(consent_timeout)]
        if max_humans is not None:
            command += ["--max-humans", str(max_humans)]
        if trace_allocations:
            command.append("--tracemalloc")
        for field_name, value in (config or {}).items():
            command += ["--set", f"{field_name}={json.dumps(value)}"]
        super().__init__("server", command, core=core, log_dir=self.data_dir, cwd=REPO, pipes=True, nice=nice, stop_timeout=STOP_TIMEOUT)
        self._snapshots = 0
        try:
            self.start()
            ready = json.loads(self.read_line(STARTUP_TIMEOUT))
        except BaseException:
            self.close()
            raise
        self.http_url: str = ready["http_url"]
        self.media_addr: tuple[str, int] = (ready["media_host"], ready["media_port"])

    def snapshot(self, timeout: float = SNAPSHOT_TIMEOUT):
        """A tracemalloc snapshot of the server (started with ``trace_allocations=True``).

        Raises:
            RuntimeError: no snapshot within ``timeout`` seconds.
        """
        import tracemalloc

        path = self.data_dir / f"snapshot-{self._snapshots}.pickle"
        self.popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline or not self.alive():
                raise RuntimeError(f"no allocation snapshot from the server; see {self.log_path}")
            time.sleep(0.05)
        self._snapshots += 1
        return tracemalloc.Snapshot.load(str(path))

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server so far."""
        return self.stat().cpu_s

    def rss_bytes(self) -> int:
        """Resident memory (VmRSS) of the server process, in bytes."""
        return self.stat().rss_bytes

    def close(self) -> None:
        """Stop the server and remove its temporary data directory (idempotent)."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "RelayProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# --- the HTTP API ----------------------------------------------------------------------


class Api:
    """The HTTP API over one keep-alive connection; tokens from the dev issuer.

    Args:
        http_url: the server's base URL.
        data_dir: the server's data directory (the dev issuer's key).
    """

    def __init__(self, http_url: str, data_dir: Path) -> None:
        parts = urlsplit(http_url)
        self.host, self.port = parts.hostname, parts.port
        self.issuer = ensure_dev_issuer(data_dir)[0]
        self._connection: http.client.HTTPConnection | None = None
        self._serial = 0

    def token(self, agent: str) -> str:
        return self.issuer.mint(agent=agent, controller=CONTROLLER, audience=AUDIENCE, scopes=SCOPES, ttl=TOKEN_TTL, now=time.time())

    def request(self, method: str, path: str, body: dict | None, token: str) -> tuple[int, dict]:
        """One request; reconnects once if the kept-alive connection was closed."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for attempt in range(2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT)
            try:
                self._connection.request(method, path, body=data, headers=headers)
                response = self._connection.getresponse()
                payload = response.read()
                return response.status, json.loads(payload) if payload else {}
            except (http.client.HTTPException, ConnectionError):
                self._connection.close()
                self._connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def create_room(self, agent: str, max_humans: int = 1) -> tuple[str, str]:
        """Create a room; returns ``(room_id, invite_secret)``."""
        status, body = self.request("POST", "/v1/rooms/create", {"max_human_participants": max_humans}, self.token(agent))
        if status != 201:
            raise RuntimeError(f"create room: {status} {body}")
        return body["room_id"], body["invite_url"].split("#invite=", 1)[1]

    def join(self, agent: str, room_id: str) -> dict:
        """``POST /v1/join`` for a UDP bot; returns the response body."""
        token = self.token(agent)
        body = {"agent_id": agent, "room_id": room_id, "attestation": {"token": token}}
        status, reply = self.request("POST", "/v1/join", body, token)
        if status != 200:
            raise RuntimeError(f"join: {status} {reply}")
        return reply

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# --- bots ------------------------------------------------------------------------------


@dataclass
class Bot:
    """A joined UDP bot: its socket and its join response."""

    agent: str
    joined: dict
    sock: socket.socket

    @property
    def media(self) -> dict:
        return self.joined["media"]

    @property
    def ssrc(self) -> int:
        return self.media["ssrc"]

    @property
    def relay_addr(self) -> tuple[str, int]:
        """The relay's media address, as the join response gives it."""
        return self.media["host"], int(self.media["port"])

    # After answering the relay's check, send the request again: the relay
    # answers a bot's request from an unverified address with the check only.
    retransmit_after_check = True

    def binding(self) -> tuple[bytes, bytes]:
        """A fresh signed Binding request and its transaction id."""
        transaction_id = secrets.token_bytes(12)
        request = binding_request(f"{self.media['ice_ufrag']}:{BOT_UFRAG}", self.media["ice_pwd"], transaction_id=transaction_id)
        return request, transaction_id

    def answer_check(self, data: bytes) -> bytes | None:
        """The Binding success answering the relay's check, or None if ``data`` is not one for us."""
        try:
            return answer_check_untrusted(data, self.relay_addr, username=f"{BOT_UFRAG}:{self.media['ice_ufrag']}", password=self.media["ice_pwd"])
        except BadPacket:
            return None


def connected_socket(relay_addr: tuple[str, int]) -> socket.socket:
    """A load-generator socket (:func:`~bench.harness.machine.open_socket`) connected to the relay."""
    sock = open_socket()
    sock.connect(relay_addr)
    return sock


SocketFactory = Callable[[tuple[str, int]], socket.socket]


def join_bot(api: Api, agent: str, room_id: str, relay_addr: tuple[str, int], *, new_socket: SocketFactory = connected_socket) -> Bot:
    """Join a UDP bot and open its socket.

    Args:
        relay_addr: the relay's media address.
        new_socket: makes the bot's non-blocking socket, given ``relay_addr``
            (by default one connected to it).
    """
    joined = api.join(agent, room_id)
    return Bot(agent=agent, joined=joined, sock=new_socket(relay_addr))


def latch(endpoints: list, password_of, *, timeout: float = LATCH_TIMEOUT, attempts: int = LATCH_ATTEMPTS) -> None:
    """Prove every endpoint's address with a signed STUN Binding; retry the unanswered.

    The relay checks an address it has not verified with a Binding request of
    its own; the endpoint answers it (``answer_check``) and, if
    ``retransmit_after_check`` (a bot, which gets no success until then), sends
    its request again at once.

    Args:
        endpoints: objects with a non-blocking ``sock``, the ``relay_addr`` it
            sends to, ``binding()``, ``answer_check(data)`` and
            ``retransmit_after_check``.
        password_of: the relay's ICE password for an endpoint (checks the response).

    Raises:
        RuntimeError: some endpoint got no valid answer after ``attempts`` rounds.
    """
    pending = list(endpoints)
    for _ in range(attempts):
        waiting: dict[int, tuple[Any, bytes, bytes]] = {}
        for endpoint in pending:
            request, transaction_id = endpoint.binding()
            endpoint.sock.sendto(request, endpoint.relay_addr)
            waiting[endpoint.sock.fileno()] = (endpoint, request, transaction_id)
        poller = select.epoll()
        for fd in waiting:
            poller.register(fd, select.EPOLLIN)
        deadline = time.monotonic() + timeout / attempts
        answered = set()
        try:
            while len(answered) < len(waiting) and time.monotonic() < deadline:
                for fd, _ in poller.poll(max(0.0, deadline - time.monotonic())):
                    if fd in answered:
                        continue
                    endpoint, request, transaction_id = waiting[fd]
                    try:
                        data = endpoint.sock.recv(2048)
                    except BlockingIOError:
                        continue
                    if data[:2] == b"\x00\x01":  # a Binding request: the relay checks our address
                        try:
                            answer = endpoint.answer_check(data)
                        except BadPacket:
                            answer = None  # not a check of ours
                        if answer is not None:
                            endpoint.sock.sendto(answer, endpoint.relay_addr)
                            if endpoint.retransmit_after_check:
                                endpoint.sock.sendto(request, endpoint.relay_addr)
                        continue
                    try:
                        parse_binding_response_untrusted(data, password_of(endpoint), transaction_id)
                    except BadPacket:
                        continue  # not our answer (an RTP packet, a stale response)
                    answered.add(fd)
                    poller.unregister(fd)
        finally:
            poller.close()
        pending = [endpoint for endpoint in pending if endpoint.sock.fileno() not in answered]
        if not pending:
            return
    raise RuntimeError(f"{len(pending)} endpoints got no Binding success")


def latch_bots(bots: list[Bot]) -> None:
    """Latch (or refresh the consent of) every bot."""
    latch(bots, lambda bot: bot.media["ice_pwd"])


def bot_pairs(
    relay: RelayProcess, api: Api, count: int, *, first_index: int = 0, new_socket: SocketFactory = connected_socket
) -> list[tuple[Bot, Bot]]:
    """``count`` rooms with two latched UDP bots each (speaker, listener).

    Args:
        first_index: numbers the agents (``bench-a<i>``), for a second batch.
        new_socket: makes each bot's socket (see :func:`join_bot`).
    """
    pairs = []
    for index in range(first_index, first_index + count):
        room_id, _ = api.create_room(f"bench-a{index}", max_humans=0)
        speaker = join_bot(api, f"bench-a{index}", room_id, relay.media_addr, new_socket=new_socket)
        listener = join_bot(api, f"bench-b{index}", room_id, relay.media_addr, new_socket=new_socket)
        pairs.append((speaker, listener))
    latch_bots([bot for pair in pairs for bot in pair])
    return pairs


def drain(sockets) -> int:
    """Read and discard whatever is queued on ``sockets``; returns the count."""
    count = 0
    for sock in sockets:
        while True:
            try:
                sock.recv(4096)
            except BlockingIOError:
                break
            count += 1
    return count


# --- browsers --------------------------------------------------------------------------


async def _signal_one(base_ws: str, room_id: str, invite: str, offer: str) -> tuple[str, int]:
    import trio
    from trio_websocket import open_websocket_url

    from tests.kit.browser_udp import signal_browser

    with trio.fail_after(SIGNALING_TIMEOUT):
        async with open_websocket_url(f"{base_ws}/v1/signal/{room_id}") as ws:
            signaled = await signal_browser(ws, invite, offer, display_name="bench")
    return signaled.answer, signaled.session_ssrc


def join_browsers(
    relay: RelayProcess,
    rooms: list[tuple[str, str]],
    certificate: DtlsCertificate,
    *,
    new_socket: SocketFactory = connected_socket,
    receive_tracks: int = 1,
) -> list[Browser]:
    """Join one simulated browser per ``(room_id, invite)`` over the signaling WebSocket,
    then ICE-check and DTLS-handshake each with the relay.

    The signaling sockets close once the answer is in (the bench server keeps
    sessions for a day without one); the handshakes run one at a time, below
    the relay's cap on handshakes in progress. A room may appear more than
    once: that many browsers join it.

    Args:
        new_socket: makes each browser's socket (see :func:`join_bot`).
        receive_tracks: downstream tracks each browser offers (group calls:
            the audio section plus ``receive_tracks - 1`` recvonly ones, as the PWA).
    """
    import trio

    base_ws = relay.http_url.replace("http://", "ws://", 1)
    offer = browser_offer(certificate, receive_tracks)
    results: list[tuple[str, int] | None] = [None] * len(rooms)

    async def signal_all() -> None:
        limit = trio.CapacityLimiter(SIGNALING_CONCURRENCY)

        async def one(index: int, room_id: str, invite: str) -> None:
            async with limit:
                results[index] = await _signal_one(base_ws, room_id, invite, offer)

        async with trio.open_nursery() as nursery:
            for index, (room_id, invite) in enumerate(rooms):
                nursery.start_soon(one, index, room_id, invite)

    trio.run(signal_all)
    browsers = []
    for answer_and_ssrc in results:
        answer, session_ssrc = answer_and_ssrc
        browser = Browser(answer, certificate, relay_addr=relay.media_addr, tie_breaker=secrets.randbits(64))
        browser.sock = new_socket(relay.media_addr)
        browser.session_ssrc = session_ssrc
        browser.receive_tracks = receive_tracks
        browsers.append(browser)
    latch(browsers, lambda browser: browser.relay_pwd)
    for browser in browsers:
        browser.handshake_udp()
    return browsers


def refresh_browsers(browsers: list[Browser]) -> None:
    """Consent freshness (RFC 7675): one ICE check per browser before a run."""
    latch(browsers, lambda browser: browser.relay_pwd)


def bot_browser_calls(relay: RelayProcess, api: Api, count: int, *, first_index: int = 0) -> list[tuple[Bot, Browser]]:
    """``count`` rooms with one latched UDP bot and one connected simulated browser each.

    Args:
        first_index: numbers the agents (``bench-bot<i>``), for a second batch.
    """
    rooms, bots = [], []
    for index in range(first_index, first_index + count):
        agent = f"bench-bot{index}"
        room_id, invite = api.create_room(agent, max_humans=1)
        bots.append(join_bot(api, agent, room_id, relay.media_addr))
        rooms.append((room_id, invite))
    latch_bots(bots)
    browsers = join_browsers(relay, rooms, DtlsCertificate.generate())
    return list(zip(bots, browsers))


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: python -m bench.harness.server serve --data-dir D [...] (the machine: python -m bench.harness.machine)")
    serve_main(sys.argv[2:])
