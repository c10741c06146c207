"""The one simulated browser of the tests and the benchmarks.

A browser, as the relay sees it: our own :class:`DtlsEndpoint` in the client
role with a certificate of its own, offering what Chrome 156 offered (a real
offer captured from Chromium, ``tests/signaling/data/chrome156_mic.sdp``,
with the fingerprint replaced), Chrome-shaped ICE checks with USE-CANDIDATE
(the relay is ICE-lite), answers to the relay's checks signed with the offer's
own credentials as a conforming ICE agent does (RFC 8445 §7.3), and an SRTP
context once the handshake is done.

The core is sans-IO; two drivers carry its datagrams:

* in process, for the sans-IO relay (:meth:`Browser.join`,
  :meth:`Browser.ice_check`, :meth:`Browser.handshake`): datagrams go straight
  into ``MediaRelay.handle_datagram`` and the relay's replies are taken off a
  :class:`~tests.kit.relay.Wire`;
* over a blocking UDP socket, for a relay in another process
  (:meth:`Browser.handshake_udp`, used by the bench harness).

A third, on a Trio UDP socket for a real server in the test's own event loop,
is :class:`tests.kit.browser_udp.UdpBrowser`; all three feed the relay's
datagrams to :meth:`Browser.receive_handshake` and end in
:meth:`Browser.srtp_from_handshake`.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

from botcall.relay.core import MediaRelay
from botcall.relay.service import MediaService
from botcall.signaling.rooms import Session
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.dtls.endpoint import DtlsEndpoint, DtlsState
from botcall.webrtc.srtp import SrtpContext
from botcall.wire.stun import answer_check_untrusted, binding_request
from tests.kit.relay import Wire, is_check
from tests.kit.system import wait_readable

OFFER_TEMPLATE = Path(__file__).resolve().parent.parent / "signaling" / "data" / "chrome156_mic.sdp"
OFFER = OFFER_TEMPLATE.read_text()
# The captured offer's own ICE credentials: the relay's checks to a browser use them.
OFFER_UFRAG = re.search(r"a=ice-ufrag:(\S+)", OFFER).group(1)
OFFER_PWD = re.search(r"a=ice-pwd:(\S+)", OFFER).group(1)
# The offer's a=ssrc: what Chrome sends with (the relay rewrites it toward bots).
BROWSER_SEND_SSRC = 1951877580
CHROME_PRIORITY = 2130706431
# Where a sans-IO relay says it is (the address in its checks and answers).
RELAY_ADDR = ("127.0.0.1", 40000)
BROWSER_ADDR = ("127.0.0.1", 53000)
HANDSHAKE_ROUNDS = 20
HANDSHAKE_TIMEOUT = 10.0


# Chrome 156's offer for a group call (docs/protocol.md "Group calls"): its
# sendrecv audio section and two recvonly ones, all bundled (captured from
# the PWA's Peer with receiveTracks = 3).
GROUP_OFFER = (OFFER_TEMPLATE.parent / "chrome156_group.sdp").read_text()


def _receive_sections(count: int) -> list[str]:
    """The captured group offer's first ``count`` recvonly sections, with the kit's ICE credentials."""
    sections = GROUP_OFFER.split("m=audio ")[2:]
    if count > len(sections):
        sections = sections * (count // len(sections) + 1)
    out = []
    for index, section in enumerate(sections[:count], start=1):
        section = re.sub(r"a=mid:\S+", f"a=mid:{index}", section)
        section = re.sub(r"a=ice-ufrag:\S+", f"a=ice-ufrag:{OFFER_UFRAG}", section)
        section = re.sub(r"a=ice-pwd:\S+", f"a=ice-pwd:{OFFER_PWD}", section)
        out.append("m=audio " + section)
    return out


def browser_offer(certificate: DtlsCertificate, receive_tracks: int = 1) -> str:
    """The captured Chrome offer with this browser's certificate fingerprint.

    Args:
        receive_tracks: downstream tracks to offer: the audio section plus
            ``receive_tracks - 1`` recvonly ones in its BUNDLE group (group calls).
    """
    offer = OFFER
    if receive_tracks > 1:
        mids = " ".join(str(index) for index in range(receive_tracks))
        offer = offer.replace("a=group:BUNDLE 0", f"a=group:BUNDLE {mids}") + "".join(_receive_sections(receive_tracks - 1))
    return re.sub(r"a=fingerprint:[^\r\n]*", f"a=fingerprint:{certificate.fingerprint}", offer)


def sdp_value(sdp: str, pattern: str) -> str:
    """The first group of ``pattern`` in ``sdp``, stripped.

    Raises:
        RuntimeError: the SDP has no such line.
    """
    found = re.search(pattern, sdp)
    if found is None:
        raise RuntimeError(f"answer has no {pattern!r}")
    return found.group(1).strip()


def is_dtls(data: bytes) -> bool:
    """A DTLS record by its first byte (RFC 7983: 20-63)."""
    return bool(data) and 20 <= data[0] <= 63


class Browser:
    """A simulated browser with the relay's answer in hand.

    Args:
        answer: the relay's SDP answer to :func:`browser_offer` of ``certificate``.
        certificate: the browser's DTLS certificate.
        relay_addr: where the relay's media is (the address its checks name).
        tie_breaker: the ICE-CONTROLLING tie-breaker of every check (None: a
            new random one per check).

    Attributes:
        out_ssrc: the SSRC the relay sends toward this browser (``a=ssrc`` of the answer).
        relay_ufrag / relay_pwd: the relay's ICE credentials (the session's).
        dtls: the DTLS client; ``srtp`` is its SRTP context once connected.
        sock, session_ssrc: set by the bench harness for a browser on a UDP socket.
        relay, wire, addr, human: set by :meth:`join` for a browser in process.
    """

    send_ssrc = BROWSER_SEND_SSRC
    # The relay's success follows its check: no need to ask again (a bot must).
    retransmit_after_check = False

    def __init__(self, answer: str, certificate: DtlsCertificate, *, relay_addr: tuple[str, int] = RELAY_ADDR, tie_breaker: int | None = None) -> None:
        self.answer = answer
        self.certificate = certificate
        self.relay_addr = relay_addr
        self.tie_breaker = tie_breaker
        self.out_ssrc = int(sdp_value(answer, r"a=ssrc:(\d+) cname"))
        # Every downstream track's SSRC, in answer order (group calls: one per accepted section).
        self.out_ssrcs = tuple(int(value) for value in re.findall(r"a=ssrc:(\d+) cname", answer))
        self.relay_ufrag = sdp_value(answer, r"a=ice-ufrag:(\S+)")
        self.relay_pwd = sdp_value(answer, r"a=ice-pwd:(\S+)")
        self.dtls = DtlsEndpoint(role="client", certificate=certificate, remote_fingerprint=sdp_value(answer, r"a=fingerprint:([^\r\n]+)"))
        self.srtp: SrtpContext | None = None
        self.sock: socket.socket | None = None
        self.session_ssrc = 0
        self.relay: MediaRelay | None = None
        self.wire: Wire | None = None
        self.addr = BROWSER_ADDR
        self.human: Session | None = None
        # The browser's own ICE credentials (its offer's; an ICE restart changes them).
        self.ufrag = OFFER_UFRAG
        self.pwd = OFFER_PWD
        # Downstream tracks its offers ask for (group calls).
        self.receive_tracks = 1

    # --- ICE ---------------------------------------------------------------------------

    def request(self, password: str | None = None, use_candidate: bool = True, transaction_id: bytes | None = None) -> bytes:
        """A Chrome-shaped ICE check (USE-CANDIDATE unless told otherwise), signed with ``password`` or the relay's."""
        return binding_request(
            f"{self.relay_ufrag}:{self.ufrag}",
            password or self.relay_pwd,
            transaction_id=transaction_id,
            use_candidate=use_candidate,
            controlling=True,
            priority=CHROME_PRIORITY,
            tie_breaker=self.tie_breaker,
        )

    def binding(self) -> tuple[bytes, bytes]:
        """A check with a fresh transaction id: ``(request, transaction_id)``."""
        transaction_id = secrets.token_bytes(12)
        return self.request(transaction_id=transaction_id), transaction_id

    def answer_check(self, check: bytes) -> bytes:
        """The answer to one of the relay's checks, signed with the offer's own ice-pwd.

        Raises:
            BadPacket: not a check from the relay to this browser.
        """
        return answer_check_untrusted(check, self.relay_addr, username=f"{self.ufrag}:{self.relay_ufrag}", password=self.pwd)

    # --- in process, against a sans-IO relay ----------------------------------------------

    @classmethod
    def join(
        cls,
        media: MediaService,
        human: Session,
        wire: Wire,
        addr: tuple[str, int] = BROWSER_ADDR,
        *,
        certificate: DtlsCertificate | None = None,
        receive_tracks: int = 1,
    ) -> Browser:
        """Offer to ``media`` for ``human`` and keep its answer; the browser then talks to ``media.relay`` from ``addr``.

        Args:
            certificate: the browser's (a new one when None; browsers may share one).
            receive_tracks: downstream tracks to offer (group calls; :func:`browser_offer`).
        """
        certificate = certificate or DtlsCertificate.generate()
        browser = cls(media.add_browser(human, browser_offer(certificate, receive_tracks)), certificate)
        browser.receive_tracks = receive_tracks
        browser.relay, browser.wire, browser.addr, browser.human = media.relay, wire, addr, human
        return browser

    def offer(self, *, ice_restart: bool = False) -> str:
        """This browser's next offer on the same peer connection (same certificate).

        Args:
            ice_restart: new ICE credentials of the browser's, as ``restartIce()``
                makes (RFC 8839 §4.4.1.1.1); they are used from now on.
        """
        if ice_restart:
            self.ufrag, self.pwd = secrets.token_hex(4), secrets.token_hex(12)
        offer = browser_offer(self.certificate, self.receive_tracks)
        return offer.replace(f"a=ice-ufrag:{OFFER_UFRAG}", f"a=ice-ufrag:{self.ufrag}").replace(f"a=ice-pwd:{OFFER_PWD}", f"a=ice-pwd:{self.pwd}")

    def renegotiate(self, media: MediaService, offer: str | None = None, *, restart_ice: Callable[[], Session] | None = None) -> str:
        """Send ``offer`` (default: :meth:`offer`) for this browser's session; adopt the answer's credentials.

        Returns:
            The relay's answer.
        """
        if self.human is None:
            raise RuntimeError("this browser was not joined in process (Browser.join)")
        answer = media.add_browser(self.human, offer if offer is not None else self.offer(), restart_ice=restart_ice)
        self.answer = answer
        self.relay_ufrag = sdp_value(answer, r"a=ice-ufrag:(\S+)")
        self.relay_pwd = sdp_value(answer, r"a=ice-pwd:(\S+)")
        return answer

    def _in_process(self) -> tuple[MediaRelay, Wire]:
        if self.relay is None or self.wire is None:
            raise RuntimeError("this browser was not joined in process (Browser.join)")
        return self.relay, self.wire

    def ice_check(self, addr=None, now=0.0, password=None, use_candidate=True, answer=True, request=None) -> list[bytes]:
        """A check of ours; the relay's checks in the replies are answered (unless not ``answer``).

        Returns:
            What else came back (the success response, or an error).
        """
        relay, wire = self._in_process()
        addr = addr or self.addr
        relay.handle_datagram(request or self.request(password, use_candidate), addr, now)
        replies = wire.take(addr)
        return self.answer_checks(replies, addr, now) if answer else replies

    def answer_checks(self, datagrams: list[bytes], addr=None, now=0.0) -> list[bytes]:
        """Answer the relay's checks among ``datagrams``; returns the others."""
        relay, _ = self._in_process()
        addr = addr or self.addr
        rest = []
        for data in datagrams:
            if is_check(data):
                relay.handle_datagram(self.answer_check(data), addr, now)
            else:
                rest.append(data)
        return rest

    def handshake(self, now: float = 0.0) -> SrtpContext:
        """The DTLS handshake with the relay in process, in lock step; then the SRTP context.

        Raises:
            RuntimeError: no keys after ``HANDSHAKE_ROUNDS`` round trips.
        """
        relay, wire = self._in_process()
        flights = self.dtls.start(now)
        for _ in range(HANDSHAKE_ROUNDS):
            for datagram in flights:
                relay.handle_datagram(datagram, self.addr, now)
            flights = []
            for reply in wire.take(self.addr):
                flights += self.receive_handshake(reply, now)
            if self.dtls.srtp_keys is not None and not flights:
                break
        return self.srtp_from_handshake()

    # --- over a UDP socket ----------------------------------------------------------------

    def handshake_udp(self, timeout: float = HANDSHAKE_TIMEOUT) -> SrtpContext:
        """The DTLS handshake with the relay over ``sock``, on the wall clock; then the SRTP context.

        Raises:
            RuntimeError: not connected within ``timeout``.
        """
        dtls, sock, relay_addr = self.dtls, self.sock, self.relay_addr
        if sock is None:
            raise RuntimeError("this browser has no socket")
        now = time.monotonic
        deadline = now() + timeout
        for datagram in dtls.start(now()):
            sock.sendto(datagram, relay_addr)
        while dtls.state is not DtlsState.CONNECTED:
            if now() > deadline or dtls.state is DtlsState.FAILED:
                raise RuntimeError(f"DTLS handshake failed: {dtls.state} {dtls.failure_reason}")
            wake = dtls.next_deadline()
            wait = max(0.0, min(deadline, wake if wake is not None else deadline) - now())
            if wait_readable(sock, wait):
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                out = self.receive_handshake(data, now())
            else:
                out = dtls.handle_timeout(now())
            for datagram in out:
                sock.sendto(datagram, relay_addr)
        return self.srtp_from_handshake()

    # --- the handshake, whatever carries it ------------------------------------------------

    def receive_handshake(self, data: bytes, now: float) -> list[bytes]:
        """The DTLS client's flights in reply to one datagram from the relay.

        Anything but DTLS (a late STUN answer, early media) gets none.

        Raises:
            DtlsError: the datagram was dropped, or the handshake failed (``dtls.state``).
        """
        return self.dtls.receive_untrusted(data, now) if is_dtls(data) else []

    def srtp_from_handshake(self) -> SrtpContext:
        """The SRTP context of the finished handshake, kept as ``srtp``.

        Raises:
            RuntimeError: the handshake has not finished.
        """
        if self.dtls.srtp_keys is None:
            raise RuntimeError(f"DTLS handshake did not complete: {self.dtls.state} {self.dtls.failure_reason}")
        self.srtp = SrtpContext.from_keys(self.dtls.srtp_keys)
        return self.srtp
