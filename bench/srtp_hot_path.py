"""Sans-IO cost of the relay's per-packet work on browser (SRTP) legs, against bot legs.

Usage (from the repository root; both forms work)::

    python -m bench.srtp_hot_path [--calls 1,500] [--packets 20000] [--repeat 30]
    python bench/srtp_hot_path.py [...]

No sockets and no Trio: ``MediaRelay.handle_datagram`` is called directly, in
one process on one core, the way the transport's read loop calls it. Each call
is one room with one UDP bot and one browser whose leg went through a real
ICE-lite check and a real DTLS 1.2 handshake (the browser side is our own
``DtlsEndpoint`` in the client role, offering what Chrome 156 offered), so the
relay's SRTP contexts are real libsrtp ones with the negotiated profile
(AEAD_AES_128_GCM). The directions, microseconds per packet, best of
``--repeat`` runs:

* ``bot->bot``: the reference, plain RTP between two bots of a room (separate
  rooms of two bots, as many as calls);
* ``bot->browser``: a bot's RTP through ``WebRtcSink.deliver_rtp``: floor,
  ``OutboundStream.rewrite``, ``SrtpContext.protect``, transmit;
* ``browser->bot``: a browser's SRTP through ``WebRtcLeg.handle_media``:
  ``unprotect_untrusted``, SSRC/payload type rewrite, ``MediaRelay.handle_rtp``
  and the bot's sink.

Packets (172 bytes: 12-byte header and a 160-byte payload) go round-robin over
the calls, each flow numbering on from the previous run so libsrtp's replay
checks pass; the browser's protect happens before the clock starts. ``transmit``
appends to a list; after the runs every direction's output is checked (count,
destination, and for the browser a sample unprotected back to the bot's
payload), so a broken path cannot post a fast number. Garbage collection is
off while the clock runs (the relay's allocation pattern, not the collector's
schedule, is what this measures).
"""

from __future__ import annotations

import argparse
import gc
import re
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from botcall.relay.service import MediaService
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.dtls.endpoint import DtlsEndpoint
from botcall.relay.core import MediaRelay
from botcall.webrtc.srtp import SrtpContext
from botcall.wire.stun import answer_check_untrusted, binding_request
from botcall.signaling.rooms import Capabilities, Identity, MediaSpec, Session

OFFER_TEMPLATE = Path(__file__).resolve().parent.parent / "tests" / "signaling" / "data" / "chrome156_mic.sdp"
RTP_HEADER = struct.Struct("!BBHII")
PAYLOAD = bytes(range(160))
BROWSER_SEND_SSRC = 1951877580  # the offer's a=ssrc: what Chrome sends with
# The offer's a=ice-ufrag / a=ice-pwd: the relay's checks to the browser use them.
OFFER_UFRAG, OFFER_PWD = "Lvk6", "MJmqww8YhsywZZuK2KigpCDG"
RELAY_ADDR = ("127.0.0.1", 40000)
DIRECTIONS = ("bot->bot", "bot->browser", "browser->bot")
FRAME = 0.020


def _session(name: str, kind: str, transport: str, ssrc: int, room_id: str) -> Session:
    identity = (
        Identity.human(name)
        if kind == "human"
        else Identity.bot(agent_id=name, controller="bench", issuer="bench", scopes=("call:voice",))
    )
    return Session(
        session_id=f"sess-{name}",
        room_id=room_id,
        participant_id=f"p-{name}",
        kind=kind,
        identity=identity,
        media=MediaSpec(transport=transport),
        capabilities=Capabilities(),
        ssrc=ssrc,
        ice_ufrag=f"uf{name}",
        ice_pwd=f"pwd{name}0123456789abcdefghij",
        created_at=0.0,
        expires_at=1e12,
    )


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
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.relay = MediaRelay(self._transmit, max_handshakes=calls + 1)
        certificate = DtlsCertificate.generate()
        self.media = MediaService(self.relay, self._transmit, certificate=certificate, host="127.0.0.1", port=40000)
        browser_cert = DtlsCertificate.generate()
        offer = re.sub(
            r"a=fingerprint:[^\r\n]*", f"a=fingerprint:{browser_cert.fingerprint}", OFFER_TEMPLATE.read_text()
        )
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
            srtp = self._add_browser(human, offer, browser_cert, browser_addr)
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
        self.sent.clear()

    def _transmit(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def _answer_checks(self, addr: tuple[str, int], username: str, password: str) -> None:
        """Answer the relay's checks to ``addr`` (its proof that the address receives)."""
        checks = [data for data, dest in self.sent if dest == addr and data[:2] == b"\x00\x01"]
        self.sent.clear()
        for check in checks:
            self.relay.handle_datagram(answer_check_untrusted(check, RELAY_ADDR, username=username, password=password), addr, 0.0)

    def _add_bot(self, session: Session, addr: tuple[str, int]) -> None:
        self.media.add_session(session)
        request = binding_request(f"{session.ice_ufrag}:bench", session.ice_pwd)
        self.sent.clear()
        self.relay.handle_datagram(request, addr, 0.0)
        self._answer_checks(addr, f"bench:{session.ice_ufrag}", session.ice_pwd)
        self.relay.handle_datagram(request, addr, 0.0)

    def _add_browser(self, session: Session, offer: str, certificate: DtlsCertificate, addr) -> SrtpContext:
        answer = self.media.add_browser(session, offer)
        fingerprint = re.search(r"a=fingerprint:([^\r\n]+)", answer).group(1)
        check = binding_request(
            f"{session.ice_ufrag}:Lvk6", session.ice_pwd, use_candidate=True, controlling=True, priority=2130706431
        )
        self.sent.clear()
        self.relay.handle_datagram(check, addr, 0.0)
        self._answer_checks(addr, f"{OFFER_UFRAG}:{session.ice_ufrag}", OFFER_PWD)
        dtls = DtlsEndpoint(role="client", certificate=certificate, remote_fingerprint=fingerprint)
        flights = dtls.start(0.0)
        while flights:
            self.sent.clear()
            for datagram in flights:
                self.relay.handle_datagram(datagram, addr, 0.0)
            replies = [data for data, dest in self.sent if dest == addr and 20 <= data[0] <= 63]
            flights = [out for reply in replies for out in dtls.receive_untrusted(reply, 0.0)]
        if dtls.srtp_keys is None:
            raise RuntimeError(f"DTLS handshake did not complete: {dtls.state} {dtls.failure_reason}")
        return SrtpContext.from_keys(dtls.srtp_keys)

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
        self.sent.clear()
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,500", help="comma-separated call counts")
    parser.add_argument("--packets", type=int, default=20_000, help="packets per run and direction")
    parser.add_argument("--repeat", type=int, default=30, help="runs per cell; the fastest is printed")
    args = parser.parse_args(argv)
    print(f"172-byte RTP, {args.packets} packets per run, best of {args.repeat} runs, µs per packet (sans-IO)")
    print(f"{'calls':>6}" + "".join(f"{direction:>14}" for direction in DIRECTIONS))
    for calls in (int(value) for value in args.calls.split(",")):
        best = measure(calls, args.packets, args.repeat)
        print(f"{calls:>6}" + "".join(f"{best[direction]:>14.2f}" for direction in DIRECTIONS))


if __name__ == "__main__":
    main()
