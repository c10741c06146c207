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

Return routability: nothing is sent to an address, and no session moves to
one, before the address has answered the relay's own STUN check (see
``ice_lite``). A bot's Binding request from an unverified address gets the
check *instead of* the success (one datagram out per datagram in, never
larger); a browser's gets the check and then the success (browsers need the
answer to go on). RTP or RTCP from an unknown address with the SSRC of a
latched UDP bot gets a check too (a NAT rebinding), rate-limited per peer.
None of this touches the path of a packet from a known source address.
"""

from __future__ import annotations

import collections
import secrets
import struct
from dataclasses import dataclass, field
from typing import Callable, Protocol, cast

from botcall.audio.opus import packet_samples_untrusted, stream_ms
from botcall.errors import BadPacket
from botcall.audio.vad import SpeechEvent, SpeechStarted
from botcall.relay.bot_playout import BotPlayout, Cleared, MarkReached, Push
from botcall.relay.speech import MAX_DECODERS, SpeechBudget, SpeechTracker
from botcall.webrtc import ice_lite
from botcall.wire.rtp import payload_offset_untrusted
from botcall.wire.demux import RTCP_BY_SECOND_BYTE, PacketKind, classify
from botcall.wire.stun import PEER_REFLEXIVE_PRIORITY, Class, Message, Method, binding_check, check_size, parse_stun_untrusted
from botcall.wire.rtcp import (
    Bye,
    GenericNack,
    PictureLossIndication,
    ReceiverReport,
    RtcpFeedback,
    RtcpPacket,
    Sdes,
    SenderReport,
    parse_rtcp_compound_untrusted,
)

Address = tuple[str, int]  # (host, port) as the socket module gives it
Transmit = Callable[[bytes, Address], None]

_SSRC_AT_4 = struct.Struct("!I")
_U32_AT = struct.Struct("!I").unpack_from

# Samples at 48 kHz of an Opus packet by its TOC byte, for codes 0-2 (one or two
# frames: the TOC alone says); 0 for code 3, whose frame count byte must be read.
_SAMPLES_BY_TOC = tuple(0 if toc & 0x03 == 3 else packet_samples_untrusted(bytes((toc, 0, 0))) for toc in range(256))
# classify() answered for every first byte ahead of time: the hot path indexes a
# tuple instead of calling a function and comparing enums (RFC 7983 §7).
_IS_RTP = tuple(classify(first) is PacketKind.RTP for first in range(256))
RTP_MIN_SIZE = 12
# A speaker's packets per second beyond which the rest are dropped (counted
# "rate_limited"): 20 ms Opus is 50/s; browsers may use 10 ms frames (100/s).
MAX_PACKETS_PER_SECOND = 200
# How far (48 kHz samples: 100 ms) a bot's released timestamps may stray from the
# time elapsed between them before the relay re-bases them (MediaRelay._restamp).
RESTAMP_SLACK = 4800
# After a barge-in, how long at most a bot that marks its talk spurts has its
# packets dropped as the interrupted speech's tail, waiting for the marker bit
# of its next utterance (docs/protocol.md "Barge-in").
INTERRUPTED_TAIL_LIMIT = 1.0
# How often speakers whose packets stopped are checked for the end of their speech.
SPEAKING_SWEEP = 0.1
RTCP_MIN_SIZE = 8
# The largest datagram the relay reads: an Ethernet MTU. A UDP payload on an
# ordinary path is smaller (1472 bytes over IPv4), and nothing the relay speaks
# comes near it (RTP ~200, STUN ~100, DTLS flights are cut below 1200 by
# browsers); anything longer is dropped unread by the transport ("oversized").
MAX_DATAGRAM = 1500


@dataclass(frozen=True, slots=True)
class PlayoutFull:
    """A bot's audio was refused: it is ``ahead_ms`` ahead of playback, the limit ``max_ahead_ms``."""

    ahead_ms: int
    max_ahead_ms: int


@dataclass(frozen=True, slots=True)
class Interrupted:
    """A human barged in on a bot: its queued speech was dropped (``cleared``).

    Attributes:
        by: the human's participant id.
        cleared: what the clear did to the bot's stream.
        heard: (participant id, heard_ms) for each other participant.
    """

    by: str
    cleared: Cleared
    heard: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """A peer's first RTP packet: its timestamp is position 0 of the peer's stream (``stream_ms``)."""

    rtp_timestamp: int


MediaEvent = MarkReached | PlayoutFull | StreamStarted | Interrupted | SpeechEvent


def rtcp_sender_ssrcs(packet: RtcpPacket) -> tuple[int, ...]:
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


class SecureLeg(Protocol):
    """A browser's leg as the relay drives it (``webrtc.leg.WebRtcLeg``).

    The relay hands it the datagrams of its validated addresses and its timers;
    the leg talks back only through the relay's public methods
    (``transmit``, ``drop``, ``timer_started``, ``timer_stopped``, ``counters``).
    """

    def handle_dtls(self, data: bytes, addr: Address, now: float) -> None:
        """One DTLS datagram from a validated address."""

    def handle_media(self, data: bytes, addr: Address, now: float) -> None:
        """One SRTP or SRTCP datagram from a validated address."""

    def next_deadline(self) -> float | None:
        """When ``handle_timeout`` has work, or None."""

    def handle_timeout(self, now: float) -> None:
        """Run what is due at ``now`` (DTLS retransmissions, give-up)."""

    def hold_early_dtls(self, data: bytes, addr: Address) -> bool:
        """Keep one DTLS datagram from an address the relay is still checking; True if kept."""

    def take_early_dtls(self, addr: Address) -> bytes | None:
        """Give up the datagram kept from ``addr`` (verified, or its check given up), or None."""


class Ticker(Protocol):
    """Work the relay's timer runs while it is started (a UDP bot's mixed stream, ``mixer.py``)."""

    def next_deadline(self) -> float | None:
        """When ``handle_timeout`` has work, or None."""

    def handle_timeout(self, now: float) -> None:
        """Run what is due at ``now``."""


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
        remote_ufrag: the peer's own ufrag, used in the relay's checks to it: a
            browser's ``a=ice-ufrag`` from its offer; for a bot, the part after
            the colon of its latest new request's USERNAME.
        remote_pwd: the key of the relay's checks to a browser (its offer's
            ``a=ice-pwd``); None for a bot, whose checks use ``ice_pwd``.
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
    remote_ufrag: str | None = None
    remote_pwd: str | None = None
    speaks_udp: bool = True
    addr: Address | None = None
    muted: bool = False
    ice: ice_lite.IceLiteState | None = None
    ssrc_bytes: bytes = b""
    bound_addrs: set[Address] = field(default_factory=set)
    # When the last forwarded packet arrived (the speaking sweep ends runs of
    # speech whose packets stopped).
    last_voice: float = -1e9
    speaking: bool = False
    # Speech detection on this peer's forwarded audio (speech.py); the relay
    # gives every peer one when it is added, unless it came with its own.
    speech: SpeechTracker | None = None
    # A human (a browser): its speech interrupts bots; a bot's never does.
    human: bool = False
    # Barge-in: a human speaking this long (ms) while a bot plays clears the
    # bot's queue (the room's interruption setting); None = off.
    interruption_ms: int | None = None
    window_start: float = -1e9
    window_packets: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    # The sinks of the other peers in the room, rebuilt by the relay whenever
    # the room's membership changes: forwarding walks it without a room lookup.
    # So a peer's sink is set before add_peer and never swapped while it is in.
    fanout: tuple[Sink, ...] = ()
    # The datagram handler for this peer when it needs one that is not plain
    # RTP (a browser: SRTP and DTLS). Set by the WebRTC bridge.
    secure: SecureLeg | None = None
    # A bot's outgoing speech, paced by the relay (None for browsers, whose
    # audio is live): see bot_playout.py.
    playout: BotPlayout | None = None
    # The RTP timestamp of the peer's first packet: stream positions
    # (``stream_ms``) count from it.
    stream_origin: int | None = None
    # When the last "playout_full" was reported (once a second at most).
    playout_full_reported: float = -1e9
    # A bot's outgoing timestamps as listeners see them: its own plus this
    # offset, re-based when its audio restarts after a clear or a silence
    # (see MediaRelay._restamp); and the last one sent, with when.
    out_ts_offset: int = 0
    out_last_ts: int = 0
    out_last_time: float | None = None
    # A bot that has sent an RTP packet with the marker bit marks the start of
    # each utterance; after a barge-in its packets are dropped as the
    # interrupted speech's tail until the next marked one, or until
    # ``tail_until`` (0.0: no tail being dropped).
    marks_spurts: bool = False
    tail_until: float = 0.0
    # How long audio waits in this listener's own buffers before it is heard
    # (its playout_delay report, ms): heard_ms is played_ms minus this.
    playout_delay_ms: int = 0

    def __post_init__(self) -> None:
        self.ssrc_bytes = _SSRC_AT_4.pack(self.ssrc)


class UdpSink:
    """Deliver plain RTP/RTCP to a bot's latched UDP address."""

    __slots__ = ("peer", "_transmit")

    def __init__(self, transmit: Transmit) -> None:
        # The peer this sink delivers to: set by MediaRelay.add_peer, before
        # the sink is in any fanout. Left unset until then rather than None,
        # so the per-packet path needs no None test to type-check.
        self.peer: MediaPeer
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
        on_speaking: called with (peer, speaking) when a peer starts or stops
            speaking (the ``speaking`` alias of the speech events).
        max_speech_decoders: streams without RFC 6464 levels decoded at once
            for speech detection (``speech.py``); beyond, packet sizes decide.
        on_event: called with (peer, event) for what the signaling layer tells
            people: ``StreamStarted`` at a peer's first packet, and a bot's
            playout events: ``MarkReached`` as playback passes a mark,
            ``PlayoutFull`` when audio beyond ``max_ahead`` is refused (once a
            second at most).
        wake: called when ``next_deadline()`` moved earlier outside
            ``handle_timeout`` (the shell's timer then wakes instead of polling).
        speech_detection: give every peer without its own a speech tracker
            (False: peers added without one detect no speech).
    """

    def __init__(
        self,
        transmit: Transmit,
        *,
        consent_timeout: float = 30.0,
        max_peers: int = 20000,
        max_handshakes: int = 64,
        max_packets_per_second: int = MAX_PACKETS_PER_SECOND,
        on_speaking: Callable[[MediaPeer, bool], None] | None = None,
        max_speech_decoders: int = MAX_DECODERS,
        on_event: Callable[[MediaPeer, MediaEvent], None] | None = None,
        wake: Callable[[], None] | None = None,
        speech_detection: bool = True,
    ) -> None:
        self.transmit = transmit
        self.max_packets_per_second = max_packets_per_second
        self.consent_timeout = consent_timeout
        self.max_peers = max_peers
        self.max_handshakes = max_handshakes
        # Secure legs with a running DTLS timer (handshakes in progress).
        self.timed: set[SecureLeg] = set()
        self.counters: collections.Counter[str] = collections.Counter()
        self._by_session: dict[str, MediaPeer] = {}
        self._by_ufrag: dict[str, MediaPeer] = {}
        self._by_addr: dict[Address, MediaPeer] = {}
        # Latched UDP bots by SSRC (the 4 bytes RTP carries at 8..12): RTP from
        # an unknown address with one of these makes the relay check that
        # address (a NAT rebinding). SSRCs are unique in a room, random across
        # rooms; on a collision the later bot wins, and the other still moves
        # on its own Binding request.
        self._bots_by_ssrc: dict[bytes, MediaPeer] = {}
        # The relay's outstanding checks: transaction id -> the peer it checks for.
        self._checks: dict[bytes, MediaPeer] = {}
        # Addresses a browser sent an authenticated request from and the relay
        # is checking: the one early DTLS datagram it may keep comes from these.
        self._unverified: dict[Address, MediaPeer] = {}
        # Set by the UDP transport while its fast path runs: folds what the
        # helper counted into the peers (it does so by itself once a second).
        self.count_source: Callable[[], None] | None = None
        # Packet totals of peers that left (metrics are counters: they never go down).
        self.retired_rx_packets = 0
        self.retired_tx_packets = 0
        # ICE-CONTROLLED's tie-breaker in the relay's checks to browsers
        # (RFC 8445 §7.1.3); as a lite agent the relay never switches roles.
        self._tie_breaker = secrets.randbits(64)
        self._rooms: dict[str, list[MediaPeer]] = {}
        self._next_sweep = 0.0
        self._next_speaking_sweep = 0.0
        # Peers whose "speaking" may change: those speaking now and those that
        # sent sound since the last sweep. Only these are swept, so an idle
        # relay does no per-peer work ten times a second.
        self._voiced: set[MediaPeer] = set()
        # Called with (peer, speaking) when a peer starts or stops sending sound.
        self.on_speaking = on_speaking
        self.on_event = on_event
        self.speech_budget = SpeechBudget(max_speech_decoders)
        # Bots with speech queued in their playout: the timer releases it.
        self._playing: set[MediaPeer] = set()
        # Called when next_deadline() moved earlier outside handle_timeout (a
        # DTLS handshake started, a silent relay heard sound), so the shell's
        # timer can sleep until the deadline instead of polling.
        self.wake = wake
        # Tickers started (start_ticker): the timer runs them at their deadlines.
        self._tickers: set[Ticker] = set()
        self.speech_detection = speech_detection
        #: Bumped whenever what ``fast_routes`` returns may have changed (a
        #: peer joined, left, latched, moved, was muted, sent its first
        #: packet): the compiled fast path reprograms its table before it
        #: forwards another datagram (transport.py, fastpath.py).
        self.routes_generation = 0
        #: Called at each such change (the fast path's thread pauses until
        #: its table is reprogrammed).
        self.on_routes_changed: Callable[[], None] | None = None

    # --- membership ----------------------------------------------------------------

    def add_peer(self, peer: MediaPeer, *, nominate_on: ice_lite.NominateOn = "any", replaces: MediaPeer | None = None) -> MediaPeer:
        """Register a peer; it sends and receives once its address is proven.

        Args:
            peer: the new peer.
            nominate_on: ``"any"`` (bots) or ``"use_candidate"`` (browsers).
            replaces: a removed peer of the same session (a browser's
                renegotiation); with the same ICE credentials, the transaction
                ids they used stay used.

        Returns:
            ``peer``.

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
            if (
                replaces is not None
                and replaces.ice is not None
                and (replaces.ice_ufrag, replaces.ice_pwd) == (peer.ice_ufrag, peer.ice_pwd)
            ):
                peer.ice.inherit(replaces.ice)
            self._by_ufrag[peer.ice_ufrag] = peer
        self._by_session[peer.session_id] = peer
        if peer.speech is None and self.speech_detection:
            peer.speech = SpeechTracker(level_id=None, budget=self.speech_budget)
        self._rooms.setdefault(peer.room_id, []).append(peer)
        if isinstance(peer.sink, UdpSink):
            peer.sink.peer = peer
        self._rebuild_fanout(peer.room_id)
        return peer

    def change_ice_credentials(self, peer: MediaPeer, ice_ufrag: str, ice_pwd: str, remote_ufrag: str, remote_pwd: str) -> None:
        """A browser's ICE restart (RFC 8445 §9): both sides' credentials change, the peer stays.

        Media goes on to the selected address, and its verified addresses stay
        verified: the browser checks the same addresses again with the new
        credentials. An answer to a check the relay sent before the restart
        is signed with the browser's old password and fails (``check_failed``);
        the check then times out as any unanswered one.

        Args:
            peer: a browser's peer in the relay.
            ice_ufrag, ice_pwd: the relay's new credentials (from the registry).
            remote_ufrag, remote_pwd: the browser's new ones (from its offer).

        Raises:
            ValueError: ``ice_ufrag`` belongs to another peer.
        """
        holder = self._by_ufrag.get(ice_ufrag)
        if holder is not None and holder is not peer:
            raise ValueError("ice_ufrag already in use")
        if peer.ice_ufrag is not None and self._by_ufrag.get(peer.ice_ufrag) is peer:
            del self._by_ufrag[peer.ice_ufrag]
        peer.ice_ufrag, peer.ice_pwd = ice_ufrag, ice_pwd
        peer.remote_ufrag, peer.remote_pwd = remote_ufrag, remote_pwd
        self._by_ufrag[ice_ufrag] = peer
        self.counters["ice_restart"] += 1

    def remove_peer(self, session_id: str) -> MediaPeer | None:
        """Forget a peer (leave, kick, expiry). Unknown ids are ignored."""
        peer = self._by_session.pop(session_id, None)
        if peer is None:
            return None
        self.timed.discard(peer.secure)
        if self._tickers:
            sink: object = peer.sink
            self._tickers = {ticker for ticker in self._tickers if ticker is not sink}
        self._voiced.discard(peer)
        self._playing.discard(peer)
        if peer.speech is not None:
            peer.speech.close()
        if peer.ice_ufrag is not None:
            self._by_ufrag.pop(peer.ice_ufrag, None)
        if peer.ice is not None:
            # IceLiteState keeps addresses as opaque hashables; ours are Address.
            pending = cast("dict[bytes, Address]", peer.ice.pending_checks)
            for transaction_id, addr in pending.items():
                self._checks.pop(transaction_id, None)
                if self._unverified.get(addr) is peer:
                    del self._unverified[addr]
        self._unlatch(peer)
        self.retired_rx_packets += peer.rx_packets
        self.retired_tx_packets += peer.tx_packets
        room = self._rooms.get(peer.room_id)
        if room is not None:
            room.remove(peer)
            if not room:
                del self._rooms[peer.room_id]
        peer.fanout = ()
        self._rebuild_fanout(peer.room_id)
        return peer

    def _rebuild_fanout(self, room_id: str) -> None:
        self.routes_changed()
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

    def start_ticker(self, ticker: Ticker) -> None:
        """Run ``ticker`` at its deadlines until ``stop_ticker`` (or its peer leaves, if it is the peer's sink)."""
        self._tickers.add(ticker)
        if self.wake is not None:
            self.wake()

    def stop_ticker(self, ticker: Ticker) -> None:
        self._tickers.discard(ticker)

    def timer_started(self, leg: SecureLeg) -> None:
        """A leg has a deadline now (a DTLS handshake began): drive its timer."""
        self.timed.add(leg)

    def timer_stopped(self, leg: SecureLeg) -> None:
        """A leg's handshake ended (connected or failed): stop driving its timer."""
        self.timed.discard(leg)

    def set_muted(self, session_id: str, muted: bool) -> None:
        peer = self._by_session.get(session_id)
        if peer is not None:
            peer.muted = muted
            self.routes_changed()

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
                if self._bots_by_ssrc:
                    self._check_unknown_source(data, addr, now)
                return
            if peer.secure is not None:
                peer.secure.handle_media(data, addr, now)
                return
            if len(data) < RTCP_MIN_SIZE:
                self.drop(peer, "malformed_rtp")
            elif RTCP_BY_SECOND_BYTE[data[1]]:
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
                self._handle_early_dtls(data, addr)
                return
            self._deliver_dtls(peer.secure, data, addr, now)
        else:
            self.counters["unknown_kind"] += 1

    def handle_rtp(self, peer: MediaPeer, data: bytes, now: float) -> None:
        """Check one plain RTP packet from ``peer`` and forward it to the room.

        Used for UDP datagrams and for RTP that arrived another way (a
        WebSocket bot, a browser after SRTP) once the caller knows the peer.
        """
        if len(data) < RTP_MIN_SIZE or data[0] >> 6 != 2:
            self.drop(peer, "malformed_rtp")
            return
        if data[8:12] != peer.ssrc_bytes:
            self.drop(peer, "wrong_ssrc")
            return
        if data[1] & 0x7F != peer.payload_type:
            self.drop(peer, "wrong_payload_type")
            return
        if peer.muted:
            self.drop(peer, "muted")
            return
        if peer.stream_origin is None:
            peer.stream_origin = _U32_AT(data, 4)[0]
            self.routes_changed()
            if self.on_event is not None:
                self.on_event(peer, StreamStarted(peer.stream_origin))
        if peer.playout is not None:
            self._push_playout(peer, peer.playout, data, now)
            return
        self.forward(peer, data, now)

    def forward(self, peer: MediaPeer, data: bytes, now: float) -> None:
        """Send a checked RTP packet of ``peer`` to everyone else in its room (rate-limited)."""
        if now - peer.window_start >= 1.0:
            peer.window_start = now
            peer.window_packets = 0
        peer.window_packets += 1
        if peer.window_packets > self.max_packets_per_second:
            # One peer flooding valid packets must not flood everyone it reaches.
            self.drop(peer, "rate_limited")
            return
        peer.rx_packets += 1
        peer.rx_bytes += len(data)
        speech = peer.speech
        if speech is not None:
            self._track_speech(peer, speech, data, now)
        for sink in peer.fanout:
            sink.deliver_rtp(data, peer, now)

    # --- speech detection and barge-in ---------------------------------------------------

    def _track_speech(self, peer: MediaPeer, speech: SpeechTracker, data: bytes, now: float) -> None:
        fast_track = speech.fast_track
        if fast_track is not None:  # the fast path owns its level path: it tracks this one too
            fast_track(data, now)
            return
        # Per speaker packet: the common header (no CSRC, no extension) needs no parse.
        if data[0] & 0x1F == 0 and len(data) >= 12:
            offset = 12
        else:
            try:
                offset = payload_offset_untrusted(data)
            except BadPacket:
                return
        event = speech.on_packet(data, offset, stream_ms(peer.stream_origin, _U32_AT(data, 4)[0]))
        peer.last_voice = now
        if event is not None:
            self._speech_event(peer, event)
        if speech.onset_ms is None:
            return
        if peer not in self._voiced:
            self._start_voice(peer)
        limit = peer.interruption_ms
        if peer.human and limit is not None and not speech.interrupted and speech.last_ms - speech.onset_ms >= limit:
            speech.interrupted = True
            self._barge_in(peer, now)

    def _speech_event(self, peer: MediaPeer, event: SpeechEvent) -> None:
        speaking = isinstance(event, SpeechStarted)
        if speaking != peer.speaking:
            peer.speaking = speaking
            if self.on_speaking is not None:
                self.on_speaking(peer, speaking)
        if self.on_event is not None:
            self.on_event(peer, event)

    def _barge_in(self, human: MediaPeer, now: float) -> None:
        """A human has spoken long enough: every bot of the room that is talking stops.

        Humans first: only a human's speech interrupts, and it interrupts every
        bot (bots never interrupt each other or a human). A bot that marks its
        talk spurts has what it still sends of the interrupted speech dropped
        until its next utterance (see ``_push_playout``).
        """
        for bot in list(self._rooms.get(human.room_id, ())):
            playout = bot.playout
            if playout is None or bot is human:
                continue
            talking = playout.pending or (bot.speech is not None and bot.speech.speaking)
            if not talking:
                continue
            cleared = self.clear(bot)
            assert cleared is not None
            if bot.marks_spurts:
                bot.tail_until = now + INTERRUPTED_TAIL_LIMIT
            self.counters["barge_in"] += 1
            if self.on_event is not None:
                self.on_event(bot, Interrupted(human.participant_id, cleared, self.heard(bot, cleared.played_ms)))

    # --- a bot's speech: played out at real time ----------------------------------------

    def _push_playout(self, peer: MediaPeer, playout: BotPlayout, data: bytes, now: float) -> None:
        if data[1] & 0x80:
            # The marker bit: the first packet of an utterance.
            peer.marks_spurts = True
            peer.tail_until = 0.0
        elif peer.tail_until:
            if now < peer.tail_until:
                # Still the speech a barge-in interrupted, sent before the bot knew.
                self.drop(peer, "interrupted_tail")
                return
            peer.tail_until = 0.0
        # Per bot packet: a 12-byte header and a one-byte TOC's duration come
        # from a table; anything else (CSRCs, an extension, code 3) is parsed.
        samples = _SAMPLES_BY_TOC[data[12]] if len(data) > 12 and data[0] & 0x1F == 0 else 0
        if not samples:
            try:
                samples = packet_samples_untrusted(memoryview(data)[payload_offset_untrusted(data) :])
            except BadPacket:
                self.drop(peer, "malformed_rtp")
                return
        timestamp = _U32_AT(data, 4)[0]
        position = playout.position_of(timestamp)
        verdict = playout.push(data, position, samples, now)
        if verdict is Push.FULL:
            self.drop(peer, "playout_full")
            if now - peer.playout_full_reported >= 1.0 and self.on_event is not None:
                peer.playout_full_reported = now
                self.on_event(peer, PlayoutFull(playout.ahead_ms(), int(playout.max_ahead * 1000)))
            return
        playout.note_timestamp(timestamp, position)
        if verdict is Push.RELEASE:
            self.forward(peer, self._restamp(peer, data, now), now)
            self._report_marks(peer, playout)
        elif peer not in self._playing:
            self._playing.add(peer)
            if self.wake is not None:
                self.wake()  # a new deadline: the frame's due time

    def _restamp(self, peer: MediaPeer, data: bytes, now: float) -> bytes:
        """A bot's packet with the timestamp listeners should see.

        A bot's timestamps follow its stream positions, which jump ahead past
        audio a ``clear`` dropped, and stand still while it is silent. Sent
        as they are, the first would make a browser's jitter buffer wait for
        audio that never comes (its delay grows with every interruption), the
        second would look late. So when a released packet's timestamp strays
        more than ``RESTAMP_SLACK`` from the time elapsed since the last one,
        the stream is re-based to the clock and the packet marks a new talk
        spurt (RFC 3551 §4.1). A real-time sender's jitter stays well inside
        the slack: its packets go out untouched.
        """
        timestamp = _U32_AT(data, 4)[0]
        out = (timestamp + peer.out_ts_offset) & 0xFFFFFFFF
        marker = False
        last_time = peer.out_last_time
        if last_time is not None:
            expected = (peer.out_last_ts + int((now - last_time) * 48000)) & 0xFFFFFFFF
            stray = ((out - expected + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            if abs(stray) > RESTAMP_SLACK:
                peer.out_ts_offset = (expected - timestamp) & 0xFFFFFFFF
                out = expected
                marker = True
        peer.out_last_ts = out
        peer.out_last_time = now
        if out == timestamp and not marker:
            return data
        packet = bytearray(data)
        _SSRC_AT_4.pack_into(packet, 4, out)
        if marker:
            packet[1] |= 0x80
        return bytes(packet)

    def _report_marks(self, peer: MediaPeer, playout: BotPlayout) -> None:
        reached = playout.reached()
        if reached and self.on_event is not None:
            for mark in reached:
                self.on_event(peer, mark)

    def _release_due(self, now: float) -> None:
        for peer in list(self._playing):
            playout = peer.playout
            assert playout is not None  # only bots with a playout are playing
            for packet in playout.pop_due(now):
                self.forward(peer, self._restamp(peer, packet, now), now)
            self._report_marks(peer, playout)
            if not playout.pending:
                self._playing.discard(peer)

    def mark(self, peer: MediaPeer, name: str, timestamp: int | None = None) -> bool:
        """Place a mark in a bot's stream (at an RTP timestamp, or the end of its queue).

        Returns:
            False when the bot has ``max_marks`` marks waiting already.
        """
        playout = peer.playout
        if playout is None:
            return False
        placed = playout.mark(name) if timestamp is None else playout.mark_at_timestamp(name, timestamp)
        if not placed:
            return False
        self._report_marks(peer, playout)
        return True

    def heard(self, peer: MediaPeer, played_ms: int) -> list[tuple[str, int]]:
        """How far each other participant's ear got in ``peer``'s stream: ``played_ms``
        minus the listener's reported playout delay, never below 0."""
        return [
            (other.participant_id, max(0, played_ms - other.playout_delay_ms))
            for other in self._rooms.get(peer.room_id, ())
            if other is not peer
        ]

    def clear(self, peer: MediaPeer) -> Cleared | None:
        """Drop a bot's queued speech at once (None for a peer with no playout)."""
        playout = peer.playout
        if playout is None:
            return None
        self._report_marks(peer, playout)
        self._playing.discard(peer)
        return playout.clear()

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
            self.drop(peer, exc.counter)
            return
        for packet in packets:
            if any(ssrc != peer.ssrc for ssrc in rtcp_sender_ssrcs(packet)):
                self.drop(peer, "wrong_ssrc_rtcp")
                return
        self.counters["rtcp_relayed"] += 1
        for sink in peer.fanout:
            sink.deliver_rtcp(data, peer, now)

    def _deliver_dtls(self, leg: SecureLeg, data: bytes, addr: Address, now: float) -> None:
        handshakes = len(self.timed)
        leg.handle_dtls(data, addr, now)
        if len(self.timed) > handshakes and self.wake is not None:
            self.wake()  # a retransmission timer started

    def _handle_early_dtls(self, data: bytes, addr: Address) -> None:
        """DTLS from an address that is not verified for any browser leg.

        RFC 7983 DTLS from an address ICE has not validated is ignored, which
        defeats the ClientHello race (CVE-2023-51443). From an address that sent
        an authenticated check the relay is verifying, the first datagram (the
        ClientHello that raced our check) is kept and handled once the address
        answers, so the handshake does not wait for a 1 s retransmission.
        """
        peer = self._unverified.get(addr)
        if peer is None or peer.secure is None:
            self.counters["dtls_unvalidated_source"] += 1
        elif peer.secure.hold_early_dtls(data, addr):
            self.counters["dtls_early_held"] += 1
        else:
            self.counters["dtls_unverified_source"] += 1

    def _handle_stun(self, data: bytes, addr: Address, now: float) -> None:
        try:
            message = parse_stun_untrusted(data)
        except BadPacket as exc:
            self.counters[exc.counter] += 1
            return
        if message.message_method == Method.BINDING and message.message_class in (Class.RESPONSE, Class.ERROR):
            self._handle_check_answer(message, addr, now)
            return
        outcome = ice_lite.answer_binding(message, len(data), addr, self._password_for)
        self.counters[outcome.reason] += 1
        if not outcome.authenticated:
            if outcome.reply is not None:
                self.transmit(outcome.reply, addr)
            return
        # Authenticated: the request matched a known ufrag, whose peer has ICE state.
        assert outcome.ufrag is not None and outcome.transaction_id is not None
        peer = self._by_ufrag[outcome.ufrag]
        ice = peer.ice
        assert ice is not None
        update = ice.on_valid_request(addr, outcome.use_candidate, now, transaction_id=outcome.transaction_id)
        if update.rate_limited:
            self.counters["stun_rate_limited"] += 1
            return
        if update.replayed:
            # A captured request sent from elsewhere: not even answered.
            self.counters["stun_replayed"] += 1
            return
        if update.retransmission:
            self.counters["stun_retransmission"] += 1
        if update.fresh and peer.remote_pwd is None:
            peer.remote_ufrag = outcome.remote_ufrag  # a bot's own ufrag, for our checks
        if not update.verified:
            checked = self._send_check(peer, addr, len(data), now)
            if peer.remote_pwd is not None:
                # A browser needs the success to go on (its DTLS waits for it);
                # the check went first, so its answer usually beats the
                # ClientHello. A bot gets the check instead: one datagram out
                # for one in.
                if checked:
                    self._unverified[addr] = peer
                if outcome.reply is not None:
                    self.transmit(outcome.reply, addr)
        elif outcome.reply is not None:
            self.transmit(outcome.reply, addr)
        if update.changed:
            self._follow(peer, cast("Address | None", update.selected))

    def _send_check(self, peer: MediaPeer, addr: Address, trigger_size: int, now: float, *, unknown_source: bool = False) -> bool:
        """Send the relay's check to ``addr`` for ``peer`` if the limits allow.

        The check is never larger than the datagram that triggered it, at most
        one goes to an address per ``ice_lite.CHECK_INTERVAL`` and at most
        ``ice_lite.MAX_PENDING_CHECKS`` are outstanding per peer.

        Returns:
            Whether a check went out.
        """
        ice = peer.ice
        assert ice is not None  # only peers with ICE credentials are checked
        if not ice.check_allowed(addr, now, unknown_source=unknown_source):
            self.counters["check_rate_limited"] += 1
            return False
        if peer.remote_ufrag is None:
            self.counters["check_suppressed"] += 1  # a bot that never sent its ufrag
            return False
        username = f"{peer.remote_ufrag}:{peer.ice_ufrag}"
        remote_pwd = peer.remote_pwd
        browser = remote_pwd is not None
        if check_size(username, ice=browser) > trigger_size:
            # No amplification: never more bytes than the datagram that asked.
            self.counters["check_suppressed"] += 1
            return False
        transaction_id = secrets.token_bytes(12)
        if remote_pwd is not None:
            # What a conforming ICE agent answers (RFC 8445 §7.3): the browser's
            # credentials, PRIORITY, and ICE-CONTROLLED for the lite side.
            check = binding_check(
                username, remote_pwd, transaction_id=transaction_id, priority=PEER_REFLEXIVE_PRIORITY, tie_breaker=self._tie_breaker
            )
        else:
            assert peer.ice_pwd is not None  # set with ice_ufrag
            check = binding_check(username, peer.ice_pwd, transaction_id=transaction_id)
        evicted = cast("list[tuple[bytes, Address]]", ice.add_check(transaction_id, addr, now, unknown_source=unknown_source))
        for dropped, dropped_addr in evicted:
            self._forget_check(peer, dropped, dropped_addr)
        self._checks[transaction_id] = peer
        self.counters["check_sent"] += 1
        self.transmit(check, addr)
        return True

    def _forget_check(self, peer: MediaPeer, transaction_id: bytes, addr: Address, *, count: bool = True) -> None:
        """A check of ours went unanswered (expired or evicted): forget it and what waited for it."""
        ice = peer.ice
        assert ice is not None  # a peer with checks out has ICE state
        if count:
            self.counters["check_timeout"] += 1
        self._checks.pop(transaction_id, None)
        if self._unverified.get(addr) is peer and not ice.has_check_to(addr):
            del self._unverified[addr]
            if peer.secure is not None:
                peer.secure.take_early_dtls(addr)  # dropped with the check

    def _check_unknown_source(self, data: bytes, addr: Address, now: float) -> None:
        """RTP/RTCP from an unknown address: if it names a latched UDP bot, check that address.

        The SSRC is at bytes 8..12 of RTP and 4..8 of RTCP (the sender's, RFC
        3550 §6.4). A bot behind a NAT that rebinds is moved once it answers.
        """
        if len(data) < RTCP_MIN_SIZE:
            return
        ssrc = data[4:8] if RTCP_BY_SECOND_BYTE[data[1]] else data[8:12]
        peer = self._bots_by_ssrc.get(ssrc)
        if peer is not None and self._send_check(peer, addr, len(data), now, unknown_source=True):
            self.counters["unknown_source_check"] += 1

    def _handle_check_answer(self, message: Message, addr: Address, now: float) -> None:
        """A Binding response: the answer to one of our checks, or nothing of ours."""
        transaction_id = message.transaction_id
        peer = self._checks.get(transaction_id)
        if peer is None:
            self.counters["stun_unexpected_response"] += 1
            return
        key = peer.remote_pwd if peer.remote_pwd is not None else peer.ice_pwd
        ice = peer.ice
        # A peer with checks out has ICE state and a key (ice_pwd with ice_ufrag).
        assert key is not None and ice is not None
        # The answer is signed with the key the check was (RFC 8489 §9.1.4).
        if message.message_class != Class.RESPONSE or not message.check_message_integrity(key.encode("utf-8")):
            self.counters["check_failed"] += 1
            return
        result, update = ice.on_check_success(transaction_id, addr, now)
        self.counters[result] += 1
        if result is ice_lite.CheckResult.WRONG_ADDRESS:
            return
        if update is None:
            self._forget_check(peer, transaction_id, addr, count=False)  # answered too late
            return
        del self._checks[transaction_id]
        if self._unverified.get(addr) is peer:
            del self._unverified[addr]
        if peer.secure is not None:
            # A browser may send DTLS and SRTP from any address it verified.
            self._bind(peer, addr)
        if update.changed:
            self._follow(peer, cast("Address | None", update.selected))
        if peer.secure is not None:
            early = peer.secure.take_early_dtls(addr)
            if early is not None:
                self._deliver_dtls(peer.secure, early, addr, now)

    def _follow(self, peer: MediaPeer, selected: Address | None) -> None:
        if selected is None:
            self._unlatch(peer)  # consent lapsed before this request
        else:
            self._latch(peer, selected)

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
                if self._bots_by_ssrc.get(holder.ssrc_bytes) is holder:
                    del self._bots_by_ssrc[holder.ssrc_bytes]
            self.counters["address_taken_over"] += 1
        self.routes_changed()
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
        if peer.secure is None:
            self._bots_by_ssrc[peer.ssrc_bytes] = peer
        self.counters["latched"] += 1

    def _unlatch(self, peer: MediaPeer) -> None:
        self.routes_changed()
        for addr in peer.bound_addrs:
            if self._by_addr.get(addr) is peer:
                del self._by_addr[addr]
        peer.bound_addrs.clear()
        peer.addr = None
        if self._bots_by_ssrc.get(peer.ssrc_bytes) is peer:
            del self._bots_by_ssrc[peer.ssrc_bytes]

    # --- the compiled fast path's share (fastpath.py) -------------------------------

    def routes_changed(self) -> None:
        """State the fast path routes by changed (here, or a browser leg's: ``LegRelay``)."""
        self.routes_generation += 1
        if self.on_routes_changed is not None:
            self.on_routes_changed()

    def fast_routes(self, max_fanout: int, *, secure: bool = False) -> list[tuple[MediaPeer, tuple[MediaPeer, ...]]]:
        """The speakers whose RTP needs nothing from the relay but forwarding, with their listeners.

        A speaker qualifies when it is a latched UDP peer with no secure leg,
        not muted, with no playout (its packets go out as they arrive) and
        its first packet seen (``StreamStarted`` went out); and each of its
        listeners is a latched UDP bot with a plain :class:`UdpSink`. Its
        speech tracker, if any, still gets every packet
        (:meth:`track_forwarded`). Anything else stays on the Python path.
        With ``secure``, a speaker with a secure leg (a browser) and listeners
        with one are candidates too: the caller checks their legs' state.

        Args:
            max_fanout: listeners a route may have (the helper's bound).
            secure: include browsers (SRTP legs) as speakers and listeners.

        Returns:
            (speaker, listeners) pairs; valid until ``routes_generation`` changes.
        """
        routes: list[tuple[MediaPeer, tuple[MediaPeer, ...]]] = []
        for peer in self._by_session.values():
            if (
                peer.addr is None
                or (peer.secure is not None and not secure)
                or not peer.speaks_udp
                or peer.muted
                or peer.playout is not None
                or peer.stream_origin is None
                or len(peer.fanout) > max_fanout
                or self._by_addr.get(peer.addr) is not peer
            ):
                continue
            listeners: list[MediaPeer] = []
            if secure:
                # The room's order is the fanout's (_rebuild_fanout).
                for other in self._rooms.get(peer.room_id, ()):
                    if other is peer:
                        continue
                    if other.addr is None or (type(other.sink) is not UdpSink and other.secure is None):
                        break
                    listeners.append(other)
                else:
                    routes.append((peer, tuple(listeners)))
                continue
            for sink in peer.fanout:
                if type(sink) is not UdpSink or sink.peer.addr is None:
                    break
                listeners.append(sink.peer)
            else:
                routes.append((peer, tuple(listeners)))
        return routes

    def refresh_counts(self) -> None:
        """Bring the peers' packet counts up to date now (a metrics scrape, a test):
        with the fast path they otherwise lag by up to a second."""
        if self.count_source is not None:
            self.count_source()

    def count_forwarded(self, peer: MediaPeer, listeners: tuple[MediaPeer, ...], packets: int, size: int, rate_limited: int) -> None:
        """Fold what the fast path forwarded for ``peer`` into its counters (as ``forward`` counts)."""
        peer.rx_packets += packets
        peer.rx_bytes += size
        for listener in listeners:
            listener.tx_packets += packets
        if rate_limited:
            peer.drops["rate_limited"] += rate_limited
            self.counters["rate_limited"] += rate_limited

    def track_forwarded(self, peer: MediaPeer, data: bytes, now: float) -> None:
        """Speech detection for a packet the fast path forwarded (what ``forward`` does after sending)."""
        speech = peer.speech
        if speech is not None:
            self._track_speech(peer, speech, data, now)

    def speech_from_fast_path(self, peer: MediaPeer, event: SpeechEvent | None, now: float) -> None:
        """A speech event the fast path's level detector found for ``peer``
        (``fastpath.py``), or None when its speech reached the barge-in limit:
        what :meth:`_track_speech` does with one after the tracker."""
        speech = peer.speech
        assert speech is not None  # only trackers on the level path are handed over
        if event is None:
            speech.interrupted = True
            self._barge_in(peer, now)
            return
        speech.level_event(event)
        self._speech_event(peer, event)
        if speech.onset_ms is not None and peer not in self._voiced:
            self._start_voice(peer)

    def drop(self, peer: MediaPeer, reason: str) -> None:
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
        for peer in self._playing:
            assert peer.playout is not None
            due = peer.playout.next_due()
            if due is not None and due < deadline:
                deadline = due
        for leg in self.timed:
            leg_deadline = leg.next_deadline()
            if leg_deadline is not None and leg_deadline < deadline:
                deadline = leg_deadline
        for ticker in self._tickers:
            ticker_deadline = ticker.next_deadline()
            if ticker_deadline is not None and ticker_deadline < deadline:
                deadline = ticker_deadline
        return deadline

    def _sweep_speaking(self, now: float) -> None:
        """End the speech of peers whose packets stopped (DTX, mute, gone)."""
        for peer in list(self._voiced):
            speech = peer.speech
            if speech is None or speech.onset_ms is None:
                self._voiced.discard(peer)
                continue
            fast_expire = speech.fast_expire
            if fast_expire is not None:
                # Its level path runs in the fast path, which keeps last_voice and last_ms.
                event = fast_expire(now, SPEAKING_SWEEP)
            else:
                silent_for = now - peer.last_voice
                if silent_for < SPEAKING_SWEEP:
                    continue
                event = speech.expire(speech.last_ms + int(silent_for * 1000))
            if event is not None:
                self._voiced.discard(peer)
                self._speech_event(peer, event)

    def handle_timeout(self, now: float) -> None:
        """Drive DTLS timers; expire peers whose consent lapsed (RFC 7675)."""
        for leg in list(self.timed):
            leg.handle_timeout(now)
        if self._playing:
            self._release_due(now)
        for ticker in list(self._tickers):
            due = ticker.next_deadline()
            if due is not None and due <= now:
                ticker.handle_timeout(now)
        if self._voiced and now >= self._next_speaking_sweep:
            self._next_speaking_sweep = now + SPEAKING_SWEEP
            self._sweep_speaking(now)
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for peer in self._by_ufrag.values():
            ice = peer.ice
            if ice is None:
                continue
            if (peer.addr is not None or peer.bound_addrs) and ice.expired(now):
                self._unlatch(peer)
                ice.reset()
                self.counters["consent_expired"] += 1
            elif len(peer.bound_addrs) > 1:
                # A browser's other verified addresses that stopped checking.
                for stale in cast("list[Address]", ice.drop_stale(now)):
                    peer.bound_addrs.discard(stale)
                    if self._by_addr.get(stale) is peer:
                        del self._by_addr[stale]
        if self._checks:
            for peer in {peer for peer in self._checks.values()}:
                checked = peer.ice
                assert checked is not None  # a peer with checks out has ICE state
                for transaction_id, addr in cast("list[tuple[bytes, Address]]", checked.expire_checks(now)):
                    self._forget_check(peer, transaction_id, addr)
