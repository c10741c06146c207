"""Band-limited resampling of int16 PCM with soxr (libsoxr), sans-IO.

``resample`` changes the rate of a whole buffer of PCM bytes; ``resample_float``
does the same for the float arrays the WAV reader produces; ``StreamResampler``
converts a stream that arrives in chunks, keeping the filter's state from one
chunk to the next, so chunk borders leave no click (a one-shot call per chunk
would restart the filter at every border).

The relay converts no rate: libopus encodes from and decodes to 8/12/16/24/48
kHz directly (``audio.opus.DECODER_RATES``). These are for audio that arrives at
another rate: WAV files, the server-side tools at a caller's rate (the SDK resamples with soxr).

soxr's "HQ" quality: a linear-phase filter with its delay compensated, flat
to about 0.91 of the lower Nyquist frequency and about 120 dB of stopband, so
nothing above the new Nyquist frequency folds down.
"""

from __future__ import annotations

import numpy as np
import soxr

from botcall.audio.samples import float_to_pcm, pcm_to_float

__all__ = ["QUALITY", "StreamResampler", "resample", "resample_float"]

QUALITY = "HQ"
"""soxr's quality recipe for every conversion here."""


def _check_rates(from_rate: int, to_rate: int) -> None:
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, not {from_rate} -> {to_rate}")


def resample_float(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample float samples ``(frames, channels)``; see ``resample``.

    Raises:
        ValueError: a rate that is not positive.
    """
    _check_rates(from_rate, to_rate)
    if from_rate == to_rate or len(samples) == 0:
        return samples
    out: np.ndarray = soxr.resample(np.ascontiguousarray(samples, dtype=np.float64), from_rate, to_rate, quality=QUALITY)
    return out.reshape(len(out), samples.shape[1])


def resample(pcm: bytes, from_rate: int, to_rate: int, channels: int = 1) -> bytes:
    """Change the sample rate of int16 PCM with a band-limited filter (soxr).

    Args:
        pcm: int16 little-endian PCM, interleaved if stereo.
        from_rate: its rate in Hz.
        to_rate: the wanted rate in Hz.
        channels: its channel count.

    Returns:
        int16 PCM at ``to_rate``: ``round(frames * to_rate / from_rate)``
        frames, aligned in time with the input (the filter's delay is taken out).

    Raises:
        ValueError: a bad rate, channel count or PCM length.
    """
    return float_to_pcm(resample_float(pcm_to_float(pcm, channels), from_rate, to_rate))


class StreamResampler:
    """Resample int16 PCM that arrives in chunks (soxr's ``ResampleStream``).

    The filter's state carries over from chunk to chunk: the output of any
    chunking is the output of the whole stream at once (to soxr's rounding),
    without a discontinuity at the borders. The filter holds back the last few
    ms of the input (up to ~140 ms for 8 -> 48 kHz) until more arrives, or
    until ``flush`` at the end of the stream.

    Args:
        from_rate: the input rate in Hz.
        to_rate: the output rate in Hz.
        channels: 1 or 2 (interleaved).

    Raises:
        ValueError: a rate that is not positive, or a bad channel count.
    """

    def __init__(self, from_rate: int, to_rate: int, channels: int = 1) -> None:
        _check_rates(from_rate, to_rate)
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        self.from_rate = from_rate
        self.to_rate = to_rate
        self.channels = channels
        self._stream = soxr.ResampleStream(from_rate, to_rate, channels, dtype="int16", quality=QUALITY)

    def _samples(self, pcm: bytes) -> np.ndarray:
        if len(pcm) % (2 * self.channels):
            raise ValueError("PCM must be whole frames of 16-bit samples")
        samples = np.frombuffer(pcm, "<i2")
        return samples.reshape(-1, self.channels) if self.channels > 1 else samples

    def process(self, pcm: bytes) -> bytes:
        """Resample the next chunk (any whole number of frames).

        Returns:
            The output the filter can give so far (possibly empty).

        Raises:
            ValueError: ``pcm`` is not whole frames.
        """
        if self.from_rate == self.to_rate:
            self._samples(pcm)
            return pcm
        out: np.ndarray = self._stream.resample_chunk(self._samples(pcm))
        return out.astype("<i2").tobytes()

    def flush(self) -> bytes:
        """End the stream: the output still held back. The resampler starts afresh after it."""
        if self.from_rate == self.to_rate:
            return b""
        out: np.ndarray = self._stream.resample_chunk(self._samples(b""), last=True)
        self._stream.clear()
        return out.astype("<i2").tobytes()
