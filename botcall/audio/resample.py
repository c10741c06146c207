"""Band-limited resampling of int16 PCM (windowed-sinc polyphase, sans-IO).

``resample`` changes the rate of PCM bytes; ``resample_float`` does the same
for the float arrays the WAV reader produces. Filter banks are built once per
rate pair and cached.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from botcall.audio.samples import float_to_pcm, pcm_to_float

__all__ = ["MAX_PHASES", "resample", "resample_float"]

# Windowed-sinc polyphase resampling (Smith, "Digital Audio Resampling"): the
# low-pass cuts at _CUTOFF of the lower Nyquist frequency, its sinc spans
# _ZERO_CROSSINGS zero crossings each side, and a Kaiser window with beta 8.6
# keeps the stopband about 85 dB down. Flat to ~0.8 Nyquist.
_CUTOFF = 0.9
_ZERO_CROSSINGS = 24
_KAISER_BETA = 8.6
MAX_PHASES = 4096
"""Largest reduced upsampling factor (to_rate / gcd) we build a filter bank for."""
_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True, slots=True)
class _FilterBank:
    up: int
    down: int
    taps: np.ndarray  # (up, width): coefficient of x[q - j] for phase p, j = -reach..reach
    reach: int


# Bounded: a handful of rate pairs is all a process ever uses.
@functools.lru_cache(maxsize=32)
def _filter_bank(from_rate: int, to_rate: int) -> _FilterBank:
    common = math.gcd(from_rate, to_rate)
    up, down = to_rate // common, from_rate // common
    if up > MAX_PHASES:
        raise ValueError(f"cannot resample {from_rate} Hz to {to_rate} Hz: ratio {up}/{down} is too fine")
    # Cut-off in cycles per sample of the virtual signal upsampled by `up`.
    cutoff = 0.5 * _CUTOFF * min(from_rate, to_rate) / (from_rate * up)
    half = math.ceil(_ZERO_CROSSINGS / (2 * cutoff))
    t = np.arange(-half, half + 1)
    # Gain `up` makes up for the zeros the virtual upsampling inserts.
    prototype = 2 * cutoff * up * np.sinc(2 * cutoff * t) * np.kaiser(2 * half + 1, _KAISER_BETA)
    reach = half // up + 1
    offsets = np.arange(up)[:, None] + np.arange(-reach, reach + 1)[None, :] * up
    inside = np.abs(offsets) <= half
    taps = np.where(inside, prototype[np.clip(offsets + half, 0, 2 * half)], 0.0)
    taps.flags.writeable = False  # shared by every caller through the cache
    return _FilterBank(up, down, taps, reach)


def resample_float(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample float samples ``(frames, channels)``; see ``resample``.

    Raises:
        ValueError: a rate that is not positive, or a rate pair whose reduced
            ratio needs more than ``MAX_PHASES`` filter phases.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, not {from_rate} -> {to_rate}")
    if from_rate == to_rate or len(samples) == 0:
        return samples
    bank = _filter_bank(from_rate, to_rate)
    count = -(-len(samples) * bank.up // bank.down)
    reach = bank.reach
    padded = np.concatenate([np.zeros((reach + 1, samples.shape[1])), samples, np.zeros((reach + 1, samples.shape[1]))])
    # Output n sits at input position n*down/up: q = whole input samples, p = phase.
    lags = np.arange(-reach, reach + 1)
    out = np.empty((count, samples.shape[1]))
    block = max(1, _BLOCK_ELEMENTS // len(lags))
    for start in range(0, count, block):
        n = np.arange(start, min(count, start + block), dtype=np.int64) * bank.down
        q, p = np.divmod(n, bank.up)
        gathered = padded[(q + reach + 1)[:, None] - lags[None, :]]
        out[start : start + len(n)] = np.einsum("bj,bjc->bc", bank.taps[p], gathered)
    return out


def resample(pcm: bytes, from_rate: int, to_rate: int, channels: int = 1) -> bytes:
    """Change the sample rate of int16 PCM with a band-limited (windowed-sinc) filter.

    Args:
        pcm: int16 little-endian PCM, interleaved if stereo.
        from_rate: its rate in Hz.
        to_rate: the wanted rate in Hz.
        channels: its channel count.

    Returns:
        int16 PCM at ``to_rate``: ``ceil(frames * to_rate / from_rate)`` frames,
        aligned in time with the input (no added delay).

    Raises:
        ValueError: a bad rate, channel count or PCM length, or a rate pair whose
            reduced ratio needs more than ``MAX_PHASES`` filter phases.
    """
    return float_to_pcm(resample_float(pcm_to_float(pcm, channels), from_rate, to_rate))

