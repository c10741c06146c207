"""A real coturn (Debian's ``turnserver``) for the TURN tests, on free ports of 127.0.0.1.

    async with running_coturn(tmp_path, secret="s3cret") as turn:
        config = {"turn_uris": (turn.uri("tcp"),), "turn_secret": turn.secret}

coturn runs with no configuration file (``-n``), TURN REST credentials
(``--use-auth-secret --static-auth-secret``: what ``botcall.signaling.turn``
makes), listening and relaying on 127.0.0.1 only, loopback peers allowed (the
relay is on 127.0.0.1), UDP and TCP on one port, no TLS/DTLS listeners, no CLI,
its log on stdout. The fixture waits until coturn logs that its UDP and TCP
listeners are open, then proves it with a STUN Binding over UDP and a TCP
connect (events, not a sleep), and stops it on exit.

``allocate`` is a minimal TURN client (RFC 8656 §7.1 over UDP, long-term
credentials per RFC 8489 §9.2) used to check credentials against coturn.
"""

from __future__ import annotations

import random
import re
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from aioice import stun
from aioice.turn import make_integrity_key

TURNSERVER = "/usr/bin/turnserver"
HOST = "127.0.0.1"
REALM = "botcall.test"
RELAY_PORTS = 200
# A safety net against a turnserver that never starts, not a speed requirement.
START_TIMEOUT = 20.0
# With TLS on, coturn accepts TLS and plain TCP on each TCP port and logs it as TLS/TCP.
_LISTENER = re.compile(rb"IPv4\. (UDP|TCP|TLS/TCP) listener opened on ?: ?127\.0\.0\.1:(\d+)")
# RFC 8656 §14.7: REQUESTED-TRANSPORT carries the IP protocol number (17, UDP) in its first byte.
REQUESTED_TRANSPORT_UDP = 17 << 24


class CoturnError(Exception):
    """coturn did not start, or a TURN exchange did not complete."""


@dataclass
class Coturn:
    """A running coturn.

    Attributes:
        port: its TURN port (UDP and TCP) on 127.0.0.1.
        tls_port: its TURN-over-TLS port, or None without TLS.
        min_port, max_port: the range its relayed addresses come from.
        secret: its static-auth-secret.
        realm: its realm.
        log: its stdout, line by line.
    """

    port: int
    min_port: int
    max_port: int
    secret: str
    tls_port: int | None = None
    realm: str = REALM
    log: list[str] = field(default_factory=list)

    def uri(self, transport: str) -> str:
        """``turn:127.0.0.1:<port>?transport=<udp|tcp>``, or for ``tls``
        ``turns:127.0.0.1:<tls_port>?transport=tcp``."""
        if transport == "tls":
            assert self.tls_port is not None, "coturn runs without TLS"
            return f"turns:{HOST}:{self.tls_port}?transport=tcp"
        return f"turn:{HOST}:{self.port}?transport={transport}"

    def relays(self, address: tuple[str, int]) -> bool:
        """Whether ``address`` is one of this coturn's relayed transport addresses."""
        return address[0] == HOST and self.min_port <= address[1] <= self.max_port


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((HOST, port))
            except OSError:
                continue
            return port
    raise CoturnError("no free port for coturn")


def _free_range(size: int) -> int:
    """The first port of ``size`` UDP ports free on 127.0.0.1, below the ephemeral range
    (so port-0 sockets of other tests do not land in it)."""
    for _ in range(50):
        first = random.randrange(10_000, 32_000 - size)
        sockets = []
        try:
            for port in range(first, first + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((HOST, port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise CoturnError("no free block of relay ports for coturn")


@asynccontextmanager
async def running_coturn(
    workdir: Path,
    *,
    secret: str | None = None,
    allow_loopback_peers: bool = True,
    tls_files: tuple[Path, Path] | None = None,
) -> AsyncIterator[Coturn]:
    """Start ``turnserver``, wait until it serves, yield it; stop it on exit.

    Args:
        workdir: holds its pid file and user database.
        secret: its static-auth-secret (default: a random one).
        allow_loopback_peers: let allocations reach 127.0.0.1 (the relay). ``False``
            is coturn's default: allocations succeed, but nothing is relayed to
            or from the relay (a TURN path that never connects).
        tls_files: a certificate (chain) and key: TURN over TLS on a second port too.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    first = _free_range(RELAY_PORTS)
    turn = Coturn(
        port=_free_port(), min_port=first, max_port=first + RELAY_PORTS - 1, secret=secret or secrets.token_urlsafe(16),
        tls_port=_free_port() if tls_files is not None else None,
    )
    tls_options = (
        ["--tls-listening-port", str(turn.tls_port), "--cert", str(tls_files[0]), "--pkey", str(tls_files[1])]
        if tls_files is not None else ["--no-tls"]
    )
    command = [
        TURNSERVER, "-n", "-v",
        "--listening-ip", HOST, "--relay-ip", HOST, "--listening-port", str(turn.port),
        "--min-port", str(turn.min_port), "--max-port", str(turn.max_port),
        "--use-auth-secret", "--static-auth-secret", turn.secret, "--realm", turn.realm,
        *(["--allow-loopback-peers"] if allow_loopback_peers else []), "--no-multicast-peers", "--no-cli", *tls_options, "--no-dtls",
        "--relay-threads", "1", "--log-file", "stdout", "--simple-log",
        "--pidfile", str(workdir / "turnserver.pid"), "--userdb", str(workdir / "turndb"),
    ]
    listening: set[str] = set()
    wanted = {f"UDP:{turn.port}", f"TCP:{turn.port}"} | ({f"TCP:{turn.tls_port}"} if turn.tls_port else set())
    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        stdout = process.stdout

        async def read_log() -> None:
            pending = b""
            async for chunk in stdout:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    turn.log.append(line.decode("utf-8", "replace"))
                    match = _LISTENER.search(line)
                    if match and int(match.group(2)) in (turn.port, turn.tls_port):
                        kind = "UDP" if match.group(1) == b"UDP" else "TCP"
                        listening.add(f"{kind}:{match.group(2).decode()}")
                        if listening >= wanted:
                            ready.set()

        nursery.start_soon(read_log)
        try:
            with trio.move_on_after(START_TIMEOUT) as waited:
                await ready.wait()
                await _answers(turn)
            if waited.cancelled_caught:
                raise CoturnError(f"turnserver did not start in {START_TIMEOUT} s:\n" + "\n".join(turn.log[-30:]))
            yield turn
        finally:
            with trio.CancelScope(shield=True):
                process.terminate()
                with trio.move_on_after(5) as stopping:
                    await process.wait()
                if stopping.cancelled_caught:
                    process.kill()
                    await process.wait()
            nursery.cancel_scope.cancel()


async def _answers(turn: Coturn) -> None:
    """Wait until coturn answers a STUN Binding over UDP and accepts TCP connections."""
    for port in (turn.port, turn.tls_port):
        if port is not None:
            stream = await trio.open_tcp_stream(HOST, port)
            await stream.aclose()
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.connect((HOST, turn.port))
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        while True:
            await sock.send(bytes(request))
            with trio.move_on_after(0.2):
                data = await sock.recv(2048)
                if stun.parse_message(data).transaction_id == request.transaction_id:
                    return


@dataclass(frozen=True)
class AllocateResult:
    """What coturn answered an authenticated Allocate: success with the relayed
    address, or the error code."""

    relayed: tuple[str, int] | None
    error: int | None


async def allocate(turn: Coturn, username: str, password: str) -> AllocateResult:
    """One TURN allocation over UDP with long-term credentials (RFC 8656 §7.1, RFC 8489 §9.2):
    the first Allocate gets 401 with REALM and NONCE; the second carries USERNAME,
    REALM, NONCE and MESSAGE-INTEGRITY keyed with MD5(username:realm:password).

    Raises:
        CoturnError: no answer, or not the expected 401 first.
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.connect((HOST, turn.port))
        first = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
        first.attributes["REQUESTED-TRANSPORT"] = REQUESTED_TRANSPORT_UDP
        challenge = await _exchange(sock, first)
        if challenge.message_class != stun.Class.ERROR or challenge.attributes.get("ERROR-CODE", (0,))[0] != 401:
            raise CoturnError(f"expected 401 to an unauthenticated Allocate, got {challenge}")
        request = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
        request.attributes["REQUESTED-TRANSPORT"] = REQUESTED_TRANSPORT_UDP
        request.attributes["USERNAME"] = username
        request.attributes["REALM"] = challenge.attributes["REALM"]
        request.attributes["NONCE"] = challenge.attributes["NONCE"]
        request.add_message_integrity(make_integrity_key(username, challenge.attributes["REALM"], password))
        answer = await _exchange(sock, request)
        if answer.message_class == stun.Class.RESPONSE:
            host, port = answer.attributes["XOR-RELAYED-ADDRESS"]
            return AllocateResult(relayed=(str(host), int(port)), error=None)
        return AllocateResult(relayed=None, error=int(answer.attributes["ERROR-CODE"][0]))


async def _exchange(sock: trio.socket.SocketType, request: stun.Message) -> stun.Message:
    for _ in range(10):
        await sock.send(bytes(request))
        with trio.move_on_after(0.5):
            while True:
                answer = stun.parse_message(await sock.recv(2048))
                if answer.transaction_id == request.transaction_id:
                    return answer
    raise CoturnError(f"coturn did not answer {request.message_method.name}")


__all__ = ["AllocateResult", "Coturn", "CoturnError", "allocate", "running_coturn"]
