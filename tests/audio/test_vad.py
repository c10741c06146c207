"""Speech detection (botcall/audio/vad.py): the gate, RFC 6464 levels, real speech.

The real-audio tests speak with espeak-ng (``scripts/setup.sh`` installs it)
through ``tests/kit/speech_corpus.py``, the corpus ``bench/vad_quality.py``
measures with.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from botcall.audio import vad
from botcall.audio.vad import (
    AudioLevel,
    LevelDetector,
    PreGatedDetector,
    SpeechGate,
    SpeechStarted,
    SpeechStopped,
    build_audio_level,
    make_detector,
    make_speech_detector,
    parse_audio_level_untrusted,
)
from botcall.errors import AudioLevelError, BadPacket, ConfigError
from botcall.wire.rtp import parse_rtp_untrusted
from tests.kit import speech_corpus as corpus
from tests.kit.captures import load_hex

FRAME = vad.FRAME_MS


def feed(gate: SpeechGate, probabilities: list[float], start_ms: int = 0) -> list[tuple[int, vad.SpeechEvent]]:
    """Feed consecutive frames; return (frame stream_ms, event) for each event."""
    events = []
    for index, probability in enumerate(probabilities):
        stream_ms = start_ms + index * FRAME
        event = gate.update(probability, stream_ms)
        if event is not None:
            events.append((stream_ms, event))
    return events


# --- SpeechGate ------------------------------------------------------------------------


def test_start_is_confirmed_after_onset_and_carries_the_first_speech_frame():
    gate = SpeechGate(onset_ms=60, hangover_ms=200)
    events = feed(gate, [0.0] * 5 + [1.0] * 10)
    # Speech from 100 ms; three frames (100, 120, 140) make 60 ms.
    assert events == [(140, SpeechStarted(100))]
    assert gate.speaking


def test_blips_shorter_than_onset_give_no_event():
    gate = SpeechGate(onset_ms=60, hangover_ms=200)
    assert feed(gate, [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0] * 20) == []
    assert not gate.speaking


def test_stop_after_hangover_with_duration():
    gate = SpeechGate(onset_ms=40, hangover_ms=200)
    events = feed(gate, [0.0] * 5 + [1.0] * 10 + [0.0] * 20)
    # Speech 100..300 ms; silence from 300; 200 ms of it is complete with the frame at 480.
    assert events == [(120, SpeechStarted(100)), (480, SpeechStopped(300, 200))]
    assert not gate.speaking


def test_pause_shorter_than_hangover_keeps_one_run():
    gate = SpeechGate(onset_ms=40, hangover_ms=200)
    events = feed(gate, [1.0] * 10 + [0.0] * 9 + [1.0] * 10 + [0.0] * 10)
    assert [event for _, event in events] == [SpeechStarted(0), SpeechStopped(580, 580)]


def test_release_threshold_keeps_speech_but_does_not_start_it():
    gate = SpeechGate(onset_ms=40, hangover_ms=100, threshold=0.6, release_threshold=0.4)
    assert feed(gate, [0.5] * 20) == []
    events = feed(gate, [0.7] * 3 + [0.5] * 20 + [0.3] * 10, start_ms=1000)
    assert [event for _, event in events] == [SpeechStarted(1000), SpeechStopped(1460, 460)]


def test_a_gap_in_the_stream_ends_the_run_at_the_last_speech():
    gate = SpeechGate(onset_ms=40, hangover_ms=200)
    feed(gate, [1.0] * 5)
    # Packets stop at 100 ms (DTX, loss) and resume at 1000 ms with speech.
    assert gate.update(1.0, 1000) == SpeechStopped(100, 100)
    assert gate.update(1.0, 1020) == SpeechStarted(1000)


def test_expire_ends_a_run_when_nothing_arrives():
    gate = SpeechGate(onset_ms=40, hangover_ms=200)
    feed(gate, [1.0] * 5)
    assert gate.expire(250) is None
    assert gate.expire(300) == SpeechStopped(100, 100)
    assert gate.expire(400) is None


def test_reordered_frames_are_ignored():
    gate = SpeechGate(onset_ms=40, hangover_ms=200)
    assert gate.update(1.0, 100) is None
    assert gate.update(1.0, 80) is None
    assert gate.update(1.0, 120) == SpeechStarted(100)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"onset_ms": 0},
        {"hangover_ms": -20},
        {"threshold": 0.3, "release_threshold": 0.5},
        {"threshold": 1.5},
    ],
)
def test_gate_rejects_impossible_settings(kwargs):
    with pytest.raises(ValueError):
        SpeechGate(**kwargs)


@given(
    st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 40)), max_size=300),
    st.integers(1, 5),
    st.integers(1, 20),
)
def test_events_alternate_and_durations_cover_the_onset(frames, onset_frames, hangover_frames):
    """Any probabilities, any gaps between frames (``step`` frames after the previous)."""
    gate = SpeechGate(
        onset_ms=onset_frames * FRAME, hangover_ms=hangover_frames * FRAME, threshold=0.5, release_threshold=0.3
    )
    stream_ms = 0
    events: list[vad.SpeechEvent] = []
    for probability, step in frames:
        stream_ms += FRAME * (1 if step < 35 else step)
        event = gate.update(probability, stream_ms)
        if event is not None:
            events.append(event)
    stopped = gate.expire(stream_ms + 10_000)
    if stopped is not None:
        events.append(stopped)
    assert not gate.speaking
    assert [type(event) for event in events] == [SpeechStarted, SpeechStopped] * (len(events) // 2)
    for start, stop in zip(events[::2], events[1::2]):
        assert isinstance(start, SpeechStarted) and isinstance(stop, SpeechStopped)
        assert stop.duration_ms == stop.stream_ms - start.stream_ms >= onset_frames * FRAME
    times = [event.stream_ms for event in events]
    assert times == sorted(times)


# --- RFC 6464 ----------------------------------------------------------------------------


def test_audio_level_values():
    assert parse_audio_level_untrusted(b"\xaa") == AudioLevel(True, -42)
    assert parse_audio_level_untrusted(b"\x7f") == (False, -127)
    assert parse_audio_level_untrusted(b"\x80") == (True, 0)
    assert build_audio_level(True, -42) == b"\xaa"
    assert build_audio_level(False, -127) == b"\x7f"


def test_audio_level_round_trips_every_octet():
    for octet in range(256):
        value = bytes((octet,))
        assert build_audio_level(*parse_audio_level_untrusted(value)) == value


def test_audio_level_from_a_chrome_packet():
    packet = parse_rtp_untrusted(load_hex("chrome_opus_audio_level.rtp.hex"))
    assert packet.extension is not None
    value = packet.extension.element_untrusted(1)
    assert value is not None
    assert parse_audio_level_untrusted(value) == AudioLevel(True, -42)


@pytest.mark.parametrize("value", [b"", b"\x80\x00", b"\x00" * 4])
def test_audio_level_of_the_wrong_size_is_a_bad_packet(value):
    with pytest.raises(AudioLevelError) as caught:
        parse_audio_level_untrusted(value)
    assert isinstance(caught.value, BadPacket)
    assert caught.value.counter == "malformed_audio_level"


@pytest.mark.parametrize("level", [1, -128])
def test_build_audio_level_rejects_out_of_range(level):
    with pytest.raises(ValueError):
        build_audio_level(True, level)


@given(st.binary(max_size=8))
@example(b"")
@example(b"\xff\xff")
def test_audio_level_parser_raises_only_its_own_error(data):
    try:
        voice, level = parse_audio_level_untrusted(data)
    except AudioLevelError:
        assert len(data) != 1
    else:
        assert isinstance(voice, bool) and -127 <= level <= 0


def test_audio_level_of_pcm_is_rms_dbov():
    assert vad.audio_level_dbov(bytes(vad.FRAME_BYTES)) == -127
    full_square = np.full(vad.FRAME_SAMPLES, 32767, "<i2").tobytes()
    assert vad.audio_level_dbov(full_square) == 0
    quiet = (np.sin(np.arange(vad.FRAME_SAMPLES) * 0.1) * 32768 * 10 ** (-30 / 20) * np.sqrt(2)).astype("<i2")
    assert vad.audio_level_dbov(quiet.tobytes()) == -30


def test_level_detector_follows_the_noise_floor():
    detector = LevelDetector(gate=SpeechGate(onset_ms=60, hangover_ms=200))
    events = []
    levels = [-60] * 50 + [-30] * 50 + [-60] * 50 + [-58, -61] * 50
    for index, level in enumerate(levels):
        event = detector.update(True, level, index * FRAME)
        if event is not None:
            events.append(event)
    assert events == [SpeechStarted(1000), SpeechStopped(2000, 1000)]


def test_a_synthetic_stream_that_starts_loud_is_speech_from_its_first_packet():
    # A bot's TTS with no lead-in: a microphone's detector takes the first level
    # as the noise floor and hears nothing; a synthetic stream's floor starts at
    # min_dbov, so the first word starts the run.
    levels = [-20] * 50 + [-127] * 50
    for synthetic, expected in ((False, []), (True, [SpeechStarted(0), SpeechStopped(1000, 1000)])):
        detector = LevelDetector(gate=SpeechGate(onset_ms=60, hangover_ms=200), synthetic=synthetic)
        events = [e for index, level in enumerate(levels) if (e := detector.update(True, level, index * FRAME)) is not None]
        assert events == expected, synthetic
    detector.reset()  # back to the synthetic start, not the last floor
    assert [e for index in range(5) if (e := detector.update(True, -20, index * FRAME)) is not None] == [SpeechStarted(0)]


def test_level_detector_can_honour_the_voice_flag():
    detector = LevelDetector(use_voice_flag=True)
    events = [detector.update(False, -60 if index < 50 else -20, index * FRAME) for index in range(100)]
    assert events == [None] * 100


# --- Frame detectors --------------------------------------------------------------------


@pytest.mark.parametrize("kind", vad.DETECTOR_KINDS)
def test_every_detector_kind_takes_frames(kind):
    detector = make_detector(kind)
    for pcm in corpus.to_frames(corpus.noise_only("white", 0.2, 20).samples):
        assert 0.0 <= detector.probability(pcm) <= 1.0
    with pytest.raises(ValueError):
        detector.probability(bytes(100))


def test_unknown_detector_kind():
    with pytest.raises(ConfigError):
        make_detector("webrtcvad-7")


class CountingDetector:
    delay_ms = 0

    def __init__(self) -> None:
        self.calls = 0
        self.resets = 0

    def probability(self, pcm: bytes) -> float:
        self.calls += 1
        return 1.0

    def reset(self) -> None:
        self.resets += 1


def test_pre_gate_skips_the_model_on_silence():
    inner = CountingDetector()
    detector = PreGatedDetector(inner, min_dbfs=-55.0, reset_after_ms=200)
    silence = bytes(vad.FRAME_BYTES)
    loud = np.full(vad.FRAME_SAMPLES, 3000, "<i2").tobytes()
    assert [detector.probability(silence) for _ in range(50)] == [0.0] * 50
    assert (inner.calls, inner.resets) == (0, 1)
    assert detector.probability(loud) == 1.0
    assert inner.calls == 1


# --- Real speech ----------------------------------------------------------------------------


def run(detector: vad.SpeechDetector, samples: np.ndarray) -> list[tuple[int, vad.SpeechEvent]]:
    """(available_ms, event): available at the end of the frame that returned it."""
    events = []
    for index, pcm in enumerate(corpus.to_frames(samples)):
        event = detector.update(pcm, index * FRAME)
        if event is not None:
            events.append(((index + 1) * FRAME, event))
    return events


@pytest.fixture(scope="module")
def spoken() -> corpus.Track:
    return corpus.speech_track(seed=3, phrases=8, pause_s=(1.0, 1.8))


@pytest.mark.parametrize("noise", [None, "white"])
def test_speech_with_pauses_gives_one_start_and_stop_per_phrase(spoken, noise):
    track = spoken if noise is None else corpus.with_noise(spoken, noise, 20, seed=4)
    events = run(make_speech_detector(), track.samples)
    starts = [(available, event) for available, event in events if isinstance(event, SpeechStarted)]
    stops = [(available, event) for available, event in events if isinstance(event, SpeechStopped)]
    assert len(starts) == len(stops) == len(track.utterances)
    following = [start for start, _ in track.utterances[1:]] + [10**9]
    for (start, end), next_start, (started_at, started), (stopped_at, stopped) in zip(
        track.utterances, following, starts, stops
    ):
        assert start <= started_at <= start + 250, (start, started_at)
        assert abs(started.stream_ms - start) <= 100
        # The stop comes within the pause; no event at all until the next phrase.
        assert end <= stopped_at < next_start
        assert abs(stopped.stream_ms - end) <= 200
        assert stopped.duration_ms == stopped.stream_ms - started.stream_ms


@pytest.mark.parametrize("kind", ["white", "pink", "silence"])
def test_no_false_start_in_ten_seconds_of_noise(kind):
    track = corpus.noise_only(kind, 10.0, 20)
    assert run(make_speech_detector(), track.samples) == []


def test_level_detector_with_10ms_packets_counts_10ms_each():
    # A browser asked for a=ptime:10: each level stands for 10 ms, so the 60 ms
    # onset is confirmed by the sixth loud packet, not the fourth (20 ms each).
    detector = LevelDetector(gate=None, frame_ms=10)
    events = [e for index in range(200) if (e := detector.update(True, -60 if index < 100 else -30, index * 10)) is not None]
    assert events == [SpeechStarted(1000)]
    assert detector.gate.frame_ms == 10


def test_speech_tracker_reads_the_packet_duration_from_the_first_packet():
    import opuslib

    from botcall.relay.speech import SpeechTracker

    encoder = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
    loud = (np.sin(2 * np.pi * 300 * np.arange(480) / 48000) * 12000).astype("<i2").tobytes()
    tracker = SpeechTracker(level_id=None, budget=None)  # packet sizes decide
    started = None
    for index in range(20):
        packet = bytes(12) + encoder.encode(loud, 480)
        event = tracker.on_packet(packet, 12, index * 10)
        if isinstance(event, SpeechStarted) and started is None:
            started = index
    assert tracker.packet_ms == 10 and tracker.last_ms == 19 * 10 + 10
    assert started == 5  # 60 ms of 10 ms packets (with 20 ms assumed: the fourth, 20 ms early)
