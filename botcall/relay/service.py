"""Glue between the room registry and the media relay.

The registry says who is in which room; :class:`MediaService` keeps the relay's
peers in step with it (a listener on registry events) and owns the things the
WebSocket layer needs to reach a peer's audio: the sinks of WebSocket bots.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Protocol

from botcall.audio.opus import PAYLOAD_TYPE as PAYLOAD_TYPE_OPUS
from botcall.queues import DropOldestQueue
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.audio.vad import AUDIO_LEVEL_URI
from botcall.relay.bot_playout import MAX_AHEAD_S, MAX_MARKS, BotPlayout
from botcall.relay.speech import SpeechTracker
from botcall.relay.core import MediaPeer, MediaRelay, Sink, Transmit, UdpSink
from botcall.relay.mixer import MixSink
from botcall.webrtc.leg import OutboundStream, WebRtcLeg, WebRtcSink
from botcall.webrtc.sdp import build_answer, parse_offer_untrusted

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
    the WebSocket connecting beyond what the bound allows.
    """

    __slots__ = ("queue", "peer")

    def __init__(self, maxlen: int = WS_AUDIO_QUEUE) -> None:
        self.queue: DropOldestQueue[tuple[MediaPeer, bytes]] = DropOldestQueue(maxlen)
        self.peer: MediaPeer | None = None

    def deliver_rtp(self, data: bytes, speaker: MediaPeer, now: float) -> None:
        self.queue.put_nowait((speaker, data))

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
    ) -> None:
        self.relay = relay
        self.playout_max_ahead = playout_max_ahead
        self.playout_max_marks = playout_max_marks
        self.transmit = transmit
        self.certificate = certificate
        self.hosts = tuple(hosts)
        self.port = port

    def add_browser(self, session: MediaSession, offer_sdp: str) -> str:
        """Set up (or renegotiate) a human's WebRTC leg from the browser's offer.

        Args:
            session: the human's session (its ICE credentials go into the answer).
            offer_sdp: the browser's offer.

        Returns:
            Our ICE-lite, DTLS-passive answer.

        Raises:
            SdpError: an offer we cannot answer (the message says why).
        """
        offer = parse_offer_untrusted(offer_sdp)
        if self.certificate is None:
            self.certificate = DtlsCertificate.generate()
        out_ssrc = secrets.randbits(32)
        answer = build_answer(
            offer,
            ice_ufrag=session.ice_ufrag,
            ice_pwd=session.ice_pwd,
            fingerprint=str(self.certificate.fingerprint),
            hosts=self.hosts,
            port=self.port,
            ssrc=out_ssrc,
            cname=f"botcall-{session.participant_id}",
            extmap_uris=(AUDIO_LEVEL_URI,),
        )
        old = self.relay.remove_peer(session.session_id)
        # The sink is replaced below, once the leg exists.
        peer = _peer_for(session, UdpSink(self.transmit), session.ice_ufrag, session.ice_pwd, speaks_udp=True)
        # The relay checks the browser's addresses with the browser's own
        # credentials, which a conforming ICE agent answers (RFC 8445 §7.3).
        peer.remote_ufrag = offer.ice_ufrag
        peer.remote_pwd = offer.ice_pwd
        peer.human = True
        # Speech detection from the RFC 6464 level the browser sends with every packet.
        level_id = next((extmap.id for extmap in offer.extmaps if extmap.uri == AUDIO_LEVEL_URI), None)
        peer.speech = SpeechTracker(level_id=level_id, budget=self.relay.speech_budget)
        leg = WebRtcLeg(self.relay, peer, self.certificate, str(offer.fingerprint))
        peer.secure = leg
        peer.sink = WebRtcSink(leg, OutboundStream(out_ssrc, offer.opus_payload_type), self.transmit)
        self.relay.add_peer(peer, nominate_on="use_candidate", replaces=old)
        return answer

    def browser_connected(self, session_id: str) -> bool:
        """Whether a browser's leg has its SRTP keys (DTLS done): a resumed page keeps it."""
        peer = self.relay.peer(session_id)
        leg = peer.secure if peer is not None else None
        return isinstance(leg, WebRtcLeg) and leg.srtp is not None

    def remove_session(self, session_id: str) -> None:
        """Forget a session's peer (left, expired, room closed). Unknown ids are ignored."""
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
        peer.playout = BotPlayout(max_ahead=self.playout_max_ahead, max_marks=self.playout_max_marks)
        if isinstance(sink, WsSink):
            sink.peer = peer
        try:
            self.relay.add_peer(peer)
        except ValueError as exc:
            # The registry caps sessions below the relay's own bound; reaching
            # here means the two disagree. The session gets no media.
            log.error("session %s has no media: %s", session.participant_id, exc)


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
