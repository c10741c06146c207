"""BotCall as a benchmark subject: its real server in a subprocess, bots and browsers through it.

The server is ``botcall.server.run_server`` (what ``botcall serve`` runs), in
its own process so its CPU can be pinned and measured, with a bench
configuration (:func:`bench_config`) that differs from the defaults only in
limits a load test would hit: thousands of rooms for one controller, generous
rate limits, rooms with up to ``max_humans`` browsers, and no expiry of idle
sessions during a run (bots here never open their control WebSocket, and
consent-freshness checks would otherwise end them after 30 s).

Set-up goes through the public interfaces, as a bot or a browser would:

* a bot: ``POST /v1/join`` with a dev-issuer attestation, then a STUN
  Binding request from its UDP socket to latch its address (RFC 8489, the
  ICE credentials from the join answer);
* a browser-style subscriber: the human signaling WebSocket (hello with the
  invite, join, offer), then from its UDP socket a Chrome-shaped ICE check
  with USE-CANDIDATE and a DTLS 1.2 handshake in the client role with our own
  :class:`~botcall.rtp.dtls.DtlsEndpoint`, whose keys give the SRTP context.

Run as ``python -m bench.peers.botcall_relay --data-dir DIR --ready-file F``
to serve (that is what :class:`BotCallRelay` starts).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from botcall.config import Config, RateLimit
from botcall.errors import BadPacket
from botcall.rtp.dtls import DtlsCertificate, DtlsEndpoint, DtlsState
from botcall.rtp.srtp import SrtpContext
from botcall.rtp.stun import binding_request, parse_binding_response_untrusted
from bench.peers.process import HarnessError, PinnedProcess

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEV_ISSUER = "botcall-dev"
CONTROLLER = "bench-controller"
TOKEN_TTL = 3600.0
# A whole benchmark run fits well inside this; idle sessions must survive it.
BENCH_IDLE_S = 24 * 3600.0
GENEROUS = RateLimit(rate=1_000_000.0, burst=1_000_000)
HTTP_TIMEOUT = 10.0
LATCH_TIMEOUT = 0.5
LATCH_ATTEMPTS = 6
DTLS_TIMEOUT = 10.0
SOCKET_BUFFER = 4 * 1024 * 1024
PAYLOAD_TYPE_OPUS = 111
MAX_BOTS_PER_ROOM = 4

# A Chrome-shaped audio-only offer (the attributes Chromium 156 sends for a
# microphone; see docs/protocol.md). {ufrag}, {pwd}, {fingerprint}, {ssrc}.
OFFER_TEMPLATE = (
    "v=0\r\n"
    "o=- {session} 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
    "a=msid-semantic: WMS bench\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:{ufrag}\r\n"
    "a=ice-pwd:{pwd}\r\n"
    "a=ice-options:trickle\r\n"
    "a=fingerprint:{fingerprint}\r\n"
    "a=setup:actpass\r\n"
    "a=mid:0\r\n"
    "a=sendrecv\r\n"
    "a=msid:bench track\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "a=ssrc:{ssrc} cname:bench\r\n"
)


def bench_config(data_dir: Path, *, max_humans: int = 1000, http_port: int = 0, media_port: int = 0) -> Config:
    """The server configuration of every BotCall benchmark.

    Args:
        data_dir: where the dev issuer's key is created.
        max_humans: the most browsers one room may hold.
        http_port, media_port: 0 for any free port.

    Returns:
        The defaults, with the load-test limits lifted (see the module docstring).
    """
    return replace(
        Config(),
        http_host=HOST,
        http_port=http_port,
        media_host=HOST,
        media_port=media_port,
        data_dir=data_dir,
        dev_issuer=True,
        room_max_humans=max_humans,
        max_live_rooms_per_controller=100_000,
        max_rooms_total=100_000,
        max_sessions_total=200_000,
        media_consent_timeout_s=BENCH_IDLE_S,
        ws_connect_grace_s=BENCH_IDLE_S,
        room_empty_timeout_s=BENCH_IDLE_S,
        max_token_lifetime_s=TOKEN_TTL,
        create_limit_per_agent=GENEROUS,
        create_limit_per_ip=GENEROUS,
        join_limit_per_agent=GENEROUS,
        join_limit_per_ip=GENEROUS,
        query_limit_per_ip=GENEROUS,
    )


# --- the server process ----------------------------------------------------------------


async def _serve(config: Config, ready_file: Path) -> None:
    import trio

    from botcall.server import run_server

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(run_server, config)
            ready = {"http_url": info.http_url, "media_port": info.state.media_port}
            partial = ready_file.with_suffix(".tmp")
            partial.write_text(json.dumps(ready))
            partial.replace(ready_file)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    """Serve BotCall with :func:`bench_config` until SIGTERM."""
    parser = argparse.ArgumentParser(description="BotCall with the benchmark configuration")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True, help="written with the bound ports once serving")
    parser.add_argument("--max-humans", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="botcall: %(message)s", stream=sys.stderr)
    import trio

    trio.run(_serve, bench_config(args.data_dir, max_humans=args.max_humans), args.ready_file)
    return 0


# --- the bench side ----------------------------------------------------------------------


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.bind((HOST, 0))
    return sock


@dataclass(frozen=True, slots=True)
class BotLeg:
    """One UDP bot, joined and latched.

    Attributes:
        sock: its UDP socket (non-blocking once latched).
        session_id: the session.
        ssrc: the SSRC the server assigned (the only one the relay accepts from it).
        media: the relay's media address.
    """

    sock: socket.socket
    session_id: str
    ssrc: int
    media: tuple[str, int]


@dataclass(frozen=True, slots=True)
class BrowserLeg:
    """One browser-style subscriber, connected over ICE-lite and DTLS-SRTP.

    Attributes:
        sock: its UDP socket (non-blocking).
        srtp: the SRTP context from its DTLS handshake.
        out_ssrc: the SSRC the relay announced for the stream it sends us.
        participant_id: its participant id.
    """

    sock: socket.socket
    srtp: SrtpContext
    out_ssrc: int
    participant_id: str


class BotCallRelay:
    """BotCall's server in a subprocess, plus bots and browser legs through it.

    Use as a context manager::

        with BotCallRelay(core=0) as relay:
            flows = relay.create_flows(100, packet_size=172)

    Args:
        core: CPU to pin the server to (None: unpinned).
        workdir: data directory, ready file and log (default: a new temp dir).
        max_humans: the most browsers one room may hold.
    """

    name = "botcall"

    def __init__(self, *, core: int | None = 0, workdir: Path | None = None, max_humans: int = 1000) -> None:
        self._stack = ExitStack()
        self._workdir_arg = workdir
        self.core = core
        self.max_humans = max_humans
        self.workdir: Path | None = None
        self.process: PinnedProcess | None = None
        self.http_url = ""
        self.media: tuple[str, int] = (HOST, 0)
        self._issuer = None
        self._sockets: list[socket.socket] = []
        self._agents = 0
        self._certificate: DtlsCertificate | None = None

    def __enter__(self) -> "BotCallRelay":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        """Start the server; returns once ``/healthz`` answers.

        Raises:
            HarnessError: the server exits or never becomes ready.
        """
        from botcall.auth.keys import ensure_dev_issuer

        if self._workdir_arg is None:
            self.workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-botcall-")))
        else:
            self.workdir = self._workdir_arg
        data_dir = self.workdir / "data"
        ready_file = self.workdir / "ready.json"
        ready_file.unlink(missing_ok=True)  # a reused workdir must not announce the last run's ports
        argv = [
            sys.executable,
            "-m",
            "bench.peers.botcall_relay",
            "--data-dir",
            str(data_dir),
            "--ready-file",
            str(ready_file),
            "--max-humans",
            str(self.max_humans),
        ]
        self.process = self._stack.enter_context(PinnedProcess("botcall", argv, core=self.core, log_dir=self.workdir, cwd=REPO_ROOT))
        self.process.wait_ready(ready_file.exists, timeout=60.0)
        ready = json.loads(ready_file.read_text())
        self.http_url = ready["http_url"]
        self.media = (HOST, int(ready["media_port"]))
        self._issuer, _ = ensure_dev_issuer(data_dir, DEV_ISSUER)
        self.process.wait_ready(lambda: self._get("/healthz") is not None)

    def close(self) -> None:
        """Close every socket and stop the server (idempotent)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._stack.close()

    def _own(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

    def keep_alive(self, *, force: bool = False) -> int:
        """Nothing to refresh: the bench configuration keeps latched addresses for a day.

        Returns:
            0, always (the harnesses share this interface).
        """
        return 0

    # --- HTTP -----------------------------------------------------------------------

    def token(self, agent: str, scopes: tuple[str, ...] = ("call:create", "call:voice")) -> str:
        """A fresh dev-issuer attestation for ``agent`` (controller ``bench-controller``)."""
        return self._issuer.mint(
            agent=agent, controller=CONTROLLER, audience="botcall", scopes=scopes, ttl=TOKEN_TTL, now=time.time()
        )

    def _get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=HTTP_TIMEOUT) as response:
                return json.loads(response.read() or b"{}")
        except (OSError, ValueError):
            return None

    def _post(self, path: str, body: dict, *, bearer: str | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        request = urllib.request.Request(self.http_url + path, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise HarnessError(f"POST {path}: {exc.code} {exc.read()[:300]!r}") from exc
        except OSError as exc:
            raise HarnessError(f"POST {path}: {exc}") from exc

    def _next_agent(self) -> str:
        self._agents += 1
        return f"bench-bot#{self._agents}"

    def create_room(self, *, max_humans: int = 0) -> tuple[str, str]:
        """Create a room owned by the bench controller.

        Returns:
            ``(room_id, invite secret)``.
        """
        created = self._post(
            "/v1/rooms/create", {"max_human_participants": max_humans}, bearer=self.token(self._next_agent(), ("call:create",))
        )
        fragment = urlsplit(created["invite_url"]).fragment
        return created["room_id"], fragment.removeprefix("invite=")

    def join_bot(self, room_id: str) -> BotLeg:
        """Join a UDP bot to ``room_id`` and latch its socket with STUN.

        Raises:
            HarnessError: the join was refused or the relay never answered STUN.
        """
        agent = self._next_agent()
        answer = self._post(
            "/v1/join",
            {
                "agent_id": agent,
                "room_id": room_id,
                "attestation": {"token": self.token(agent, ("call:voice",))},
                "capabilities": {"audio_in": True, "audio_out": True, "video": False, "text_chat": False},
                "media": {"transport": "udp"},
            },
        )
        media = answer["media"]
        sock = self._own(_udp_socket())
        bot = BotLeg(sock=sock, session_id=answer["session_id"], ssrc=int(media["ssrc"]), media=(media["host"], int(media["port"])))
        self._latch(sock, bot.media, f"{media['ice_ufrag']}:{secrets.token_hex(4)}", media["ice_pwd"])
        return bot

    def _latch(self, sock: socket.socket, media: tuple[str, int], username: str, pwd: str, **ice) -> None:
        """Send Binding requests (retransmitting) until one is answered and authenticated."""
        sock.setblocking(True)
        sock.settimeout(LATCH_TIMEOUT)
        try:
            for _ in range(LATCH_ATTEMPTS):
                request = binding_request(username, pwd, **ice)
                sock.sendto(request, media)
                try:
                    while True:
                        data, _ = sock.recvfrom(2048)
                        try:
                            parse_binding_response_untrusted(data, pwd, request[8:20])
                            return
                        except BadPacket:
                            continue  # not our answer (a stray or late datagram): keep reading
                except TimeoutError:
                    continue  # retransmit (RFC 8489 §6.2.1)
            raise HarnessError(f"no STUN answer from BotCall's media port {media}")
        finally:
            sock.setblocking(False)

    def create_flows(self, count: int, *, packet_size: int = 172) -> list:
        """``count`` bot-to-bot flows, one room of two UDP bots each.

        Args:
            count: number of flows.
            packet_size: unused (plain RTP needs no framing); kept so every
                harness is called the same way.

        Returns:
            ``bench.loadgen.Flow`` objects: bot A's socket sends with its
            assigned SSRC, bot B's socket receives what the relay forwards.
        """
        from bench.loadgen import Flow

        flows = []
        for _ in range(count):
            room_id, _ = self.create_room()
            speaker, listener = self.join_bot(room_id), self.join_bot(room_id)
            flows.append(Flow(send_sock=speaker.sock, dest=speaker.media, recv_sock=listener.sock, ssrc=speaker.ssrc))
        return flows

    # --- browser-style legs -----------------------------------------------------------

    def join_browser(self, room_id: str, invite: str, name: str) -> BrowserLeg:
        """A browser-style subscriber: signaling, ICE check, DTLS client handshake.

        Raises:
            HarnessError: signaling refused, no ICE answer, or DTLS failed.
        """
        import trio

        if self._certificate is None:
            self._certificate = DtlsCertificate.generate()
        ufrag, pwd = secrets.token_hex(4), secrets.token_hex(12)
        offer = OFFER_TEMPLATE.format(
            session=secrets.randbelow(1 << 62),
            ufrag=ufrag,
            pwd=pwd,
            fingerprint=self._certificate.fingerprint,
            ssrc=secrets.randbits(32),
        )
        joined, answer = trio.run(self._signal, room_id, invite, name, offer)
        remote_ufrag = _sdp_value(answer, "ice-ufrag")
        remote_pwd = _sdp_value(answer, "ice-pwd")
        fingerprint = _sdp_value(answer, "fingerprint")
        ssrc_line = re.search(r"^a=ssrc:(\d+) ", answer, re.M)
        if ssrc_line is None:
            raise HarnessError("the answer announces no SSRC")
        sock = self._own(_udp_socket())
        # Chrome's check: USERNAME remote:local, ICE-CONTROLLING, PRIORITY, USE-CANDIDATE.
        self._latch(sock, self.media, f"{remote_ufrag}:{ufrag}", remote_pwd, use_candidate=True, controlling=True, priority=2130706431)
        srtp = _dtls_client(sock, self.media, self._certificate, fingerprint)
        return BrowserLeg(sock=sock, srtp=srtp, out_ssrc=int(ssrc_line.group(1)), participant_id=joined["participant_id"])

    async def _signal(self, room_id: str, invite: str, name: str, offer: str) -> tuple[dict, str]:
        import trio
        import trio_websocket

        url = self.http_url.replace("http://", "ws://", 1) + f"/v1/signal/{room_id}"
        with trio.fail_after(HTTP_TIMEOUT):
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.send_message(json.dumps({"type": "hello", "invite": invite}))
                await _expect(ws, "lobby")
                await ws.send_message(json.dumps({"type": "join", "display_name": name}))
                # The server sends the joined event with the welcome event's type.
                joined = await _expect(ws, "joined", "welcome")
                await ws.send_message(json.dumps({"type": "offer", "sdp": offer}))
                answer = await _expect(ws, "answer")
        return joined, answer["sdp"]

    def create_subscribers(self, count: int) -> tuple[BotLeg, list[BrowserLeg]]:
        """One room: a UDP bot speaker and ``count`` browser-style subscribers.

        Args:
            count: subscribers (at most ``max_humans``).

        Returns:
            The speaker and the subscribers, every leg connected.
        """
        room_id, invite = self.create_room(max_humans=count)
        speaker = self.join_bot(room_id)
        legs = [self.join_browser(room_id, invite, f"listener {index}") for index in range(count)]
        return speaker, legs


async def _expect(ws, *kinds: str) -> dict:
    """The next signaling message of one of ``kinds`` (others, like presence events, are skipped)."""
    while True:
        message = json.loads(await ws.get_message())
        if message.get("type") in kinds:
            return message
        if message.get("type") == "error":
            raise HarnessError(f"signaling error while waiting for {kinds}: {message}")


def _sdp_value(sdp: str, name: str) -> str:
    match = re.search(rf"^a={name}:(.+?)\r?$", sdp, re.M)
    if match is None:
        raise HarnessError(f"the answer has no a={name}")
    return match.group(1)


def _dtls_client(sock: socket.socket, media: tuple[str, int], certificate: DtlsCertificate, fingerprint: str) -> SrtpContext:
    """Run a DTLS client handshake over ``sock`` (blocking, bounded) and return the SRTP context."""
    endpoint = DtlsEndpoint(role="client", certificate=certificate, remote_fingerprint=fingerprint, handshake_timeout=DTLS_TIMEOUT)
    start = time.monotonic()
    for datagram in endpoint.start(0.0):
        sock.sendto(datagram, media)
    sock.setblocking(True)
    try:
        while endpoint.state is DtlsState.HANDSHAKING:
            now = time.monotonic() - start
            deadline = endpoint.next_deadline()
            sock.settimeout(max(0.001, (deadline if deadline is not None else now + 0.1) - now))
            try:
                data, _ = sock.recvfrom(4096)
                out = endpoint.receive_untrusted(data, time.monotonic() - start) if 20 <= data[0] <= 63 else []
            except TimeoutError:
                out = endpoint.handle_timeout(time.monotonic() - start)
            except BadPacket as exc:
                raise HarnessError(f"DTLS with BotCall failed: {exc}") from exc
            for datagram in out:
                sock.sendto(datagram, media)
    finally:
        sock.setblocking(False)
    if endpoint.state is not DtlsState.CONNECTED:
        raise HarnessError(f"DTLS with BotCall ended {endpoint.state.name}: {endpoint.failure_reason}")
    return SrtpContext.from_keys(endpoint.srtp_keys)


if __name__ == "__main__":
    sys.exit(main())
