"""The mixed stream: one mix-minus of everyone else for a listener (sans-IO).

A bot that joins with ``"receive": "mixed"`` (a speech-to-text engine wants one
stream, not one per speaker) gets the sum of the other participants instead of
their separate streams. The relay already never hands a listener its own
packets (a peer's ``fanout`` leaves its own sink out), so whatever reaches the
listener's mixer is "everyone else": mix-minus comes for free.

``Mixer`` decodes every speaker through its own jitter buffer and decoder
(``audio.playout.Playout``, straight to the output rate: libopus decodes to
8/12/16/24/48 kHz, so no resampler; a backlog, after a stall or when the
target delay falls, is played late up to ``audio.playout.BOT_CATCHUP_MARGIN``
and shed a frame a second rather than dropped), adds the 20 ms frames of
everyone talking in int32 and bounds the sum with a soft knee
(``soft_limit``): identity below -2.5 dBFS, a tanh curve above that never
reaches full scale, so loud overlaps
are compressed instead of wrapping around or hard-clipping.

``OpusMix`` encodes the mix and frames it as RTP under the listener's mix SSRC
(the join's ``mix_ssrc``); WebSocket Opus bots get its packets from
``WsAudio``, UDP bots from ``MixSink``, which the relay ticks every 20 ms
through its ticker hook (``MediaRelay.start_ticker``).

The mix's clock: position 0 is its first frame; later frames sit at the number
of 20 ms ticks since then (``stream_ms`` = 20 x position), so silences leave a
gap in positions, and RTP timestamps follow the positions (48 kHz).
"""

from __future__ import annotations

import collections
import secrets
from dataclasses import dataclass

import numpy as np

from botcall.audio.jitter import FrameKind, JitterStats
from botcall.audio.opus import FRAME_DURATION, FRAME_SAMPLES, PAYLOAD_TYPE, SAMPLE_RATE, OpusEncoder
from botcall.audio.playout import BOT_CATCHUP_MARGIN, Playout
from botcall.errors import BadPacket
from botcall.relay.core import MediaPeer, MediaRelay, Transmit, UdpSink
from botcall.wire.rtp import RTP_HEADER, parse_rtp_untrusted

__all__ = ["MIX_PARTICIPANT_ID", "MixFrame", "MixSink", "Mixer", "OpusMix", "soft_limit"]

MIX_PARTICIPANT_ID = "mix"
"""The ``participant_id`` of mixed frames (no participant has it: theirs start with ``p-``)."""

FULL_SCALE = 32767
KNEE = 24576
"""Where the limiter starts bending: 0.75 of full scale (-2.5 dBFS)."""
_HEADROOM = FULL_SCALE - KNEE
# A mixer whose speakers stopped stops ticking after this many empty ticks (1 s:
# longer than any jitter buffer's target delay, so a speaker filling up again
# is not missed); the next packet starts it again.
IDLE_TICKS = 50
_MARKER = 0x80


def soft_limit(mix: np.ndarray) -> bytes:
    """Bound a sum of int16 signals to int16 with a soft knee.

    Below ``KNEE`` the samples pass unchanged; above it, the excess is bent by
    ``tanh`` into the headroom left to full scale, so the curve is continuous,
    monotonic and never reaches 32767 (no wrap-around, no flat-topped clip).

    Args:
        mix: the summed samples (any integer or float dtype).

    Returns:
        int16 little-endian PCM.
    """
    peak = int(np.max(np.abs(mix))) if len(mix) else 0
    if peak <= KNEE:
        return mix.astype("<i2").tobytes()
    x = mix.astype(np.float64)
    magnitude = np.abs(x)
    over = magnitude > KNEE
    bent = KNEE + _HEADROOM * np.tanh((magnitude[over] - KNEE) / _HEADROOM)
    x[over] = np.copysign(bent, x[over])
    return np.rint(x).astype("<i2").tobytes()


@dataclass(frozen=True, slots=True)
class MixFrame:
    """20 ms of the mix.

    Attributes:
        pcm: int16 little-endian mono PCM at the mixer's rate.
        position: frames (20 ms ticks) since the mix's first frame.
        speakers: how many speakers the frame holds.
        concealed: every speaker in it was synthesised for a lost packet.
        resumed: the first frame after a silence (or the first ever): RTP's marker bit.
    """

    pcm: bytes
    position: int
    speakers: int
    concealed: bool
    resumed: bool

    @property
    def stream_ms(self) -> int:
        """The frame's place on the mix's clock: ms since the mix's first frame."""
        return self.position * 20


class Mixer:
    """Decode, jitter-buffer and sum every speaker one listener hears.

    Args:
        sample_rate: the mix's rate (8/12/16/24/48 kHz).
        max_speakers: bound on tracked speakers (``Playout``'s).
    """

    def __init__(self, *, sample_rate: int = SAMPLE_RATE, max_speakers: int = 32) -> None:
        self.sample_rate = sample_rate
        # Any delay above the target, not only a stall's, is shed slowly (the
        # in-order stream keeps its start-up delay ~1 s longer, losing no frame
        # when the target first falls); paced pcm16 (Playout.for_bot) keeps a
        # stall's backlog only and an in-order stream's latency as before.
        self._playout = Playout(sample_rate=sample_rate, max_speakers=max_speakers, catchup_margin=BOT_CATCHUP_MARGIN)
        self._origin: float | None = None
        self._position = -1
        self.counters: collections.Counter[str] = collections.Counter()

    def push(self, data: bytes, now: float) -> None:
        """One speaker's RTP packet (already checked by the relay)."""
        try:
            packet = parse_rtp_untrusted(data)
        except BadPacket:
            self.counters["malformed_rtp"] += 1
            return
        self._playout.push(packet, now)

    def forget(self, ssrc: int) -> None:
        """Drop a speaker's state (they left)."""
        self._playout.forget(ssrc)

    @property
    def speakers(self) -> tuple[int, ...]:
        return self._playout.speakers

    def stats(self, ssrc: int) -> JitterStats | None:
        """One speaker's jitter-buffer counters (``discarded``: frames dropped to cut the delay), or None if not tracked."""
        return self._playout.stats(ssrc)

    def pop(self, now: float) -> MixFrame | None:
        """The mix's next 20 ms at ``now`` (call every 20 ms), or None while nobody talks."""
        frames = self._playout.pop(now)
        if not frames:
            return None
        if len(frames) == 1:
            pcm = frames[0].pcm  # one speaker: its audio as decoded
        else:
            total = np.frombuffer(frames[0].pcm, "<i2").astype(np.int32)
            for frame in frames[1:]:
                total += np.frombuffer(frame.pcm, "<i2")
            pcm = soft_limit(total)
        if self._origin is None:
            self._origin = now
            position, resumed = 0, True
        else:
            position = max(self._position + 1, round((now - self._origin) / FRAME_DURATION))
            resumed = position != self._position + 1
        self._position = position
        concealed = all(frame.kind is not FrameKind.AUDIO for frame in frames)
        return MixFrame(pcm, position, len(frames), concealed, resumed)


class OpusMix:
    """A listener's mix as Opus RTP under its own SSRC.

    Args:
        ssrc: the mix SSRC (the join's ``mix_ssrc``).
        max_speakers: bound on tracked speakers.
    """

    def __init__(self, ssrc: int, *, max_speakers: int = 32) -> None:
        self.ssrc = ssrc
        self.mixer = Mixer(sample_rate=SAMPLE_RATE, max_speakers=max_speakers)
        self._encoder = OpusEncoder()
        self._seq = secrets.randbits(16)
        self._timestamp_origin = secrets.randbits(32)

    def push(self, data: bytes, now: float) -> None:
        self.mixer.push(data, now)

    def pop(self, now: float) -> tuple[MixFrame, bytes] | None:
        """The mix's next 20 ms as an RTP packet (payload type 111), or None while nobody talks."""
        frame = self.mixer.pop(now)
        if frame is None:
            return None
        timestamp = (self._timestamp_origin + frame.position * FRAME_SAMPLES) & 0xFFFFFFFF
        second = PAYLOAD_TYPE | (_MARKER if frame.resumed else 0)
        packet = RTP_HEADER.pack(0x80, second, self._seq, timestamp, self.ssrc) + self._encoder.encode(frame.pcm)
        self._seq = (self._seq + 1) & 0xFFFF
        return frame, packet


class MixSink(UdpSink):
    """A UDP bot's mixed stream: every speaker into its ``OpusMix``, the mix out every 20 ms.

    The relay sets ``peer`` (as for any ``UdpSink``) and ticks the sink through
    ``next_deadline``/``handle_timeout`` while it is started: from a speaker's
    packet until ``IDLE_TICKS`` empty ticks in a row.

    Args:
        relay: the relay whose timer ticks the sink.
        transmit: sends one datagram.
        ssrc: the mix SSRC.
    """

    __slots__ = ("mix", "_relay", "_next_tick", "_idle")

    def __init__(self, relay: MediaRelay, transmit: Transmit, ssrc: int) -> None:
        super().__init__(transmit)
        self.mix = OpusMix(ssrc)
        self._relay = relay
        self._next_tick: float | None = None
        self._idle = 0

    def deliver_rtp(self, data: bytes, speaker: MediaPeer, now: float) -> None:
        self.mix.push(data, now)
        self._idle = 0
        if self._next_tick is None:
            self._next_tick = now
            self._relay.start_ticker(self)

    def deliver_rtcp(self, data: bytes, speaker: MediaPeer, now: float) -> None:
        """No speaker's RTCP: its reports describe a stream this listener does not get."""

    def next_deadline(self) -> float | None:
        return self._next_tick

    def handle_timeout(self, now: float) -> None:
        """Send the mix's frames due by ``now`` (a late timer catches up, up to 100 ms)."""
        tick = self._next_tick
        if tick is None:
            return
        if now - tick > 0.1:
            tick = now  # far behind (a stalled loop): skip rather than burst
        while tick <= now:
            out = self.mix.pop(tick)
            tick += FRAME_DURATION
            if out is None:
                self._idle += 1
                if self._idle >= IDLE_TICKS:
                    self._next_tick = None
                    self._relay.stop_ticker(self)
                    return
                continue
            self._idle = 0
            peer = self.peer
            if peer.addr is None:
                peer.drops["not_latched"] += 1
                continue
            peer.tx_packets += 1
            self._transmit(out[1], peer.addr)
        self._next_tick = tick
