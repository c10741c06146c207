"""The relay's routing core: who may send, and where each packet goes.

Sans-IO. The Trio shell (``transport.py``) owns the UDP socket; it hands every
datagram to :meth:`MediaRelay.handle_datagram` with the source address and the
time, and gives the relay a ``transmit(data, addr)`` callable for what goes out.
WebSocket bots and browsers plug in through :class:`Sink` objects.

Per-packet work on the hot path is a dict lookup by source address, three byte
comparisons (first byte, SSRC, payload type) and one ``transmit`` per
subscriber, found in the speaker's precomputed ``fanout``. Bot SSRCs are
assigned by the server at join time and unique in a room, so forwarded RTP
keeps its bytes: no rewrite, no copy.

Drops are counted in ``MediaRelay.counters`` (a ``collections.Counter``) under
the reason's name, and per peer in ``MediaPeer.drops``.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass, field
from typing import Callable, Protocol

from botcall.errors import BadPacket
from botcall.rtp import ice_lite
from botcall.rtp.demux import PacketKind, classify
from botcall.rtp.rtcp import (
    Bye,
    GenericNack,
    PictureLossIndication,
    ReceiverReport,
    RtcpFeedback,
    Sdes,
    SenderReport,
    parse_rtcp_compound_untrusted,
)

Address = tuple  # (host, port) as the socket module gives it
Transmit = Callable[[bytes, Address], None]

_SSRC_AT_4 = struct.Struct("!I")
# classify() answered for every first byte ahead of time: the hot path indexes a
# tuple instead of calling a function and comparing enums (RFC 7983 §7).
_IS_RTP = tuple(classify(first) is PacketKind.RTP for first in range(256))
RTP_MIN_SIZE = 12
# Opus packets this large carry sound; silence and DTX frames are a few bytes
# (RFC 6716 §2.1.9). Cheaper than decoding, good enough for a "speaking" light.
VOICE_MIN_SIZE = 12 + 24
# A speaker's packets per second beyond which the rest are dropped (counted
# "rate_limited"): 20 ms Opus is 50/s; browsers may use 10 ms frames (100/s).
MAX_PACKETS_PER_SECOND = 200
SPEAKING_HOLD = 0.4
SPEAKING_SWEEP = 0.1
RTCP_MIN_SIZE = 8
MAX_DATAGRAM = 1500


def rtcp_sender_ssrcs(packet) -> tuple[int, ...]:
    """The SSRCs an RTCP packet speaks for (RFC 3550 §6.4-6.6, RFC 4585 §6.1)."""
    if isinstance(packet, (SenderReport, ReceiverReport)):
        return (packet.ssrc,)
    if isinstance(packet, (GenericNack, PictureLossIndication, RtcpFeedback)):
        return (packet.sender_ssrc,)
    if isinstance(packet, Sdes):
        return tuple(chunk.ssrc for chunk in packet.chunks)
    if isinstance(packet, Bye):
        return packet.ssrcs
    return ()


class Sink(Protocol):
    """Where a peer's incoming audio goes (a UDP address, a WebSocket, a browser)."""

    def deliver_rtp(self, data: bytes, speaker: "MediaPeer", now: float) -> None:
        """Take one plain RTP packet from ``speaker`` (its bytes are not to be modified)."""

    def deliver_rtcp(self, data: bytes, speaker: "MediaPeer", now: float) -> None:
        """Take one plain RTCP compound packet relayed from ``speaker``."""


@dataclass(eq=False, slots=True)
class MediaPeer:
    """One participant's media endpoint in the relay.

    Attributes:
        session_id: the secret session id (never sent to other participants).
        participant_id: the public id other participants see.
        room_id: the room this peer is in.
        ssrc: the SSRC the server assigned; the only one accepted from this peer.
        payload_type: the only RTP payload type accepted from this peer.
        ice_ufrag / ice_pwd: STUN credentials (UDP and WebRTC peers).
        addr: the latched/selected UDP address, or None.
        sink: where audio for this peer goes.
        muted: drop this peer's audio (counted as ``muted``).
        speaks_udp: its audio arrives as datagrams (False for WebSocket bots).
    """

    session_id: str
    participant_id: str
    room_id: str
    ssrc: int
    payload_type: int
    sink: Sink
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    speaks_udp: bool = True
    addr: Address | None = None
    muted: bool = False
    ice: ice_lite.IceLiteState | None = None
    ssrc_bytes: bytes = b""
    bound_addrs: set = field(default_factory=set)
    last_voice: float = -1e9
    speaking: bool = False
    window_start: float = -1e9
    window_packets: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    drops: collections.Counter = field(default_factory=collections.Counter)
    # The sinks of the other peers in the room, rebuilt by the relay whenever
    # the room's membership changes: forwarding walks it without a room lookup.
    # So a peer's sink is set before add_peer and never swapped while it is in.
    fanout: tuple = ()
    # The datagram handler for this peer when it needs one that is not plain
    # RTP (a browser: SRTP and DTLS). Set by the WebRTC bridge.
    secure: object | None = None

    def __post_init__(self) -> None:
        self.ssrc_bytes = _SSRC_AT_4.pack(self.ssrc)


class UdpSink:
    """Deliver plain RTP/RTCP to a bot's latched UDP address."""

    __slots__ = ("peer", "_transmit")

    def __init__(self, transmit: Transmit) -> None:
        self.peer: MediaPeer | None = None
        self._transmit = transmit

    def deliver_rtp(self, data: bytes, speaker: MediaPeer, now: float) -> None:
        peer = self.peer
        addr = peer.addr
        if addr is None:
            peer.drops["not_latched"] += 1
            return
        peer.tx_packets += 1
        self._transmit(data, addr)

    deliver_rtcp = deliver_rtp


class MediaRelay:
    """Sessions, latching and forwarding for one UDP media port.

    Args:
        transmit: sends one datagram; the shell's non-blocking ``sendto`` with a
            bounded per-destination backlog.
        consent_timeout: seconds without a valid STUN binding before a peer's
            address is forgotten (RFC 7675 §5.1 uses 30 s).
        max_peers: hard cap on peers (the registry caps sessions too; this is
            the media layer's own bound).
        max_handshakes: DTLS handshakes in progress at once; a browser's
            ClientHello beyond it is dropped (it retransmits).
        max_packets_per_second: a speaker's RTP beyond this rate is dropped.
    """

    def __init__(
        self,
        transmit: Transmit,
        *,
        consent_timeout: float = 30.0,
        max_peers: int = 20000,
        max_handshakes: int = 64,
        max_packets_per_second: int = MAX_PACKETS_PER_SECOND,
    ) -> None:
        self.transmit = transmit
        self.max_packets_per_second = max_packets_per_second
        self.consent_timeout = consent_timeout
        self.max_peers = max_peers
        self.max_handshakes = max_handshakes
        # Secure legs with a running DTLS timer (handshakes in progress).
        self.timed: set = set()
        self.counters: collections.Counter = collections.Counter()
        self._by_session: dict[str, MediaPeer] = {}
        self._by_ufrag: dict[str, MediaPeer] = {}
        self._by_addr: dict[Address, MediaPeer] = {}
        self._rooms: dict[str, list[MediaPeer]] = {}
        self._next_sweep = 0.0
        self._next_speaking_sweep = 0.0
        # Peers whose "speaking" may change: those speaking now and those that
        # sent sound since the last sweep. Only these are swept, so an idle
        # relay does no per-peer work ten times a second.
        self._voiced: set[MediaPeer] = set()
        # Called with (peer, speaking) when a peer starts or stops sending sound.
        self.on_speaking: Callable[[MediaPeer, bool], None] | None = None
        # Called when next_deadline() moved earlier outside handle_timeout (a
        # DTLS handshake started, a silent relay heard sound), so the shell's
        # timer can sleep until the deadline instead of polling.
        self.wake: Callable[[], None] | None = None

    # --- membership ----------------------------------------------------------------

    def add_peer(self, peer: MediaPeer, *, nominate_on: str = "any") -> MediaPeer:
        """Register a peer; it sends and receives once its address is proven.

        Raises:
            ValueError: duplicate session or ufrag, or the relay is full.
        """
        if peer.session_id in self._by_session:
            raise ValueError(f"session {peer.session_id!r} already in the relay")
        if len(self._by_session) >= self.max_peers:
            raise ValueError("media relay is full")
        if peer.ice_ufrag is not None:
            if peer.ice_ufrag in self._by_ufrag:
                raise ValueError("ice_ufrag already in use")
            peer.ice = ice_lite.IceLiteState(consent_timeout=self.consent_timeout, nominate_on=nominate_on)
            self._by_ufrag[peer.ice_ufrag] = peer
        self._by_session[peer.session_id] = peer
        self._rooms.setdefault(peer.room_id, []).append(peer)
        if isinstance(peer.sink, UdpSink):
            peer.sink.peer = peer
        self._rebuild_fanout(peer.room_id)
        return peer

    def remove_peer(self, session_id: str) -> MediaPeer | None:
        """Forget a peer (leave, kick, expiry). Unknown ids are ignored."""
        peer = self._by_session.pop(session_id, None)
        if peer is None:
            return None
        self.timed.discard(peer.secure)
        self._voiced.discard(peer)
        if peer.ice_ufrag is not None:
            self._by_ufrag.pop(peer.ice_ufrag, None)
        self._unlatch(peer)
        room = self._rooms.get(peer.room_id)
        if room is not None:
            room.remove(peer)
            if not room:
                del self._rooms[peer.room_id]
        peer.fanout = ()
        self._rebuild_fanout(peer.room_id)
        return peer

    def _rebuild_fanout(self, room_id: str) -> None:
        room = self._rooms.get(room_id, ())
        for peer in room:
            peer.fanout = tuple(other.sink for other in room if other is not peer)

    def peer(self, session_id: str) -> MediaPeer | None:
        return self._by_session.get(session_id)

    def room_peers(self, room_id: str) -> list[MediaPeer]:
        return list(self._rooms.get(room_id, ()))

    def all_peers(self) -> list[MediaPeer]:
        return list(self._by_session.values())

    def peer_count(self) -> int:
        return len(self._by_session)

    def handshakes_in_progress(self) -> int:
        return len(self.timed)

    def set_muted(self, session_id: str, muted: bool) -> None:
        peer = self._by_session.get(session_id)
        if peer is not None:
            peer.muted = muted

    # --- the datagram path -----------------------------------------------------------

    def handle_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Route one datagram from the UDP socket. Never raises."""
        if not data:
            self.counters["empty"] += 1
            return
        first = data[0]
        if _IS_RTP[first]:
            peer = self._by_addr.get(addr)
            if peer is None:
                self.counters["unknown_source"] += 1
                return
            if peer.secure is not None:
                peer.secure.handle_media(data, addr, now)
                return
            if len(data) < RTCP_MIN_SIZE:
                self._drop(peer, "malformed_rtp")
            elif 192 <= data[1] <= 223:
                self.handle_rtcp(peer, data, now)
            else:
                self.handle_rtp(peer, data, now)
            return
        kind = classify(first)
        if kind is PacketKind.STUN:
            self._handle_stun(data, addr, now)
        elif kind is PacketKind.DTLS:
            peer = self._by_addr.get(addr)
            if peer is None or peer.secure is None:
                # RFC 7983 DTLS from an address ICE has not validated: ignored,
                # which defeats the ClientHello race (CVE-2023-51443).
                self.counters["dtls_unvalidated_source"] += 1
                return
            handshakes = len(self.timed)
            peer.secure.handle_dtls(data, addr, now)
            if len(self.timed) > handshakes and self.wake is not None:
                self.wake()  # a retransmission timer started
        else:
            self.counters["unknown_kind"] += 1

    def handle_rtp(self, peer: MediaPeer, data: bytes, now: float) -> None:
        """Check one plain RTP packet from ``peer`` and forward it to the room.

        Used for UDP datagrams and for RTP that arrived another way (a
        WebSocket bot, a browser after SRTP) once the caller knows the peer.
        """
        if len(data) < RTP_MIN_SIZE or data[0] >> 6 != 2:
            self._drop(peer, "malformed_rtp")
            return
        if data[8:12] != peer.ssrc_bytes:
            self._drop(peer, "wrong_ssrc")
            return
        if data[1] & 0x7F != peer.payload_type:
            self._drop(peer, "wrong_payload_type")
            return
        if peer.muted:
            self._drop(peer, "muted")
            return
        if now - peer.window_start >= 1.0:
            peer.window_start = now
            peer.window_packets = 0
        peer.window_packets += 1
        if peer.window_packets > self.max_packets_per_second:
            # One peer flooding valid packets must not flood everyone it reaches.
            self._drop(peer, "rate_limited")
            return
        peer.rx_packets += 1
        peer.rx_bytes += len(data)
        if len(data) >= VOICE_MIN_SIZE:
            peer.last_voice = now
            if not peer.speaking and peer not in self._voiced:
                self._start_voice(peer)
        for sink in peer.fanout:
            sink.deliver_rtp(data, peer, now)

    def handle_rtcp(self, peer: MediaPeer, data: bytes, now: float) -> None:
        """Validate a plain RTCP compound packet from ``peer`` and relay it.

        Every packet in it must parse, and its sender SSRC must be the peer's
        own (RFC 3550 §6.4: the first SSRC of SR/RR/SDES/BYE/feedback is the
        sender's); then the compound goes to the other participants, whose
        streams the reports describe. A translator that keeps SSRCs may do this
        (RFC 3550 §7.2).
        """
        try:
            packets = parse_rtcp_compound_untrusted(data)
        except BadPacket as exc:
            self._drop(peer, exc.counter)
            return
        for packet in packets:
            if any(ssrc != peer.ssrc for ssrc in rtcp_sender_ssrcs(packet)):
                self._drop(peer, "wrong_ssrc_rtcp")
                return
        self.counters["rtcp_relayed"] += 1
        for sink in peer.fanout:
            sink.deliver_rtcp(data, peer, now)

    def _handle_stun(self, data: bytes, addr: Address, now: float) -> None:
        try:
            outcome = ice_lite.answer_binding_untrusted(data, addr, self._password_for)
        except BadPacket as exc:
            self.counters[exc.counter] += 1
            return
        if outcome.reply is not None:
            self.transmit(outcome.reply, addr)
        self.counters[outcome.reason] += 1
        if not outcome.authenticated:
            return
        peer = self._by_ufrag[outcome.ufrag]
        update = peer.ice.on_valid_request(addr, outcome.use_candidate, now, transaction_id=outcome.transaction_id)
        if update.replayed:
            self.counters["stun_replayed"] += 1
            return
        if peer.secure is not None and update.new_candidate:
            # A browser may send DTLS and SRTP from any address ICE validated.
            self._bind(peer, addr)
        if update.changed and update.selected is not None:
            self._latch(peer, update.selected)

    def _password_for(self, ufrag: str) -> str | None:
        peer = self._by_ufrag.get(ufrag)
        return None if peer is None else peer.ice_pwd

    def _bind(self, peer: MediaPeer, addr: Address) -> None:
        holder = self._by_addr.get(addr)
        if holder is not None and holder is not peer:
            # Another session proved this address earlier; the newer proof wins.
            holder.bound_addrs.discard(addr)
            if holder.addr == addr:
                holder.addr = None
            self.counters["address_taken_over"] += 1
        self._by_addr[addr] = peer
        peer.bound_addrs.add(addr)
        if peer.ice is not None and len(peer.bound_addrs) > len(peer.ice.candidates) + 1:
            # Keep the address table bounded by the ICE candidate table.
            keep = set(peer.ice.candidates)
            for stale in [a for a in peer.bound_addrs if a not in keep and a != addr]:
                peer.bound_addrs.discard(stale)
                if self._by_addr.get(stale) is peer:
                    del self._by_addr[stale]

    def _latch(self, peer: MediaPeer, addr: Address) -> None:
        old = peer.addr
        if old is not None and old != addr:
            self.counters["rebound"] += 1
            if peer.secure is None:
                peer.bound_addrs.discard(old)
                if self._by_addr.get(old) is peer:
                    del self._by_addr[old]
        self._bind(peer, addr)
        peer.addr = addr
        self.counters["latched"] += 1

    def _unlatch(self, peer: MediaPeer) -> None:
        for addr in peer.bound_addrs:
            if self._by_addr.get(addr) is peer:
                del self._by_addr[addr]
        peer.bound_addrs.clear()
        peer.addr = None

    def _drop(self, peer: MediaPeer, reason: str) -> None:
        peer.drops[reason] += 1
        self.counters[reason] += 1

    # --- time -------------------------------------------------------------------------

    def _start_voice(self, peer: MediaPeer) -> None:
        if not self._voiced and self.wake is not None:
            self.wake()  # the speaking sweep has work again
        self._voiced.add(peer)

    def next_deadline(self) -> float:
        """When :meth:`handle_timeout` next has work: the consent sweep once a
        second, the speaking sweep ten times a second while anyone may be
        speaking, DTLS retransmissions and handshake deadlines."""
        deadline = self._next_sweep
        if self._voiced:
            deadline = min(deadline, self._next_speaking_sweep)
        for leg in self.timed:
            leg_deadline = leg.dtls.next_deadline()
            if leg_deadline is not None and leg_deadline < deadline:
                deadline = leg_deadline
        return deadline

    def _sweep_speaking(self, now: float) -> None:
        callback = self.on_speaking
        for peer in list(self._voiced):
            speaking = now - peer.last_voice < SPEAKING_HOLD and not peer.muted
            if not speaking:
                self._voiced.discard(peer)
            if speaking != peer.speaking:
                peer.speaking = speaking
                if callback is not None:
                    callback(peer, speaking)

    def handle_timeout(self, now: float) -> None:
        """Drive DTLS timers; expire peers whose consent lapsed (RFC 7675)."""
        for leg in list(self.timed):
            leg.handle_timeout(now)
        if self._voiced and now >= self._next_speaking_sweep:
            self._next_speaking_sweep = now + SPEAKING_SWEEP
            self._sweep_speaking(now)
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for peer in self._by_ufrag.values():
            if peer.ice is not None and peer.addr is not None and peer.ice.expired(now):
                self._unlatch(peer)
                peer.ice.reset()
                self.counters["consent_expired"] += 1
