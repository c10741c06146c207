"""The kit's simulated browser against a real server, in the test's own Trio loop.

:func:`signal_browser` speaks a browser's side of ``/v1/signal`` (hello, join,
offer) on an open WebSocket and returns the relay's answer;
:class:`UdpBrowser` then carries the datagrams of a
:class:`~tests.kit.browser.Browser` over a Trio UDP socket: its ICE check
(answering the relay's check of our address on the way), its DTLS handshake,
and SRTP both ways. The Browser stays the sans-IO core: the STUN messages, the
DTLS client and the SRTP context are its; this module only waits and sends.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from botcall.errors import BadPacket
from botcall.webrtc.dtls.endpoint import DtlsState
from botcall.webrtc.srtp import SrtpContext
from botcall.wire.demux import PacketKind, classify, is_rtcp
from botcall.wire.rtp import RtpPacket, parse_rtp_untrusted
from botcall.wire.stun import parse_binding_response_untrusted
from tests.kit.browser import HANDSHAKE_TIMEOUT, Browser
from tests.kit.relay import is_check

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

MAX_DATAGRAM = 4096
ICE_TIMEOUT = 5.0
# A check the relay did not answer is sent again, as Chrome does (RFC 8445 §14.3: Ta, RTO).
ICE_RETRANSMIT = 0.5


@dataclass(frozen=True, slots=True)
class Signaled:
    """What signaling gave a browser.

    Attributes:
        answer: the relay's SDP answer.
        participant_id: the browser's participant (what bots' frames name).
        session_ssrc: the SSRC the relay sends the browser's audio to bots with.
    """

    answer: str
    participant_id: str
    session_ssrc: int


async def expect_event(ws: WebSocketConnection, *kinds: str) -> dict[str, Any]:
    """The next signaling event of one of ``kinds``; others are passed over.

    Raises:
        RuntimeError: the server sent an error event first.
    """
    while True:
        event: dict[str, Any] = json.loads(await ws.get_message())
        if event.get("type") in kinds:
            return event
        if event.get("type") == "error":
            raise RuntimeError(f"signaling error: {event}")


async def signal_browser(ws: WebSocketConnection, invite: str, offer: str, *, display_name: str) -> Signaled:
    """Join a room as a browser on an open ``/v1/signal/<room_id>`` WebSocket and offer ``offer``.

    Args:
        invite: the room's invite secret (after ``#invite=`` in its URL).
        offer: the browser's SDP offer (:func:`~tests.kit.browser.browser_offer`).

    Returns:
        The answer and who the browser is in the room.

    Raises:
        RuntimeError: the server sent an error event.
    """
    await ws.send_message(json.dumps({"type": "hello", "invite": invite}))
    await expect_event(ws, "lobby")
    await ws.send_message(json.dumps({"type": "join", "display_name": display_name}))
    # The server's "joined" event carries welcome_event's fields, and its
    # "type" too; the PWA accepts both names.
    joined = await expect_event(ws, "joined", "welcome")
    await ws.send_message(json.dumps({"type": "offer", "sdp": offer}))
    answer = await expect_event(ws, "answer")
    return Signaled(answer=answer["sdp"], participant_id=joined["participant_id"], session_ssrc=joined["you"]["ssrc"])


class UdpBrowser:
    """A :class:`~tests.kit.browser.Browser` on a Trio UDP socket (made by :func:`udp_browser`).

    Attributes:
        core: the sans-IO browser (its ``relay_addr`` is where datagrams go).
        sock: the bound Trio UDP socket.
        dropped: datagrams passed over while waiting for media (not RTP, or
            failing SRTP authentication or RTP parsing).
    """

    def __init__(self, core: Browser, sock: trio.socket.SocketType) -> None:
        self.core = core
        self.sock = sock
        self.dropped = 0

    @property
    def srtp(self) -> SrtpContext:
        """The SRTP context.

        Raises:
            RuntimeError: before :meth:`handshake`.
        """
        if self.core.srtp is None:
            raise RuntimeError("no SRTP before the DTLS handshake")
        return self.core.srtp

    async def send_all(self, datagrams: Iterable[bytes]) -> None:
        """Send ``datagrams`` to the relay."""
        for datagram in datagrams:
            await self.sock.sendto(datagram, self.core.relay_addr)

    async def connect(self) -> SrtpContext:
        """ICE, then DTLS: :meth:`latch` and :meth:`handshake`."""
        await self.latch()
        return await self.handshake()

    async def latch(self, timeout: float = ICE_TIMEOUT) -> None:
        """Send a Chrome-shaped check until the relay answers it, answering the relay's check of us.

        Raises:
            trio.TooSlowError: no valid Binding success within ``timeout``.
        """
        with trio.fail_after(timeout):
            while True:
                request, transaction_id = self.core.binding()
                await self.send_all([request])
                with trio.move_on_after(ICE_RETRANSMIT):
                    while True:
                        data = await self.sock.recv(MAX_DATAGRAM)
                        if is_check(data):
                            try:
                                await self.send_all([self.core.answer_check(data)])
                            except BadPacket:
                                self.dropped += 1  # not a check of ours
                            continue
                        try:
                            parse_binding_response_untrusted(data, self.core.relay_pwd, transaction_id)
                        except BadPacket:
                            self.dropped += 1  # not our answer (a stale one, early media)
                            continue
                        return

    async def handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> SrtpContext:
        """The DTLS handshake on the Trio clock, retransmitting when the client's timer says.

        Returns:
            The SRTP context (also ``core.srtp``).

        Raises:
            trio.TooSlowError: not connected within ``timeout``.
            DtlsError: the handshake failed.
        """
        dtls = self.core.dtls
        with trio.fail_after(timeout):
            await self.send_all(dtls.start(trio.current_time()))
            while dtls.state is not DtlsState.CONNECTED:
                wake = dtls.next_deadline()
                data = None
                with trio.move_on_at(math.inf if wake is None else wake):
                    data = await self.sock.recv(MAX_DATAGRAM)
                now = trio.current_time()
                await self.send_all(dtls.handle_timeout(now) if data is None else self.core.receive_handshake(data, now))
        return self.core.srtp_from_handshake()

    async def send_rtp(self, packet: RtpPacket) -> None:
        """Protect ``packet`` and send it to the relay."""
        await self.send_all([self.srtp.protect(bytes(packet))])

    async def receive_rtp(self) -> RtpPacket:
        """The next RTP packet from the relay, unprotected and parsed.

        STUN, DTLS, RTCP and what fails SRTP or RTP parsing are counted in
        ``dropped`` and passed over.
        """
        while True:
            data = await self.sock.recv(MAX_DATAGRAM)
            if not data or classify(data[0]) is not PacketKind.RTP or is_rtcp(data):
                self.dropped += 1
                continue
            try:
                return parse_rtp_untrusted(self.srtp.unprotect_untrusted(data))
            except BadPacket:
                self.dropped += 1


@asynccontextmanager
async def udp_browser(core: Browser, host: str = "127.0.0.1") -> AsyncIterator[UdpBrowser]:
    """``core`` on a new Trio UDP socket bound to ``host`` (any port), closed on exit."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind((host, 0))
        yield UdpBrowser(core, sock)
