"""Speech detection per speaker in the relay (sans-IO).

Every peer's forwarded audio goes through a :class:`SpeechTracker`, which
turns it into ``SpeechStarted``/``SpeechStopped`` events on the speaker's
stream clock (``stream_ms``, ms since its first packet). Two ways in, the
cheapest that the stream allows:

- **RFC 6464 levels.** A browser's packets carry the client-to-mixer audio
  level (``urn:ietf:params:rtp-hdrext:ssrc-audio-level``, negotiated in the
  answer at the id the offer chose); a bot may send it at one-byte id
  ``BOT_AUDIO_LEVEL_ID`` (1). The level goes through ``audio.vad.LevelDetector``
  (noise floor plus hysteresis): no decoding at all.
- **Decoding.** A packet without the level (ffmpeg, hand-written bots) is
  decoded and run through the chosen frame detector
  (``audio.vad.make_speech_detector``: Silero behind an energy pre-gate, by
  measurement in ``bench/vad_quality.py``). This costs about 60 µs of Opus
  decoding plus 2 µs (silence) to 130 µs (speech) per 20 ms frame, so the relay
  allows at most ``max_decoders`` such streams at once (``SpeechBudget``);
  beyond that a stream falls back to the packet-size rule (Opus frames of
  silence and DTX are a few bytes, RFC 6716 §2.1.9) through the same gate.

A stream that stops sending (DTX, mute, a dead peer) is ended by ``expire``,
which the relay calls from its timer with the stream position the silence has
reached.
"""

from __future__ import annotations

from collections.abc import Callable

from botcall.audio.opus import OpusDecoder, packet_samples_untrusted
from botcall.audio.vad import (
    BOT_AUDIO_LEVEL_ID,
    FRAME_SAMPLES,
    AudioLevel,
    LevelConfig,
    LevelDetector,
    LevelState,
    SpeechDetector,
    SpeechEvent,
    SpeechGate,
    SpeechStarted,
    SpeechStopped,
    make_speech_detector,
    parse_audio_level_untrusted,
)
from botcall.errors import BadPacket

VOICE_MIN_SIZE = 12 + 24
"""RTP packets at least this large carry sound; silence and DTX frames are a few bytes."""
MAX_DECODERS = 8
"""Streams decoded for speech detection at once, per relay process (``Config.speech_max_decoders``):
about 0.2 ms of CPU per 20 ms frame of speech each (60 µs Opus decoding, 130 µs
Silero), so 8 streams all talking cost under 8 % of a core."""


def audio_level_untrusted(data: bytes, element_id: int, end: int) -> AudioLevel | None:
    """The RFC 6464 level in an RTP packet's one-byte header extension (RFC 8285 §4.2).

    A walk over the extension block of a packet already checked up to its
    payload (``end``, from ``payload_offset_untrusted``): per packet, without
    parsing the whole header as ``RtpHeaderExtension.element_untrusted`` would.

    Returns:
        ``(voice, level_dbov)`` (level 0 to -127), or None when the packet has
        no such element (or a two-byte extension, or a malformed one).
    """
    if not data[0] & 0x10:
        return None
    offset = 12 + 4 * (data[0] & 0x0F)  # the extension block starts after the CSRCs
    if data[offset] != 0xBE or data[offset + 1] != 0xDE:
        return None
    index = offset + 4
    while index < end:
        header = data[index]
        if header == 0:  # padding
            index += 1
            continue
        ident, length = header >> 4, (header & 0x0F) + 1
        if ident == 15:
            return None
        if ident == element_id:
            if length != 1 or index + 1 >= end:
                return None
            return parse_audio_level_untrusted(data[index + 1 : index + 2])
        index += 1 + length
    return None


def warm_up(make_detector: Callable[[], SpeechDetector] = make_speech_detector) -> None:
    """Build one detector now, so the model is loaded at start-up and never on the
    packet path (loading the shared Silero session takes a few hundred ms)."""
    make_detector()


class SpeechBudget:
    """How many streams may be decoded for speech detection at once."""

    __slots__ = ("max_decoders", "decoding", "refused")

    def __init__(self, max_decoders: int = MAX_DECODERS) -> None:
        self.max_decoders = max_decoders
        self.decoding = 0
        self.refused = 0

    def take(self) -> bool:
        if self.decoding >= self.max_decoders:
            self.refused += 1
            return False
        self.decoding += 1
        return True

    def give_back(self) -> None:
        self.decoding -= 1


class SpeechTracker:
    """One speaker's speech detection.

    Args:
        level_id: the header extension id of RFC 6464 levels in this stream
            (the browser's negotiated id; ``BOT_AUDIO_LEVEL_ID`` for bots), or None.
        budget: the relay's decoder budget; None never decodes (packet sizes only).
        make_detector: builds the decoding detector (the default kind by default).
    """

    __slots__ = (
        "level_id", "budget", "_make_detector", "_levels", "_decoded", "_decoder", "_sizes",
        "_pcm", "onset_ms", "last_ms", "interrupted", "packet_ms", "fast_expire", "fast_track",
    )

    def __init__(
        self,
        *,
        level_id: int | None,
        budget: SpeechBudget | None,
        make_detector: Callable[[], SpeechDetector] = make_speech_detector,
    ) -> None:
        self.level_id = level_id
        self.budget = budget
        self._make_detector = make_detector
        self._levels: LevelDetector | None = None
        self._decoded: SpeechDetector | None = None
        self._decoder: OpusDecoder | None = None
        self._sizes: SpeechGate | None = None
        self._pcm = b""
        # The onset of the current speech run (its SpeechStarted.stream_ms), or None.
        self.onset_ms: int | None = None
        # The stream position of the newest packet's end.
        self.last_ms = 0
        # This run has interrupted the bots already (barge-in fires once per run).
        self.interrupted = False
        # The stream's packet duration, read from its first packet (20 ms, or 10
        # from a browser asked for a=ptime:10): what one packet stands for.
        self.packet_ms: int | None = None
        # While the compiled fast path owns this tracker's level path (between
        # level_handover and level_takeback): the relay's speaking sweep asks it
        # instead, as (now, sweep interval) -> the SpeechStopped it found (noted
        # here already), or None. It keeps last_ms and the peer's last_voice.
        self.fast_expire: Callable[[float, float], SpeechStopped | None] | None = None
        # ... and a packet of this speaker that Python forwards meanwhile (after
        # another datagram of its batch) goes to it too, as (packet, now): the
        # state stays where it is.
        self.fast_track: Callable[[bytes, float], None] | None = None

    @property
    def speaking(self) -> bool:
        return self.onset_ms is not None

    @property
    def decoding(self) -> bool:
        return self._decoded is not None

    def on_packet(self, data: bytes, payload_offset: int, stream_ms: int) -> SpeechEvent | None:
        """One forwarded RTP packet (Opus), starting at ``stream_ms`` of its stream."""
        packet_ms = self.packet_ms
        if packet_ms is None:
            packet_ms = self.packet_ms = _packet_ms(data, payload_offset)
        self.last_ms = stream_ms + packet_ms
        level = None if self.level_id is None else audio_level_untrusted(data, self.level_id, payload_offset)
        if level is None and self.level_id is None and data[0] & 0x10:
            level = audio_level_untrusted(data, BOT_AUDIO_LEVEL_ID, payload_offset)
        if level is not None:
            if self._levels is None:
                # A bot's levels (no browser level id) are of synthesised audio.
                self._levels = LevelDetector(synthetic=self.level_id is None, frame_ms=packet_ms)
            return self._note(self._levels.update(level[0], level[1], stream_ms))
        if self._decoded is None and self._sizes is None:
            if self.budget is not None and self.budget.take():
                self._decoded = self._make_detector()
                self._decoder = OpusDecoder(48000)
            else:
                self._sizes = SpeechGate(onset_ms=60, hangover_ms=400, frame_ms=packet_ms)
        if self._sizes is not None:
            return self._note(self._sizes.update(1.0 if len(data) >= VOICE_MIN_SIZE else 0.0, stream_ms))
        return self._decode(data, payload_offset, stream_ms)

    def _decode(self, data: bytes, payload_offset: int, stream_ms: int) -> SpeechEvent | None:
        decoder, detector = self._decoder, self._decoded
        assert decoder is not None and detector is not None
        try:
            pcm = decoder.decode_untrusted(data[payload_offset:])
        except BadPacket:
            pcm = decoder.conceal()
        frame_bytes = FRAME_SAMPLES * 2
        if len(pcm) == frame_bytes and not self._pcm:
            return self._note(detector.update(pcm, stream_ms))
        # Packets of 10, 40 or 60 ms: cut into the detector's 20 ms frames.
        buffered = self._pcm + pcm
        start_ms = stream_ms - len(self._pcm) // 96
        event: SpeechEvent | None = None
        index = 0
        while index + frame_bytes <= len(buffered):
            found = self._note(detector.update(buffered[index : index + frame_bytes], start_ms + index // 96))
            event = found or event
            index += frame_bytes
        self._pcm = buffered[index:]
        return event

    def expire(self, stream_ms: int) -> SpeechStopped | None:
        """Nothing arrived up to ``stream_ms``: end a run whose hangover ran out."""
        for detector in (self._levels, self._decoded, self._sizes):
            if detector is not None:
                event = detector.expire(stream_ms)
                if event is not None:
                    self._note(event)
                    return event
        return None

    def _note(self, event: SpeechEvent | None) -> SpeechEvent | None:
        if isinstance(event, SpeechStarted):
            self.onset_ms = event.stream_ms
            self.interrupted = False
        elif isinstance(event, SpeechStopped):
            self.onset_ms = None
        return event

    def level_event(self, event: SpeechEvent) -> None:
        """An event the compiled fast path found on this tracker's level path (after
        :meth:`level_handover`): ``onset_ms`` and ``interrupted`` move as
        :meth:`on_packet` moves them."""
        self._note(event)

    def level_handover(self) -> tuple[int, LevelConfig, LevelState] | None:
        """What the compiled fast path needs to run this tracker's level path in C
        (``_fastpath.level_feed``): (level id, or -1 for a bot's
        ``BOT_AUDIO_LEVEL_ID``; the detector's config; its state), or None while
        the tracker is not on the level path (no level seen yet, or decoding).

        The state passes, it is not shared: until :meth:`level_takeback` the
        caller owns it, and this tracker's detector must not be fed.
        """
        levels = self._levels
        if levels is None or self.packet_ms is None or self._decoded is not None or self._sizes is not None:
            return None
        return (-1 if self.level_id is None else self.level_id), levels.config(), levels.state()

    def level_takeback(self, events: list[SpeechEvent], state: LevelState, last_ms: int | None) -> None:
        """Take the level path back from C: the events it found (in order), its
        detector state, and the end of the newest packet it read (None if none),
        so ``onset_ms``, ``interrupted`` and ``last_ms`` are what a run in
        Python would have left."""
        assert self._levels is not None, "level_handover() first"
        self._levels.restore(state)
        for event in events:
            self._note(event)
        if last_ms is not None:
            self.last_ms = last_ms

    def close(self) -> None:
        """The peer left: give its decoder back to the budget."""
        if self._decoded is not None and self.budget is not None:
            self.budget.give_back()
        self._decoded = self._decoder = None


def _packet_ms(data: bytes, payload_offset: int) -> int:
    """A packet's duration in whole ms (10 or 20 from browsers), 20 when its TOC is unreadable."""
    try:
        return max(1, packet_samples_untrusted(data[payload_offset:]) // 48)
    except BadPacket:
        return 20


__all__ = ["BOT_AUDIO_LEVEL_ID", "SpeechBudget", "SpeechTracker", "audio_level_untrusted", "warm_up"]
