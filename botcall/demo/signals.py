"""Test signals and measurements, for the demo and the tests (not the relay or the SDK).

``tone`` and ``speech_like`` make int16 PCM; the measurements
(``dominant_frequency``, ``rms_dbfs``, ``align`` with its ``snr_db`` and
``correlation`` shortcuts) let the demo and tests across the project check
that audio arrived by its content rather than its bytes: a tone's frequency, or
how closely what came out matches what went in once the delay is taken out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from botcall.audio.samples import float_to_pcm, pcm_to_float

__all__ = [
    "Alignment",
    "align",
    "align_segments",
    "correlation",
    "dominant_frequency",
    "energy_fraction",
    "find_delay",
    "rms_dbfs",
    "segmental_correlation",
    "snr_db",
    "spectral_peak",
    "speech_like",
    "tone",
]

# --- Test signals --------------------------------------------------------------------


def tone(frequency: float, seconds: float, *, sample_rate: int = 48000, amplitude: float = 0.3) -> bytes:
    """A mono sine wave.

    Args:
        frequency: Hz.
        seconds: duration.
        sample_rate: Hz.
        amplitude: peak, as a fraction of full scale.

    Returns:
        int16 little-endian mono PCM.
    """
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return float_to_pcm((amplitude * np.sin(2 * np.pi * frequency * t))[:, None])


# Formants (F1, F2, F3) of a few vowels, Hz (Peterson & Barney 1952, male voices).
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])
_FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


def speech_like(seconds: float = 3.0, *, sample_rate: int = 48000, seed: int = 0, amplitude: float = 0.3) -> bytes:
    """A deterministic phrase-like test signal: voiced syllables, fricatives and pauses.

    Each syllable is a harmonic series on a gliding pitch (90-220 Hz) shaped by
    formants moving between two vowels; some gaps hold a short noise burst. It
    exercises a speech codec the way speech does (SILK mode, pitch, onsets) and,
    unlike a tone, aligns unambiguously by cross-correlation.

    Args:
        seconds: duration.
        sample_rate: Hz.
        seed: picks the phrase.
        amplitude: peak, as a fraction of full scale.

    Returns:
        int16 little-endian mono PCM.
    """
    rng = np.random.default_rng(seed)
    total = round(seconds * sample_rate)
    out = np.zeros(total)
    position = int(0.05 * sample_rate)
    while position < total:
        length = int(rng.uniform(0.12, 0.32) * sample_rate)
        end = min(total, position + length)
        n = end - position
        progress = np.linspace(0.0, 1.0, n, endpoint=False)
        pitch = rng.uniform(90, 220) * (1 + rng.uniform(-0.25, 0.25) * progress)
        first, second = rng.integers(0, len(_VOWELS), size=2)
        formants = _VOWELS[first] + (_VOWELS[second] - _VOWELS[first]) * progress[:, None]
        phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
        voiced = np.zeros(n)
        for harmonic in range(1, int(4000 / pitch.min()) + 1):
            frequency = harmonic * pitch
            gain = np.sum(1.0 / (1.0 + ((frequency[:, None] - formants) / _FORMANT_BANDWIDTHS) ** 2), axis=1)
            voiced += np.where(frequency < 0.45 * sample_rate, gain / harmonic, 0.0) * np.sin(harmonic * phase)
        ramp = min(n // 2, int(0.02 * sample_rate))
        envelope = np.ones(n)
        if ramp:
            edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
            envelope[:ramp] = edge
            envelope[n - ramp :] = edge[::-1]
        out[position:end] = voiced * envelope * rng.uniform(0.5, 1.0)
        position = end
        gap = int(rng.uniform(0.03, 0.15) * sample_rate)
        if rng.random() < 0.3 and position < total:
            burst = min(total - position, int(0.07 * sample_rate), gap)
            # Differenced white noise: a high-frequency hiss like /s/.
            noise = np.diff(rng.standard_normal(burst + 1)) * 0.15
            out[position : position + burst] = noise * np.hanning(burst)
        position += gap
    peak = np.max(np.abs(out))
    if peak > 0:
        out *= amplitude / peak
    return float_to_pcm(out[:, None])


# --- Measurements --------------------------------------------------------------------


def _mono(pcm: bytes, channels: int) -> np.ndarray:
    # numpy types a reduction along an axis as Any; along one axis it is an array.
    mono: np.ndarray = pcm_to_float(pcm, channels).mean(axis=1)
    return mono


def dominant_frequency(pcm: bytes, sample_rate: int, *, channels: int = 1, min_frequency: float = 20.0) -> float:
    """The frequency of the strongest spectral peak, to a fraction of a hertz.

    A Hann-windowed FFT, zero-padded fourfold, with the peak refined by fitting a
    parabola through the log magnitudes of the three bins around it.

    Args:
        pcm: int16 little-endian PCM (channels are averaged).
        sample_rate: its rate.
        channels: its channel count.
        min_frequency: ignore everything below (DC, rumble).

    Returns:
        The peak frequency in Hz, or 0.0 for silence or fewer than 3 samples.

    Raises:
        ValueError: ``pcm`` is not whole frames of samples.
    """
    x = _mono(pcm, channels)
    if len(x) < 3 or not np.any(x):
        return 0.0
    size = 1 << max(2, math.ceil(math.log2(4 * len(x))))
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)), size))
    lowest = min(len(spectrum) - 2, max(1, math.ceil(min_frequency * size / sample_rate)))
    peak = lowest + int(np.argmax(spectrum[lowest:-1]))
    if spectrum[peak] == 0.0:
        return 0.0
    below, centre, above = np.log(np.maximum(spectrum[peak - 1 : peak + 2], 1e-300))
    curvature = below - 2 * centre + above
    shift = 0.5 * (below - above) / curvature if curvature < 0 else 0.0
    return float((peak + shift) * sample_rate / size)


def energy_fraction(pcm: bytes, sample_rate: int, frequency: float, *, bandwidth: float = 25.0, channels: int = 1) -> float:
    """The share of a signal's energy within ``bandwidth`` Hz of ``frequency``.

    For checking that a mix holds several tones at once, which
    ``dominant_frequency`` (the strongest only) cannot: a lone sine gives about
    1.0, an equal mix of two gives about 0.5 at each, a tone absent about 0.

    Args:
        pcm: int16 little-endian PCM (channels are averaged).
        sample_rate: its rate.
        frequency: the frequency to look at, in Hz.
        bandwidth: half the width of the band counted, in Hz (a Hann window's
            main lobe must fit: at least 2 x sample_rate / samples).
        channels: its channel count.

    Returns:
        A fraction in [0, 1]; 0.0 for silence.

    Raises:
        ValueError: ``pcm`` is not whole frames of samples.
    """
    x = _mono(pcm, channels)
    if len(x) < 3:
        return 0.0
    power = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)))) ** 2
    total = float(power.sum())
    if total == 0.0:
        return 0.0
    bins = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    return float(power[np.abs(bins - frequency) <= bandwidth].sum() / total)


def spectral_peak(pcm: bytes, sample_rate: int, frequency: float, *, tolerance: float = 5.0, channels: int = 1) -> tuple[float, float]:
    """The strongest spectral peak near ``frequency`` and how far it stands above the noise floor.

    For checking that several tones are heard *at the same time* in one
    signal (a group call's mix): each must have its own peak, well above the
    floor, in the same window.

    Args:
        pcm: int16 little-endian PCM (channels are averaged).
        sample_rate: its rate.
        frequency: where the peak is expected, in Hz.
        tolerance: how far from ``frequency`` it may be, in Hz.
        channels: its channel count.

    Returns:
        (the peak's frequency in Hz, its power in dB above the median power
        of the spectrum from 50 Hz to 4 kHz); (0.0, 0.0) for silence.

    Raises:
        ValueError: ``pcm`` is not whole frames of samples.
    """
    x = _mono(pcm, channels)
    if len(x) < 3 or not np.any(x):
        return 0.0, 0.0
    size = 1 << max(2, math.ceil(math.log2(4 * len(x))))
    power = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)), size)) ** 2
    bins = np.fft.rfftfreq(size, 1.0 / sample_rate)
    near = np.flatnonzero(np.abs(bins - frequency) <= tolerance)
    floor_band = (bins >= 50.0) & (bins <= 4000.0)
    floor = float(np.median(power[floor_band])) if np.any(floor_band) else float(np.median(power))
    if near.size == 0:
        return 0.0, 0.0
    peak = int(near[np.argmax(power[near])])
    return float(bins[peak]), float(10 * math.log10(max(float(power[peak]), 1e-300) / max(floor, 1e-300)))


def rms_dbfs(pcm: bytes, *, channels: int = 1) -> float:
    """The RMS level relative to full scale (a full-scale square wave is 0 dBFS).

    A full-scale sine measures -3.01 dBFS; ``tone(..., amplitude=0.3)`` -13.5 dBFS.

    Args:
        pcm: int16 little-endian PCM.
        channels: its channel count.

    Returns:
        dBFS, or ``-inf`` for silence or no samples.

    Raises:
        ValueError: ``pcm`` is not whole frames of samples.
    """
    x = pcm_to_float(pcm, channels)
    if x.size == 0:
        return -math.inf
    power = float(np.mean(x * x))
    return 10 * math.log10(power) if power > 0 else -math.inf


@dataclass(frozen=True, slots=True)
class Alignment:
    """How a received signal lines up with a reference (see ``align``).

    Attributes:
        delay: samples by which the signal lags the reference (negative: leads).
        overlap: samples compared after shifting.
        correlation: normalised correlation over the overlap, -1..1.
        snr_db: reference energy over difference energy on the overlap, in dB
            (``inf`` if identical, ``-inf`` with no overlap or a silent reference).
    """

    delay: int
    overlap: int
    correlation: float
    snr_db: float


def _best_lag(reference: np.ndarray, signal: np.ndarray, max_lag: int | None) -> int:
    size = 1 << math.ceil(math.log2(len(reference) + len(signal)))
    spectrum = np.fft.rfft(signal, size) * np.conj(np.fft.rfft(reference, size))
    circular = np.fft.irfft(spectrum, size)
    # circular[k] = sum_n signal[n] * reference[n - k]; negative lags wrap to the end.
    lags = np.concatenate([np.arange(0, len(signal)), np.arange(-(len(reference) - 1), 0)])
    values = np.concatenate([circular[: len(signal)], circular[size - (len(reference) - 1) :]])
    if max_lag is not None:
        keep = np.abs(lags) <= max_lag
        lags, values = lags[keep], values[keep]
    return int(lags[int(np.argmax(values))])


def align(reference: bytes, signal: bytes, *, max_lag: int | None = None, channels: int = 1) -> Alignment:
    """Line ``signal`` up with ``reference`` by cross-correlation and compare them.

    Args:
        reference: int16 PCM that was sent.
        signal: int16 PCM that arrived, at the same rate (channels are averaged).
        max_lag: search delays only within +/- this many samples (a periodic
            signal such as a tone otherwise aligns equally well one period off).
        channels: channel count of both.

    Returns:
        The ``Alignment`` at the delay of highest correlation.

    Raises:
        ValueError: either input is not whole frames, or one is empty.
    """
    ref = _mono(reference, channels)
    sig = _mono(signal, channels)
    if len(ref) == 0 or len(sig) == 0:
        raise ValueError("cannot align an empty signal")
    delay = _best_lag(ref, sig, max_lag)
    # signal[n] ~ reference[n - delay]
    start = max(0, delay)
    stop = min(len(sig), len(ref) + delay)
    if stop <= start:
        return Alignment(delay, 0, 0.0, -math.inf)
    s = sig[start:stop]
    r = ref[start - delay : stop - delay]
    energy = float(np.dot(r, r))
    denominator = math.sqrt(energy * float(np.dot(s, s)))
    corr = float(np.dot(r, s)) / denominator if denominator > 0 else 0.0
    noise = float(np.sum((r - s) ** 2))
    if energy == 0:
        snr = -math.inf
    elif noise == 0:
        snr = math.inf
    else:
        snr = 10 * math.log10(energy / noise)
    return Alignment(delay, stop - start, corr, snr)


def find_delay(reference: bytes, signal: bytes, *, max_lag: int | None = None, channels: int = 1) -> int:
    """Samples by which ``signal`` lags ``reference`` (see ``align``)."""
    return align(reference, signal, max_lag=max_lag, channels=channels).delay


def correlation(reference: bytes, signal: bytes, *, max_lag: int | None = None, channels: int = 1) -> float:
    """Normalised correlation of ``signal`` with ``reference`` once aligned (see ``align``)."""
    return align(reference, signal, max_lag=max_lag, channels=channels).correlation


def snr_db(reference: bytes, signal: bytes, *, max_lag: int | None = None, channels: int = 1) -> float:
    """Signal-to-noise ratio of ``signal`` against ``reference`` once aligned (see ``align``)."""
    return align(reference, signal, max_lag=max_lag, channels=channels).snr_db


def align_segments(
    reference: bytes,
    signal: bytes,
    *,
    segment: int = 24000,
    channels: int = 1,
    floor_dbfs: float = -50.0,
) -> list[Alignment]:
    """Align each segment of ``signal`` with ``reference`` on its own.

    For audio whose delay changed along the way (a jitter buffer that grew or
    shrank its delay, a skipped frame), where one global alignment fits only
    part of it.

    Args:
        reference: int16 PCM that was sent.
        signal: int16 PCM that arrived, at the same rate.
        segment: samples per segment of ``signal`` (a trailing part shorter
            than half a segment is left out).
        channels: channel count of both.
        floor_dbfs: segments quieter than this (pauses) are left out.

    Returns:
        One ``Alignment`` per segment kept, in order; its ``delay`` is that of
        the segment's content against ``reference`` on the signal's timeline.

    Raises:
        ValueError: either input is not whole frames, ``reference`` is empty or
            ``segment`` is not positive.
    """
    if segment <= 0:
        raise ValueError(f"segment must be positive, not {segment}")
    frame = 2 * channels
    result = []
    for offset in range(0, len(signal) // frame, segment):
        window = signal[offset * frame : (offset + segment) * frame]
        if len(window) < segment // 2 * frame or rms_dbfs(window, channels=channels) < floor_dbfs:
            continue
        found = align(reference, window, channels=channels)
        result.append(Alignment(found.delay + offset, found.overlap, found.correlation, found.snr_db))
    return result


def segmental_correlation(
    reference: bytes,
    signal: bytes,
    *,
    segment: int = 24000,
    channels: int = 1,
    floor_dbfs: float = -50.0,
) -> float:
    """Mean correlation of ``signal``'s segments, each aligned on its own (see ``align_segments``).

    Args:
        reference: int16 PCM that was sent.
        signal: int16 PCM that arrived, at the same rate.
        segment: samples per segment.
        channels: channel count of both.
        floor_dbfs: segments quieter than this are left out.

    Returns:
        The mean of the segments' correlations weighted by their overlap, or
        0.0 when no segment is loud enough.

    Raises:
        ValueError: as ``align_segments``.
    """
    parts = align_segments(reference, signal, segment=segment, channels=channels, floor_dbfs=floor_dbfs)
    total = sum(part.overlap for part in parts)
    if total == 0:
        return 0.0
    return sum(part.correlation * part.overlap for part in parts) / total
