"""The browser side of the relay: DTLS-SRTP legs on the shared media port (sans-IO).

A browser is a :class:`~botcall.relay.core.MediaPeer` with two extra parts:

* :class:`WebRtcLeg` (the peer's ``secure`` handler) takes the DTLS and SRTP
  datagrams the relay routes to it. DTLS is only routed from, and sent to,
  addresses that answered the relay's own check (RFC 7983 demux +
  CVE-2023-51443; return routability, see ``ice_lite``); one early datagram
  from an address still being checked is kept until it answers. Once the
  handshake is done, incoming SRTP is decrypted and its SSRC and payload type
  rewritten to the session's own (so bots see one well-known SSRC per human,
  payload type 111 whatever the browser negotiated), then forwarded like any
  bot's RTP.
* :class:`WebRtcSink` sends the room's audio to the browser as one continuous
  stream (:class:`OutboundStream`): one SSRC announced in our answer, sequence
  numbers and timestamps rewritten across speaker changes, header extensions
  and CSRCs stripped (the browser negotiated none with us), then SRTP-protected.

Once the browser's first SRTP (or SRTCP) packet authenticates, the leg
releases the DTLS endpoint's OpenSSL state (``DtlsEndpoint.release``): the
browser has finished the handshake, and the connection would otherwise stay
in memory for the whole call.

Per packet, both directions copy the packet once into libsrtp's buffer and
once out: ``OutboundStream.rewrite`` hands its new header to
``SrtpContext.protect_with_header``, and the human's SSRC and payload type are
put in by ``SrtpContext.unprotect_restamped_untrusted`` (measured with
``bench/srtp_hot_path.py``).

A browser receives up to K streams, one per audio m-section it offered to
receive on (its first, sendrecv section and up to K-1 ``recvonly`` ones,
docs/protocol.md "Group calls"). :class:`DownstreamSlots` maps the room's
speakers onto those K :class:`OutboundStream` s: a speaker keeps its slot while
it sends, and a speaker that is talking (the relay's speech detector) takes the
slot of one that has been quiet for ``SLOT_HANGOVER``. With K = 1 this is the
old floor (whoever spoke first keeps the one stream until they pause), except
that a talker now also takes it from a participant who only sends silence.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from botcall.audio.opus import PAYLOAD_TYPE as PAYLOAD_TYPE_OPUS
from botcall.errors import BadPacket, DtlsError, RtpParseError
from botcall.wire.demux import RTCP_BY_SECOND_BYTE
from botcall.wire.rtp import payload_offset_untrusted
from botcall.wire.stun import Address
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.dtls.endpoint import DtlsEndpoint, DtlsState
from botcall.webrtc.srtp import SrtpContext

log = logging.getLogger("botcall.webrtc")

_RTP_HEADER = struct.Struct("!BBHII")
# What ``OutboundStream`` reads of a speaker's header: V/P/X/CC, M/PT, sequence
# number and timestamp (RFC 3550 §5.1); the speaker's SSRC comes from its peer.
_RTP_HEAD = struct.Struct("!BBHI")
SAMPLES_PER_FRAME = 960
FRAME = 0.020
# A speaker keeps the floor toward a browser until it has been silent this long.
FLOOR_RELEASE = 0.25
# A slot's speaker that stopped talking (speech detector) keeps the slot this
# long before a talking speaker may take it: a pause between words never
# hands the track over mid-sentence.
SLOT_HANGOVER = 0.5
# The most downstream tracks a browser can be given (docs/protocol.md "Group
# calls"); Config.max_receive_tracks picks the number under it.
MAX_RECEIVE_TRACKS = 8
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

Transmit = Callable[[bytes, Address], None]
"""Sends one datagram to an address (the relay's UDP socket)."""


# The relay's side of a leg, as structural types: webrtc sits below the relay
# and must not import it (see docs/architecture.md), so what the leg uses of
# ``botcall.relay.core.MediaPeer`` and ``MediaRelay`` is spelled out here.


class LegPeer(Protocol):
    """What a leg and its sink use of the browser's ``MediaPeer`` (or a bot speaking to it)."""

    tx_packets: int

    @property
    def speaking(self) -> bool: ...

    @property
    def participant_id(self) -> str: ...

    @property
    def ssrc(self) -> int: ...

    @property
    def ssrc_bytes(self) -> bytes: ...

    @property
    def addr(self) -> Address | None: ...

    @property
    def drops(self) -> Counter[str]: ...


PeerT = TypeVar("PeerT", bound=LegPeer)


class LegRelay(Protocol[PeerT]):
    """What a leg uses of ``MediaRelay``, whose peers are ``PeerT``."""

    @property
    def counters(self) -> Counter[str]: ...

    @property
    def max_handshakes(self) -> int: ...

    @property
    def transmit(self) -> Transmit: ...

    def handshakes_in_progress(self) -> int: ...

    def timer_started(self, leg: WebRtcLeg[PeerT]) -> None: ...

    def timer_stopped(self, leg: WebRtcLeg[PeerT]) -> None: ...

    def drop(self, peer: PeerT, reason: str) -> None: ...

    def handle_rtp(self, peer: PeerT, data: bytes, now: float) -> None: ...

    def routes_changed(self) -> None:
        """What the compiled fast path may route changed (a leg connected, a slot changed hands)."""


def plain_packet(data: bytes, header_size: int, first: int, second: int, seq: int, timestamp: int, ssrc: int) -> bytes:
    """``data`` with its first ``header_size`` bytes replaced by a fixed RTP header.

    The unprotected twin of :meth:`SrtpContext.protect_with_header`, with the
    same arguments: what :meth:`OutboundStream.rewrite` emits by default.
    """
    return _RTP_HEADER.pack(first, second, seq, timestamp, ssrc) + data[header_size:]


class OutboundStream:
    """Turns several speakers' RTP into one continuous stream for one browser.

    Args:
        ssrc: the SSRC announced in our SDP answer.
        payload_type: the browser's Opus payload type.
    """

    __slots__ = ("ssrc", "payload_type", "floor", "_seq_offset", "_ts_offset", "_last_seq", "_last_ts", "_last_time", "_switched", "not_floor")

    def __init__(self, ssrc: int, payload_type: int) -> None:
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.floor: int | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_seq: int | None = None
        self._last_ts = 0
        self._last_time = 0.0
        self._switched = False
        self.not_floor = 0

    def rewrite(
        self, data: bytes, speaker_ssrc: int, now: float, emit: Callable[..., bytes] = plain_packet
    ) -> bytes | None:
        """The packet as this browser should get it, or None when another speaker has the floor.

        Args:
            data: a valid RTP packet (the relay checked version and length).
            speaker_ssrc: the SSRC of the peer that sent it.
            now: the current time.
            emit: builds the result from ``(data, header_size, first, second,
                seq, timestamp, ssrc)``: :func:`plain_packet` (the default)
                gives the rewritten RTP packet, a leg's
                ``SrtpContext.protect_with_header`` gives it SRTP-protected
                without building the plain packet first.

        Returns:
            What ``emit`` returned, or None (another speaker holds the floor,
            or the header's CSRCs or extension run past the end).

        Raises:
            Whatever ``emit`` raises (``SrtpError`` for ``protect_with_header``).
        """
        # Per packet toward every browser: locals and one struct read on purpose.
        first, second, seq, timestamp = _RTP_HEAD.unpack_from(data)
        if speaker_ssrc != self.floor:
            if self.floor is not None and now - self._last_time < FLOOR_RELEASE:
                self.not_floor += 1
                return None
            self._take_floor(speaker_ssrc, seq, timestamp, now)
        if first & 0x1F:
            # CSRCs or a header extension (X set): both are stripped, since the
            # browser negotiated none with us.
            try:
                size = payload_offset_untrusted(data)
            except RtpParseError:
                return None
        else:
            size = 12  # the common case: V=2, no CSRC, no extension
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        last_seq = self._last_seq
        if last_seq is None or (out_seq - last_seq) & 0xFFFF < 0x8000:
            self._last_seq = out_seq
            self._last_ts = out_ts
        self._last_time = now
        out_second = (second & 0x80) | self.payload_type
        if self._switched:
            out_second |= 0x80  # a new talk spurt: marker set (RFC 3551 §4.1)
            self._switched = False
        return emit(data, size, 0x80 | (first & 0x20), out_second, out_seq, out_ts, self.ssrc)

    def numbering(self) -> tuple[int, int, int | None, int, float, bool]:
        """(seq offset, timestamp offset, last seq, last timestamp, last time, switched): what ``rewrite`` uses.

        For the compiled fast path (``relay/fastpath.py``), which renumbers a
        routed speaker's packets the same way and hands the last three back
        through :meth:`continue_numbering`.
        """
        return self._seq_offset, self._ts_offset, self._last_seq, self._last_ts, self._last_time, self._switched

    def continue_numbering(self, last_seq: int, last_ts: int, last_time: float) -> None:
        """Take the numbering the fast path reached for the floor's speaker (see :meth:`numbering`)."""
        self._last_seq = last_seq
        self._last_ts = last_ts
        self._last_time = last_time

    def hand_over(self, data: bytes, speaker_ssrc: int, now: float) -> None:
        """Give this stream to ``speaker_ssrc`` from its packet ``data`` on, whoever held it.

        What :class:`DownstreamSlots` does when it moves a speaker onto this
        stream: numbering continues where the last speaker stopped (the next
        :meth:`rewrite` of ``speaker_ssrc`` passes the floor check).
        """
        _, _, seq, timestamp = _RTP_HEAD.unpack_from(data)
        self._take_floor(speaker_ssrc, seq, timestamp, now)

    def _take_floor(self, speaker_ssrc: int, seq: int, timestamp: int, now: float) -> None:
        if self._last_seq is None:
            next_seq, next_ts = seq, timestamp
        else:
            # Continue where the last speaker stopped, leaving the silence in the
            # timestamps (the browser's jitter buffer sees a talk-spurt start).
            gap_frames = max(1, round((now - self._last_time) / FRAME))
            next_seq = (self._last_seq + 1) & 0xFFFF
            next_ts = (self._last_ts + gap_frames * SAMPLES_PER_FRAME) & 0xFFFFFFFF
        self._seq_offset = (next_seq - seq) & 0xFFFF
        self._ts_offset = (next_ts - timestamp) & 0xFFFFFFFF
        self.floor = speaker_ssrc
        self._switched = True


class DownstreamSlots:
    """Which speaker each of a browser's K downstream streams carries (sans-IO).

    The policy, per packet of a speaker (``route``), with no decoding:

    1. A speaker that holds a slot stays on it (its numbering goes on).
    2. Otherwise it takes a free slot: one nobody holds, or whose speaker sent
       nothing for ``FLOOR_RELEASE`` (it left, muted, or uses DTX); the one
       idle longest first.
    3. Otherwise, if it is talking (the relay's speech detector:
       RFC 6464 levels from browsers, decoding or packet sizes for others),
       it takes the slot whose speaker has not talked for ``hangover``, the
       one quiet longest. Browsers send packets while silent, so this is how a
       talker displaces a listener when there are more participants than slots.
    4. Otherwise the packet is not sent to this browser (``no_slot``: the
       browser's peer counts it too).

    Args:
        streams: the K outbound streams (slot 0 is the offer's first audio section).
        hangover: how long a slot's speaker keeps it after it stopped talking.

    Attributes:
        no_slot: packets refused (rule 4).
        switches: times a slot changed hands (first use included).
        on_switch: called after a slot changed hands (the owner's fast path
            may route the new speaker), so no one compares ``switches`` per packet.
    """

    __slots__ = (
        "streams",
        "hangover",
        "_holders",
        "_slot_of",
        "_last_packet",
        "_last_voiced",
        "no_slot",
        "switches",
        "on_switch",
    )

    def __init__(self, streams: Sequence[OutboundStream], hangover: float = SLOT_HANGOVER) -> None:
        if not 1 <= len(streams) <= MAX_RECEIVE_TRACKS:
            raise ValueError(f"1-{MAX_RECEIVE_TRACKS} downstream streams, got {len(streams)}")
        self.streams = tuple(streams)
        self.hangover = hangover
        count = len(self.streams)
        self._holders: list[int | None] = [None] * count
        self._slot_of: dict[int, int] = {}
        self._last_packet = [-1e9] * count
        self._last_voiced = [-1e9] * count
        self.no_slot = 0
        self.switches = 0
        self.on_switch: Callable[[], None] | None = None

    @property
    def holders(self) -> tuple[int | None, ...]:
        """The speaker SSRC on each slot (None: never used)."""
        return tuple(self._holders)

    def route(self, speaker_ssrc: int, speaking: bool, now: float, data: bytes) -> OutboundStream | None:
        """The stream ``data`` (a packet of ``speaker_ssrc``) goes on, or None (no slot for it now)."""
        index = self._slot_of.get(speaker_ssrc)
        if index is not None:
            # Per packet toward every browser: the common case is this branch.
            self._last_packet[index] = now
            if speaking:
                self._last_voiced[index] = now
            return self.streams[index]
        index = self._choose(speaking, now)
        if index is None:
            self.no_slot += 1
            return None
        old = self._holders[index]
        if old is not None:
            del self._slot_of[old]
        self._holders[index] = speaker_ssrc
        self._slot_of[speaker_ssrc] = index
        self._last_packet[index] = now
        self._last_voiced[index] = now if speaking else -1e9
        self.switches += 1
        stream = self.streams[index]
        stream.hand_over(data, speaker_ssrc, now)
        if self.on_switch is not None:
            self.on_switch()
        return stream

    def slot_of(self, speaker_ssrc: int) -> int | None:
        """The slot ``speaker_ssrc`` holds, or None."""
        return self._slot_of.get(speaker_ssrc)

    def touch(self, index: int, now: float) -> None:
        """A packet of slot ``index``'s (silent) speaker went out at ``now`` elsewhere (the fast path)."""
        self._last_packet[index] = now

    def _choose(self, speaking: bool, now: float) -> int | None:
        free = None
        for index, holder in enumerate(self._holders):
            if holder is None:
                return index
            idle = now - self._last_packet[index]
            if idle >= FLOOR_RELEASE and (free is None or self._last_packet[index] < self._last_packet[free]):
                free = index
        if free is not None or not speaking:
            return free
        quiet = None
        for index in range(len(self._holders)):
            if now - self._last_voiced[index] >= self.hangover and (quiet is None or self._last_voiced[index] < self._last_voiced[quiet]):
                quiet = index
        return quiet


class WebRtcLeg(Generic[PeerT]):
    """DTLS and SRTP for one browser (the ``secure`` handler of its MediaPeer).

    Args:
        relay: the relay (for ``transmit``, counters and forwarding).
        peer: the browser's MediaPeer.
        certificate: the relay's DTLS certificate.
        remote_fingerprint: the browser's ``a=fingerprint`` from its offer.
        handshake_timeout: seconds for the DTLS handshake.
    """

    def __init__(self, relay: LegRelay[PeerT], peer: PeerT, certificate: DtlsCertificate, remote_fingerprint: str, *, handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT) -> None:
        self.relay = relay
        self.peer = peer
        self.dtls = DtlsEndpoint(role="server", certificate=certificate, remote_fingerprint=remote_fingerprint, handshake_timeout=handshake_timeout)
        self.srtp: SrtpContext | None = None
        self.started = False
        # One DTLS datagram (the ClientHello that raced the relay's check) from
        # an authenticated address not yet verified: (data, address) or None.
        self._early: tuple[bytes, Address] | None = None
        # Connected, and OpenSSL's state still kept in case the browser
        # retransmits its last flight (see _release_dtls).
        self._holding_dtls = False

    @property
    def handshaking(self) -> bool:
        return self.started and self.srtp is None and self.dtls.state is not DtlsState.FAILED

    def hold_early_dtls(self, data: bytes, addr: Address) -> bool:
        """Keep one DTLS datagram from an address the relay is still checking.

        Chrome starts its handshake as soon as our success response reaches
        it, which can be before its answer to our check reaches us; dropping
        that ClientHello would cost its 1 s retransmission. One datagram per
        leg, before the handshake started: a bounded, one-off wait.

        Args:
            data: the datagram.
            addr: its source (authenticated, not yet verified).

        Returns:
            True if kept; False if the leg already holds one or has started.
        """
        if self._early is not None or self.started:
            return False
        self._early = (data, addr)
        return True

    def take_early_dtls(self, addr: Address) -> bytes | None:
        """The early datagram from ``addr``, given up by the leg (handle it or drop it).

        Args:
            addr: the address just verified, or whose check was given up.

        Returns:
            The datagram kept from ``addr``, or None.
        """
        early = self._early
        if early is None or early[1] != addr:
            return None
        self._early = None
        return early[0]

    def handle_dtls(self, data: bytes, addr: Address, now: float) -> None:
        """A DTLS datagram from one of the browser's verified addresses."""
        relay = self.relay
        if not self.started:
            if relay.handshakes_in_progress() >= relay.max_handshakes:
                relay.counters["dtls_handshake_cap"] += 1
                return
            self.started = True
            self.dtls.start(now)
            relay.timer_started(self)
        try:
            out = self.dtls.receive_untrusted(data, now)
        except DtlsError as exc:
            self._dtls_error(exc, addr)
            return
        for datagram in out:
            relay.transmit(datagram, addr)
        self._check_connected()

    def next_deadline(self) -> float | None:
        """When ``handle_timeout`` has work (a DTLS retransmission or give-up), or None."""
        return self.dtls.next_deadline()

    def handle_timeout(self, now: float) -> None:
        deadline = self.dtls.next_deadline()
        if deadline is None or now < deadline:
            return
        addr = self.peer.addr
        try:
            out = self.dtls.handle_timeout(now)
        except DtlsError as exc:
            self._dtls_error(exc, addr)
            return
        if addr is not None:
            for datagram in out:
                self.relay.transmit(datagram, addr)

    def _check_connected(self) -> None:
        if self.srtp is None:
            keys = self.dtls.srtp_keys  # None until CONNECTED
            if keys is None:
                return
            self.srtp = SrtpContext.from_keys(keys)
            self._holding_dtls = True
            self.relay.counters["dtls_connected"] += 1
            self.relay.timer_stopped(self)
            self.relay.routes_changed()

    def _release_dtls(self) -> None:
        """The browser's SRTP authenticated, so it has our Finished: free OpenSSL's state.

        A browser derives its SRTP keys only once it has read our final flight;
        before that it may retransmit its own and need ours again (RFC 6347
        §4.2.4). Afterwards the connection is ~90 KB of dead weight per leg.
        """
        self._holding_dtls = False
        self.dtls.release()
        self.relay.counters["dtls_released"] += 1
        self.relay.routes_changed()  # its SRTP may take the fast path now

    @property
    def holding_dtls(self) -> bool:
        """Connected, but the browser's first SRTP has not yet authenticated (OpenSSL's state kept)."""
        return self._holding_dtls

    def _dtls_error(self, exc: DtlsError, addr: Address | None) -> None:
        self.relay.counters[exc.counter] += 1
        if self.dtls.state is DtlsState.FAILED:
            self.relay.timer_stopped(self)
            log.info("DTLS with %s failed: %s", self.peer.participant_id, self.dtls.failure_reason)
            if addr is not None:
                for datagram in self.dtls.close():
                    self.relay.transmit(datagram, addr)

    def handle_media(self, data: bytes, addr: Address, now: float) -> None:
        """An SRTP or SRTCP datagram from the browser."""
        srtp, relay, peer = self.srtp, self.relay, self.peer
        if srtp is None:
            relay.drop(peer, "srtp_before_dtls")
            return
        if len(data) < 12:
            relay.drop(peer, "malformed_rtp")
            return
        if RTCP_BY_SECOND_BYTE[data[1]]:
            try:
                srtp.unprotect_rtcp_untrusted(data)
            except BadPacket as exc:
                relay.drop(peer, exc.counter)
                return
            if self._holding_dtls:
                self._release_dtls()
            # Browsers' receiver reports describe our rewritten stream, not any
            # bot's: the relay terminates them.
            relay.counters["rtcp_from_browser"] += 1
            return
        try:
            # The human's audio goes on under the session's SSRC and Opus's
            # well-known payload type, whatever the browser chose; rewritten
            # in the buffer libsrtp decrypted into (one copy out).
            rtp = srtp.unprotect_restamped_untrusted(data, PAYLOAD_TYPE_OPUS, peer.ssrc_bytes)
        except BadPacket as exc:
            relay.drop(peer, exc.counter)
            return
        if self._holding_dtls:
            self._release_dtls()
        relay.handle_rtp(peer, rtp, now)


class WebRtcSink(Generic[PeerT]):
    """Delivers the room's audio to one browser over its SRTP leg, on its K slots.

    Args:
        leg: the browser's leg.
        slots: its downstream streams (``slots.streams[0]`` is ``stream``).
        transmit: the relay's send function.
    """

    __slots__ = ("leg", "peer", "slots", "stream", "transmit")

    def __init__(self, leg: WebRtcLeg[PeerT], slots: DownstreamSlots, transmit: Transmit) -> None:
        self.leg = leg
        self.peer = leg.peer  # fixed for the sink's life, like the leg
        self.slots = slots
        self.stream = slots.streams[0]
        self.transmit = transmit
        # A new speaker on a slot: the fast path may route it now.
        slots.on_switch = leg.relay.routes_changed

    def deliver_rtp(self, data: bytes, speaker: LegPeer, now: float) -> None:
        # Per packet toward every browser: rewrite and protect in one step
        # (OutboundStream.rewrite emits through protect_with_header).
        peer = self.peer
        srtp = self.leg.srtp
        addr = peer.addr
        if srtp is None or addr is None:
            peer.drops["not_connected"] += 1
            return
        ssrc = speaker.ssrc
        stream = self.slots.route(ssrc, speaker.speaking, now, data)
        if stream is None:
            # More talkers than this browser has tracks (per peer and in /metrics).
            peer.drops["no_slot"] += 1
            self.leg.relay.counters["no_slot"] += 1
            return
        try:
            protected = stream.rewrite(data, ssrc, now, srtp.protect_with_header)
        except BadPacket as exc:
            peer.drops[exc.counter] += 1
            return
        if protected is None:
            return
        peer.tx_packets += 1
        self.transmit(protected, addr)

    def deliver_rtcp(self, data: bytes, speaker: LegPeer, now: float) -> None:
        """Bots' RTCP names SSRCs the browser never sees: not forwarded."""
