"""bench/vad_quality.py at a tiny size: its scoring is right and its table complete."""

import numpy as np
import pytest

from bench import vad_quality as bench
from botcall.audio.vad import SpeechStarted, SpeechStopped


def test_predicted_frames_and_f1():
    events = [(160, SpeechStarted(100)), (500, SpeechStopped(300, 200))]
    predicted = bench.predicted_frames(events, 20)
    assert list(np.flatnonzero(predicted)) == list(range(5, 15))
    truth = np.zeros(20, bool)
    truth[5:20] = True
    assert bench.f1_score(truth, predicted) == pytest.approx(2 * 1.0 * (10 / 15) / (1.0 + 10 / 15))
    assert bench.f1_score(truth, np.zeros(20, bool)) == 0.0


def test_latencies_match_events_to_utterances():
    utterances = ((1000, 2000), (3000, 4000), (5000, 6000))
    events = [
        (1100, SpeechStarted(1000)),
        (2400, SpeechStopped(2000, 1000)),
        (3200, SpeechStarted(3020)),
        # The third phrase merges with the second: no start of its own.
        (6300, SpeechStopped(6000, 2980)),
    ]
    onsets, offsets, missed = bench.latencies(events, utterances)
    assert onsets == [100, 200]
    assert offsets == [400, 2300, 300]
    assert missed == 1


def test_a_tiny_run_prints_every_column():
    speech, noise = bench.build_corpus(phrases=2, noise_seconds=2.0, seed=0)
    assert [c.name for c in speech] == ["clean", "white20", "pink20", "babble20", "white10", "pink10", "babble10"]
    assert [c.name for c in noise] == ["silence", "white", "pink", "babble", "music"]
    results = {c.name: bench.evaluate(c, speech, noise) for c in (bench.CANDIDATES[0], bench.LEVEL_CANDIDATES[0])}
    for result in results.values():
        assert set(result.f1) == {c.name for c in speech}
        assert all(0.0 <= f1 <= 1.0 for f1 in result.f1.values())
        assert result.cpu_us > 0
    text = bench.table(results, utterances=12)
    assert text.count("\n") == 3 and "energy" in text and "rfc6464 level" in text
    assert bench.detail(results).count("|") > 20
