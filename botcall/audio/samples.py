"""PCM as BotCall carries it, and the float arrays the audio tools compute on.

PCM here is signed 16-bit little-endian samples, interleaved when stereo, as
``bytes``. The WAV codec, the resampler and the demo's signals work on float
arrays in [-1, 1) of shape ``(frames, channels)``; these two functions convert.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PCM_FULL_SCALE", "float_to_pcm", "pcm_to_float"]

PCM_FULL_SCALE = 32768.0
"""The magnitude of the most negative int16 sample; float samples are PCM / this."""


def float_to_pcm(samples: np.ndarray) -> bytes:
    """Round float samples ``(frames, channels)`` to int16 PCM, clipping at full scale."""
    scaled = np.rint(samples * PCM_FULL_SCALE)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


def pcm_to_float(pcm: bytes, channels: int) -> np.ndarray:
    """Float samples ``(frames, channels)`` of int16 PCM.

    Raises:
        ValueError: fewer than one channel, or ``pcm`` is not whole frames.
    """
    if channels < 1:
        raise ValueError(f"channels must be at least 1, not {channels}")
    if len(pcm) % (2 * channels):
        raise ValueError(f"PCM of {len(pcm)} bytes is not whole {channels}-channel int16 frames")
    return (np.frombuffer(pcm, dtype="<i2") / PCM_FULL_SCALE).reshape(-1, channels)

