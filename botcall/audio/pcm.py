"""PCM audio utilities: WAV files, resampling, test signals and measurements.

PCM here is what the rest of BotCall carries: signed 16-bit little-endian
samples, interleaved when stereo, as ``bytes``. Internally the functions work
on float arrays in [-1, 1) of shape ``(frames, channels)``.

The measurements (``dominant_frequency``, ``rms_dbfs``, ``align`` with its
``snr_db`` and ``correlation`` shortcuts) let tests across the project check
that audio arrived by its content rather than its bytes: a tone's frequency, or
how closely what came out matches what went in once the delay is taken out.

WAV files are parsed here (not with the stdlib ``wave``, which in Python 3.11
reads neither float samples nor WAVE_FORMAT_EXTENSIBLE headers, the usual
container for 24- and 32-bit audio). A file we cannot read raises
``ValueError`` with the reason.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np

__all__ = [
    "Alignment",
    "WavFormat",
    "align",
    "align_segments",
    "correlation",
    "decode_wav",
    "dominant_frequency",
    "encode_wav",
    "find_delay",
    "frames",
    "read_wav",
    "resample",
    "rms_dbfs",
    "segmental_correlation",
    "snr_db",
    "speech_like",
    "tone",
    "write_wav",
]

PCM_FULL_SCALE = 32768.0
"""The magnitude of the most negative int16 sample; float samples are PCM / this."""

# --- WAV container -------------------------------------------------------------------

# "RIFF", size, "WAVE" (Microsoft RIFF; RFC 2361 registers the WAVE format codes).
_RIFF_HEADER = struct.Struct("<4sI4s")
_CHUNK_HEADER = struct.Struct("<4sI")
# WAVEFORMAT: format tag, channels, sample rate, byte rate, block align, bits per sample.
_FMT = struct.Struct("<HHIIHH")
# WAVEFORMATEXTENSIBLE after the 16 bytes above: cbSize, valid bits, channel mask,
# then the SubFormat GUID whose first two bytes are the real format tag.
_FMT_EXTENSIBLE = struct.Struct("<HHIH")
_FMT_EXTENSIBLE_SIZE = 40

MAX_WAV_CHANNELS = 8
"""Channel counts a WAV may have for us to read it (mixed down on reading)."""
MIN_WAV_RATE = 1000
MAX_WAV_RATE = 768000
"""Sample rates (Hz) a WAV may have for us to read it (resampled on reading)."""


class WavFormat(IntEnum):
    """WAVE format tags we read (RFC 2361 appendix A)."""

    PCM = 0x0001
    IEEE_FLOAT = 0x0003
    EXTENSIBLE = 0xFFFE


def _parse_fmt(body: bytes) -> tuple[int, int, int, int]:
    if len(body) < _FMT.size:
        raise ValueError(f"WAV fmt chunk is {len(body)} bytes, need at least {_FMT.size}")
    tag, channels, rate, _byte_rate, block_align, bits = _FMT.unpack_from(body)
    if tag == WavFormat.EXTENSIBLE:
        if len(body) < _FMT_EXTENSIBLE_SIZE:
            raise ValueError("WAVE_FORMAT_EXTENSIBLE fmt chunk is too short")
        _cb_size, _valid_bits, _mask, tag = _FMT_EXTENSIBLE.unpack_from(body, _FMT.size)
    if tag == WavFormat.PCM:
        if bits not in (8, 16, 24, 32):
            raise ValueError(f"unsupported WAV sample size: {bits}-bit integer PCM")
    elif tag == WavFormat.IEEE_FLOAT:
        if bits not in (32, 64):
            raise ValueError(f"unsupported WAV sample size: {bits}-bit float")
    else:
        raise ValueError(f"unsupported WAV encoding (format tag 0x{tag:04x}); only PCM and float are read")
    if not 1 <= channels <= MAX_WAV_CHANNELS:
        raise ValueError(f"unsupported WAV channel count {channels}")
    if not MIN_WAV_RATE <= rate <= MAX_WAV_RATE:
        raise ValueError(f"unsupported WAV sample rate {rate} Hz")
    if block_align != channels * bits // 8:
        raise ValueError(f"WAV block align {block_align} does not match {channels} x {bits}-bit samples")
    return tag, channels, rate, bits


def _samples_to_float(raw: bytes, tag: int, bits: int, channels: int) -> np.ndarray:
    usable = len(raw) - len(raw) % (channels * bits // 8)
    raw = raw[:usable]
    if tag == WavFormat.IEEE_FLOAT:
        values = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float64)
        values = np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    elif bits == 8:
        # 8-bit WAV is unsigned with a 128 offset.
        values = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif bits == 16:
        values = np.frombuffer(raw, dtype="<i2") / PCM_FULL_SCALE
    elif bits == 24:
        triplets = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = triplets[:, 0] | (triplets[:, 1] << 8) | (triplets[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        values = ints / float(1 << 23)
    else:
        values = np.frombuffer(raw, dtype="<i4") / float(1 << 31)
    return values.reshape(-1, channels)


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Split a WAV file into float samples ``(frames, channels)`` and its sample rate."""
    if len(data) < _RIFF_HEADER.size:
        raise ValueError("not a WAV file: too short")
    riff, _size, wave = _RIFF_HEADER.unpack_from(data)
    if riff != b"RIFF" or wave != b"WAVE":
        raise ValueError("not a WAV file: no RIFF/WAVE header")
    fmt: tuple[int, int, int, int] | None = None
    raw: bytes | None = None
    offset = _RIFF_HEADER.size
    while offset + _CHUNK_HEADER.size <= len(data):
        chunk_id, size = _CHUNK_HEADER.unpack_from(data, offset)
        offset += _CHUNK_HEADER.size
        # A writer streaming to a pipe cannot know the size; take what is there.
        body = data[offset : offset + size]
        if chunk_id == b"fmt " and fmt is None:
            fmt = _parse_fmt(body)
        elif chunk_id == b"data" and raw is None:
            raw = body
        if fmt is not None and raw is not None:
            break
        # Chunks are padded to an even size (RIFF).
        offset += size + (size & 1)
    if fmt is None:
        raise ValueError("WAV file has no fmt chunk")
    if raw is None:
        raise ValueError("WAV file has no data chunk")
    tag, channels, rate, bits = fmt
    return _samples_to_float(raw, tag, bits, channels), rate


def _mix(samples: np.ndarray, channels: int) -> np.ndarray:
    have = samples.shape[1]
    if have == channels:
        return samples
    if channels == 1:
        # numpy types a reduction along an axis as Any; along one axis it is an array.
        mixed: np.ndarray = samples.mean(axis=1, keepdims=True)
        return mixed
    if have == 1:
        return np.repeat(samples, channels, axis=1)
    raise ValueError(f"cannot map {have} channels to {channels}")


def _to_pcm(samples: np.ndarray) -> bytes:
    scaled = np.rint(samples * PCM_FULL_SCALE)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


def _from_pcm(pcm: bytes, channels: int) -> np.ndarray:
    if channels < 1:
        raise ValueError(f"channels must be at least 1, not {channels}")
    if len(pcm) % (2 * channels):
        raise ValueError(f"PCM of {len(pcm)} bytes is not whole {channels}-channel int16 frames")
    return (np.frombuffer(pcm, dtype="<i2") / PCM_FULL_SCALE).reshape(-1, channels)


def _check_output(sample_rate: int, channels: int) -> None:
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, not {sample_rate}")
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")


def decode_wav(data: bytes, *, sample_rate: int = 48000, channels: int = 1) -> bytes:
    """Convert the bytes of a WAV file to our PCM format.

    Args:
        data: a RIFF/WAVE file: 8/16/24/32-bit integer or 32/64-bit float PCM,
            plain or WAVE_FORMAT_EXTENSIBLE, 1..8 channels, any sample rate.
        sample_rate: the rate to resample to.
        channels: 1 (channels averaged) or 2 (mono duplicated).

    Returns:
        int16 little-endian PCM at ``sample_rate``, interleaved if stereo.

    Raises:
        ValueError: not a WAV file, or an encoding or layout we do not read.
    """
    _check_output(sample_rate, channels)
    samples, rate = _parse_wav(data)
    samples = _mix(samples, channels)
    return _to_pcm(_resample_float(samples, rate, sample_rate))


def read_wav(path: str | Path, *, sample_rate: int = 48000, channels: int = 1) -> bytes:
    """Read a WAV file as PCM in the requested format (see ``decode_wav``).

    Args:
        path: the file.
        sample_rate: the rate to resample to.
        channels: 1 or 2.

    Returns:
        int16 little-endian PCM at ``sample_rate``, interleaved if stereo.

    Raises:
        ValueError: not a WAV file, or an encoding or layout we do not read.
        OSError: the file cannot be read.
    """
    return decode_wav(Path(path).read_bytes(), sample_rate=sample_rate, channels=channels)


def encode_wav(pcm: bytes, *, sample_rate: int, channels: int) -> bytes:
    """Wrap int16 PCM in a 16-bit PCM WAV file.

    Args:
        pcm: int16 little-endian PCM, interleaved if stereo.
        sample_rate: its rate.
        channels: its channel count.

    Returns:
        The bytes of a RIFF/WAVE file.

    Raises:
        ValueError: ``pcm`` is not whole frames, or a bad rate or channel count.
    """
    _check_output(sample_rate, channels)
    if len(pcm) % (2 * channels):
        raise ValueError(f"PCM of {len(pcm)} bytes is not whole {channels}-channel int16 frames")
    block_align = 2 * channels
    fmt = _FMT.pack(WavFormat.PCM, channels, sample_rate, sample_rate * block_align, block_align, 16)
    pad = b"\0" if len(pcm) & 1 else b""
    body = b"WAVE" + _CHUNK_HEADER.pack(b"fmt ", len(fmt)) + fmt + _CHUNK_HEADER.pack(b"data", len(pcm)) + pcm + pad
    return _CHUNK_HEADER.pack(b"RIFF", len(body)) + body


def write_wav(path: str | Path, pcm: bytes, *, sample_rate: int, channels: int) -> None:
    """Write int16 PCM to a 16-bit PCM WAV file (see ``encode_wav``).

    Args:
        path: the file to create or replace.
        pcm: int16 little-endian PCM, interleaved if stereo.
        sample_rate: its rate.
        channels: its channel count.

    Raises:
        ValueError: ``pcm`` is not whole frames, or a bad rate or channel count.
        OSError: the file cannot be written.
    """
    Path(path).write_bytes(encode_wav(pcm, sample_rate=sample_rate, channels=channels))


# --- Framing -------------------------------------------------------------------------


def frames(
    pcm: bytes, *, sample_rate: int = 48000, channels: int = 1, frame_duration: float = 0.020
) -> Iterator[bytes]:
    """Cut PCM into fixed-length frames, zero-padding the last one.

    Args:
        pcm: int16 little-endian PCM, interleaved if stereo.
        sample_rate: its rate.
        channels: its channel count.
        frame_duration: seconds per frame (20 ms: 960 samples at 48 kHz).

    Returns:
        An iterator of frames of ``round(sample_rate * frame_duration) * channels * 2`` bytes.

    Raises:
        ValueError: ``pcm`` is not whole frames of samples, or the frame would be empty.
    """
    samples = round(sample_rate * frame_duration)
    if samples <= 0:
        raise ValueError(f"a {frame_duration} s frame at {sample_rate} Hz holds no samples")
    if channels < 1 or len(pcm) % (2 * channels):
        raise ValueError(f"PCM of {len(pcm)} bytes is not whole {channels}-channel int16 frames")
    size = samples * channels * 2
    return _frames(pcm, size)


def _frames(pcm: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(pcm)
    full = len(pcm) - len(pcm) % size
    for offset in range(0, full, size):
        yield bytes(view[offset : offset + size])
    if full < len(pcm):
        yield bytes(view[full:]) + bytes(size - (len(pcm) - full))


# --- Resampling ----------------------------------------------------------------------

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


def _resample_float(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
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
    return _to_pcm(_resample_float(_from_pcm(pcm, channels), from_rate, to_rate))


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
    return _to_pcm((amplitude * np.sin(2 * np.pi * frequency * t))[:, None])


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
    return _to_pcm(out[:, None])


# --- Measurements --------------------------------------------------------------------


def _mono(pcm: bytes, channels: int) -> np.ndarray:
    # numpy types a reduction along an axis as Any; along one axis it is an array.
    mono: np.ndarray = _from_pcm(pcm, channels).mean(axis=1)
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
    x = _from_pcm(pcm, channels)
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
