"""What a page (Chromium, or Firefox through ``tests.kit.firefox``) heard and said, on one clock: the PWA's recorder, read from Python.

``botcall.startRecording()`` (pwa/recorder-worklet.js) records the page's
microphone and the remote audio it plays, sample by sample, on the
AudioContext's clock; ``botcall.recording()`` hands over what was recorded
since the last call. :func:`take_recording` turns that into numpy arrays.

Both signals are on the same clock, so "the human started speaking" (the
microphone) and "the bot's voice stopped" (the remote audio) are compared
without mapping clocks. ``clock`` relates the context's clock to the page's
``performance.now()`` and ``performance.timeOrigin``, which maps a recorded
sample to Unix time at the page's output: the bench compares it with when a
bot received an event (the same machine's clock). ``getOutputTimestamp`` was
tried first and moved by ~100 ms from one headless run to the next.

:func:`follow` finds a known reference (the bot's reply) in the remote audio
and tracks it 20 ms at a time, so it sees what the jitter buffer did
(time-stretching shifts the lag) and where the reply stops (the first blocks
that no longer match it: a cut, then concealment or silence).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
from playwright.sync_api import Page

from botcall.audio.resample import resample_float

BLOCK_MS = 10


@dataclass(frozen=True)
class PageRecording:
    """One piece of the page's recording.

    Attributes:
        rate: samples per second of ``local`` and ``remote`` (resampled to
            ``rate`` when the AudioContext runs at another rate: headless
            Chromium's runs at 44.1 kHz).
        first_time: the context time (s) of sample 0.
        local: the microphone as the page had it, float in [-1, 1].
        remote: the remote audio as the page played it.
        arrivals: ``(context ms, performance.now())`` as each 100 ms chunk
            reached the page.
        time_origin: ``performance.timeOrigin``, ms since the Unix epoch.
        output_latency: seconds from processing to the output (``baseLatency + outputLatency``).
    """

    rate: int
    first_time: float
    local: np.ndarray
    remote: np.ndarray
    arrivals: np.ndarray
    time_origin: float
    output_latency: float

    def unix_time(self, index: float) -> float:
        """Unix time (s) at which recorded sample ``index`` reached the page's output."""
        context_ms = (self.first_time + index / self.rate) * 1000
        # The context's clock drifts against the page's in headless Chromium (the
        # fake output renders in bursts): relate them locally, over the chunks
        # within a second, by the smallest offset (a busy main thread only adds).
        near = np.abs(self.arrivals[:, 0] - context_ms) <= 1000
        chunks = self.arrivals[near] if near.any() else self.arrivals
        offset_ms = float(np.min(chunks[:, 1] - chunks[:, 0]))
        return (self.time_origin + offset_ms + context_ms) / 1000 + self.output_latency


def _pcm(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), "<i2").astype(np.float32) / 32768.0


def start_recording(page: Page) -> None:
    """Start the page's recorder (after the call connected: it needs the AudioContext)."""
    page.evaluate("botcall.startRecording()")


def take_recording(page: Page, rate: int = 48000) -> PageRecording:
    """What the page recorded since the last take, at ``rate``."""
    return recording_from(page.evaluate("botcall.recording()"), rate)


def recording_from(raw: dict[str, Any] | None, rate: int = 48000) -> PageRecording:
    """A ``PageRecording`` from what ``botcall.recording()`` returned (from any browser).

    Raises:
        AssertionError: nothing was recorded yet.
    """
    assert raw is not None and raw["firstFrame"] is not None, "nothing recorded yet"
    clock = raw["clock"]
    context_rate = int(raw["sampleRate"])
    local, remote = _pcm(raw["local"]), _pcm(raw["remote"])
    if context_rate != rate:
        local = resample_float(local[:, None], context_rate, rate)[:, 0].astype(np.float32)
        remote = resample_float(remote[:, None], context_rate, rate)[:, 0].astype(np.float32)
    return PageRecording(
        rate=rate,
        first_time=int(raw["firstFrame"]) / context_rate,
        local=local,
        remote=remote,
        arrivals=np.asarray(clock["arrivals"], dtype=np.float64).reshape(-1, 2),
        time_origin=float(clock["timeOrigin"]),
        output_latency=float(clock["outputLatency"]),
    )


def block_dbfs(samples: np.ndarray, rate: int, block_ms: int = BLOCK_MS) -> np.ndarray:
    """RMS level of every whole ``block_ms`` block, in dBFS."""
    size = rate * block_ms // 1000
    count = samples.size // size
    blocks = samples[: count * size].reshape(count, size).astype(np.float64)
    return 10 * np.log10(np.maximum(np.mean(blocks * blocks, axis=1), 1e-14))


def onsets(levels: np.ndarray, *, threshold_dbfs: float = -45.0, min_gap_blocks: int = 50) -> list[int]:
    """Blocks where sound starts after at least ``min_gap_blocks`` quiet blocks (or at the start)."""
    loud = levels > threshold_dbfs
    found = []
    quiet = min_gap_blocks  # the start counts as after a pause only if it is quiet
    for index, on in enumerate(loud):
        if on:
            if quiet >= min_gap_blocks and index > 0:
                found.append(index)
            quiet = 0
        else:
            quiet += 1
    return found


def _normalised_xcorr(window: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Normalised correlation of ``window`` at every offset inside ``segment``."""
    size = 1 << int(np.ceil(np.log2(window.size + segment.size)))
    raw = np.fft.irfft(np.fft.rfft(segment, size) * np.conj(np.fft.rfft(window, size)), size)
    count = segment.size - window.size + 1
    energies = np.cumsum(np.concatenate(([0.0], segment.astype(np.float64) ** 2)))
    seg_energy = energies[window.size : window.size + count] - energies[:count]
    window_energy = float(np.dot(window, window))
    denominator = np.sqrt(np.maximum(seg_energy, 1e-3 * window_energy) * window_energy) + 1e-12
    # A near-silent stretch of the segment scores nothing (it would divide by ~0).
    return raw[:count] / denominator


@dataclass(frozen=True)
class Followed:
    """Where a reference was found in a recording and where it stopped.

    Attributes:
        start: recording index of reference sample 0 (as first aligned).
        end: recording index just after the last block that matched the reference.
        end_position: the reference sample that ``end`` corresponds to (the
            reference position the listener heard up to).
        lags: ``(recording index, lag)`` per matching block: reference index = recording index + lag.
    """

    start: int
    end: int
    end_position: int
    lags: tuple[tuple[int, int], ...]

    def recording_index(self, position: int) -> int:
        """The recording index where reference ``position`` played (nearest tracked block)."""
        best = min(self.lags, key=lambda item: abs(item[0] + item[1] - position))
        return position - best[1]


def follow(
    recording: np.ndarray,
    reference: np.ndarray,
    rate: int,
    *,
    block_ms: int = 20,
    search_ms: int = 25,
    min_correlation: float = 0.75,
    max_level_db: float = 3.0,
    misses: int = 2,
) -> Followed:
    """Track ``reference`` through ``recording`` block by block until it stops matching.

    Args:
        recording: what the page played.
        reference: the audio that was sent (at ``rate``; the reply must not be silent anywhere).
        rate: samples per second of both.
        block_ms: the tracking step and window.
        search_ms: how far the lag may move from one block to the next (NetEq
            time-stretching removes or adds whole pitch periods).
        min_correlation: a block matches above this correlation...
        max_level_db: ...and within this many dB of the reference's level.
        misses: this many blocks in a row below it end the reference.

    Raises:
        AssertionError: the reference's start was not found.
    """
    block = rate * block_ms // 1000
    # 100 ms windows at a few places of the reply's first half second: longer
    # ones straddle the jitter buffer's time-stretching, and the very first
    # packets may be faded in.
    width = rate // 10
    candidates = []
    for offset in range(0, rate // 2, rate // 10):
        scores = _normalised_xcorr(reference[offset : offset + width], recording)
        found = int(np.argmax(scores))
        candidates.append((float(scores[found]), found, offset))
    best, found, offset = max(candidates)
    assert best > 0.8, f"the reply's start was not found in the page's audio (best {best:.2f})"
    start = found - offset
    lag = offset - found
    search = rate * search_ms // 1000
    lags: list[tuple[int, int]] = []
    index = found
    missed = 0
    end = index
    wide = rate * 300 // 1000
    while index + block <= recording.size:
        window = recording[index : index + block]
        # After a miss, look further: a larger time-stretch than one step's
        # search, or a late burst, moves the lag by more.
        reach = search if missed == 0 else wide
        lo = max(0, index + lag - reach)
        hi = min(reference.size, index + lag + reach + block)
        matched = False
        if hi - lo >= block and float(np.dot(window, window)) > 0.0:
            values = _normalised_xcorr(window, reference[lo:hi])
            best_at = int(np.argmax(values))
            candidate = lo + best_at - index
            aligned = reference[index + candidate : index + candidate + block]
            # Same waveform and same level: NetEq's concealment after a cut
            # repeats pitch periods that still correlate, but fades.
            level_db = 10 * np.log10((float(np.dot(window, window)) + 1e-12) / (float(np.dot(aligned, aligned)) + 1e-12))
            if values[best_at] >= min_correlation and abs(level_db) <= max_level_db:
                matched = True
                lag = candidate
        if matched:
            lags.append((index, lag))
            end = index + block
            missed = 0
        else:
            missed += 1
            if missed >= misses:
                break
        index += block
    assert lags, "the reply was found but no block of it matched"
    # A last block that matched one pitch period off is NetEq's first concealment
    # (it repeats the last period), not the reply: the reply ends before it.
    while len(lags) >= 2 and lags[-1][1] != lags[-2][1]:
        lags.pop()
    end = lags[-1][0] + block
    return Followed(start=start, end=end, end_position=end + lags[-1][1], lags=tuple(lags))
