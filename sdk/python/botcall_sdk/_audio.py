"""Audio for a bot (sans-IO): sources to 20 ms frames, Opus, the RFC 6464 level, a jitter buffer.

Nothing here reads a clock or touches a socket: time is an argument.
"""

from __future__ import annotations

import io
import math
import os
import wave
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import opuslib  # type: ignore[import-untyped]
import opuslib.api.ctl  # type: ignore[import-untyped]
import opuslib.api.encoder  # type: ignore[import-untyped]
import soxr
import webrtcvad

from botcall_sdk._errors import BadPacket
from botcall_sdk._wire import RtpPacket

OPUS_RATE = 48000
FRAME_SECONDS = 0.020
FRAME_MS = 20
RATES = (8000, 16000, 24000, 48000)
_SILENCE_DB = -127.0

Pcm = npt.NDArray[np.int16]


def frame_samples(rate: int) -> int:
    return rate // 50


# --- PCM -------------------------------------------------------------------------------


def to_int16(chunk: bytes | bytearray | memoryview | npt.NDArray[Any]) -> Pcm:
    """Mono int16 samples from bytes (int16 little-endian) or an array (int16, or float in [-1, 1]).

    A 2-D array is taken as (samples, channels) and mixed down.

    Raises:
        ValueError: an odd number of bytes, or an array of another kind.
    """
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        if len(chunk) % 2:
            raise ValueError("int16 PCM has an even number of bytes")
        return np.frombuffer(chunk, dtype="<i2").astype(np.int16, copy=False)
    array = np.asarray(chunk)
    if array.ndim == 2:
        array = array.mean(axis=1) if array.dtype.kind == "f" else array.astype(np.int32).mean(axis=1).astype(np.int16)
    if array.ndim != 1:
        raise ValueError(f"PCM arrays are 1-D (or samples x channels), not {array.ndim}-D")
    if array.dtype.kind == "f":
        return np.clip(np.round(array * 32767.0), -32768, 32767).astype(np.int16)
    if array.dtype == np.int16:
        return array
    raise ValueError(f"PCM arrays are int16 or float, not {array.dtype}")


def read_wav(source: str | os.PathLike[str] | IO[bytes]) -> tuple[Pcm, int]:
    """A WAV file's audio as mono int16 and its rate (8/16/24/32-bit integer PCM, any channels).

    Raises:
        ValueError: not a WAV file, or a sample format it does not read.
    """
    try:
        with wave.open(os.fspath(source) if isinstance(source, (str, os.PathLike)) else source, "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a PCM WAV file: {exc}") from exc
    if width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.int32) - 128) << 8
    elif width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.int32)
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        samples = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8) >> 16
    elif width == 4:
        samples = (np.frombuffer(raw, "<i4") >> 16).astype(np.int32)
    else:
        raise ValueError(f"{width * 8}-bit WAV samples are not supported")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int32)
    return np.clip(samples, -32768, 32767).astype(np.int16), rate


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    """A mono int16 WAV file holding ``pcm``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


class Framer:
    """Cuts PCM chunks of any size and rate into 20 ms frames at ``out_rate``.

    A partial frame is carried over to the next chunk, never padded, so a
    streamed utterance gets no silence between its chunks; only ``finish``
    pads the utterance's last frame (with ``pad=True``). Resampling keeps its
    filter state across chunks (soxr's stream resampler).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0:
            raise ValueError(f"sample rate must be positive, not {in_rate}")
        self.out_rate = out_rate
        self.frame = frame_samples(out_rate)
        self._resampler = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ")
        self._carry: Pcm = np.zeros(0, np.int16)

    def push(self, chunk: Pcm) -> list[bytes]:
        """Whole frames (int16 LE bytes) now complete."""
        if self._resampler is not None:
            chunk = self._resampler.resample_chunk(chunk, last=False).astype(np.int16, copy=False)
        return self._cut(chunk)

    def finish(self, *, pad: bool = True) -> list[bytes]:
        """The rest: the resampler's tail and the partial last frame, padded to a whole frame with ``pad``."""
        tail: Pcm = np.zeros(0, np.int16)
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, np.int16), last=True).astype(np.int16, copy=False)
        frames = self._cut(tail)
        if pad and self._carry.size:
            frames.append(np.concatenate([self._carry, np.zeros(self.frame - self._carry.size, np.int16)]).astype("<i2").tobytes())
        self._carry = np.zeros(0, np.int16)
        return frames

    def _cut(self, chunk: Pcm) -> list[bytes]:
        data = np.concatenate([self._carry, chunk]) if self._carry.size else chunk
        whole = data.size // self.frame
        self._carry = data[whole * self.frame :].copy()
        return [data[i * self.frame : (i + 1) * self.frame].astype("<i2").tobytes() for i in range(whole)]


# --- the level and voice flag (RFC 6464) -------------------------------------------------


def frame_dbfs(pcm: bytes) -> float:
    """RMS level of int16 PCM in dBFS (dBov for RFC 6464), -127 for digital silence."""
    samples = np.frombuffer(pcm, "<i2").astype(np.float32)
    if samples.size == 0:
        return _SILENCE_DB
    power = float(np.dot(samples, samples)) / samples.size / (32768.0 * 32768.0)
    return _SILENCE_DB if power <= 0.0 else max(_SILENCE_DB, 10.0 * math.log10(power))


class LevelMeter:
    """The RFC 6464 octet of each 20 ms frame at 48 kHz: V flag and level in -dBov.

    V is libwebrtc's voice-activity detector (webrtcvad, aggressiveness 2, about
    20 µs a frame) behind a -55 dBFS energy gate, without which its hangover
    calls the silence after a sound "voice" for a while (the relay's rule too).
    """

    def __init__(self) -> None:
        self._vad = webrtcvad.Vad(2)
        self._quiet = 0

    def octet(self, pcm: bytes) -> int:
        level = frame_dbfs(pcm)
        if level < -55.0:
            self._quiet += 1
            if self._quiet == 25:  # 500 ms of quiet: start speech afresh
                self._vad = webrtcvad.Vad(2)
            voice = False
        else:
            self._quiet = 0
            voice = bool(self._vad.is_speech(pcm, OPUS_RATE))
        dbov = max(-127, min(0, round(level)))
        return (0x80 if voice else 0) | -dbov


# --- Opus ------------------------------------------------------------------------------


class OpusEncoder:
    """20 ms mono frames at 48 kHz to Opus (voip, 32 kbit/s, in-band FEC)."""

    def __init__(self) -> None:
        self._opus = opuslib.Encoder(OPUS_RATE, 1, opuslib.APPLICATION_VOIP)
        ctl = opuslib.api.encoder.encoder_ctl
        state = self._opus.encoder_state
        ctl(state, opuslib.api.ctl.set_bitrate, 32000)
        # opuslib's inband_fec property setter is broken; send the CTL ourselves.
        ctl(state, opuslib.api.ctl.set_inband_fec, 1)
        ctl(state, opuslib.api.ctl.set_packet_loss_perc, 10)

    def encode(self, pcm: bytes) -> bytes:
        return bytes(self._opus.encode(pcm, frame_samples(OPUS_RATE)))


class OpusDecoder:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._opus = opuslib.Decoder(rate, 1)

    def decode_untrusted(self, payload: bytes, *, fec: bool = False) -> bytes:
        try:
            return bytes(self._opus.decode(payload, frame_samples(self.rate), decode_fec=fec))
        except opuslib.OpusError as exc:
            raise BadPacket(f"Opus: {exc}") from exc

    def conceal(self, samples: int | None = None) -> bytes:
        """One lost packet's audio: ``samples`` at our rate (None: 20 ms)."""
        size = frame_samples(self.rate) if samples is None else samples
        try:
            return bytes(self._opus.decode(b"", size))
        except opuslib.OpusError:
            return bytes(2 * size)

    def recover_untrusted(self, next_payload: bytes, samples: int) -> bytes:
        """A lost packet of ``samples`` (at our rate) rebuilt from the next packet's in-band FEC."""
        try:
            return bytes(self._opus.decode(next_payload, samples, decode_fec=True))
        except opuslib.OpusError as exc:
            raise BadPacket(f"Opus: {exc}") from exc


# Samples at 48 kHz of one Opus frame by the TOC byte's configuration (RFC 6716 §3.1, Table 2).
_TOC_SAMPLES = tuple(
    (480, 960, 1920, 2880)[c % 4] if c < 12 else (480, 960)[c % 2] if c < 16 else (120, 240, 480, 960)[c % 4] for c in range(32)
)


def opus_samples(payload: bytes) -> int:
    """A packet's duration in 48 kHz samples, from its TOC byte (RFC 6716 §3.1); 960 (20 ms) when unreadable.

    Browsers send 20 ms packets, or 10 ms when the server asks (``a=ptime:10``).
    """
    if not payload:
        return 960
    code = payload[0] & 0x03
    frames = 1 if code == 0 else 2 if code < 3 else (payload[1] & 0x3F if len(payload) > 1 else 0)
    samples = _TOC_SAMPLES[payload[0] >> 3] * frames
    return samples if 0 < samples <= 5760 else 960


# --- receiving: a jitter buffer per speaker ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Played:
    """One speaker's 20 ms at one tick (two 10 ms packets joined when the speaker sends those)."""

    ssrc: int
    pcm: bytes
    timestamp: int  # the frame's RTP timestamp (48 kHz)
    concealed: bool


def _extend(value: int, reference: int, bits: int) -> int:
    """``value`` (mod 2**bits) nearest to ``reference``: sequence numbers past wrap-around."""
    half = 1 << (bits - 1)
    return reference + ((value - reference + half) % (1 << bits)) - half


class _Speaker:
    # Hold a stream's first packet this long before playing, so that jitter
    # up to it costs nothing (loopback and LAN paths need far less).
    PREFETCH = 0.040
    MAX_WAIT = 5  # 100 ms with nothing to play: the talkspurt is over
    MAX_HELD = 50  # 1 s of packets waiting: we fell behind, skip ahead

    def __init__(self, ssrc: int, rate: int) -> None:
        self.ssrc = ssrc
        self.decoder = OpusDecoder(rate)
        self.packets: dict[int, RtpPacket] = {}
        self.next_seq: int | None = None  # extended; None while waiting for a talkspurt
        self.last_seq: int | None = None
        self.first_arrival = 0.0
        self.timestamp = 0
        self.idle_ticks = 0
        self.samples = 960  # the last packet's duration (48 kHz), for concealing the next lost one
        self.frame_bytes = 2 * frame_samples(rate)
        # Part of a tick's 20 ms (short packets) waiting for the rest, with its timestamp.
        self.carry = b""
        self.carry_timestamp = 0
        self.carry_concealed = False

    def push(self, packet: RtpPacket, now: float) -> None:
        reference = self.last_seq if self.last_seq is not None else packet.seq
        seq = _extend(packet.seq, reference, 16)
        if self.next_seq is not None and seq < self.next_seq:
            return  # late: its slot was played or concealed
        if not self.packets and self.next_seq is None:
            self.first_arrival = now
        self.last_seq = max(seq, self.last_seq if self.last_seq is not None else seq)
        self.packets.setdefault(seq, packet)
        if len(self.packets) > self.MAX_HELD:
            oldest = min(self.packets)
            del self.packets[oldest]
            self.next_seq = min(self.packets)

    def pop(self, now: float) -> Played | None:
        """20 ms of the speaker, or None. Packets shorter than 20 ms are joined;
        when a tick finds only part of its 20 ms, that part waits for the rest
        (the buffer grows by it, as for any late packet), and is played padded
        with silence if the talkspurt ends there. A lost packet is concealed for
        its own length."""
        pcm, timestamp, concealed = self.carry, self.carry_timestamp, self.carry_concealed
        while len(pcm) < self.frame_bytes:
            more = self._pop_packet(now)
            if more is None:
                break
            if not pcm:
                timestamp = more.timestamp
            pcm += more.pcm
            concealed = concealed or more.concealed
        if not pcm:
            return None
        if len(pcm) < self.frame_bytes and self.next_seq is not None:
            self.carry, self.carry_timestamp, self.carry_concealed = pcm, timestamp, concealed
            return None
        self.carry, self.carry_concealed = pcm[self.frame_bytes :], False
        self.carry_timestamp = (timestamp + OPUS_RATE // 50) & 0xFFFFFFFF
        return Played(self.ssrc, pcm[: self.frame_bytes].ljust(self.frame_bytes, b"\0"), timestamp, concealed)

    def _pop_packet(self, now: float) -> Played | None:
        """The next packet's audio (or a lost one's concealment), or None."""
        if self.next_seq is None:
            if not self.packets or now - self.first_arrival < self.PREFETCH:
                return None
            self.next_seq = min(self.packets)
            self.idle_ticks = 0
        seq = self.next_seq
        packet = self.packets.pop(seq, None)
        if packet is not None:
            self.next_seq = seq + 1
            self.timestamp = packet.timestamp
            self.samples = opus_samples(packet.payload)
            self.idle_ticks = 0
            try:
                return Played(self.ssrc, self.decoder.decode_untrusted(packet.payload), packet.timestamp, False)
            except BadPacket:
                return Played(self.ssrc, self.decoder.conceal(), packet.timestamp, True)
        if not self.packets:
            # Nothing after the gap yet: most often the talkspurt ended. Wait
            # rather than synthesise audio nobody sent; a late packet then
            # plays one tick late, and a stream quiet this long starts afresh.
            self.idle_ticks += 1
            if self.idle_ticks >= self.MAX_WAIT:
                self.next_seq = None
            return None
        # A later packet is here, so this one is lost (or very late): conceal
        # it, from the next packet's in-band FEC when it carries some.
        self.idle_ticks = 0
        self.next_seq = seq + 1
        self.timestamp = (self.timestamp + self.samples) & 0xFFFFFFFF
        lost = self.samples * self.decoder.rate // OPUS_RATE
        following = self.packets.get(seq + 1)
        if following is not None:
            try:
                return Played(self.ssrc, self.decoder.recover_untrusted(following.payload, lost), self.timestamp, True)
            except BadPacket:
                pass
        return Played(self.ssrc, self.decoder.conceal(lost), self.timestamp, True)


class JitterBuffers:
    """Opus RTP from every speaker in, one decoded 20 ms frame per talking speaker per tick out.

    Bounded: at most ``MAX_SPEAKERS`` streams (the oldest-silent is dropped)
    and ``_Speaker.MAX_HELD`` packets each; a retired speaker (one who left)
    goes at the first ``pop`` that finds nothing of theirs held.
    """

    MAX_SPEAKERS = 64

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._speakers: dict[int, _Speaker] = {}
        # Speakers who left: what they sent before still plays, then they go.
        self._retired: set[int] = set()
        self._drained: list[int] = []

    def push(self, packet: RtpPacket, now: float) -> None:
        if packet.ssrc in self._retired:
            return
        speaker = self._speakers.get(packet.ssrc)
        if speaker is None:
            if len(self._speakers) >= self.MAX_SPEAKERS:
                idle = [s for s, sp in self._speakers.items() if sp.next_seq is None and not sp.packets]
                del self._speakers[idle[0] if idle else next(iter(self._speakers))]
            speaker = self._speakers[packet.ssrc] = _Speaker(packet.ssrc, self.rate)
        speaker.push(packet, now)

    def pop(self, now: float) -> list[Played]:
        out = []
        for speaker in self._speakers.values():
            played = speaker.pop(now)
            if played is not None:
                out.append(played)
        for ssrc in [ssrc for ssrc in self._retired if not self._holds(ssrc)]:
            self._retired.discard(ssrc)
            self._speakers.pop(ssrc, None)
            self._drained.append(ssrc)
        return out

    def retire(self, ssrc: int) -> bool:
        """The speaker left: the packets already here still play (their last
        words), none is taken after, and in the ``pop`` that plays the last of
        them the speaker goes (``take_drained`` says so).

        Returns:
            False when nothing of theirs is held: they are gone at once.
        """
        if not self._holds(ssrc):
            self._speakers.pop(ssrc, None)
            return False
        self._retired.add(ssrc)
        return True

    def welcome_back(self, ssrc: int) -> None:
        """``ssrc`` is someone's again (back before its old audio had played): not retired."""
        self._retired.discard(ssrc)

    def take_drained(self) -> list[int]:
        """The retired speakers whose audio has all played since the last call."""
        drained, self._drained = self._drained, []
        return drained

    def _holds(self, ssrc: int) -> bool:
        speaker = self._speakers.get(ssrc)
        return speaker is not None and bool(speaker.packets)
