"""coturn as a benchmark peer: TURN ChannelData through one allocation per flow.

``turnserver`` (Debian ``coturn``) runs on 127.0.0.1 with a fixed
configuration written to a temporary directory: long-term credentials for one
static user, UDP only, loopback peers allowed, one relay thread (BotCall's
relay is one thread too), no TLS/DTLS listeners, no CLI, no database outside
the temporary directory. Its listening port and its relayed-address range
are one block of ports reserved for it (:func:`~bench.harness.process.reserve_ports`:
below the ephemeral range, locked against concurrent bench runs).

For each flow the harness opens a client socket and, with aioice's STUN codec:

1. ``Allocate`` (RFC 8656 §7.1): the first request is refused with 401 and a
   REALM/NONCE; the retry carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY
   keyed with MD5(user:realm:password) (RFC 8489 §9.2.2);
2. ``CreatePermission`` for the peer address (RFC 8656 §9);
3. ``ChannelBind`` of channel 0x4000 to the peer (RFC 8656 §11).

Permissions last 5 minutes and channel bindings 10 (RFC 8656 §9, §12), so
:meth:`CoturnRelay.keep_alive` refreshes every allocation, channel and
permission when the last refresh is more than two minutes old, as a real TURN
client would; ``bench/compare.py`` calls it before every measurement.

The load generator then sends ChannelData (RFC 8656 §12.4: 2-byte channel
number, 2-byte length, the RTP packet) from the client socket to coturn, which
relays the bare RTP packet from the allocation's relayed address to one plain
peer socket shared by every flow.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from aioice import stun
from aioice.turn import make_integrity_key

from bench.harness.loadgen import Flow
from bench.harness.process import Harness, PinnedProcess, udp_port_answers
from tests.kit.system import HarnessError

HOST = "127.0.0.1"
USERNAME = "bench"
PASSWORD = "bench-secret"
REALM = "botcall.bench"
# RFC 8656 §12: channel numbers 0x4000 through 0x4FFF; each allocation has its
# own channel space, so every flow may use the first one.
FIRST_CHANNEL = 0x4000
LAST_CHANNEL = 0x4FFF
# RFC 8656 §14.7: REQUESTED-TRANSPORT carries the IP protocol number (17, UDP)
# in its first byte.
REQUESTED_TRANSPORT_UDP = 17 << 24
CHANNEL_DATA_HEADER = struct.Struct("!HH")
ALLOCATION_LIFETIME = 3600
REQUEST_TIMEOUT = 0.5
REQUEST_ATTEMPTS = 6
# Refresh well inside the 5-minute permission lifetime (RFC 8656 §9).
REFRESH_INTERVAL = 120.0
RELAY_PORTS_PER_FLOW = 2
# The largest offered load of the full comparison (bench/compare.py).
DEFAULT_MAX_FLOWS = 1500


class TurnError(IntEnum):
    """STUN/TURN error codes this client reacts to (RFC 8489 §14.8, RFC 8656 §18)."""

    UNAUTHORIZED = 401  # RFC 8489 §14.8: credentials missing or wrong
    STALE_NONCE = 438  # RFC 8489 §14.8: retry with the new NONCE
    ALLOCATION_QUOTA_REACHED = 486  # RFC 8656 §18


def channel_data_header(channel: int, length: int) -> bytes:
    """The 4-byte ChannelData header (RFC 8656 §12.4).

    Args:
        channel: a bound channel number, 0x4000-0x4FFF.
        length: the application data's length in bytes (no padding over UDP).

    Returns:
        The header to put before the data.

    Raises:
        ValueError: channel or length out of range.
    """
    if not FIRST_CHANNEL <= channel <= LAST_CHANNEL:
        raise ValueError(f"channel {channel:#x} is outside 0x4000-0x4FFF")
    if not 0 <= length <= 0xFFFF:
        raise ValueError(f"length {length} does not fit 16 bits")
    return CHANNEL_DATA_HEADER.pack(channel, length)


def coturn_config(*, listening_port: int, min_port: int, max_port: int, workdir: Path) -> str:
    """The fixed ``turnserver.conf`` of the benchmark.

    Args:
        listening_port: the TURN UDP port on 127.0.0.1.
        min_port, max_port: the relayed-address port range.
        workdir: holds the user database, pid file and log.

    Returns:
        The configuration file's text.
    """
    lines = [
        f"listening-ip={HOST}",
        f"relay-ip={HOST}",
        f"listening-port={listening_port}",
        f"min-port={min_port}",
        f"max-port={max_port}",
        # One relay thread: the relays under test each get one core and BotCall
        # runs one thread; several coturn threads would only contend for it.
        "relay-threads=1",
        "lt-cred-mech",
        f"user={USERNAME}:{PASSWORD}",
        f"realm={REALM}",
        # coturn refuses loopback peers unless told (its default guards SSRF).
        "allow-loopback-peers",
        "no-multicast-peers",
        "no-tcp",
        "no-tls",
        "no-dtls",
        "no-tcp-relay",
        "no-cli",
        "no-rfc5780",
        "no-stun-backward-compatibility",
        "no-software-attribute",
        "user-quota=0",
        "total-quota=0",
        f"userdb={workdir / 'turndb'}",
        f"pidfile={workdir / 'turnserver.pid'}",
        "log-file=stdout",
        "simple-log",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Allocation:
    """One TURN allocation bound to a peer.

    Attributes:
        client: the client socket (non-blocking once set up).
        relayed: the allocation's relayed transport address on coturn.
        channel: the channel bound to the peer.
        turn: the client that made it (its credentials and nonce refresh it).
        peer: the peer the channel is bound to.
    """

    client: socket.socket
    relayed: tuple[str, int]
    channel: int
    turn: "TurnClient"
    peer: tuple[str, int]


class TurnClient:
    """Blocking set-up of one allocation over one UDP socket (never on the load path).

    Args:
        sock: a bound UDP socket.
        server: coturn's listening address.
        username, password: long-term credentials.
    """

    def __init__(self, sock: socket.socket, server: tuple[str, int], *, username: str = USERNAME, password: str = PASSWORD) -> None:
        self.sock = sock
        self.server = server
        self.username = username
        self.password = password
        self.realm: str | None = None
        self.nonce: bytes | None = None
        self.key: bytes | None = None

    def allocate(self, lifetime: int = ALLOCATION_LIFETIME) -> tuple[str, int]:
        """Create the allocation (RFC 8656 §7.1).

        Returns:
            The relayed transport address.

        Raises:
            HarnessError: refused, or no answer.
        """
        response = self.request(
            stun.Method.ALLOCATE,
            {"LIFETIME": lifetime, "REQUESTED-TRANSPORT": REQUESTED_TRANSPORT_UDP},
        )
        relayed = response.attributes.get("XOR-RELAYED-ADDRESS")
        if relayed is None:
            raise HarnessError("Allocate success without XOR-RELAYED-ADDRESS")
        return relayed

    def refresh(self, lifetime: int = ALLOCATION_LIFETIME) -> None:
        """Extend the allocation's lifetime (RFC 8656 §8)."""
        self.request(stun.Method.REFRESH, {"LIFETIME": lifetime})

    def create_permission(self, peer: tuple[str, int]) -> None:
        """Let ``peer``'s IP send to and receive from the allocation (RFC 8656 §9)."""
        self.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer})

    def channel_bind(self, channel: int, peer: tuple[str, int]) -> None:
        """Bind ``channel`` to ``peer``, or refresh the binding and its permission (RFC 8656 §11)."""
        self.request(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": channel, "XOR-PEER-ADDRESS": peer})

    def request(self, method: stun.Method, attributes: dict) -> stun.Message:
        """Send an authenticated request, following 401/438 challenges once each.

        Raises:
            HarnessError: an error response, or no answer after the retransmissions.
        """
        for _ in range(3):
            message = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
            message.attributes.update(attributes)
            if self.key is not None:
                message.attributes["USERNAME"] = self.username
                message.attributes["REALM"] = self.realm
                message.attributes["NONCE"] = self.nonce
                message.add_message_integrity(self.key)
            response = self._transact(message)
            if response.message_class == stun.Class.RESPONSE:
                return response
            code, reason = response.attributes.get("ERROR-CODE", (0, ""))
            if code in (TurnError.UNAUTHORIZED, TurnError.STALE_NONCE) and "NONCE" in response.attributes:
                if code == TurnError.UNAUTHORIZED and self.key is not None and self.realm == response.attributes.get("REALM"):
                    raise HarnessError(f"{method.name}: credentials refused ({code} {reason})")
                self.realm = response.attributes.get("REALM", self.realm)
                self.nonce = response.attributes["NONCE"]
                self.key = make_integrity_key(self.username, self.realm, self.password)
                continue
            raise HarnessError(f"{method.name} refused: {code} {reason}")
        raise HarnessError(f"{method.name}: too many challenges")

    def _transact(self, message: stun.Message) -> stun.Message:
        data = bytes(message)
        self.sock.settimeout(REQUEST_TIMEOUT)
        try:
            for _ in range(REQUEST_ATTEMPTS):
                self.sock.sendto(data, self.server)
                try:
                    while True:
                        reply, _ = self.sock.recvfrom(4096)
                        try:
                            response = stun.parse_message(reply)
                        except (ValueError, struct.error):
                            continue  # not a STUN answer (aioice raises either)
                        if response.transaction_id == message.transaction_id:
                            return response
                except TimeoutError:
                    continue  # retransmit (RFC 8489 §6.2.1)
        finally:
            # The socket goes back to the load generator non-blocking.
            self.sock.setblocking(False)
        raise HarnessError(f"{stun.Method(message.message_method).name}: no answer from coturn at {self.server}")


def ports_needed(max_flows: int) -> int:
    """Ports one coturn needs for ``max_flows`` allocations: its listening port
    and twice the relayed ports it uses (it picks them at random; a half-empty
    range keeps its retries few)."""
    return 1 + RELAY_PORTS_PER_FLOW * max_flows


class CoturnRelay(Harness):
    """``turnserver`` on 127.0.0.1, plus the flows through it.

    Use as a context manager; every socket and the process go away on exit::

        with CoturnRelay(core=0) as relay:
            flows = relay.create_flows(100, packet_size=172)

    Args:
        core: CPU to pin coturn to (None: unpinned).
        workdir: for the config, database and log (default: a new temp dir).
        max_flows: the most flows :meth:`create_flows` will be asked for (sizes
            its reserved port range).
    """

    name = "coturn"
    first_ssrc = 0x0C070000

    def __init__(self, *, core: int | None = 0, workdir: Path | None = None, max_flows: int = DEFAULT_MAX_FLOWS) -> None:
        super().__init__(core=core, workdir=workdir, max_flows=max_flows)
        self.port = 0
        self.peer_sock: socket.socket | None = None
        self.allocations: list[Allocation] = []
        self.refreshed_at = 0.0

    def launch(self) -> None:
        """Write the configuration and start coturn; returns once it answers STUN.

        Raises:
            HarnessError: turnserver is missing, exits, or never answers.
        """
        ports = self.reserve_ports(ports_needed(self.max_flows))
        self.port = ports.control_port
        min_port, max_port = ports.relay_range
        config = self.workdir / "turnserver.conf"
        config.write_text(coturn_config(listening_port=self.port, min_port=min_port, max_port=max_port, workdir=self.workdir))
        self.process = self._stack.enter_context(
            PinnedProcess("coturn", ["turnserver", "-c", str(config)], core=self.core, log_dir=self.workdir)
        )
        probe = bytes(stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST))
        self.process.wait_ready(lambda: udp_port_answers(self.port, probe))
        self.peer_sock = self.socket()

    def allocate(self) -> Allocation:
        """One allocation with a permission and a channel bound to the shared peer socket.

        Raises:
            HarnessError: coturn refused or did not answer.
        """
        peer = self.peer_sock.getsockname()
        client_sock = self.socket()
        client = TurnClient(client_sock, (HOST, self.port))
        relayed = client.allocate()
        client.create_permission(peer)
        client.channel_bind(FIRST_CHANNEL, peer)
        allocation = Allocation(client=client_sock, relayed=relayed, channel=FIRST_CHANNEL, turn=client, peer=peer)
        self.allocations.append(allocation)
        if not self.refreshed_at:
            self.refreshed_at = time.monotonic()
        return allocation

    def keep_alive(self, *, force: bool = False) -> int:
        """Refresh every allocation and its channel (and so its permission) if due.

        Args:
            force: refresh even if the last refresh is recent.

        Returns:
            How many allocations were refreshed (0 when not due).

        Raises:
            HarnessError: coturn refused a refresh or did not answer.
        """
        if not force and time.monotonic() - self.refreshed_at < REFRESH_INTERVAL:
            return 0
        for allocation in self.allocations:
            allocation.turn.refresh()
            allocation.turn.channel_bind(allocation.channel, allocation.peer)
        self.refreshed_at = time.monotonic()
        return len(self.allocations)

    def create_flow(self, ssrc: int, packet_size: int):
        """One allocation; the flow sends ChannelData (``packet_size`` in its length field) and arrives at the peer socket."""
        allocation = self.allocate()
        return Flow(
            send_sock=allocation.client,
            dest=(HOST, self.port),
            recv_sock=self.peer_sock,
            prefix=channel_data_header(allocation.channel, packet_size),
            ssrc=ssrc,
        )
