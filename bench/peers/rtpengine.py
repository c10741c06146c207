"""rtpengine (userspace) as a benchmark peer: calls set up over the ng protocol.

``rtpengine`` (Debian ``rtpengine-daemon``) runs in the foreground on
127.0.0.1 with ``--table=-1``: no kernel forwarding table, every packet goes
through its userspace poller, which is what a relay without the kernel module
costs. One worker thread (BotCall's relay is one thread), timeouts long enough
that idle calls survive between benchmark cells, logging at warnings only.
Its ng port and media port range are one block of ports reserved for it
(:func:`~bench.harness.process.reserve_ports`: below the ephemeral range, locked
against concurrent bench runs).

Calls are made over the ng control protocol: UDP datagrams of a random cookie,
a space, then a bencoded dictionary (the reply echoes the cookie). For each
flow the harness sends ``offer`` with caller A's SDP and ``answer`` with callee
B's SDP; rtpengine rewrites both with its own ports. A sends RTP to the port in
the rewritten answer and rtpengine relays it to B. One call per flow: rtpengine
guards each media socket against a single source flooding it, so a few
heavy calls would measure the guard, not the relay.
"""

from __future__ import annotations

import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from botcall.errors import BadPacket
from bench.harness.loadgen import Flow
from bench.harness.process import Harness, PinnedProcess
from tests.kit.system import HarnessError

HOST = "127.0.0.1"
REQUEST_TIMEOUT = 1.0
REQUEST_ATTEMPTS = 4
MAX_REPLY = 65536
MAX_DEPTH = 32
# Idle calls must outlive a whole benchmark run (seconds).
CALL_TIMEOUT = 3600
PORTS_PER_CALL = 4
# The largest offered load of the full comparison (bench/compare.py).
DEFAULT_MAX_FLOWS = 1500


class BencodeError(BadPacket):
    """Bytes that are not one well-formed bencoded value."""

    counter = "malformed_bencode"


def encode_bencode(value) -> bytes:
    """Bencode ``value`` (dict with str/bytes keys, list, int, str, bytes).

    Dictionary keys are sorted by their bytes, as bencode requires.

    Raises:
        TypeError: a value bencode cannot carry.
    """
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (str, bytes)):
        data = value.encode() if isinstance(value, str) else value
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        items = sorted(((k.encode() if isinstance(k, str) else k), v) for k, v in value.items())
        for key, item in items:
            _encode(key, out)
            _encode(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def decode_bencode_untrusted(data: bytes):
    """Decode one bencoded value that fills ``data`` exactly.

    Strings come back as ``bytes``, dictionaries as ``dict[bytes, ...]``.

    Raises:
        BencodeError: anything malformed, trailing bytes, nesting deeper than 32.
    """
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} bytes after the value")
    return value


def _decode(data: bytes, pos: int, depth: int):
    if depth > MAX_DEPTH:
        raise BencodeError("nested too deeply")
    if pos >= len(data):
        raise BencodeError("truncated")
    lead = data[pos]
    if lead == 0x69:  # i<digits>e
        end = data.find(b"e", pos + 1)
        if end < 0:
            raise BencodeError("integer without its end")
        digits = data[pos + 1 : end]
        if not re.fullmatch(rb"-?(0|[1-9][0-9]{0,40})", digits) or digits == b"-0":
            raise BencodeError(f"bad integer {digits[:20]!r}")
        return int(digits), end + 1
    if 0x30 <= lead <= 0x39:  # <length>:<bytes>
        colon = data.find(b":", pos, pos + 12)
        if colon < 0:
            raise BencodeError("string length without ':'")
        digits = data[pos:colon]
        if not digits.isdigit() or (len(digits) > 1 and digits[0] == 0x30):
            raise BencodeError(f"bad string length {digits!r}")
        start = colon + 1
        end = start + int(digits)
        if end > len(data):
            raise BencodeError("string runs past the end")
        return data[start:end], end
    if lead == 0x6C:  # l ... e
        items = []
        pos += 1
        while pos < len(data) and data[pos] != 0x65:
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        if pos >= len(data):
            raise BencodeError("list without its end")
        return items, pos + 1
    if lead == 0x64:  # d ... e
        result = {}
        pos += 1
        while pos < len(data) and data[pos] != 0x65:
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, bytes):
                raise BencodeError("dictionary key is not a string")
            if key in result:
                raise BencodeError(f"duplicate key {key[:20]!r}")
            result[key], pos = _decode(data, pos, depth + 1)
        if pos >= len(data):
            raise BencodeError("dictionary without its end")
        return result, pos + 1
    raise BencodeError(f"unexpected byte {lead:#04x}")


def parse_ng_reply_untrusted(data: bytes, cookie: bytes) -> dict:
    """Split an ng reply into its cookie and dictionary.

    Args:
        data: the datagram.
        cookie: the cookie our request carried.

    Returns:
        The reply dictionary (keys are bytes).

    Raises:
        BencodeError: wrong cookie, no space, or not a bencoded dictionary.
    """
    got, space, body = data.partition(b" ")
    if not space or got != cookie:
        raise BencodeError("reply does not carry our cookie")
    reply = decode_bencode_untrusted(body)
    if not isinstance(reply, dict):
        raise BencodeError("reply is not a dictionary")
    return reply


def audio_sdp(host: str, port: int, session_id: int) -> str:
    """A plain RTP/AVP Opus offer or answer for ``host:port`` (RFC 4566, RFC 7587)."""
    return (
        "v=0\r\n"
        f"o=- {session_id} 1 IN IP4 {host}\r\n"
        "s=bench\r\n"
        f"c=IN IP4 {host}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 111\r\n"
        "a=rtpmap:111 opus/48000/2\r\n"
        "a=sendrecv\r\n"
    )


def sdp_media_address(sdp: str) -> tuple[str, int]:
    """The connection address and audio port of a (rewritten) SDP.

    Raises:
        HarnessError: no ``c=`` line or no ``m=audio`` line.
    """
    connection = re.search(r"^c=IN IP4 ([0-9.]+)", sdp, re.M)
    media = re.search(r"^m=audio (\d+) ", sdp, re.M)
    if connection is None or media is None:
        raise HarnessError(f"rtpengine's SDP has no address: {sdp!r}")
    return connection.group(1), int(media.group(1))


class NgClient:
    """Blocking ng-protocol client (set-up only, never on the load path).

    Args:
        server: rtpengine's ng address.
    """

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(REQUEST_TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def command(self, name: str, **fields) -> dict:
        """Send one command and wait for its reply.

        Args:
            name: ``ping``, ``offer``, ``answer``, ``delete``...
            **fields: the command's fields (underscores become dashes).

        Returns:
            The reply dictionary (keys are bytes).

        Raises:
            HarnessError: no reply, a malformed reply, or ``result`` is an error.
        """
        cookie = secrets.token_hex(8).encode()
        request = {"command": name, **{key.replace("_", "-"): value for key, value in fields.items()}}
        data = cookie + b" " + encode_bencode(request)
        for _ in range(REQUEST_ATTEMPTS):
            self.sock.sendto(data, self.server)
            try:
                while True:
                    reply_bytes, _ = self.sock.recvfrom(MAX_REPLY)
                    try:
                        reply = parse_ng_reply_untrusted(reply_bytes, cookie)
                    except BencodeError:
                        continue  # another request's late reply, or garbage: keep reading
                    result = reply.get(b"result")
                    if result == b"error":
                        reason = reply.get(b"error-reason", b"?").decode("utf-8", "replace")
                        raise HarnessError(f"rtpengine refused {name}: {reason}")
                    return reply
            except TimeoutError:
                continue  # resend; the ng protocol's cookie makes a retry safe
        raise HarnessError(f"rtpengine did not answer {name} at {self.server}")


@dataclass(frozen=True, slots=True)
class Call:
    """One two-party call through rtpengine.

    Attributes:
        call_id: the ng call id.
        caller: A's socket (sends the flow's RTP).
        send_to: rtpengine's port facing A (from the rewritten answer).
        callee_addr: B's address (where rtpengine relays to).
    """

    call_id: str
    caller: socket.socket
    send_to: tuple[str, int]
    callee_addr: tuple[str, int]


def rtpengine_argv(*, ng_port: int, port_min: int, port_max: int, pidfile: Path) -> list[str]:
    """The fixed command line of the benchmark's rtpengine."""
    return [
        "rtpengine",
        "--foreground",
        "--log-stderr",
        "--log-level=4",
        # -1: no kernel table; every packet is forwarded in userspace.
        "--table=-1",
        f"--interface={HOST}",
        f"--listen-ng={HOST}:{ng_port}",
        f"--port-min={port_min}",
        f"--port-max={port_max}",
        "--num-threads=1",
        f"--timeout={CALL_TIMEOUT}",
        f"--silent-timeout={CALL_TIMEOUT}",
        f"--offer-timeout={CALL_TIMEOUT}",
        "--delete-delay=0",
        f"--pidfile={pidfile}",
    ]


def ports_needed(max_flows: int) -> int:
    """Ports one rtpengine needs for ``max_flows`` calls: its ng port and, per
    call, an RTP/RTCP pair on each side (4, measured), with a quarter to spare."""
    return 1 + PORTS_PER_CALL * max_flows * 5 // 4


class RtpengineRelay(Harness):
    """``rtpengine`` in userspace mode on 127.0.0.1, plus calls through it.

    Use as a context manager::

        with RtpengineRelay(core=0) as relay:
            flows = relay.create_flows(100)

    Args:
        core: CPU to pin rtpengine to (None: unpinned).
        workdir: for the log and pid file (default: a new temp dir).
        max_flows: the most flows :meth:`create_flows` will be asked for (sizes
            its reserved port range).
    """

    name = "rtpengine"
    first_ssrc = 0x0E0E0000

    def __init__(self, *, core: int | None = 0, workdir: Path | None = None, max_flows: int = DEFAULT_MAX_FLOWS) -> None:
        super().__init__(core=core, workdir=workdir, max_flows=max_flows)
        self.ng_port = 0
        self.ng: NgClient | None = None
        self.callee_sock: socket.socket | None = None
        self.calls: list[Call] = []

    def launch(self) -> None:
        """Start rtpengine; returns once it answers an ng ``ping``.

        Raises:
            HarnessError: rtpengine is missing, exits, or never answers.
        """
        ports = self.reserve_ports(ports_needed(self.max_flows))
        self.ng_port = ports.control_port
        port_min, port_max = ports.relay_range
        argv = rtpengine_argv(ng_port=self.ng_port, port_min=port_min, port_max=port_max, pidfile=self.workdir / "rtpengine.pid")
        self.process = self._stack.enter_context(PinnedProcess("rtpengine", argv, core=self.core, log_dir=self.workdir))
        self.ng = NgClient((HOST, self.ng_port))
        self._stack.callback(self.ng.close)
        self.process.wait_ready(self._pong)
        self.callee_sock = self.socket()

    def _pong(self) -> bool:
        try:
            return self.ng.command("ping").get(b"result") == b"pong"
        except HarnessError:
            return False

    def create_call(self) -> Call:
        """Offer and answer one call: A (a new socket) to B (the shared callee socket).

        Raises:
            HarnessError: rtpengine refused or did not answer.
        """
        caller = self.socket()
        a_host, a_port = caller.getsockname()
        b_host, b_port = self.callee_sock.getsockname()
        call_id = f"bench-{secrets.token_hex(6)}"
        session = secrets.randbelow(1 << 31)
        self.ng.command("offer", call_id=call_id, from_tag="caller", sdp=audio_sdp(a_host, a_port, session))
        answer = self.ng.command(
            "answer", call_id=call_id, from_tag="caller", to_tag="callee", sdp=audio_sdp(b_host, b_port, session + 1)
        )
        sdp = answer.get(b"sdp")
        if not isinstance(sdp, bytes):
            raise HarnessError("rtpengine's answer reply has no SDP")
        call = Call(call_id=call_id, caller=caller, send_to=sdp_media_address(sdp.decode()), callee_addr=(b_host, b_port))
        self.calls.append(call)
        return call

    def create_flow(self, ssrc: int, packet_size: int):
        """One call; the flow's plain RTP (``packet_size`` needs no framing) is relayed to the shared callee socket.

        Calls live until ``--timeout`` seconds without RTP (an hour), so the
        inherited :meth:`keep_alive` has nothing to refresh.
        """
        call = self.create_call()
        return Flow(send_sock=call.caller, dest=call.send_to, recv_sock=self.callee_sock, ssrc=ssrc)
