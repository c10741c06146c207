"""Glue between the room registry and the media relay.

The registry says who is in which room; :class:`MediaService` keeps the relay's
peers in step with it (a listener on registry events) and owns the things the
WebSocket layer needs to reach a peer's audio: the sinks of WebSocket bots.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Protocol

from botcall.audio.opus import PAYLOAD_TYPE as PAYLOAD_TYPE_OPUS
from botcall.queues import DropOldestQueue
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.audio.vad import AUDIO_LEVEL_URI
from botcall.relay.bot_playout import MAX_AHEAD_S, MAX_MARKS, BotPlayout
from botcall.relay.speech import SpeechTracker
from botcall.relay.core import MediaPeer, MediaRelay, Sink, Transmit, UdpSink
from botcall.relay.mixer import MixSink
from botcall.errors import SdpError
from botcall.webrtc.dtls.endpoint import DtlsState
from botcall.webrtc.fingerprint import Fingerprint
from botcall.webrtc.leg import MAX_RECEIVE_TRACKS, DownstreamSlots, OutboundStream, WebRtcLeg, WebRtcSink
from botcall.webrtc.sdp import PTIMES_MS, SdpOffer, build_answer, check_candidate_pair, parse_offer_untrusted

# Downstream tracks a browser gets by default (Config.max_receive_tracks).
DEFAULT_RECEIVE_TRACKS = 3
# The packet duration browsers are asked for by default (Config.browser_ptime_ms).
DEFAULT_PTIME_MS = 20

log = logging.getLogger("botcall.relay.service")

# Audio for a WebSocket bot waiting to be written to its socket: 2 s of five
# speakers. Older packets go first when the bot reads too slowly.
WS_AUDIO_QUEUE = 500


class MediaSession(Protocol):
    """What the relay needs to know of a session (``signaling.rooms.Session`` is one).

    The relay layer does not import the signaling layer: the registry's events
    reach ``MediaService`` through ``signaling.media_link``.
    """

    @property
    def session_id(self) -> str: ...
    @property
    def participant_id(self) -> str: ...
    @property
    def room_id(self) -> str: ...
    @property
    def ssrc(self) -> int: ...
    @property
    def transport(self) -> str: ...
    @property
    def ice_ufrag(self) -> str: ...
    @property
    def ice_pwd(self) -> str: ...
    @property
    def muted(self) -> bool: ...
    @property
    def interruption_ms(self) -> int | None: ...
    @property
    def mix_ssrc(self) -> int | None: ...


class WsSink:
    """Audio for a WebSocket bot: queued for the connection's sender task.

    The queue exists from the join on, so nothing is lost between the join and
    the WebSocket connecting beyond what the bound allows. Each entry carries
    the packet's arrival time (the relay's ``now``): a paced pcm16 bot's jitter
    buffers estimate jitter from it, not from the 20 ms tick that drains the queue.
    """

    __slots__ = ("queue", "peer")

    def __init__(self, maxlen: int = WS_AUDIO_QUEUE) -> None:
        self.queue: DropOldestQueue[tuple[MediaPeer, bytes, float]] = DropOldestQueue(maxlen)
        self.peer: MediaPeer | None = None

    def deliver_rtp(self, data: bytes, speaker: MediaPeer, now: float) -> None:
        self.queue.put_nowait((speaker, data, now))

    def deliver_rtcp(self, data: bytes, speaker: MediaPeer, now: float) -> None:
        """WebSocket bots get no RTCP: the relay's pcm16/JSON framing has no use for it."""


class MediaService:
    """The relay plus the registry listener that feeds it.

    Args:
        relay: the routing core.
        transmit: the UDP transport's send function (for bots' sinks).
        certificate: the relay's DTLS certificate (browsers), one per process.
        hosts: the media addresses written into SDP answers as host candidates,
            best first (IP literals; ``relay/addresses.py`` chooses them).
        port: the media port.
        playout_max_ahead, playout_max_marks: each bot's playout bounds (``bot_playout.py``).
        bot_playout: give UDP bots a playout (False: their packets go out as
            they arrive; WebSocket bots always have one).
        max_receive_tracks: the most downstream audio tracks one browser gets
            (its first audio section and up to this many minus one receive
            sections; docs/protocol.md "Group calls"), 1 to ``MAX_RECEIVE_TRACKS``.
        ptime_ms: the packet duration asked of browsers in each answer
            (``Config.browser_ptime_ms``, one of ``PTIMES_MS``); read at each
            answer, so a change reaches the next peer connection.
    """

    def __init__(
        self,
        relay: MediaRelay,
        transmit: Transmit,
        *,
        certificate: DtlsCertificate | None = None,
        hosts: Sequence[str] = ("127.0.0.1",),
        port: int = 0,
        playout_max_ahead: float = MAX_AHEAD_S,
        playout_max_marks: int = MAX_MARKS,
        bot_playout: bool = True,
        max_receive_tracks: int = DEFAULT_RECEIVE_TRACKS,
        ptime_ms: int = DEFAULT_PTIME_MS,
    ) -> None:
        if not 1 <= max_receive_tracks <= MAX_RECEIVE_TRACKS:
            raise ValueError(f"max_receive_tracks must be 1-{MAX_RECEIVE_TRACKS}, got {max_receive_tracks}")
        self.max_receive_tracks = max_receive_tracks
        if ptime_ms not in PTIMES_MS:
            raise ValueError(f"ptime_ms must be one of {PTIMES_MS}, got {ptime_ms}")
        self.ptime_ms = ptime_ms
        self.relay = relay
        self.playout_max_ahead = playout_max_ahead
        self.playout_max_marks = playout_max_marks
        self.bot_playout = bot_playout
        self.transmit = transmit
        self.certificate = certificate
        self.hosts = tuple(hosts)
        self.port = port
        # What each browser's last answer settled (renegotiations build on it).
        self._negotiated: dict[str, _Negotiated] = {}

    def add_browser(self, session: MediaSession, offer_sdp: str, *, restart_ice: Callable[[], MediaSession] | None = None) -> str:
        """Set up, or renegotiate, a human's WebRTC leg from the browser's offer.

        A new offer on the same peer connection (the same DTLS fingerprint as
        the last one answered, and a leg whose handshake has not failed) is a
        renegotiation (docs/protocol.md): the leg keeps its DTLS association and
        SRTP contexts, the browser keeps its outbound stream (one SSRC, sequence
        numbers and timestamps continuous) and the speech tracker goes on; the
        answer repeats our credentials, fingerprint and SSRC under the same o=
        session id with a higher version (RFC 3264 §8). An offer with new ICE
        credentials is an ICE restart (RFC 8445 §9, RFC 8839 §4.4.1.1.1): the
        answer carries new credentials of ours as well. Any other offer (a new
        peer connection: a reload, or the page's own restart) replaces the leg.

        Args:
            session: the human's session (its ICE credentials go into the answer).
            offer_sdp: the browser's offer.
            restart_ice: gives the session new ICE credentials and returns it
                (``RoomRegistry.restart_ice``); without it an ICE restart is refused.

        Returns:
            Our ICE-lite, DTLS-passive answer.

        Raises:
            SdpError: an offer we cannot answer (the message says why).
        """
        offer = parse_offer_untrusted(offer_sdp)
        check_candidate_pair(offer, self.hosts)
        if self.certificate is None:
            self.certificate = DtlsCertificate.generate()
        peer = self.relay.peer(session.session_id)
        negotiated = self._negotiated.get(session.session_id)
        if negotiated is not None and peer is not None and negotiated.peer is peer and negotiated.renegotiates(offer):
            return self._renegotiate(session, peer, negotiated, offer, restart_ice)
        out_ssrc = secrets.randbits(32)
        # One more downstream track per receive section, up to the bound; each
        # with an SSRC of its own (distinct, as one transport demultiplexes them).
        receive_ssrcs: dict[str, int] = {}
        taken = {out_ssrc}
        for section in offer.receive_sections[: self.max_receive_tracks - 1]:
            ssrc = secrets.randbits(32)
            while ssrc in taken:
                ssrc = secrets.randbits(32)
            taken.add(ssrc)
            receive_ssrcs[section.mid] = ssrc
        sdp_session_id = secrets.randbits(62)
        answer = self._answer(offer, session.ice_ufrag, session.ice_pwd, out_ssrc, session.participant_id, sdp_session_id, 1, receive_ssrcs)
        old = self.relay.remove_peer(session.session_id)
        # The sink is replaced below, once the leg exists.
        peer = _peer_for(session, UdpSink(self.transmit), session.ice_ufrag, session.ice_pwd, speaks_udp=True)
        # The relay checks the browser's addresses with the browser's own
        # credentials, which a conforming ICE agent answers (RFC 8445 §7.3).
        peer.remote_ufrag = offer.ice_ufrag
        peer.remote_pwd = offer.ice_pwd
        peer.human = True
        # Speech detection from the RFC 6464 level the browser sends with every
        # packet; none when the relay's speech detection is off (Config.speech_detection
        # covers every peer: without this the plain-relay profile still tracked
        # browsers, and their packets came to Python one by one off the fast path).
        if self.relay.speech_detection:
            peer.speech = SpeechTracker(level_id=_level_id(offer), budget=self.relay.speech_budget)
        leg = WebRtcLeg(self.relay, peer, self.certificate, str(offer.fingerprint))
        peer.secure = leg
        pt_of = {section.mid: section.opus_payload_type for section in offer.receive_sections}
        streams = [OutboundStream(out_ssrc, offer.opus_payload_type)]
        streams += [OutboundStream(ssrc, pt_of[mid]) for mid, ssrc in receive_ssrcs.items()]
        peer.sink = WebRtcSink(leg, DownstreamSlots(streams), self.transmit)
        self.relay.add_peer(peer, nominate_on="use_candidate", replaces=old)
        self._negotiated[session.session_id] = _Negotiated(peer, leg, peer.sink, offer.fingerprint, sdp_session_id, 1, receive_ssrcs)
        return answer

    def _renegotiate(
        self,
        session: MediaSession,
        peer: MediaPeer,
        negotiated: _Negotiated,
        offer: SdpOffer,
        restart_ice: Callable[[], MediaSession] | None,
    ) -> str:
        """Answer a new offer on a live peer connection, keeping the leg (see ``add_browser``)."""
        ice_ufrag, ice_pwd = peer.ice_ufrag, peer.ice_pwd
        assert ice_ufrag is not None and ice_pwd is not None  # a browser's peer has both
        ice_restart = (offer.ice_ufrag, offer.ice_pwd) != (peer.remote_ufrag, peer.remote_pwd)
        if ice_restart:
            if restart_ice is None:
                raise SdpError("this offer restarts ICE, which this relay cannot do here")
            restarted = restart_ice()
            ice_ufrag, ice_pwd = restarted.ice_ufrag, restarted.ice_pwd
        version = negotiated.version + 1
        stream = negotiated.sink.stream
        # The downstream tracks were settled by the first answer: a receive
        # section keeps its SSRC while the offer still has it; one added later
        # is rejected (the slot count of a leg never grows).
        offered = {section.mid: section for section in offer.receive_sections}
        receive_ssrcs = {mid: ssrc for mid, ssrc in negotiated.receive_ssrcs.items() if mid in offered}
        answer = self._answer(
            offer, ice_ufrag, ice_pwd, stream.ssrc, session.participant_id, negotiated.sdp_session_id, version, receive_ssrcs
        )
        # Only now that the answer exists does anything change.
        if ice_restart:
            self.relay.change_ice_credentials(peer, ice_ufrag, ice_pwd, offer.ice_ufrag, offer.ice_pwd)
        negotiated.version = version
        # What a renegotiation may change of the audio: its payload type and
        # the level extension's id. The stream's numbering goes on.
        stream.payload_type = offer.opus_payload_type
        for slot_stream in negotiated.sink.slots.streams[1:]:
            for mid, ssrc in receive_ssrcs.items():
                if ssrc == slot_stream.ssrc:
                    slot_stream.payload_type = offered[mid].opus_payload_type
        if peer.speech is not None:
            peer.speech.level_id = _level_id(offer)
        self.relay.counters["renegotiated"] += 1
        return answer

    def _answer(
        self,
        offer: SdpOffer,
        ice_ufrag: str,
        ice_pwd: str,
        ssrc: int,
        participant_id: str,
        sdp_session_id: int,
        version: int,
        receive_ssrcs: dict[str, int],
    ) -> str:
        assert self.certificate is not None
        return build_answer(
            offer,
            ice_ufrag=ice_ufrag,
            ice_pwd=ice_pwd,
            fingerprint=self.certificate.fingerprint,
            hosts=self.hosts,
            port=self.port,
            ssrc=ssrc,
            cname=f"botcall-{participant_id}",
            extmap_uris=(AUDIO_LEVEL_URI,),
            session_id=sdp_session_id,
            session_version=version,
            receive_ssrcs=receive_ssrcs,
            # 20 ms is what browsers send unasked: the answer stays as it was.
            ptime_ms=None if self.ptime_ms == DEFAULT_PTIME_MS else self.ptime_ms,
        )

    def browser_connected(self, session_id: str) -> bool:
        """Whether a browser's leg has its SRTP keys (DTLS done): a resumed page keeps it."""
        peer = self.relay.peer(session_id)
        leg = peer.secure if peer is not None else None
        return isinstance(leg, WebRtcLeg) and leg.srtp is not None

    def remove_session(self, session_id: str) -> None:
        """Forget a session's peer (left, expired, room closed). Unknown ids are ignored."""
        self._negotiated.pop(session_id, None)
        self.relay.remove_peer(session_id)

    def set_muted(self, session_id: str, muted: bool) -> None:
        self.relay.set_muted(session_id, muted)

    def add_session(self, session: MediaSession) -> None:
        """Give a new bot session its peer (UDP or WebSocket); browsers get theirs
        from their offer (``add_browser``)."""
        transport = session.transport
        sink: UdpSink | WsSink
        ufrag: str | None
        pwd: str | None
        if transport == "udp":
            # A bot receiving the mix gets one stream under its mix SSRC (mixer.py).
            sink = UdpSink(self.transmit) if session.mix_ssrc is None else MixSink(self.relay, self.transmit, session.mix_ssrc)
            ufrag, pwd, speaks_udp = session.ice_ufrag, session.ice_pwd, True
        elif transport == "websocket":
            sink = WsSink()
            ufrag, pwd, speaks_udp = None, None, False
        else:
            # WebRTC peers are added by the bridge once the browser's offer arrives.
            return
        peer = _peer_for(session, sink, ufrag, pwd, speaks_udp=speaks_udp)
        if self.bot_playout or transport != "udp":
            peer.playout = BotPlayout(max_ahead=self.playout_max_ahead, max_marks=self.playout_max_marks)
        if isinstance(sink, WsSink):
            sink.peer = peer
        try:
            self.relay.add_peer(peer)
        except ValueError as exc:
            # The registry caps sessions below the relay's own bound; reaching
            # here means the two disagree. The session gets no media.
            log.error("session %s has no media: %s", session.participant_id, exc)


class _Negotiated:
    """What a browser's peer connection and the relay agreed on, for its next offer.

    Attributes:
        peer, leg, sink: the relay's side of that peer connection.
        fingerprint: the browser's certificate fingerprint in the offer answered.
        sdp_session_id, version: our answer's o= line (RFC 3264 §8).
        receive_ssrcs: mid -> SSRC of each receive section the first answer accepted.
    """

    __slots__ = ("peer", "leg", "sink", "fingerprint", "sdp_session_id", "version", "receive_ssrcs")

    def __init__(
        self,
        peer: MediaPeer,
        leg: WebRtcLeg[MediaPeer],
        sink: WebRtcSink[MediaPeer],
        fingerprint: Fingerprint,
        sdp_session_id: int,
        version: int,
        receive_ssrcs: dict[str, int],
    ) -> None:
        self.receive_ssrcs = receive_ssrcs
        self.peer = peer
        self.leg = leg
        self.sink = sink
        self.fingerprint = fingerprint
        self.sdp_session_id = sdp_session_id
        self.version = version

    def renegotiates(self, offer: SdpOffer) -> bool:
        """Whether ``offer`` comes from the same peer connection, whose DTLS can go on."""
        return (
            self.peer.secure is self.leg
            and self.peer.sink is self.sink
            and self.leg.dtls.state is not DtlsState.FAILED
            and offer.fingerprint == self.fingerprint
        )


def _level_id(offer: SdpOffer) -> int | None:
    """The offer's RFC 6464 audio-level extension id, or None."""
    return next((extmap.id for extmap in offer.extmaps if extmap.uri == AUDIO_LEVEL_URI), None)


def _peer_for(session: MediaSession, sink: Sink, ice_ufrag: str | None, ice_pwd: str | None, *, speaks_udp: bool) -> MediaPeer:
    """The relay's peer for a registry session (Opus, the session's SSRC and mute state)."""
    return MediaPeer(
        session_id=session.session_id,
        participant_id=session.participant_id,
        room_id=session.room_id,
        ssrc=session.ssrc,
        payload_type=PAYLOAD_TYPE_OPUS,
        sink=sink,
        ice_ufrag=ice_ufrag,
        ice_pwd=ice_pwd,
        speaks_udp=speaks_udp,
        muted=session.muted,
        interruption_ms=session.interruption_ms,
    )
