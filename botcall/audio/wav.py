"""WAV files and fixed-length framing of PCM (sans-IO but for ``read_wav``/``write_wav``).

PCM here is what the rest of BotCall carries: signed 16-bit little-endian
samples, interleaved when stereo, as ``bytes``.

WAV files are parsed here (not with the stdlib ``wave``, which in Python 3.11
reads neither float samples nor WAVE_FORMAT_EXTENSIBLE headers, the usual
container for 24- and 32-bit audio). A file we cannot read raises
``ValueError`` with the reason. Reading resamples to the rate asked for
(``botcall.audio.resample``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path

import numpy as np

from botcall.audio.resample import resample_float
from botcall.audio.samples import PCM_FULL_SCALE, float_to_pcm

__all__ = [
    "WavFormat",
    "decode_wav",
    "encode_wav",
    "frames",
    "read_wav",
    "write_wav",
]

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
    return float_to_pcm(resample_float(samples, rate, sample_rate))


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

