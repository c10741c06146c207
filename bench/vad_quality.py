"""Speech detection quality (issue 12): candidates side by side on one labelled corpus.

Usage (from the repository root)::

    python -m bench.vad_quality [--phrases 10] [--noise-seconds 30] [--seed 0]

The corpus (``tests/kit/speech_corpus.py``, built on the fly with espeak-ng):

* one speech track, ``--phrases`` phrases in six voices with 0.6-2.0 s
  pauses, at -26 dBFS active level (about 30 s), heard clean and with white,
  pink and babble noise at 20 and 10 dB SNR (seven conditions);
* noise alone, at the level it has at 20 dB SNR: digital silence, white, pink,
  babble (``--noise-seconds`` each), and music-like tones at 10 dB below speech.

Every candidate is a frame detector behind ``botcall.audio.vad.SpeechGate``,
fed 20 ms frames with their ``stream_ms``; what is scored is what a consumer
gets, the events:

* ``F1``: frame-level, speech = between a ``SpeechStarted.stream_ms`` and its
  ``SpeechStopped.stream_ms``, truth = the utterance spans; averaged over the
  noises of a SNR (white, pink, babble);
* ``onset`` / ``offset``: when the event is *available* (end of the frame
  whose feed returned it) minus the true start / end of the utterance, p50 and
  p95 over every utterance of every condition with noise at 20 dB or less
  (``missed`` counts utterances with no start event of their own);
* ``FS/min``: ``SpeechStarted`` events per minute of noise alone at the 20 dB
  level (white, pink, babble together), and separately for music;
* ``us/frame``: process CPU time per frame for detector + gate over the whole
  corpus (the machine has other work on it; expect +-20 %); ``silence``: the
  same over the digital silence alone (what a muted or idle stream costs).

Rows: ``energy`` (adaptive-floor baseline), ``webrtcvad-2``/``-3``, ``silero``
(every frame), ``silero-gated`` (silero behind an energy pre-gate), and
``botcall``, which is exactly ``make_speech_detector()``, the default. The
RFC 6464 path is simulated apart: the level Chromium sends (RMS dBov of each
packet) into ``LevelDetector``; its V flag from webrtcvad-2 in the ``+V`` row.
Chromium applies noise suppression before measuring, so raw noise here is
harsher than a browser's.

The benchmark prints; it never asserts.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench.harness.machine import machine_description
from botcall.audio import vad
from tests.kit import speech_corpus as corpus

FRAME_MS = corpus.FRAME_MS
NOISES_20 = ("white", "pink", "babble")


@dataclass
class Condition:
    name: str
    snr_db: float | None
    track: corpus.Track
    frames: list[bytes]


@dataclass
class Result:
    f1: dict[str, float] = field(default_factory=dict)
    onsets: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    missed: int = 0
    false_starts: dict[str, float] = field(default_factory=dict)
    cpu_us: float = 0.0
    silence_cpu_us: float = 0.0


# A runner turns a stream of frames into events with their availability times.
Feeder = Callable[[bytes, int], "vad.SpeechEvent | None"]


@dataclass(frozen=True)
class Candidate:
    name: str
    make: Callable[[], Feeder]


def frame_candidate(kind: str, name: str | None = None) -> Candidate:
    def make() -> Feeder:
        return vad.make_speech_detector(kind).update

    return Candidate(name or kind, make)


def level_candidate(name: str, use_voice_flag: bool) -> Candidate:
    def make() -> Feeder:
        detector = vad.LevelDetector(use_voice_flag=use_voice_flag)
        voice_vad = vad.WebRtcVadDetector(2) if use_voice_flag else None

        def feed(pcm: bytes, stream_ms: int) -> vad.SpeechEvent | None:
            level = vad.parse_audio_level_untrusted(
                vad.build_audio_level(
                    voice_vad is not None and voice_vad.probability(pcm) > 0.5, vad.audio_level_dbov(pcm)
                )
            )
            return detector.update(level.voice, level.level_dbov, stream_ms)

        return feed

    return Candidate(name, make)


def run_stream(feed: Feeder, frames: list[bytes]) -> tuple[list[tuple[int, vad.SpeechEvent]], float]:
    """Feed every frame; return (available_ms, event) pairs and the CPU seconds spent."""
    events: list[tuple[int, vad.SpeechEvent]] = []
    started = time.process_time()
    for index, pcm in enumerate(frames):
        event = feed(pcm, index * FRAME_MS)
        if event is not None:
            events.append(((index + 1) * FRAME_MS, event))
    return events, time.process_time() - started


def predicted_frames(events: list[tuple[int, vad.SpeechEvent]], count: int) -> np.ndarray:
    speech = np.zeros(count, bool)
    start: int | None = None
    for _, event in events:
        if isinstance(event, vad.SpeechStarted):
            start = event.stream_ms
        elif start is not None:
            speech[start // FRAME_MS : event.stream_ms // FRAME_MS] = True
            start = None
    if start is not None:
        speech[start // FRAME_MS :] = True
    return speech


def f1_score(truth: np.ndarray, predicted: np.ndarray) -> float:
    true_positive = int(np.sum(truth & predicted))
    if true_positive == 0:
        return 0.0
    precision = true_positive / int(np.sum(predicted))
    recall = true_positive / int(np.sum(truth))
    return 2 * precision * recall / (precision + recall)


def latencies(
    events: list[tuple[int, vad.SpeechEvent]], utterances: tuple[tuple[int, int], ...]
) -> tuple[list[int], list[int], int]:
    """Onset and offset latencies of each utterance, and how many had no start of their own.

    An utterance's start event is the first ``SpeechStarted`` made available
    after the previous utterance ended and before this one ends (a start during
    the pause before it counts, with a negative latency: it fired early). Its
    stop is the first ``SpeechStopped`` available after the utterance ended.
    """
    onsets, offsets, missed = [], [], 0
    previous_end = -(10**9)
    for start, end in utterances:
        starts = [t for t, e in events if isinstance(e, vad.SpeechStarted) and previous_end < t <= end]
        stops = [t for t, e in events if isinstance(e, vad.SpeechStopped) and t > end]
        if starts:
            onsets.append(starts[0] - start)
        else:
            missed += 1
        if stops:
            offsets.append(stops[0] - end)
        previous_end = end
    return onsets, offsets, missed


def build_corpus(phrases: int, noise_seconds: float, seed: int) -> tuple[list[Condition], list[Condition]]:
    speech = corpus.speech_track(seed=seed, phrases=phrases)
    speech_conditions = [Condition("clean", None, speech, corpus.to_frames(speech.samples))]
    for snr in (20, 10):
        for offset, noise in enumerate(NOISES_20):
            track = corpus.with_noise(speech, noise, snr, seed=seed + 10 * snr + offset)
            speech_conditions.append(Condition(f"{noise}{snr}", snr, track, corpus.to_frames(track.samples)))
    noise_conditions = []
    for offset, noise in enumerate(("silence", *NOISES_20)):
        track = corpus.noise_only(noise, noise_seconds, 20, seed=seed + 100 + offset)
        noise_conditions.append(Condition(noise, 20, track, corpus.to_frames(track.samples)))
    track = corpus.noise_only("music", noise_seconds, 10, seed=seed + 200)
    noise_conditions.append(Condition("music", 10, track, corpus.to_frames(track.samples)))
    return speech_conditions, noise_conditions


def evaluate(candidate: Candidate, speech: list[Condition], noise: list[Condition]) -> Result:
    result = Result()
    cpu = 0.0
    frames = 0
    for condition in speech:
        events, seconds = run_stream(candidate.make(), condition.frames)
        cpu += seconds
        frames += len(condition.frames)
        result.f1[condition.name] = f1_score(condition.track.labels, predicted_frames(events, len(condition.frames)))
        if condition.snr_db is not None:
            onsets, offsets, missed = latencies(events, condition.track.utterances)
            result.onsets += onsets
            result.offsets += offsets
            result.missed += missed
    for condition in noise:
        events, seconds = run_stream(candidate.make(), condition.frames)
        cpu += seconds
        frames += len(condition.frames)
        starts = sum(isinstance(event, vad.SpeechStarted) for _, event in events)
        result.false_starts[condition.name] = starts / (condition.track.seconds / 60)
        if condition.name == "silence":
            result.silence_cpu_us = seconds / len(condition.frames) * 1e6
    result.cpu_us = cpu / frames * 1e6
    return result


def percentile(values: list[int], q: float) -> str:
    return f"{np.percentile(values, q):.0f}" if values else "-"


def mean(values: list[float]) -> float:
    return float(np.mean(values))


def table(results: dict[str, Result], utterances: int) -> str:
    header = (
        "| detector | F1 clean | F1 20 dB | F1 10 dB | onset p50/p95 ms | offset p50/p95 ms | missed"
        " | FS/min 20 dB noise | FS/min music | us/frame | us/frame silence |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in results.items():
        f1_20 = mean([r.f1[f"{n}20"] for n in NOISES_20])
        f1_10 = mean([r.f1[f"{n}10"] for n in NOISES_20])
        fs_20 = mean([r.false_starts[n] for n in NOISES_20])
        lines.append(
            f"| {name} | {r.f1['clean']:.3f} | {f1_20:.3f} | {f1_10:.3f}"
            f" | {percentile(r.onsets, 50)}/{percentile(r.onsets, 95)}"
            f" | {percentile(r.offsets, 50)}/{percentile(r.offsets, 95)}"
            f" | {r.missed}/{utterances} | {fs_20:.1f} | {r.false_starts['music']:.1f}"
            f" | {r.cpu_us:.0f} | {r.silence_cpu_us:.0f} |"
        )
    return "\n".join(lines)


def detail(results: dict[str, Result]) -> str:
    names = list(next(iter(results.values())).f1)
    noises = list(next(iter(results.values())).false_starts)
    header = "| detector | " + " | ".join(f"F1 {n}" for n in names) + " | " + " | ".join(f"FS/min {n}" for n in noises) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in results.items():
        cells = [f"{r.f1[n]:.3f}" for n in names] + [f"{r.false_starts[n]:.1f}" for n in noises]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CANDIDATES = (
    frame_candidate("energy"),
    frame_candidate("webrtcvad-2"),
    frame_candidate("webrtcvad-3"),
    frame_candidate("silero"),
    frame_candidate("silero-gated"),
    frame_candidate(vad.DEFAULT_DETECTOR, f"botcall ({vad.DEFAULT_DETECTOR})"),
)
LEVEL_CANDIDATES = (
    level_candidate("rfc6464 level", use_voice_flag=False),
    level_candidate("rfc6464 level+V", use_voice_flag=True),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phrases", type=int, default=10, help="phrases in the speech track (about 3 s each)")
    parser.add_argument("--noise-seconds", type=float, default=30.0, help="seconds of each noise alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated candidate names to run (default all)")
    args = parser.parse_args(argv)
    print(machine_description())
    speech, noise = build_corpus(args.phrases, args.noise_seconds, args.seed)
    total = sum(c.track.seconds for c in speech + noise)
    utterances = len(speech[0].track.utterances) * sum(c.snr_db is not None for c in speech)
    print(
        f"corpus: {len(speech)} speech conditions x {speech[0].track.seconds:.1f} s"
        f" ({len(speech[0].track.utterances)} utterances), {len(noise)} noises alone x {args.noise_seconds:.0f} s;"
        f" {total:.0f} s of audio"
    )
    only = {name for name in args.only.split(",") if name}
    results: dict[str, Result] = {}
    for candidate in (*CANDIDATES, *LEVEL_CANDIDATES):
        if only and candidate.name not in only:
            continue
        results[candidate.name] = evaluate(candidate, speech, noise)
    print()
    print(table(results, utterances))
    print()
    print(detail(results))


if __name__ == "__main__":
    main()
