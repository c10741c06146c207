"""Barge-in in real headless Chromium, repeated: how fast the bot stops, how right ``heard_ms`` is.

    python -m bench.barge_in [--repeats 10] [--senders burst,stream,stream-unmarked]

The scenario of ``tests.kit.barge_in``: a bot sends a 10 s reply in a burst
with a mark every second; a Chromium human (the PWA from the invite link) whose
fake microphone loops "4 s of silence, a phrase, 4.5 s of silence" talks over
it; the relay interrupts the bot; the bot sends its next reply when the human
stops. One call, ``--repeats`` barge-ins, per ``--senders`` entry: ``burst``
(as above), ``stream`` (the reply sent as the SDK's ``say`` sends streamed
text-to-speech: 0.5 s ahead, then at real time, its first frame marked, stopping when
``interrupted`` arrives) and ``stream-unmarked`` (the same without the marker
bit, so the tail sent before the bot read ``interrupted`` plays). Prints, per
barge-in and as p50/p95:

* **latency**: the human's speech onset to the bot's last sample at the
  human's ear, both read off the page's own recording (microphone and remote
  audio on the AudioContext's clock);
* **heard_ms error**: ``heard_ms`` of ``interrupted`` minus the position in the
  reply of the last sample the page played (found by content);
* **mark error**: a mark event's arrival at the bot minus the moment the marked
  position reached the page's output (negative: the event came first). The
  page's clock is related to the AudioContext's through message arrival times,
  good to a few tens of ms in headless Chromium;
* **relay CPU per call**: the server runs alone in its own thread with its own
  Trio loop (the bot and the browser driver run elsewhere; Chromium is another
  process), so ``time.thread_time()`` read inside that thread over the call is
  the relay's own work for it — UDP, SRTP, speech detection on both streams
  (the human's by RFC 6464 levels, the bot's by decoding + Silero), the bot's
  playout, signaling — and nothing else's.

Prints; never asserts.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from tests.kit.barge_in import Run, mic_track, run_barge_ins
from tests.kit.server import LiveServer, running_server


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@contextmanager
def server_thread(data_dir: Path) -> Iterator[tuple[LiveServer, Callable[[], float]]]:
    """The real server in a thread of its own; yields it and that thread's CPU clock."""
    handoff: queue.Queue[tuple[LiveServer, trio.lowlevel.TrioToken, trio.Event]] = queue.Queue()

    async def main() -> None:
        async with running_server(data_dir) as srv:
            stop = trio.Event()
            handoff.put((srv, trio.lowlevel.current_trio_token(), stop))
            await stop.wait()

    thread = threading.Thread(target=trio.run, args=(main,), name="relay", daemon=True)
    thread.start()
    srv, token, stop = handoff.get(timeout=30)

    def cpu() -> float:
        return trio.from_thread.run_sync(time.thread_time, trio_token=token)

    try:
        yield srv, cpu
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=30)


def describe(name: str, values: list[float]) -> str:
    return f"{name:<34} p50 {percentile(values, 0.5):7.1f}  p95 {percentile(values, 0.95):7.1f}  (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--senders", default="burst",
        help="comma-separated, one call each: burst (the reply sent at once), stream (0.5 s ahead then at real time, "
        "as the SDK's say sends streamed text-to-speech, marking its first frame), stream-unmarked (the same without the marker bit)",
    )
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}  {platform.node()}  {platform.processor() or platform.machine()}")
    for sender in args.senders.split(","):
        with tempfile.TemporaryDirectory() as data_dir, server_thread(Path(data_dir)) as (srv, cpu):
            mic = Path(data_dir) / "mic.wav"
            mic_track(mic)
            run = trio.run(lambda: run_barge_ins(srv, mic, repeats=args.repeats, cpu_clock=cpu, sender=sender))
            tail = srv.state.media.relay.counters["interrupted_tail"]
        report(sender, run, tail)


def report(sender: str, run: Run, tail: int) -> None:
    print(f"\nsender: {sender}; the bot's packets dropped as an interrupted tail: {tail}; load {os.getloadavg()[0]:.1f}")
    print(f"{'#':>3} {'latency ms':>10} {'heard_ms':>9} {'truth ms':>9} {'error':>7} {'played_ms':>9}  marks (event - ear, ms)")
    for number, b in enumerate(run.barge_ins, start=1):
        marks = " ".join(f"{m:+.0f}" for m in b.mark_errors_ms)
        print(f"{number:>3} {b.latency_ms:10.0f} {b.heard_ms:9d} {b.heard_truth_ms:9.0f} {b.heard_error_ms:+7.0f} {b.played_ms:9d}  {marks}")
    print(describe("barge-in latency (onset -> ear) ms", [b.latency_ms for b in run.barge_ins]))
    print(describe("heard_ms error ms", [b.heard_error_ms for b in run.barge_ins]))
    print(describe("|heard_ms error| ms", [abs(b.heard_error_ms) for b in run.barge_ins]))
    print(describe("mark event - marked frame at ear ms", [m for b in run.barge_ins for m in b.mark_errors_ms]))
    interrupted_by_human = sum(b.interrupted["by"] == run.human_id for b in run.barge_ins)
    print(f"interrupted by the human: {interrupted_by_human}/{len(run.barge_ins)}; page errors: {run.page_errors}")
    if run.relay_cpu_s is not None and run.cpu_window_s > 0:
        share = run.relay_cpu_s / run.cpu_window_s
        print(f"relay CPU over the call: {run.relay_cpu_s:.3f} s in {run.cpu_window_s:.1f} s = {100 * share:.2f} % of a core"
              f" ({1000 * share:.1f} ms per second of call)")

if __name__ == "__main__":
    main()
