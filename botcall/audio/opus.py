"""Opus encoder and decoder (RFC 6716) over libopus, with loss concealment and FEC.

Thin wrappers over opuslib: opuslib creates and frees the libopus states and
sends the CTLs; the per-frame calls go straight to ``opus_encode`` /
``opus_decode`` through opuslib's ctypes bindings with buffers allocated once,
because opuslib's own ``decode`` builds a Python list of every sample.

PCM is signed 16-bit little-endian, interleaved when stereo. The RTP clock of
Opus is always 48 kHz (RFC 7587 §4.1) whatever rate a decoder outputs, so a
20 ms frame advances the RTP timestamp by ``FRAME_SAMPLES`` = 960.

``decode_untrusted`` and ``recover_untrusted`` take payloads from the network
and raise only ``OpusDecodeError``.
"""

from __future__ import annotations

import ctypes
from typing import Literal

# opuslib ships neither type hints nor stubs: its names are Any here, and the
# values read back from it are annotated where they enter our code.
import opuslib  # type: ignore[import-untyped]
import opuslib.api.ctl  # type: ignore[import-untyped]
import opuslib.api.decoder  # type: ignore[import-untyped]
import opuslib.api.encoder  # type: ignore[import-untyped]
import opuslib.api.info  # type: ignore[import-untyped]

from botcall.errors import OpusDecodeError

SAMPLE_RATE = 48000
"""The Opus RTP clock rate (RFC 7587 §4.1) and our PCM rate."""
FRAME_DURATION = 0.020
"""Seconds of audio in one packet."""
FRAME_SAMPLES = 960
"""Samples per channel in one 20 ms frame at 48 kHz (and the RTP timestamp step)."""
PAYLOAD_TYPE = 111
"""The dynamic RTP payload type we (and browsers) use for Opus."""
PCM16_PAYLOAD_TYPE = 96
"""Binary pcm16 frames to a WebSocket bot: L16 mono, little-endian, at the
session's rate, behind an RTP header (our profile, not RFC 3551's)."""
PCM16_CONCEALED_PAYLOAD_TYPE = 97
"""The same, for a frame the relay synthesised for a lost packet."""

DECODER_RATES = (8000, 12000, 16000, 24000, 48000)
"""Sample rates libopus encodes from and decodes straight to (RFC 6716 §2)."""

MAX_PACKET_DURATION = 0.120
"""The longest audio one Opus packet can carry (RFC 6716 §3.2.5)."""
MAX_PAYLOAD_BYTES = 1275 * 3
"""Upper bound of one encoded 20 ms packet (1275 bytes per frame, RFC 6716 §3.2.1)."""

def stream_ms(origin: int | None, timestamp: int) -> int:
    """A packet's position in its speaker's stream: ms since the speaker's first
    packet (whose RTP timestamp is ``origin``), on the 48 kHz Opus RTP clock."""
    return 0 if origin is None else ((timestamp - origin) & 0xFFFFFFFF) // (SAMPLE_RATE // 1000)


# Samples at 48 kHz of one frame, by the TOC byte's configuration number
# (RFC 6716 §3.1, Table 2): SILK 10/20/40/60 ms, hybrid 10/20 ms, CELT 2.5/5/10/20 ms.
_FRAME_SAMPLES_BY_CONFIG = tuple(
    (480, 960, 1920, 2880)[config % 4] if config < 12
    else (480, 960)[config % 2] if config < 16
    else (120, 240, 480, 960)[config % 4]
    for config in range(32)
)


def packet_samples_untrusted(payload: bytes | memoryview) -> int:
    """Samples per channel at 48 kHz in one Opus packet, from its TOC byte (RFC 6716 §3.1).

    Reads the TOC (and, for code 3, the frame count byte) only: the packet is
    not decoded, so a packet whose frames are damaged still has a duration.

    Raises:
        OpusDecodeError: an empty packet, a code-3 packet without its count
            byte or with no frames, or one longer than 120 ms (§3.2.5).
    """
    if not payload:
        raise OpusDecodeError("empty Opus packet")
    toc = payload[0]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code < 3:
        frames = 2
    else:
        if len(payload) < 2:
            raise OpusDecodeError("Opus code-3 packet without its frame count")
        frames = payload[1] & 0x3F
        if frames == 0:
            raise OpusDecodeError("Opus code-3 packet with no frames")
    samples = _FRAME_SAMPLES_BY_CONFIG[toc >> 3] * frames
    if samples > 5760:
        raise OpusDecodeError(f"Opus packet of {samples} samples is longer than 120 ms")
    return samples


_APPLICATIONS = {
    "voip": opuslib.APPLICATION_VOIP,
    "audio": opuslib.APPLICATION_AUDIO,
}

_encode = opuslib.api.encoder.libopus_encode
_decode = opuslib.api.decoder.libopus_decode


def _strerror(code: int) -> str:
    message: bytes = opuslib.api.info.strerror(code)
    return message.decode("ascii", "replace")


def _check_format(sample_rate: int, channels: int) -> None:
    if sample_rate not in DECODER_RATES:
        raise ValueError(f"Opus sample rate must be one of {DECODER_RATES}, not {sample_rate}")
    if channels not in (1, 2):
        raise ValueError(f"Opus supports 1 or 2 channels, not {channels}")


def frame_samples(sample_rate: int) -> int:
    """Samples per channel in one 20 ms frame at ``sample_rate``.

    Args:
        sample_rate: one of ``DECODER_RATES``.

    Returns:
        ``sample_rate // 50`` (960 at 48 kHz, 320 at 16 kHz).
    """
    return sample_rate // 50


class OpusEncoder:
    """Encodes one 20 ms frame of PCM at a time into one Opus packet.

    With ``fec=True`` the encoder carries a low-bitrate copy of each frame in the
    next packet (in-band FEC, RFC 6716 §2.1.7); libopus only spends bits on it
    when told to expect loss, hence ``expected_loss_percent``, and only in the
    SILK and hybrid modes, which ``application="voip"`` favours.
    """

    __slots__ = ("sample_rate", "channels", "frame_samples", "frame_bytes", "_opus", "_out")

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        channels: int = 1,
        *,
        bitrate: int = 32000,
        application: Literal["voip", "audio"] = "voip",
        fec: bool = True,
        expected_loss_percent: int = 10,
        complexity: int = 10,
    ) -> None:
        """Create an encoder.

        Args:
            sample_rate: input PCM rate, one of ``DECODER_RATES``.
            channels: 1 or 2 (interleaved input).
            bitrate: target bits per second (500..512000).
            application: ``"voip"`` (speech, favours SILK and FEC) or ``"audio"``.
            fec: carry in-band FEC for the previous frame.
            expected_loss_percent: the loss rate libopus tunes FEC for (0..100).
            complexity: 0 (cheapest) .. 10 (best).

        Raises:
            ValueError: an argument out of range.
        """
        _check_format(sample_rate, channels)
        if application not in _APPLICATIONS:
            raise ValueError(f"application must be 'voip' or 'audio', not {application!r}")
        if not 500 <= bitrate <= 512000:
            raise ValueError(f"bitrate must be 500..512000 bit/s, not {bitrate}")
        if not 0 <= expected_loss_percent <= 100:
            raise ValueError(f"expected_loss_percent must be 0..100, not {expected_loss_percent}")
        if not 0 <= complexity <= 10:
            raise ValueError(f"complexity must be 0..10, not {complexity}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_samples = frame_samples(sample_rate)
        self.frame_bytes = self.frame_samples * channels * 2
        self._opus = opuslib.Encoder(sample_rate, channels, _APPLICATIONS[application])
        state = self._opus.encoder_state
        ctl = opuslib.api.encoder.encoder_ctl
        ctl(state, opuslib.api.ctl.set_bitrate, bitrate)
        ctl(state, opuslib.api.ctl.set_complexity, complexity)
        # opuslib's ``inband_fec`` property setter drops its argument; send the CTL ourselves.
        ctl(state, opuslib.api.ctl.set_inband_fec, int(fec))
        ctl(state, opuslib.api.ctl.set_packet_loss_perc, expected_loss_percent)
        self._out = ctypes.create_string_buffer(MAX_PAYLOAD_BYTES)

    @property
    def lookahead(self) -> int:
        """The encoder's algorithmic delay in samples per channel at ``sample_rate``.

        Decoded audio lags the input by this many samples.
        """
        return int(opuslib.api.encoder.encoder_ctl(self._opus.encoder_state, opuslib.api.ctl.get_lookahead))

    def encode(self, pcm: bytes) -> bytes:
        """Encode exactly one 20 ms frame.

        Args:
            pcm: ``frame_bytes`` bytes of int16 little-endian PCM, interleaved if stereo.

        Returns:
            One Opus packet (an RTP payload).

        Raises:
            ValueError: ``pcm`` is not exactly one 20 ms frame (a programmer error).
        """
        if len(pcm) != self.frame_bytes:
            raise ValueError(f"Opus encoder takes one 20 ms frame of {self.frame_bytes} bytes, got {len(pcm)}")
        # ctypes.cast takes bytes at runtime (as c_char_p); typeshed leaves them out.
        pcm_pointer = ctypes.cast(pcm, opuslib.api.c_int16_pointer)  # type: ignore[arg-type]
        size = _encode(self._opus.encoder_state, pcm_pointer, self.frame_samples, self._out, MAX_PAYLOAD_BYTES)
        if size < 0:
            # With a valid frame size and a large enough buffer libopus cannot fail;
            # if it does, it is a bug here, not bad input.
            raise RuntimeError(f"opus_encode failed: {_strerror(size)}")
        return ctypes.string_at(self._out, size)


class OpusDecoder:
    """Decodes Opus packets to PCM at any of ``DECODER_RATES``, concealing losses.

    For a lost packet call ``conceal()`` (packet loss concealment), or, when the
    packet after it has already arrived, ``recover_untrusted(next_payload)``
    (in-band FEC, falling back to concealment inside libopus if the next packet
    carries none) and then ``decode_untrusted(next_payload)`` as usual.
    """

    __slots__ = ("sample_rate", "channels", "frame_samples", "_opus", "_pcm", "_max_samples", "_bytes_per_sample")

    def __init__(self, sample_rate: int = SAMPLE_RATE, channels: int = 1) -> None:
        """Create a decoder.

        Args:
            sample_rate: output PCM rate, one of ``DECODER_RATES``; libopus
                decodes straight to it (no resampler needed for 16/24 kHz pcm16).
            channels: 1 or 2 output channels (libopus up/down-mixes the packets).

        Raises:
            ValueError: an unsupported rate or channel count.
        """
        _check_format(sample_rate, channels)
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_samples = frame_samples(sample_rate)
        self._bytes_per_sample = 2 * channels
        self._max_samples = int(sample_rate * MAX_PACKET_DURATION)
        self._opus = opuslib.Decoder(sample_rate, channels)
        self._pcm = (ctypes.c_int16 * (self._max_samples * channels))()

    def _run(self, payload: bytes | None, frame_size: int, fec: int) -> bytes:
        length = 0 if payload is None else len(payload)
        samples = _decode(self._opus.decoder_state, payload, length, self._pcm, frame_size, fec)
        if samples < 0:
            raise OpusDecodeError(f"libopus rejected the packet: {_strerror(samples)}")
        return ctypes.string_at(self._pcm, samples * self._bytes_per_sample)

    def decode_untrusted(self, payload: bytes) -> bytes:
        """Decode one packet from the network.

        Args:
            payload: an RTP payload; may hold 2.5..120 ms of audio.

        Returns:
            int16 little-endian PCM at ``sample_rate`` (20 ms for our own packets).

        Raises:
            OpusDecodeError: an empty or malformed packet.
        """
        if not payload:
            # libopus would treat zero bytes as a loss and conceal; on the wire it is malformed.
            raise OpusDecodeError("empty Opus payload")
        return self._run(payload, self._max_samples, 0)

    def conceal(self, samples: int | None = None) -> bytes:
        """Synthesize one lost frame (packet loss concealment).

        Args:
            samples: the lost packet's duration in samples per channel at
                ``sample_rate`` (a multiple of 2.5 ms); None: 20 ms.

        Returns:
            That much int16 PCM continuing the previous audio (silence before any packet).
        """
        return self._run(None, self.frame_samples if samples is None else samples, 0)

    def recover_untrusted(self, next_payload: bytes, samples: int | None = None) -> bytes:
        """Rebuild one lost frame from the FEC data in the packet after it.

        Does not consume ``next_payload``: decode it with ``decode_untrusted`` next.

        Args:
            next_payload: the RTP payload of the packet that followed the lost one.
            samples: the lost packet's duration in samples per channel at
                ``sample_rate`` (a multiple of 2.5 ms); None: 20 ms. libopus
                rebuilds the last ``samples`` from the FEC data and conceals
                what the FEC does not cover.

        Returns:
            ``samples`` of int16 PCM for the lost frame (concealment if the packet has no FEC).

        Raises:
            OpusDecodeError: an empty or malformed packet.
        """
        if not next_payload:
            raise OpusDecodeError("empty Opus payload")
        return self._run(next_payload, self.frame_samples if samples is None else samples, 1)

    def reset(self) -> None:
        """Forget all history, as if freshly created (e.g. after an SSRC change)."""
        self._opus.reset_state()
