"""Per-speaker play-out: jitter buffer plus Opus decoder for each SSRC (sans-IO),
or decoding in arrival order (:class:`ArrivalPlayout`) for listeners that want
each packet's audio the moment it arrives.

Wherever audio is decoded for someone — the bot SDK's ``call.audio()``, the
relay's ``pcm16`` WebSocket stream — packets from each speaker go through their
own :class:`~botcall.audio.jitter.JitterBuffer`, and a 20 ms play-out clock pulls
one frame per active speaker: decoded audio, FEC-recovered audio, or
concealment. A speaker whose packets are shorter than 20 ms (a browser asked
for ``a=ptime:10``) gets a buffer on its own packet clock, popped as many
times per tick as make 20 ms, so every frame of a tick lasts 20 ms (the mix
adds them sample by sample). Speakers that fall silent go idle (nothing emitted); speakers
unheard for ``forget_after`` seconds are forgotten, and at most
``max_speakers`` are tracked, so memory stays bounded whatever arrives.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botcall.errors import OpusDecodeError
from botcall.audio.jitter import FrameKind, JitterBuffer, JitterOptions, JitterStats, PlayoutFrame
from botcall.audio.opus import FRAME_SAMPLES, SAMPLE_RATE, OpusDecoder, packet_samples_untrusted
from botcall.wire.seq import extend_u16
from botcall.wire.rtp import RtpPacket

if TYPE_CHECKING:
    # Typing only (Unpack is in typing from Python 3.12).
    from typing_extensions import Unpack

FRAME_DURATION = 0.020
# ArrivalPlayout: a jump of more than this many packets is a new stream segment
# (the speaker's sender restarted), not a loss to conceal: 100 ms at most is
# synthesised for a gap.
MAX_CONCEALED_RUN = 5
BOT_CATCHUP_MARGIN = 0.250
"""Seconds of backlog a bot's play-out plays late rather than discarding at once
(``JitterBuffer``'s default catch-up is 20 ms). A bot is most often a
speech-to-text engine: after a stall (the relay's loop or the sender held up on
a busy machine) the frames that piled up are played, late, rather than dropped
(a lost syllable), and the delay is shed a frame per ``shrink_interval`` (1 s).
Up to this much; a longer stall still catches up at once, so the delay stays
bounded. Paced pcm16 (``Playout.for_bot``) uses it as ``stall_margin``: only a
delay that jumped is kept, so an in-order stream's latency is as before. The
mix (``relay.mixer``) uses it as ``catchup_margin``: any excess, a falling
target's too, is shed slowly."""


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """20 ms of one speaker's audio.

    Attributes:
        ssrc: the speaker's SSRC.
        pcm: int16 little-endian PCM at the play-out's sample rate.
        kind: ``AUDIO`` (decoded), ``CONCEAL`` (lost, rebuilt by FEC or PLC) or
            ``EXPAND`` (PLC while the buffer grows).
        sequence: the extended RTP sequence number the frame stands for.
        recovered: a lost frame rebuilt from the next packet's in-band FEC.
        timestamp: the speaker's RTP timestamp the frame stands for (48 kHz, not extended).
    """

    ssrc: int
    pcm: bytes
    kind: FrameKind
    sequence: int
    recovered: bool = False
    timestamp: int = 0


class Rendering(enum.Enum):
    """How ``render`` made a frame's audio."""

    DECODED = "decoded"
    """Decoded from the frame's packet."""
    RECOVERED = "recovered"
    """A lost frame rebuilt from the next packet's in-band FEC."""
    CONCEALED = "concealed"
    """Packet loss concealment: a lost frame without FEC, or the buffer expanding."""
    REFUSED = "refused"
    """libopus refused the payload (or the FEC data); concealed instead."""


def render(frame: PlayoutFrame, decoder: OpusDecoder, *, use_fec: bool = True, samples: int | None = None) -> tuple[bytes, Rendering]:
    """Decode one jitter-buffer frame: its packet, its FEC, or concealment.

    Args:
        frame: what the jitter buffer played.
        decoder: the speaker's decoder (its state follows every frame rendered).
        use_fec: rebuild a lost frame from the next packet's FEC when the
            buffer offers it (otherwise conceal).
        samples: a synthesised frame's length at the decoder's rate (the
            speaker's packet duration); None: 20 ms.

    Returns:
        One frame of int16 PCM at the decoder's rate, and how it was made.
    """
    try:
        if frame.kind is FrameKind.AUDIO:
            return decoder.decode_untrusted(frame.payload), Rendering.DECODED
        if use_fec and frame.kind is FrameKind.CONCEAL and frame.fec_payload:
            return decoder.recover_untrusted(frame.fec_payload, samples), Rendering.RECOVERED
    except OpusDecodeError:
        return decoder.conceal(samples), Rendering.REFUSED
    return decoder.conceal(samples), Rendering.CONCEALED


class _Speaker:
    __slots__ = ("buffer", "decoder", "last_heard", "packet_samples", "pops")

    def __init__(self, buffer: JitterBuffer, decoder: OpusDecoder, now: float, packet_samples: int) -> None:
        self.buffer = buffer
        self.decoder = decoder
        self.last_heard = now
        # The speaker's packet duration (48 kHz samples) and the buffer's pops per 20 ms tick.
        self.packet_samples = packet_samples
        self.pops = FRAME_SAMPLES // packet_samples


class _SpeakerTable:
    """The per-speaker bookkeeping both play-outs share: forget the silent, forget on leave."""

    _speakers: dict[int, _Speaker] | dict[int, _ArrivalSpeaker]
    forget_after: float
    counters: collections.Counter[str]

    def _forget_idle(self, now: float) -> None:
        for ssrc in [s for s, sp in self._speakers.items() if now - sp.last_heard > self.forget_after]:
            del self._speakers[ssrc]
            self.counters["speakers_forgotten"] += 1

    def forget(self, ssrc: int) -> None:
        """Drop one speaker's state (they left)."""
        self._speakers.pop(ssrc, None)

    @property
    def speakers(self) -> tuple[int, ...]:
        return tuple(self._speakers)


class Playout(_SpeakerTable):
    """Jitter buffers and decoders for every speaker one listener hears.

    ``Playout.for_bot`` is the one a paced pcm16 bot's clock pops: it plays a
    stall's backlog late (``BOT_CATCHUP_MARGIN``).

    Args:
        sample_rate: output rate (8/12/16/24/48 kHz; libopus decodes straight to it).
        channels: output channels.
        max_speakers: bound on tracked SSRCs; a new one beyond it is dropped
            (counted ``too_many_speakers``) until a silent one is forgotten.
        forget_after: seconds without a packet before a speaker's state is freed.
        jitter_options: keyword arguments for each ``JitterBuffer``.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 48000,
        channels: int = 1,
        max_speakers: int = 32,
        forget_after: float = 10.0,
        **jitter_options: Unpack[JitterOptions],
    ) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.max_speakers = max_speakers
        self.forget_after = forget_after
        self._jitter_options = jitter_options
        self._speakers: dict[int, _Speaker] = {}
        self._next_forget = 0.0
        self.counters: collections.Counter[str] = collections.Counter()

    @classmethod
    def for_bot(cls, *, sample_rate: int, max_speakers: int = 32) -> Playout:
        """The play-out of a bot's paced per-speaker stream: a stall's backlog
        (the delay jumped a frame or more) is played late, up to
        ``BOT_CATCHUP_MARGIN``, then shed slowly; any other excess over the
        target is cut as before, so an in-order stream's latency is unchanged."""
        return cls(sample_rate=sample_rate, max_speakers=max_speakers, stall_margin=BOT_CATCHUP_MARGIN)

    def push(self, packet: RtpPacket, arrival_time: float) -> None:
        """Queue one received RTP packet."""
        speaker = self._speakers.get(packet.ssrc)
        samples = _sub_frame_samples(packet.payload)
        if speaker is not None and samples != speaker.packet_samples:
            # The sender changed its packet duration (a renegotiated ptime):
            # its buffer runs on the old packet clock; start afresh.
            del self._speakers[packet.ssrc]
            self.counters["packet_duration_changed"] += 1
            speaker = None
        if speaker is None:
            if len(self._speakers) >= self.max_speakers:
                self._forget_idle(arrival_time)
                if len(self._speakers) >= self.max_speakers:
                    self.counters["too_many_speakers"] += 1
                    return
            options: JitterOptions = {**self._jitter_options}
            if samples != FRAME_SAMPLES:
                options["frame_duration"] = samples / SAMPLE_RATE
            speaker = self._speakers[packet.ssrc] = _Speaker(
                JitterBuffer(**options),
                OpusDecoder(self.sample_rate, self.channels),
                arrival_time,
                samples,
            )
        speaker.last_heard = arrival_time
        speaker.buffer.push(packet, arrival_time)

    def pop(self, now: float) -> list[DecodedFrame]:
        """Play one 20 ms tick: a frame for each speaker that has something to play.

        Call every 20 ms (the caller's play-out clock).
        """
        out: list[DecodedFrame] = []
        for ssrc, speaker in self._speakers.items():
            if speaker.pops == 1:
                frame = speaker.buffer.pop(now)
                if frame is None:
                    continue
                pcm, how = render(frame, speaker.decoder)
                if how is Rendering.REFUSED:
                    self.counters["opus_decode_failed"] += 1
                out.append(
                    DecodedFrame(ssrc, pcm, frame.kind, frame.sequence, how is Rendering.RECOVERED, frame.timestamp & 0xFFFFFFFF)
                )
                continue
            joined = self._pop_short(speaker, ssrc, now)
            if joined is not None:
                out.append(joined)
        if now >= self._next_forget:
            self._next_forget = now + 1.0
            self._forget_idle(now)
        return out


    def _pop_short(self, speaker: _Speaker, ssrc: int, now: float) -> DecodedFrame | None:
        """20 ms of a speaker whose packets are shorter: its buffer popped on its
        own packet clock (``pops`` times, the last at ``now``), the frames joined;
        the parts the buffer had nothing for (idle) are silence."""
        step = speaker.packet_samples / SAMPLE_RATE
        out_samples = speaker.decoder.frame_samples * speaker.packet_samples // FRAME_SAMPLES
        parts: list[bytes] = []
        first: PlayoutFrame | None = None
        audio = recovered = False
        for index in range(speaker.pops):
            frame = speaker.buffer.pop(now - (speaker.pops - 1 - index) * step)
            if frame is None:
                parts.append(bytes(out_samples * 2 * self.channels))
                continue
            pcm, how = render(frame, speaker.decoder, samples=out_samples)
            if how is Rendering.REFUSED:
                self.counters["opus_decode_failed"] += 1
            if first is None:
                first = frame
            audio = audio or frame.kind is FrameKind.AUDIO
            recovered = recovered or how is Rendering.RECOVERED
            parts.append(pcm)
        if first is None:
            return None
        kind = FrameKind.AUDIO if audio else first.kind
        return DecodedFrame(ssrc, b"".join(parts), kind, first.sequence, recovered, first.timestamp & 0xFFFFFFFF)

    def stats(self, ssrc: int) -> JitterStats | None:
        """The ``JitterStats`` of one speaker, or None."""
        speaker = self._speakers.get(ssrc)
        return None if speaker is None else speaker.buffer.stats


def _sub_frame_samples(payload: bytes) -> int:
    """The packet's duration (48 kHz samples) when it divides 20 ms into whole
    packets (2.5, 5, 10 ms), else 20 ms: longer or odd packets are played one
    per tick as before (the jitter buffer trims the excess)."""
    try:
        samples = packet_samples_untrusted(payload)
    except OpusDecodeError:
        return FRAME_SAMPLES
    return samples if samples < FRAME_SAMPLES and FRAME_SAMPLES % samples == 0 else FRAME_SAMPLES


class _ArrivalSpeaker:
    __slots__ = ("decoder", "last_heard", "sequence")

    def __init__(self, decoder: OpusDecoder, now: float) -> None:
        self.decoder = decoder
        self.last_heard = now
        self.sequence: int | None = None  # extended sequence number of the last packet decoded


class ArrivalPlayout(_SpeakerTable):
    """Decode each speaker's packets as they arrive, concealing only real gaps.

    For a listener that takes the audio as fast as it comes (a speech-to-text
    engine) rather than on a play-out clock: no jitter buffer holds the audio
    back. A packet in order is decoded at once. A packet after a gap of up to
    ``MAX_CONCEALED_RUN`` packets first yields the missing frames (the last one
    rebuilt from this packet's in-band FEC, the others concealed), so the
    listener's audio stays continuous; a longer jump starts a new segment. A
    packet older than the last one decoded (reordered past its turn, or a
    duplicate) has had its place filled already and is dropped
    (``late_dropped``).

    Args:
        sample_rate: output rate (8/12/16/24/48 kHz; libopus decodes straight to it).
        max_speakers: bound on tracked SSRCs; a new one beyond it is dropped
            (counted ``too_many_speakers``) until a silent one is forgotten.
        forget_after: seconds without a packet before a speaker's state is freed.
    """

    def __init__(self, *, sample_rate: int = 48000, max_speakers: int = 32, forget_after: float = 10.0) -> None:
        self.sample_rate = sample_rate
        self.max_speakers = max_speakers
        self.forget_after = forget_after
        self._speakers: dict[int, _ArrivalSpeaker] = {}
        self._next_forget = 0.0
        self.counters: collections.Counter[str] = collections.Counter()

    def push(self, packet: RtpPacket, arrival_time: float) -> list[DecodedFrame]:
        """One received packet: the frames it completes, in stream order (often one)."""
        speaker = self._speakers.get(packet.ssrc)
        if speaker is None:
            if len(self._speakers) >= self.max_speakers:
                self._forget_idle(arrival_time)
                if len(self._speakers) >= self.max_speakers:
                    self.counters["too_many_speakers"] += 1
                    return []
            speaker = self._speakers[packet.ssrc] = _ArrivalSpeaker(OpusDecoder(self.sample_rate), arrival_time)
        elif arrival_time >= self._next_forget:
            self._next_forget = arrival_time + 1.0
            self._forget_idle(arrival_time)
        speaker.last_heard = arrival_time
        previous = speaker.sequence
        sequence = extend_u16(previous, packet.sequence_number)
        out: list[DecodedFrame] = []
        if previous is not None:
            missing = sequence - previous - 1
            if missing < 0:
                self.counters["late_dropped"] += 1
                return out
            if missing > MAX_CONCEALED_RUN:
                speaker.decoder.reset()
                self.counters["segments_restarted"] += 1
            elif missing:
                out.extend(self._fill(speaker.decoder, packet, sequence, missing))
        speaker.sequence = sequence
        try:
            pcm = speaker.decoder.decode_untrusted(packet.payload)
            kind = FrameKind.AUDIO
        except OpusDecodeError:
            self.counters["opus_decode_failed"] += 1
            pcm = speaker.decoder.conceal()
            kind = FrameKind.CONCEAL
        out.append(DecodedFrame(packet.ssrc, pcm, kind, sequence, False, packet.timestamp))
        return out

    def _fill(self, decoder: OpusDecoder, packet: RtpPacket, sequence: int, missing: int) -> list[DecodedFrame]:
        """The frames of ``missing`` lost packets before ``packet``, each as long as
        ``packet`` (a speaker keeps its packet duration: 10 or 20 ms from browsers)."""
        frames: list[DecodedFrame] = []
        try:
            step = packet_samples_untrusted(packet.payload)
        except OpusDecodeError:
            step = FRAME_SAMPLES
        samples = decoder.frame_samples * step // FRAME_SAMPLES
        for back in range(missing, 0, -1):
            timestamp = (packet.timestamp - back * step) & 0xFFFFFFFF
            recovered = False
            if back == 1:
                try:
                    pcm, recovered = decoder.recover_untrusted(packet.payload, samples), True
                except OpusDecodeError:
                    pcm = decoder.conceal(samples)
            else:
                pcm = decoder.conceal(samples)
            frames.append(DecodedFrame(packet.ssrc, pcm, FrameKind.CONCEAL, sequence - back, recovered, timestamp))
        self.counters["concealed"] += missing
        return frames

