"""A labelled speech corpus built on the fly, for the VAD tests and ``bench/vad_quality.py``.

Speech comes from espeak-ng (``scripts/setup.sh`` installs it) in several voices,
as short phrases separated by pauses of 0.6-2.0 s. Everything is 48 kHz mono
float32 in [-1, 1); ``to_frames`` cuts it into the 20 ms int16 frames the
detectors take.

Labels are per utterance: an utterance is speech from its first to its last
frame whose clean level is above ``ACTIVE_DBFS`` (so the short gaps between
words inside a phrase count as speech, as a listener hears them). The speech
is normalised to an active level of ``SPEECH_DBFS``; noise is added at a given
SNR relative to that active level (speech power over active frames / noise
power), so "20 dB" means the same thing for every noise.

Noises: white, pink (1/f power), babble (eight espeak talkers summed, each
reversed so no phrase is intelligible), and music-like tones (harmonic notes
and chords with envelopes, no speech at all).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from botcall.audio.wav import decode_wav

RATE = 48000
FRAME_MS = 20
FRAME = RATE * FRAME_MS // 1000
SPEECH_DBFS = -26.0
ACTIVE_DBFS = -50.0

VOICES = ("en-us", "en+f3", "en-gb-x-rp+m3", "en-us+f4", "de", "fr+m5")
PHRASES = (
    "Hello, can you hear me now",
    "I would like to book a table for two",
    "The weather is fine today",
    "Please hold while I check that for you",
    "Seven hundred and forty two",
    "Thank you very much, goodbye",
    "What time does the train leave",
    "Could you repeat the last number",
    "Yes",
    "No thanks",
    "My account number is five five three",
    "Let me think about it for a moment",
)


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=256)
def _espeak_cached(text: str, voice: str, speed: int) -> bytes:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True, capture_output=True
    ).stdout
    return decode_wav(wav, sample_rate=RATE)


def espeak(text: str, voice: str = "en-us", speed: int = 165) -> np.ndarray:
    """Speak ``text`` with espeak-ng: float32 samples at 48 kHz, silences trimmed."""
    samples = np.frombuffer(_espeak_cached(text, voice, speed), "<i2").astype(np.float32) / 32768.0
    levels = frame_dbfs(samples)
    active = np.flatnonzero(levels > ACTIVE_DBFS - 10)
    if active.size == 0:
        return samples
    return samples[active[0] * FRAME : (active[-1] + 1) * FRAME]


def frame_dbfs(samples: np.ndarray) -> np.ndarray:
    """RMS level of every whole 20 ms frame, in dBFS."""
    count = samples.size // FRAME
    frames = samples[: count * FRAME].reshape(count, FRAME).astype(np.float64)
    power = np.mean(frames * frames, axis=1)
    return 10 * np.log10(np.maximum(power, 1e-14))


@dataclass(frozen=True)
class Track:
    """Audio plus its truth.

    Attributes:
        samples: 48 kHz mono float32.
        utterances: ``(start_ms, end_ms)`` of each spoken phrase (frame-aligned).
        labels: one bool per 20 ms frame, True inside an utterance.
        active_power: mean power of the clean speech over its active frames
            (the reference for SNR); 0 for a track without speech.
    """

    samples: np.ndarray
    utterances: tuple[tuple[int, int], ...]
    labels: np.ndarray
    active_power: float

    @property
    def seconds(self) -> float:
        return self.samples.size / RATE


def speech_track(
    *,
    seed: int = 0,
    phrases: int = 10,
    pause_s: tuple[float, float] = (0.6, 2.0),
    lead_s: float = 1.0,
    voices: tuple[str, ...] = VOICES,
) -> Track:
    """Phrases in rotating voices with random pauses, normalised to ``SPEECH_DBFS``."""
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = [np.zeros(int(lead_s * RATE) // FRAME * FRAME, np.float32)]
    utterances = []
    position = pieces[0].size
    for index in range(phrases):
        text = PHRASES[int(rng.integers(len(PHRASES)))]
        voice = voices[index % len(voices)]
        speech = espeak(text, voice, speed=int(rng.integers(140, 190)))
        speech = np.concatenate((speech, np.zeros(-speech.size % FRAME, np.float32)))
        pause = np.zeros(int(rng.uniform(*pause_s) * RATE) // FRAME * FRAME, np.float32)
        utterances.append((position, position + speech.size))
        pieces += [speech, pause]
        position += speech.size + pause.size
    samples = np.concatenate(pieces)
    levels = frame_dbfs(samples)
    active = levels > ACTIVE_DBFS - 10
    gain = 10 ** ((SPEECH_DBFS - 10 * np.log10(np.mean(10 ** (levels[active] / 10)))) / 20)
    samples = (samples * gain).astype(np.float32)
    levels = levels + 20 * np.log10(gain)
    labels = np.zeros(levels.size, bool)
    spans = []
    for start, end in utterances:
        first, last = start // FRAME, end // FRAME
        on = np.flatnonzero(levels[first:last] > ACTIVE_DBFS)
        if on.size == 0:
            continue
        labels[first + on[0] : first + on[-1] + 1] = True
        spans.append((int(first + on[0]) * FRAME_MS, int(first + on[-1] + 1) * FRAME_MS))
    active_power = float(np.mean(10 ** (levels[labels] / 10)))
    return Track(samples, tuple(spans), labels, active_power)


def white(count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(count).astype(np.float32)


def pink(count: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power noise: white noise shaped by 1/sqrt(f) in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(count))
    frequencies = np.fft.rfftfreq(count, 1 / RATE)
    spectrum[1:] /= np.sqrt(frequencies[1:])
    spectrum[0] = 0
    return np.fft.irfft(spectrum, count).astype(np.float32)


def babble(count: int, rng: np.random.Generator, talkers: int = 8) -> np.ndarray:
    """Eight espeak talkers at once, each reversed: speech-shaped, not speech."""
    mix = np.zeros(count, np.float32)
    for talker in range(talkers):
        stream: list[np.ndarray] = []
        size = 0
        while size < count:
            text = PHRASES[int(rng.integers(len(PHRASES)))]
            piece = espeak(text, VOICES[talker % len(VOICES)], speed=int(rng.integers(150, 200)))[::-1]
            piece = piece / (np.sqrt(np.mean(piece * piece)) + 1e-9)
            stream.append(piece)
            size += piece.size
        joined = np.concatenate(stream)
        offset = int(rng.integers(0, max(1, joined.size - count)))
        mix += joined[offset : offset + count]
    return mix


def music(count: int, rng: np.random.Generator) -> np.ndarray:
    """Music-like tones: notes and chords of harmonic tones with attack and decay."""
    out = np.zeros(count, np.float32)
    position = 0
    while position < count:
        length = int(rng.uniform(0.15, 0.6) * RATE)
        t = np.arange(length) / RATE
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(1.0, 5.0))
        note = np.zeros(length)
        for _ in range(int(rng.integers(1, 4))):
            base = 220.0 * 2 ** (int(rng.integers(-12, 13)) / 12)
            for harmonic in range(1, 6):
                note += np.sin(2 * np.pi * base * harmonic * t) / harmonic
        end = min(count, position + length)
        out[position:end] += (note * envelope)[: end - position].astype(np.float32)
        position += length
    return out


NOISES = {"white": white, "pink": pink, "babble": babble, "music": music}


def noise_at(kind: str, count: int, power: float, seed: int) -> np.ndarray:
    """``count`` samples of a noise scaled to mean power ``power``."""
    noise = NOISES[kind](count, np.random.default_rng(seed))
    return (noise * np.sqrt(power / (np.mean(noise.astype(np.float64) ** 2) + 1e-20))).astype(np.float32)


def with_noise(track: Track, kind: str, snr_db: float, seed: int = 1) -> Track:
    """The track with ``kind`` noise added at ``snr_db`` below its active speech power."""
    noise = noise_at(kind, track.samples.size, track.active_power / 10 ** (snr_db / 10), seed)
    return Track(track.samples + noise, track.utterances, track.labels, track.active_power)


def noise_only(kind: str, seconds: float, snr_db: float, seed: int = 2) -> Track:
    """Noise alone, at the level it has in ``with_noise`` for a speech at ``SPEECH_DBFS``."""
    power = 10 ** (SPEECH_DBFS / 10) / 10 ** (snr_db / 10)
    count = int(seconds * RATE) // FRAME * FRAME
    if kind == "silence":
        samples = np.zeros(count, np.float32)
    else:
        samples = noise_at(kind, count, power, seed)
    return Track(samples, (), np.zeros(samples.size // FRAME, bool), 0.0)


def to_frames(samples: np.ndarray) -> list[bytes]:
    """20 ms int16 frames (960 samples, 1920 bytes each); a partial last frame is dropped."""
    count = samples.size // FRAME
    pcm = np.clip(np.round(samples[: count * FRAME] * 32768.0), -32768, 32767).astype("<i2")
    return [pcm[index * FRAME : (index + 1) * FRAME].tobytes() for index in range(count)]


def spoken_pcm(text: str = "Hello, this is the bot speaking to you now.", voice: str = "en-us") -> bytes:
    """``text`` spoken by espeak-ng as int16 little-endian PCM at 48 kHz, at ``SPEECH_DBFS``."""
    samples = espeak(text, voice)
    rms = float(np.sqrt(np.mean(samples**2))) or 1.0
    scaled = samples * (10 ** (SPEECH_DBFS / 20) / rms)
    return (np.clip(scaled, -1.0, 1.0) * 32767).astype("<i2").tobytes()
