"""The relay's per-packet work on browser (SRTP) and bot legs, sans-IO, timed.

What ``python -m bench.srtp_hot_path`` prints and what a test runs at a tiny
size (``tests/webrtc/test_webrtc.py``): no sockets and no Trio,
``MediaRelay.handle_datagram`` is called directly, in one process on one core,
the way the transport's read loop calls it. Each call is one room with one UDP
bot and one simulated browser (:class:`tests.kit.browser.Browser`) whose leg
went through a real ICE-lite check and a real DTLS 1.2 handshake, so the
relay's SRTP contexts are real libsrtp ones with the negotiated profile. See
``bench/srtp_hot_path.py`` for the directions and what is checked.
"""

from __future__ import annotations

import gc
import struct
import time
from dataclasses import dataclass

from botcall.relay.core import MediaRelay
from botcall.relay.service import MediaService
from botcall.signaling.rooms import Session
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.srtp import SrtpContext
from tests.kit.browser import BROWSER_SEND_SSRC, Browser
from tests.kit.relay import Wire, latch, make_session

RTP_HEADER = struct.Struct("!BBHII")
PAYLOAD = bytes(range(160))
DIRECTIONS = ("bot->bot", "bot->browser", "browser->bot")
FRAME = 0.020


def _session(name: str, kind: str, transport: str, ssrc: int, room_id: str) -> Session:
    return make_session(name, kind, transport, ssrc, room_id=room_id, controller="bench", issuer="bench")


@dataclass
class Flow:
    """One direction of one call: who sends from where, with what SSRC, to whom."""

    source: tuple[str, int]
    dest: tuple[str, int]
    ssrc: int
    protect: object | None = None
    seq: int = 0


class World:
    """``calls`` bot↔browser rooms and ``calls`` bot↔bot rooms on one sans-IO relay.

    Args:
        calls: rooms of each kind.
    """

    def __init__(self, calls: int) -> None:
        self.wire = Wire()
        self.relay = MediaRelay(self.wire.transmit, max_handshakes=calls + 1)
        certificate = DtlsCertificate.generate()
        self.media = MediaService(self.relay, self.wire.transmit, certificate=certificate, hosts=("127.0.0.1",), port=40000)
        browser_cert = DtlsCertificate.generate()
        self.flows: dict[str, list[Flow]] = {direction: [] for direction in DIRECTIONS}
        self.browser_srtp: dict[tuple[str, int], SrtpContext] = {}
        port = 20000
        for index in range(calls):
            room = f"call-{index}"
            bot = _session(f"bot{index}", "bot", "udp", 0x10000 + index, room)
            bot_addr = ("127.0.0.1", port)
            self._add_bot(bot, bot_addr)
            human = _session(f"human{index}", "human", "webrtc", 0x20000 + index, room)
            browser_addr = ("127.0.0.1", port + 1)
            srtp = self._add_browser(human, browser_cert, browser_addr)
            self.browser_srtp[browser_addr] = srtp
            self.flows["bot->browser"].append(Flow(bot_addr, browser_addr, bot.ssrc))
            self.flows["browser->bot"].append(Flow(browser_addr, bot_addr, BROWSER_SEND_SSRC, protect=srtp.protect))
            pair = f"pair-{index}"
            speaker = _session(f"speaker{index}", "bot", "udp", 0x30000 + index, pair)
            listener = _session(f"listener{index}", "bot", "udp", 0x40000 + index, pair)
            speaker_addr, listener_addr = ("127.0.0.1", port + 2), ("127.0.0.1", port + 3)
            self._add_bot(speaker, speaker_addr)
            self._add_bot(listener, listener_addr)
            self.flows["bot->bot"].append(Flow(speaker_addr, listener_addr, speaker.ssrc))
            port += 4
        self.wire.clear()

    @property
    def sent(self) -> list[tuple[bytes, tuple[str, int]]]:
        """What the relay transmitted since the last run started."""
        return self.wire.sent

    def _add_bot(self, session: Session, addr: tuple[str, int]) -> None:
        self.media.add_session(session)
        latch(self.relay, self.wire, session, addr, bot_ufrag="bench")
        self.wire.clear()

    def _add_browser(self, session: Session, certificate: DtlsCertificate, addr: tuple[str, int]) -> SrtpContext:
        browser = Browser.join(self.media, session, self.wire, addr, certificate=certificate)
        browser.ice_check()
        srtp = browser.handshake()
        self.wire.clear()
        return srtp

    def packets(self, direction: str, count: int, start: float) -> list[tuple[bytes, tuple[str, int], float]]:
        """``count`` datagrams round-robin over the direction's flows, numbered on.

        Each flow sends one packet per 20 ms frame from ``start`` on (the
        relay's per-speaker rate limit sees a real talker).
        """
        flows = self.flows[direction]
        out = []
        for index in range(count):
            flow = flows[index % len(flows)]
            flow.seq += 1
            packet = RTP_HEADER.pack(0x80, 111, flow.seq & 0xFFFF, (flow.seq * 960) & 0xFFFFFFFF, flow.ssrc) + PAYLOAD
            data = flow.protect(packet) if flow.protect is not None else packet
            out.append((data, flow.source, start + index // len(flows) * FRAME))
        return out

    def run(self, direction: str, count: int, start: float) -> float:
        """Seconds to route ``count`` packets of ``direction`` (the clock covers only the routing)."""
        batch = self.packets(direction, count, start)
        handle = self.relay.handle_datagram
        self.wire.clear()
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            for data, addr, now in batch:
                handle(data, addr, now)
            elapsed = time.perf_counter() - started
        finally:
            gc.enable()
        self.check(direction, count)
        return elapsed

    def check(self, direction: str, count: int) -> None:
        """Every packet of the last run went where it should, intact (raises otherwise)."""
        flows = self.flows[direction]
        if len(self.sent) != count:
            raise RuntimeError(f"{direction}: {len(self.sent)} of {count} packets left the relay; {self.relay.counters}")
        destinations = {flow.dest for flow in flows}
        if any(dest not in destinations for _, dest in self.sent):
            raise RuntimeError(f"{direction}: a packet went to a stranger")
        data, dest = self.sent[-1]
        if direction == "bot->browser":
            data = self.browser_srtp[dest].unprotect_untrusted(data)
        if data[12:] != PAYLOAD:
            raise RuntimeError(f"{direction}: the payload changed on the way")


def measure(calls: int, packets: int, repeat: int) -> dict[str, float]:
    """Best microseconds per packet of each direction with ``calls`` calls."""
    world = World(calls)
    best = {direction: float("inf") for direction in DIRECTIONS}
    start = 1.0
    for _ in range(repeat):
        for direction in DIRECTIONS:
            best[direction] = min(best[direction], world.run(direction, packets, start) / packets * 1e6)
            # One packet per flow per frame: the floor never changes hands.
            start += FRAME * (packets // calls + 1)
    return best
