"""Speech detection per speaker (issue 12). Sans-IO: no clock, no sockets.

Time is an argument everywhere: ``stream_ms`` is the stream position of the
*start* of the frame or packet being fed (its RTP timestamp in milliseconds),
so the same code runs in the relay and, faster than real time, in tests and in
``bench/vad_quality.py``.

The pieces, from the bottom up:

* ``parse_audio_level_untrusted`` / ``build_audio_level``: the value of the
  RFC 6464 ``urn:ietf:params:rtp-hdrext:ssrc-audio-level`` header extension
  element (the RFC 8285 element split is ``RtpHeaderExtension`` in
  ``botcall.wire.rtp``).
* ``SpeechGate``: the hysteresis state machine turning one speech probability
  per frame into ``SpeechStarted`` / ``SpeechStopped`` events.
* ``LevelDetector``: RFC 6464 levels (what browsers send with every packet)
  through an adaptive noise floor into a gate; no audio decoding at all.
* Frame detectors: 20 ms of 48 kHz mono PCM in, a speech probability out.
  ``make_detector(kind)`` builds one; ``SpeechDetector`` joins a frame
  detector to a gate. The default, ``"silero-gated"``, was chosen by
  ``python -m bench.vad_quality`` (docs/bench-results.md, "Speech detection").

Event times: ``SpeechStarted.stream_ms`` is the *estimated onset*, the start of
the first speech frame of the run, not the later moment the gate confirmed it
(``onset_ms`` of speech later). ``SpeechStopped.stream_ms`` is likewise the end
of the last speech frame, not the end of the hangover; ``duration_ms`` is the
difference. Consumers that need the confirmation time have it: it is the
``stream_ms`` of the frame whose feed returned the event.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from botcall.errors import AudioLevelError, ConfigError

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "BOT_AUDIO_LEVEL_ID",
    "DEFAULT_DETECTOR",
    "DETECTOR_KINDS",
    "AudioLevel",
    "EnergyDetector",
    "FrameDetector",
    "LevelConfig",
    "LevelDetector",
    "LevelState",
    "PreGatedDetector",
    "SileroDetector",
    "SpeechDetector",
    "SpeechEvent",
    "SpeechGate",
    "SpeechStarted",
    "SpeechStopped",
    "WebRtcVadDetector",
    "audio_level_dbov",
    "build_audio_level",
    "frame_dbfs",
    "make_detector",
    "make_gate",
    "make_speech_detector",
    "parse_audio_level_untrusted",
]

SAMPLE_RATE = 48000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2
"""One frame: 20 ms of 48 kHz mono signed 16-bit little-endian PCM."""

_PCM_FULL_SCALE = 32768.0
_SILENCE_DB = -127.0

# --- Events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """A speaker started talking.

    Attributes:
        stream_ms: the estimated onset: start of the first speech frame of the run.
    """

    stream_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """A speaker stopped talking.

    Attributes:
        stream_ms: end of the last speech frame (before the hangover).
        duration_ms: ``stream_ms`` minus the matching ``SpeechStarted.stream_ms``.
    """

    stream_ms: int
    duration_ms: int


SpeechEvent = SpeechStarted | SpeechStopped

# --- RFC 6464 audio level -------------------------------------------------------------

AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
# RFC 6464 §3: one octet, V (voice activity) in the top bit, then the level as
# 0..127 meaning 0..-127 dBov.
_VOICE_BIT = 0x80
_LEVEL_MASK = 0x7F
MIN_LEVEL_DBOV = -127
BOT_AUDIO_LEVEL_ID = 1
"""The one-byte RFC 8285 header extension id at which bots send RFC 6464 levels
(docs/protocol.md, "Speech detection"): the SDK writes it, the relay reads it.
It lives here, below both, because the client may not import the relay."""


class AudioLevel(NamedTuple):
    """The RFC 6464 element value.

    Attributes:
        voice: the V flag, the sender's own voice activity decision.
        level_dbov: the level in dBov, 0 (loudest) down to -127 (silence).
            The wire carries its magnitude, 0..127.
    """

    voice: bool
    level_dbov: int


def parse_audio_level_untrusted(value: bytes) -> AudioLevel:
    """Parse the value of an RFC 6464 audio level element.

    Args:
        value: the element value, as ``RtpHeaderExtension.element_untrusted``
            returns it (the RFC 8285 ID and length octets already stripped).

    Returns:
        The voice flag and the level in dBov (0 to -127).

    Raises:
        AudioLevelError: the value is not exactly one octet (RFC 6464 §3).
    """
    if len(value) != 1:
        raise AudioLevelError(f"audio level element is {len(value)} octets, RFC 6464 §3 says 1")
    octet = value[0]
    return AudioLevel(bool(octet & _VOICE_BIT), -(octet & _LEVEL_MASK))


def build_audio_level(voice: bool, level_dbov: int) -> bytes:
    """Build the one-octet value of an RFC 6464 audio level element.

    Args:
        voice: the V flag.
        level_dbov: the level in dBov, 0 to -127.

    Returns:
        The element value (one octet).

    Raises:
        ValueError: ``level_dbov`` is outside 0..-127.
    """
    if not MIN_LEVEL_DBOV <= level_dbov <= 0:
        raise ValueError(f"RFC 6464 levels are 0..-127 dBov, got {level_dbov}")
    return bytes(((_VOICE_BIT if voice else 0) | -level_dbov,))


def frame_dbfs(pcm: bytes) -> float:
    """RMS level of int16 PCM in dBFS (dBov for RFC 6464), -127 for digital silence."""
    samples = np.frombuffer(pcm, "<i2").astype(np.float32)
    if samples.size == 0:
        return _SILENCE_DB
    power = float(np.dot(samples, samples)) / samples.size / (_PCM_FULL_SCALE * _PCM_FULL_SCALE)
    if power <= 0.0:
        return _SILENCE_DB
    return max(_SILENCE_DB, 10.0 * math.log10(power))


def audio_level_dbov(pcm: bytes) -> int:
    """The RFC 6464 level of a packet's audio: RMS in dBov, rounded, 0..-127.

    This is what Chromium sends (RMS over the packet, RFC 6464 §3's definition).
    """
    return max(MIN_LEVEL_DBOV, min(0, round(frame_dbfs(pcm))))


# --- The gate -------------------------------------------------------------------------


class SpeechGate:
    """Hysteresis from per-frame speech probabilities to start/stop events.

    A run of speech frames must last ``onset_ms`` before ``SpeechStarted`` is
    returned (short blips return nothing), and speech ends only after
    ``hangover_ms`` without a speech frame. While speaking the probability only
    has to stay above ``release_threshold`` (lower than ``threshold``), as in
    Silero's own iterator. Missing frames (lost packets, DTX) count as
    non-speech: a frame arriving after a gap longer than the hangover ends the
    run first, and ``expire`` ends it when nothing arrives at all.

    Event times are estimates of the real onset and offset (module docstring).
    """

    def __init__(
        self,
        *,
        onset_ms: int = 60,
        hangover_ms: int = 300,
        threshold: float = 0.5,
        release_threshold: float | None = None,
        frame_ms: int = FRAME_MS,
    ) -> None:
        """Args:
        onset_ms: speech needed to confirm a start (at least one frame).
        hangover_ms: non-speech needed to confirm a stop.
        threshold: probability at or above which an idle frame is speech.
        release_threshold: probability at or above which a frame keeps an
            ongoing run alive; defaults to ``threshold``.
        frame_ms: the duration of one fed frame.

        Raises:
            ValueError: a time is not positive or a threshold is out of order.
        """
        if onset_ms <= 0 or hangover_ms <= 0 or frame_ms <= 0:
            raise ValueError("onset_ms, hangover_ms and frame_ms must be positive")
        release = threshold if release_threshold is None else release_threshold
        if not 0.0 <= release <= threshold <= 1.0:
            raise ValueError("need 0 <= release_threshold <= threshold <= 1")
        self.onset_ms = onset_ms
        self.hangover_ms = hangover_ms
        self.threshold = threshold
        self.release_threshold = release
        self.frame_ms = frame_ms
        self.reset()

    def reset(self) -> None:
        """Forget everything, without an event (a new stream)."""
        self._speaking = False
        self._started_ms = 0
        self._run_start: int | None = None
        self._speech_end = 0
        self._last_ms: int | None = None

    @property
    def speaking(self) -> bool:
        """Whether a ``SpeechStarted`` is waiting for its ``SpeechStopped``."""
        return self._speaking

    def update(self, probability: float, stream_ms: int) -> SpeechEvent | None:
        """Feed one frame.

        Args:
            probability: speech probability (or 0.0/1.0 flag) of the frame.
            stream_ms: stream position of the frame's start. A frame older than
                the previous one (reordered) is ignored.

        Returns:
            The event this frame confirms, if any. When a gap both ends one run
            and this frame would confirm the next (only with ``onset_ms`` of one
            frame), the stop is returned and the start comes with the next frame,
            still carrying the onset time.
        """
        if self._last_ms is not None and stream_ms < self._last_ms:
            return None
        self._last_ms = stream_ms
        stopped = None
        if self._speaking and stream_ms - self._speech_end >= self.hangover_ms:
            stopped = self._stop()
        if self._speaking:
            if probability >= self.release_threshold:
                self._speech_end = stream_ms + self.frame_ms
            elif stream_ms + self.frame_ms - self._speech_end >= self.hangover_ms:
                return self._stop()
            return None
        if probability < self.threshold:
            self._run_start = None
            return stopped
        if self._run_start is None or stream_ms > self._speech_end:
            self._run_start = stream_ms
        self._speech_end = stream_ms + self.frame_ms
        if stopped is None and self._speech_end - self._run_start >= self.onset_ms:
            self._speaking = True
            self._started_ms = self._run_start
            self._run_start = None
            return SpeechStarted(self._started_ms)
        return stopped

    def expire(self, stream_ms: int) -> SpeechStopped | None:
        """Tell the gate that nothing arrived up to ``stream_ms``.

        The shell calls this from its timer when a stream falls silent (DTX,
        mute, a dead peer), so a run does not stay open forever.

        Returns:
            ``SpeechStopped`` if the hangover has run out by ``stream_ms``.
        """
        if self._speaking and stream_ms - self._speech_end >= self.hangover_ms:
            return self._stop()
        return None

    def _stop(self) -> SpeechStopped:
        self._speaking = False
        self._run_start = None
        return SpeechStopped(self._speech_end, self._speech_end - self._started_ms)


# --- Noise floor (shared by the energy and level detectors) --------------------------


class _NoiseFloor:
    """A minimum tracker: falls at once to a quieter level, rises slowly.

    Speech is anything ``margin_db`` above the floor and above ``min_db``. The
    slow rise (``rise_db_per_s``) lets the floor follow a noise that gets louder
    without climbing onto speech, which has pauses between words.
    """

    def __init__(
        self, *, margin_db: float, min_db: float, rise_db_per_s: float, frame_ms: int = FRAME_MS,
        initial_db: float | None = None,
    ) -> None:
        self.margin_db = margin_db
        self.min_db = min_db
        self._rise = rise_db_per_s * frame_ms / 1000.0
        self._initial = initial_db
        self._floor: float | None = initial_db

    def reset(self) -> None:
        self._floor = self._initial

    def is_speech(self, level_db: float) -> bool:
        floor = self._floor
        if floor is None or level_db < floor:
            floor = level_db
        else:
            floor += self._rise
        self._floor = floor
        return level_db >= self.min_db and level_db >= floor + self.margin_db


class LevelDetector:
    """Speech events from RFC 6464 levels, without decoding any audio.

    A packet is speech when its level stands ``margin_db`` above the stream's
    noise floor and above ``min_dbov``. The V flag is ignored unless
    ``use_voice_flag``: Chromium sets it from the encoder's speech/comfort-noise
    frame type, which without DTX says "speech" for every packet.

    The floor starts at the stream's first level (a microphone's noise), or,
    with ``synthetic``, no higher than ``min_dbov``: a bot's synthesised speech
    has no noise under it and may start loud, and a floor taken from its first
    word would hide that word (and a stream that never pauses) from the detector.
    """

    def __init__(
        self,
        *,
        gate: SpeechGate | None = None,
        margin_db: float = 12.0,
        min_dbov: float = -55.0,
        rise_db_per_s: float = 1.0,
        use_voice_flag: bool = False,
        synthetic: bool = False,
        frame_ms: int = FRAME_MS,
    ) -> None:
        # frame_ms: the stream's packet duration (10 ms from a browser asked
        # for a=ptime:10): each update stands for that much audio.
        self.gate = gate or SpeechGate(onset_ms=60, hangover_ms=400, frame_ms=frame_ms)
        self.use_voice_flag = use_voice_flag
        self._floor = _NoiseFloor(
            margin_db=margin_db, min_db=min_dbov, rise_db_per_s=rise_db_per_s, frame_ms=frame_ms,
            initial_db=min_dbov if synthetic else None,
        )

    def update(self, voice: bool, level_dbov: int, stream_ms: int) -> SpeechEvent | None:
        """Feed one packet's audio level.

        Args:
            voice: the packet's V flag.
            level_dbov: its level in dBov (0 to -127, ``AudioLevel.level_dbov``).
            stream_ms: stream position of the packet's first sample.

        Returns:
            The event this packet confirms, if any.
        """
        speech = self._floor.is_speech(float(level_dbov))
        if self.use_voice_flag and not voice:
            speech = False
        return self.gate.update(1.0 if speech else 0.0, stream_ms)

    def expire(self, stream_ms: int) -> SpeechStopped | None:
        """As ``SpeechGate.expire``."""
        return self.gate.expire(stream_ms)

    def reset(self) -> None:
        """Forget the stream (noise floor and gate)."""
        self._floor.reset()
        self.gate.reset()

    def config(self) -> LevelConfig:
        """The detector's fixed parameters, as the compiled fast path takes them
        (``_fastpath.level_feed``): margin, minimum and rise of the floor (dB),
        whether the V flag counts, then the gate's onset, hangover, thresholds
        and frame duration."""
        floor, gate = self._floor, self.gate
        return (
            floor.margin_db, floor.min_db, floor._rise, self.use_voice_flag,
            gate.onset_ms, gate.hangover_ms, gate.threshold, gate.release_threshold, gate.frame_ms,
        )

    def state(self) -> LevelState:
        """What the detector has learnt of its stream: the noise floor (None before
        the first level), then the gate's speaking flag, onset, current run start,
        end of the last speech frame and newest frame position. The compiled
        fast path takes it with a route and gives it back (:meth:`restore`), so
        the state has one owner at a time."""
        gate = self.gate
        return (self._floor._floor, gate._speaking, gate._started_ms, gate._run_start, gate._speech_end, gate._last_ms)

    def restore(self, state: LevelState) -> None:
        """Take back a state from :meth:`state` (or from the fast path)."""
        gate = self.gate
        self._floor._floor, gate._speaking, gate._started_ms, gate._run_start, gate._speech_end, gate._last_ms = state


LevelConfig = tuple[float, float, float, bool, int, int, float, float, int]
"""``LevelDetector.config()``."""
LevelState = tuple[float | None, bool, int, int | None, int, int | None]
"""``LevelDetector.state()``."""


# --- Frame detectors ------------------------------------------------------------------


class FrameDetector(Protocol):
    """20 ms of 48 kHz mono int16 PCM in, a speech probability in [0, 1] out.

    ``delay_ms`` is how far the detector's decisions lag the audio (buffering,
    filters, smoothing inside the model), measured on the clean corpus of
    ``bench/vad_quality.py`` as the shift that best aligns its frames with the
    truth. ``SpeechDetector`` subtracts it so event times estimate the audio's
    onset and offset rather than the detector's.
    """

    delay_ms: int

    def probability(self, pcm: bytes) -> float:
        """The speech probability of one frame (``FRAME_BYTES`` bytes)."""
        ...

    def reset(self) -> None:
        """Forget the stream."""
        ...


def _check_frame(pcm: bytes) -> None:
    if len(pcm) != FRAME_BYTES:
        raise ValueError(f"a frame is {FRAME_BYTES} bytes (20 ms of 48 kHz mono int16), got {len(pcm)}")


class EnergyDetector:
    """The baseline: frame RMS against an adaptive noise floor. 0.0 or 1.0."""

    delay_ms = 0

    def __init__(self, *, margin_db: float = 12.0, min_dbfs: float = -55.0, rise_db_per_s: float = 1.0) -> None:
        self._floor = _NoiseFloor(margin_db=margin_db, min_db=min_dbfs, rise_db_per_s=rise_db_per_s)

    def probability(self, pcm: bytes) -> float:
        _check_frame(pcm)
        return 1.0 if self._floor.is_speech(frame_dbfs(pcm)) else 0.0

    def reset(self) -> None:
        self._floor.reset()


class WebRtcVadDetector:
    """libwebrtc's GMM voice activity detector (``webrtcvad-wheels``). 0.0 or 1.0.

    It takes 48 kHz 20 ms frames as they are (it downsamples inside).
    """

    delay_ms = 40

    def __init__(self, aggressiveness: int = 2) -> None:
        """Args:
        aggressiveness: 0 (most speech) to 3 (least speech).

        Raises:
            ConfigError: webrtcvad is not installed or the mode is not 0-3.
        """
        if aggressiveness not in (0, 1, 2, 3):
            raise ConfigError(f"webrtcvad aggressiveness is 0-3, got {aggressiveness}")
        try:
            import webrtcvad
        except ImportError as exc:
            raise ConfigError("webrtcvad is not installed (pip install webrtcvad-wheels)") from exc
        self._vad = webrtcvad.Vad(aggressiveness)
        self.aggressiveness = aggressiveness

    def probability(self, pcm: bytes) -> float:
        _check_frame(pcm)
        return 1.0 if self._vad.is_speech(pcm, SAMPLE_RATE) else 0.0

    def reset(self) -> None:
        self._vad.set_mode(self.aggressiveness)


def silero_model_path() -> Path:
    """Where the Silero VAD ONNX model is: inside the installed ``silero-vad`` wheel.

    The package is located without being imported (its ``__init__`` imports
    torch, which BotCall neither needs nor installs).

    Raises:
        ConfigError: silero-vad is not installed.
    """
    spec = importlib.util.find_spec("silero_vad")
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        path = Path(location) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    raise ConfigError("silero-vad's model is not installed (scripts/setup.sh: pip install --no-deps silero-vad)")


@functools.lru_cache(maxsize=4)
def _silero_session(path: str) -> Any:
    """One onnxruntime session per model file, shared by every stream.

    A session holds the weights and its arenas (~12 MB); it keeps no stream
    state (the recurrent state goes in and out of ``run``), so detectors share
    it instead of each loading the model.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError("the Silero detector needs onnxruntime (scripts/setup.sh)") from exc
    options = onnxruntime.SessionOptions()
    # One thread: the relay's cores belong to its rooms, not to one model.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


class SileroDetector:
    """Silero VAD v5/v6 (ONNX) on onnxruntime, one CPU thread.

    The model wants 16 kHz in windows of 512 samples (32 ms) with the previous
    64 samples as context. Frames are resampled 48→16 kHz with soxr's streaming
    resampler and the model runs whenever a window is complete (5 runs per 8
    frames); between runs the last probability is repeated. State is bounded:
    the model's 2x128 recurrent state, one window and the resampler's filter;
    the model itself (an onnxruntime session) is shared by all detectors.
    """

    RATE = 16000
    WINDOW = 512
    CONTEXT = 64
    delay_ms = 60

    def __init__(self, model_path: str | Path | None = None) -> None:
        """Args:
        model_path: the ONNX file; default ``silero_model_path()``.

        Raises:
            ConfigError: onnxruntime, soxr or the model is missing.
        """
        try:
            import soxr
        except ImportError as exc:
            raise ConfigError("the Silero detector needs soxr (scripts/setup.sh)") from exc
        self._session = _silero_session(str(model_path or silero_model_path()))
        self._soxr: Any = soxr
        self._sample_rate = np.array(self.RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._resampler: Any = self._soxr.ResampleStream(SAMPLE_RATE, self.RATE, 1, dtype="float32", quality="LQ")
        self._input: npt.NDArray[np.float32] = np.zeros((1, self.CONTEXT + self.WINDOW), dtype=np.float32)
        self._state: npt.NDArray[np.float32] = np.zeros((2, 1, 128), dtype=np.float32)
        self._pending: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self._probability = 0.0

    def probability(self, pcm: bytes) -> float:
        _check_frame(pcm)
        samples = np.frombuffer(pcm, "<i2").astype(np.float32) * np.float32(1.0 / _PCM_FULL_SCALE)
        pending = np.concatenate((self._pending, self._resampler.resample_chunk(samples)))
        window = self._input
        while pending.size >= self.WINDOW:
            window[0, self.CONTEXT :] = pending[: self.WINDOW]
            output, state = self._session.run(None, {"input": window, "state": self._state, "sr": self._sample_rate})
            self._state = state
            self._probability = float(output[0, 0])
            window[0, : self.CONTEXT] = window[0, -self.CONTEXT :]
            pending = pending[self.WINDOW :]
        self._pending = pending
        return self._probability


class PreGatedDetector:
    """A cheap energy check in front of an expensive detector.

    Frames quieter than ``min_dbfs`` are non-speech without running ``inner``:
    silence (a muted microphone, a bot between sentences) then costs one RMS.
    After ``reset_after_ms`` of such frames ``inner`` is reset, so speech after
    a long silence starts from a clean state instead of a stale one.
    """

    def __init__(self, inner: FrameDetector, *, min_dbfs: float = -55.0, reset_after_ms: int = 500) -> None:
        self.inner = inner
        self.delay_ms = inner.delay_ms
        self.min_dbfs = min_dbfs
        self._reset_after = max(1, reset_after_ms // FRAME_MS)
        self._quiet_frames = 0

    def probability(self, pcm: bytes) -> float:
        _check_frame(pcm)
        if frame_dbfs(pcm) < self.min_dbfs:
            self._quiet_frames += 1
            if self._quiet_frames == self._reset_after:
                self.inner.reset()
            return 0.0
        self._quiet_frames = 0
        return self.inner.probability(pcm)

    def reset(self) -> None:
        self._quiet_frames = 0
        self.inner.reset()


DETECTOR_KINDS = ("energy", "webrtcvad-2", "webrtcvad-3", "silero", "silero-gated")
DEFAULT_DETECTOR = "silero-gated"


def make_detector(kind: str = DEFAULT_DETECTOR) -> FrameDetector:
    """Build a frame detector by name.

    Args:
        kind: one of ``DETECTOR_KINDS``; default ``DEFAULT_DETECTOR``.

    Returns:
        A fresh detector for one stream.

    Raises:
        ConfigError: an unknown kind, or its library is not installed.
    """
    if kind == "energy":
        return EnergyDetector()
    if kind.startswith("webrtcvad-") and kind in DETECTOR_KINDS:
        return WebRtcVadDetector(int(kind.removeprefix("webrtcvad-")))
    if kind == "silero":
        return SileroDetector()
    if kind == "silero-gated":
        return PreGatedDetector(SileroDetector())
    raise ConfigError(f"unknown speech detector {kind!r}; choose one of {', '.join(DETECTOR_KINDS)}")


def make_gate(kind: str = DEFAULT_DETECTOR) -> SpeechGate:
    """The gate tuned for a detector kind (``bench/vad_quality.py``)."""
    if kind.startswith("silero"):
        return SpeechGate(onset_ms=60, hangover_ms=300, threshold=0.6, release_threshold=0.45)
    return SpeechGate(onset_ms=60, hangover_ms=300)


class SpeechDetector:
    """A frame detector and its gate: PCM frames in, speech events out.

    The gate runs on the detector's clock, ``stream_ms - detector.delay_ms``,
    so event times estimate the audio's onset and offset; ``expire`` takes the
    stream's clock like ``update``. A start in the first ``delay_ms`` of a
    stream can therefore carry a ``stream_ms`` a little before the first frame's.
    """

    def __init__(self, detector: FrameDetector, gate: SpeechGate) -> None:
        self.detector = detector
        self.gate = gate

    def update(self, pcm: bytes, stream_ms: int) -> SpeechEvent | None:
        """Feed one 20 ms frame starting at ``stream_ms``.

        Raises:
            ValueError: ``pcm`` is not one frame.
        """
        return self.gate.update(self.detector.probability(pcm), stream_ms - self.detector.delay_ms)

    def expire(self, stream_ms: int) -> SpeechStopped | None:
        """As ``SpeechGate.expire``."""
        return self.gate.expire(stream_ms - self.detector.delay_ms)

    def reset(self) -> None:
        self.detector.reset()
        self.gate.reset()


def make_speech_detector(kind: str = DEFAULT_DETECTOR) -> SpeechDetector:
    """``make_detector(kind)`` with ``make_gate(kind)``.

    Raises:
        ConfigError: as ``make_detector``.
    """
    return SpeechDetector(make_detector(kind), make_gate(kind))
