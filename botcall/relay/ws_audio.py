"""Audio over a bot's WebSocket, sans-IO: uplink (Opus or pcm16 in → RTP to the
relay) and downlink (speakers' RTP → the frames the bot receives).

``signaling/ws.py`` only moves frames between the socket and these objects:
it hands every audio message to ``WsAudio`` and sends what ``WsAudio`` returns.
No trio, no clock: time is an argument.

Uplink. Opus frames (one 20 ms frame per message) are numbered and given the
session's SSRC; whole RTP packets are checked for size and go to the relay,
which checks SSRC and payload type as for UDP and queues them in the bot's
playout (``bot_playout.py``). pcm16 of any length is appended to a buffer in
linear time and cut into 20 ms frames by ``encode_pending``, at most
``max_frames`` per call, so one large message never holds the event loop (the
shell calls it once per scheduler pass, and reads the next message only when
the buffer is encoded). At most ``backlog_s`` seconds may wait to be encoded.
Audio that would put the bot more than its playout's ``max_ahead`` ahead of
playback is refused whole (``playout_full``).

Downlink. Opus: each speaker's RTP packet. pcm16 delivered on arrival (the
default, ``delivery="arrival"``): each packet decoded the moment it arrives,
only real gaps concealed (``audio.playout.ArrivalPlayout``); pcm16 ``paced``: a
jitter buffer and decoder per speaker (``audio.playout.Playout.for_bot``)
popped every 20 ms: after a stall (a held-up tick) the backlog is played late,
up to ``BOT_CATCHUP_MARGIN`` (0.25 s, as the mix), and the added delay shed a
frame a second, rather than discarded, while an in-order stream's latency is
as before (the jitter buffer's ``stall_margin``); packets carry their arrival time (the
sink's ``now``), not the tick's, into the jitter estimate. A bot receiving the
mix (``mix_ssrc`` set) gets instead one frame per 20 ms of ``relay.mixer``'s
mix-minus, as pcm16 or as Opus RTP under the mix SSRC, with participant id
``"mix"``. Either way the result is an ``AudioOut``: ``binary()`` gives the
binary frame (the RTP packet, or RTP-framed PCM with payload type 96, 97 when
concealed); the signaling layer turns the same fields into a JSON ``audio``
event.

Rates. pcm16 goes up at ``send_sample_rate`` and down at
``receive_sample_rate``; libopus encodes from and decodes to both directly
(8/16/24/48 kHz), so no resampler runs here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from botcall.audio.jitter import FrameKind, JitterStats
from botcall.audio.opus import (
    stream_ms,
    FRAME_SAMPLES,
    PAYLOAD_TYPE,
    PCM16_CONCEALED_PAYLOAD_TYPE,
    PCM16_PAYLOAD_TYPE,
    SAMPLE_RATE,
    OpusEncoder,
)
from botcall.audio.playout import ArrivalPlayout, DecodedFrame, Playout
from botcall.errors import BadPacket, SignalingError
from botcall.relay.core import MAX_DATAGRAM, MediaPeer, MediaRelay
from botcall.relay.mixer import MIX_PARTICIPANT_ID, Mixer, OpusMix
from botcall.wire.rtp import RTP_HEADER, parse_rtp_untrusted

# How a pcm16 bot receives speakers' audio (docs/protocol.md, "Audio over the WebSocket").
DELIVERY_ARRIVAL = "arrival"
DELIVERY_PACED = "paced"
DELIVERIES = (DELIVERY_ARRIVAL, DELIVERY_PACED)

# pcm16 from a bot waiting to be encoded, in seconds of audio.
PCM_BACKLOG_S = 2.0
MAX_OPUS_FRAME = MAX_DATAGRAM - RTP_HEADER.size


@dataclass(frozen=True, slots=True)
class AudioOut:
    """One frame for the bot.

    Attributes:
        participant_id: the speaker ("" if not known yet).
        ssrc: the speaker's SSRC.
        seq: the speaker's RTP sequence number (Opus), or a per-speaker frame count (pcm16).
        timestamp: the RTP timestamp (Opus, 48 kHz) or samples at the session rate (pcm16).
        payload: the Opus frame or the PCM.
        encoding: ``"opus"`` or ``"pcm16"``.
        sample_rate: the rate ``timestamp`` counts.
        concealed: pcm16 synthesised for a lost packet.
        packet: the speaker's whole RTP packet (Opus), for binary delivery.
        stream_ms: the frame's position in the speaker's stream (ms since its first packet).
    """

    participant_id: str
    ssrc: int
    seq: int
    timestamp: int
    payload: bytes
    encoding: str
    sample_rate: int
    concealed: bool = False
    packet: bytes | None = None
    stream_ms: int = 0

    def binary(self) -> bytes:
        """The binary WebSocket frame (docs/protocol.md, "Audio over the WebSocket")."""
        if self.packet is not None:
            return self.packet
        payload_type = PCM16_CONCEALED_PAYLOAD_TYPE if self.concealed else PCM16_PAYLOAD_TYPE
        return RTP_HEADER.pack(0x80, payload_type, self.seq & 0xFFFF, self.timestamp, self.ssrc) + self.payload


class Speaker(Protocol):
    """Who a downlink packet is from (a ``MediaPeer``)."""

    @property
    def ssrc(self) -> int: ...
    @property
    def participant_id(self) -> str: ...
    @property
    def stream_origin(self) -> int | None: ...


class WsAudio:
    """One WebSocket bot's audio, both ways.

    Args:
        relay: where uplink RTP goes (``relay.handle_rtp``).
        peer: the bot's relay peer.
        encoding: ``"opus"`` or ``"pcm16"``.
        sample_rate: the session's PCM rate (pcm16), the default of both directions.
        send_sample_rate: the rate of the pcm16 the bot sends (None: ``sample_rate``).
        receive_sample_rate: the rate of the pcm16 the bot receives (None: ``sample_rate``).
        mix_ssrc: receive one mix-minus stream under this SSRC instead of a
            stream per speaker (None: separate streams).
        backlog_s: seconds of pcm16 that may wait to be encoded.
        delivery: pcm16 downlink: ``"arrival"`` (each packet decoded as it
            arrives, ``pcm_arrived``) or ``"paced"`` (a jitter buffer per
            speaker, ``pcm_push``/``pcm_pop`` every 20 ms).
    """

    def __init__(
        self,
        relay: MediaRelay,
        peer: MediaPeer,
        *,
        encoding: str,
        sample_rate: int,
        send_sample_rate: int | None = None,
        receive_sample_rate: int | None = None,
        mix_ssrc: int | None = None,
        backlog_s: float = PCM_BACKLOG_S,
        delivery: str = DELIVERY_ARRIVAL,
    ) -> None:
        if delivery not in DELIVERIES:
            raise ValueError(f"delivery is one of {DELIVERIES}")
        self.relay = relay
        self.peer = peer
        self.encoding = encoding
        self.send_sample_rate = sample_rate if send_sample_rate is None else send_sample_rate
        self.receive_sample_rate = sample_rate if receive_sample_rate is None else receive_sample_rate
        self.mix_ssrc = mix_ssrc
        self.backlog_s = backlog_s
        self._seq = 0
        self._timestamp = 0
        self._pcm = bytearray()
        self._backlog_bytes = int(backlog_s * self.send_sample_rate) * 2
        self._encoder = OpusEncoder(self.send_sample_rate) if encoding == "pcm16" else None
        self.delivery = delivery
        self._playout: Playout | None = None
        self._arrival: ArrivalPlayout | None = None
        self._names: dict[int, str] = {}
        self._origins: dict[int, int | None] = {}
        self._generation = 0
        self._speaker_seq: dict[int, int] = {}
        self._mixer: Mixer | None = None
        self._opus_mix: OpusMix | None = None
        if mix_ssrc is not None:
            if encoding == "pcm16":
                self._mixer = Mixer(sample_rate=self.receive_sample_rate)
            else:
                self._opus_mix = OpusMix(mix_ssrc)
        self._mix_frames = 0

    @property
    def mixed(self) -> bool:
        """The bot receives one mixed stream, popped every 20 ms (``pcm_push``/``pcm_pop``)."""
        return self.mix_ssrc is not None

    @property
    def ticked(self) -> bool:
        """The downlink is popped every 20 ms (``pcm_push``/``pcm_pop``): paced pcm16 or the mix.
        Otherwise each packet is handed over as it arrives (``opus_out`` or ``pcm_arrived``)."""
        return self.mixed or (self.encoding == "pcm16" and self.delivery == DELIVERY_PACED)

    # --- uplink ------------------------------------------------------------------------------

    def audio_message(self, data: bytes, now: float) -> None:
        """A JSON ``audio`` message's payload: an Opus frame, or pcm16.

        Raises:
            SignalingError: ``bad_audio`` or ``audio_backlog_full``.
        """
        if self.encoding == "pcm16":
            self.push_pcm(data)
        else:
            self._opus_frame(data, now)

    def binary_message(self, data: bytes, now: float) -> None:
        """A binary message: pcm16, or a whole RTP packet (Opus).

        Raises:
            SignalingError: ``bad_audio`` or ``audio_backlog_full``.
        """
        if self.encoding == "pcm16":
            self.push_pcm(data)
            return
        if len(data) > MAX_DATAGRAM:
            raise SignalingError(f"an RTP packet is at most {MAX_DATAGRAM} bytes", code="bad_audio")
        self.relay.handle_rtp(self.peer, data, now)

    def _opus_frame(self, payload: bytes, now: float) -> None:
        if not payload:
            raise SignalingError("empty audio frame", code="bad_audio")
        if len(payload) > MAX_OPUS_FRAME:
            raise SignalingError(f"an Opus frame is at most {MAX_OPUS_FRAME} bytes", code="bad_audio")
        self._check_ahead(FRAME_SAMPLES)
        packet = RTP_HEADER.pack(0x80, PAYLOAD_TYPE, self._seq, self._timestamp, self.peer.ssrc) + payload
        self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        self.relay.handle_rtp(self.peer, packet, now)

    def push_pcm(self, pcm: bytes) -> None:
        """Queue pcm16 for ``encode_pending`` (refused whole when the backlog is full).

        Raises:
            SignalingError: ``bad_audio`` (odd length) or ``audio_backlog_full``.
        """
        if len(pcm) % 2:
            raise SignalingError("pcm16 audio must be whole 16-bit samples", code="bad_audio")
        if len(self._pcm) + len(pcm) > self._backlog_bytes:
            raise SignalingError(
                f"more than {self.backlog_s:g} s of audio waiting to be encoded; wait for it to be read",
                code="audio_backlog_full",
            )
        self._check_ahead((len(self._pcm) + len(pcm)) // 2 * SAMPLE_RATE // self.send_sample_rate)
        playout = self.peer.playout
        if playout is not None:
            self._generation = playout.generation
        self._pcm += pcm

    def _check_ahead(self, samples: int) -> None:
        """Refuse audio that would put the bot more than ``max_ahead`` ahead of playback.

        Raises:
            SignalingError: ``playout_full``.
        """
        playout = self.peer.playout
        if playout is None:
            return
        if playout.queued - playout.played + samples > playout.max_ahead * SAMPLE_RATE:
            raise SignalingError(
                f"more than {playout.max_ahead:g} s of your audio is waiting to play; "
                f"{playout.ahead_ms()} ms are queued", code="playout_full",
            )

    def flush_partial(self, now: float) -> None:
        """Pad a trailing part of a pcm16 frame with silence and encode it (before a mark)."""
        encoder = self._encoder
        if encoder is None:
            return
        partial = len(self._pcm) % encoder.frame_bytes
        if partial:
            self._pcm += bytes(encoder.frame_bytes - partial)
        while self.encode_pending(now, 50):
            pass

    def clear_pending(self) -> int:
        """Drop pcm16 not yet encoded (a ``clear``); returns how many ms were dropped."""
        dropped = len(self._pcm) // 2 * 1000 // self.send_sample_rate
        self._pcm.clear()
        return dropped

    @property
    def pending_frames(self) -> int:
        """Whole 20 ms frames of pcm16 waiting to be encoded."""
        return 0 if self._encoder is None else len(self._pcm) // self._encoder.frame_bytes

    def encode_pending(self, now: float, max_frames: int) -> int:
        """Encode up to ``max_frames`` queued 20 ms frames and hand them to the relay.

        Returns:
            How many frames were encoded.
        """
        frames = min(max_frames, self.pending_frames)
        if frames == 0:
            return 0
        playout = self.peer.playout
        if playout is not None and playout.generation != self._generation:
            # Cleared (an interruption) while this audio waited: it is dropped with the rest.
            self._pcm.clear()
            return 0
        encoder = self._encoder
        assert encoder is not None
        size = encoder.frame_bytes
        with memoryview(self._pcm) as view:
            for index in range(frames):
                self._opus_frame(encoder.encode(bytes(view[index * size : (index + 1) * size])), now)
        del self._pcm[: frames * size]
        return frames

    # --- downlink ----------------------------------------------------------------------------

    def opus_out(self, speaker: Speaker, data: bytes) -> AudioOut | None:
        """A speaker's RTP packet as the bot receives it (Opus encoding), or None to skip."""
        try:
            packet = parse_rtp_untrusted(data)
        except BadPacket:
            return None  # the relay already checked it; nothing else can arrive here
        return AudioOut(
            speaker.participant_id, packet.ssrc, packet.sequence_number, packet.timestamp, packet.payload,
            "opus", SAMPLE_RATE, packet=data, stream_ms=stream_ms(speaker.stream_origin, packet.timestamp),
        )

    def pcm_push(self, speaker: Speaker, data: bytes, now: float) -> None:
        """A speaker's RTP packet into its jitter buffer (pcm16 encoding, or the mix)."""
        if self._mixer is not None:
            self._mixer.push(data, now)
            return
        if self._opus_mix is not None:
            self._opus_mix.push(data, now)
            return
        if self._playout is None:
            self._playout = Playout.for_bot(sample_rate=self.receive_sample_rate)
        try:
            self._playout.push(parse_rtp_untrusted(data), now)
        except BadPacket:
            return
        self._names[speaker.ssrc] = speaker.participant_id
        self._origins[speaker.ssrc] = speaker.stream_origin

    def jitter_stats(self, ssrc: int) -> JitterStats | None:
        """A speaker's jitter-buffer counters (paced pcm16), or None if not tracked."""
        return None if self._playout is None else self._playout.stats(ssrc)

    def pcm_pop(self, now: float) -> list[AudioOut]:
        """Every speaker's next 20 ms frame due at ``now`` (pcm16 encoding), or the mix's."""
        if self.mix_ssrc is not None:
            return self._mix_pop(self.mix_ssrc, now)
        playout = self._playout
        if playout is None:
            return []
        out = [self._pcm_frame(frame) for frame in playout.pop(now)]
        if len(self._speaker_seq) > playout.max_speakers * 2:
            self._speaker_seq = {s: self._speaker_seq[s] for s in playout.speakers if s in self._speaker_seq}
            self._names = {s: self._names[s] for s in playout.speakers if s in self._names}
            self._origins = {s: self._origins[s] for s in playout.speakers if s in self._origins}
        return out

    def pcm_arrived(self, speaker: Speaker, data: bytes, now: float) -> list[AudioOut]:
        """A speaker's RTP packet decoded at once (pcm16, ``delivery="arrival"``):
        its frame, after the frames of any packets lost just before it."""
        arrival = self._arrival
        if arrival is None:
            arrival = self._arrival = ArrivalPlayout(sample_rate=self.receive_sample_rate)
        try:
            packet = parse_rtp_untrusted(data)
        except BadPacket:
            return []  # the relay already checked it; nothing else can arrive here
        ssrc = packet.ssrc
        if ssrc not in self._names and len(self._names) >= arrival.max_speakers:
            self._names = {s: self._names[s] for s in arrival.speakers if s in self._names}
            self._origins = {s: self._origins[s] for s in arrival.speakers if s in self._origins}
            self._speaker_seq = {s: self._speaker_seq[s] for s in arrival.speakers if s in self._speaker_seq}
        self._names[ssrc] = speaker.participant_id
        self._origins[ssrc] = speaker.stream_origin
        return [self._pcm_frame(frame) for frame in arrival.push(packet, now)]

    def _pcm_frame(self, frame: DecodedFrame) -> AudioOut:
        """One decoded frame as the bot receives it."""
        rate = self.receive_sample_rate
        seq = self._speaker_seq.get(frame.ssrc, 0)
        self._speaker_seq[frame.ssrc] = seq + 1
        origin = self._origins.get(frame.ssrc)
        # The timestamp is the frame's stream position in samples at the session rate.
        position = 0 if origin is None else (frame.timestamp - origin) & 0xFFFFFFFF
        return AudioOut(
            self._names.get(frame.ssrc, ""), frame.ssrc, seq, (position * rate // SAMPLE_RATE) & 0xFFFFFFFF,
            frame.pcm, "pcm16", rate, concealed=frame.kind is not FrameKind.AUDIO,
            stream_ms=stream_ms(origin, frame.timestamp),
        )

    def _mix_pop(self, mix_ssrc: int, now: float) -> list[AudioOut]:
        if self._opus_mix is not None:
            popped = self._opus_mix.pop(now)
            if popped is None:
                return []
            frame, packet = popped
            header = parse_rtp_untrusted(packet)
            return [
                AudioOut(
                    MIX_PARTICIPANT_ID, mix_ssrc, header.sequence_number, header.timestamp, header.payload,
                    "opus", SAMPLE_RATE, packet=packet, stream_ms=frame.stream_ms,
                )
            ]
        assert self._mixer is not None  # mixed pcm16
        mixed = self._mixer.pop(now)
        if mixed is None:
            return []
        rate = self.receive_sample_rate
        seq = self._mix_frames
        self._mix_frames += 1
        return [
            AudioOut(
                MIX_PARTICIPANT_ID, mix_ssrc, seq, (mixed.position * rate // 50) & 0xFFFFFFFF, mixed.pcm,
                "pcm16", rate, concealed=mixed.concealed, stream_ms=mixed.stream_ms,
            )
        ]


__all__ = ["DELIVERIES", "DELIVERY_ARRIVAL", "DELIVERY_PACED", "PCM_BACKLOG_S", "AudioOut", "WsAudio"]
