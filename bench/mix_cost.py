"""CPU cost of the mixed stream (``"receive": "mixed"``) per 20 ms tick, per listener.

Usage (from the repository root)::

    python -m bench.mix_cost [--speakers 1,2,3,4,6,8] [--ticks 500] [--repeat 3]

One listener, N speakers talking at once (speech-like audio, each its own
seed), 20 ms Opus packets arriving on time. Each tick is what the relay does
for that listener every 20 ms: push the N packets into their jitter buffers,
then pop the tick. Measured on one core, the best of ``--repeat`` runs, in
microseconds per tick:

* ``separate pcm16``: today's per-speaker pcm16 stream at 16 kHz (N decodes,
  no sum): the baseline a mixed listener replaces;
* ``mixed pcm16 16k``: ``Mixer`` at 16 kHz: N decodes + int32 sum + soft knee;
* ``mixed pcm16 48k``: the same at 48 kHz;
* ``mixed Opus``: ``OpusMix``: N decodes at 48 kHz + sum + one Opus encode
  (complexity 10, FEC) + RTP framing (UDP and WebSocket-Opus listeners);
* ``sum+limit``: the sum and soft knee alone at 48 kHz (``soft_limit``).

A 20 ms tick on one core is 20 000 us: the share of a core one mixed listener
costs is the number / 200 (in %).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np

from botcall.audio.opus import FRAME_SAMPLES, OpusEncoder
from botcall.audio.playout import Playout
from botcall.demo.signals import speech_like
from botcall.relay.mixer import Mixer, OpusMix, soft_limit
from botcall.wire.rtp import RTP_HEADER, parse_rtp_untrusted

FRAME = 0.02
WARMUP = 20  # ticks before timing: the jitter buffers fill, the decoders settle


def speaker_packets(speakers: int, ticks: int) -> list[list[bytes]]:
    """``ticks`` 20 ms Opus RTP packets for each of ``speakers`` (speech-like audio)."""
    seconds = ticks * FRAME
    out = []
    for n in range(speakers):
        encoder = OpusEncoder()
        pcm = speech_like(seconds + 0.1, seed=n)
        out.append(
            [
                RTP_HEADER.pack(0x80, 111, k, k * FRAME_SAMPLES, 1000 + n) + encoder.encode(pcm[k * 1920 : (k + 1) * 1920])
                for k in range(ticks)
            ]
        )
    return out


def time_ticks(packets: list[list[bytes]], push: Callable[[bytes, float], None], pop: Callable[[float], object]) -> float:
    """Microseconds per tick (push every speaker's packet, pop once), after the warm-up."""
    ticks = len(packets[0])
    start = 0.0
    for k in range(ticks):
        if k == WARMUP:
            start = time.perf_counter()
        now = k * FRAME
        for stream in packets:
            push(stream[k], now)
        pop(now)
    return (time.perf_counter() - start) / (ticks - WARMUP) * 1e6


def separate(packets: list[list[bytes]]) -> float:
    playout = Playout(sample_rate=16000)
    return time_ticks(packets, lambda data, now: playout.push(parse_rtp_untrusted(data), now), playout.pop)


def mixed_pcm(rate: int) -> Callable[[list[list[bytes]]], float]:
    def run(packets: list[list[bytes]]) -> float:
        mixer = Mixer(sample_rate=rate)
        return time_ticks(packets, mixer.push, mixer.pop)

    return run


def mixed_opus(packets: list[list[bytes]]) -> float:
    mix = OpusMix(0xABCDEF01)
    return time_ticks(packets, mix.push, mix.pop)


def sum_and_limit(speakers: int, ticks: int) -> float:
    rng = np.random.default_rng(0)
    frames = [rng.integers(-20000, 20000, 960, dtype=np.int16).astype("<i2").tobytes() for _ in range(speakers)]
    start = time.perf_counter()
    for _ in range(ticks):
        if speakers == 1:
            continue  # one speaker passes through untouched
        total = np.frombuffer(frames[0], "<i2").astype(np.int32)
        for frame in frames[1:]:
            total += np.frombuffer(frame, "<i2")
        soft_limit(total)
    return (time.perf_counter() - start) / ticks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speakers", default="1,2,3,4,6,8")
    parser.add_argument("--ticks", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    counts = [int(n) for n in args.speakers.split(",")]
    print(f"python {platform.python_version()} on {platform.machine()}, {args.ticks} ticks, best of {args.repeat}")
    print("us per 20 ms tick, one listener (20 000 us = one core)")
    header = ("speakers", "separate pcm16", "mixed pcm16 16k", "mixed pcm16 48k", "mixed Opus", "sum+limit")
    print(" | ".join(f"{h:>15}" for h in header))
    cases: list[Callable[[list[list[bytes]]], float]] = [separate, mixed_pcm(16000), mixed_pcm(48000), mixed_opus]
    for speakers in counts:
        packets = speaker_packets(speakers, args.ticks + WARMUP)
        row = [min(case(packets) for _ in range(args.repeat)) for case in cases]
        row.append(min(sum_and_limit(speakers, args.ticks) for _ in range(args.repeat)))
        print(" | ".join([f"{speakers:>15}", *(f"{value:>15.1f}" for value in row)]))


if __name__ == "__main__":
    main()
