"""A 60 s text-to-speech burst from one bot costs another room's real-time call
nothing audible: the event loop's time budget holds (issue 12).

Room A: a WebSocket pcm16 bot sends 60 s of speech-like audio as fast as the
socket takes it (the server encodes it, ``ENCODE_BATCH`` frames per scheduler
pass, and reads the next message only when the last one is encoded), and a UDP
bot listens. Room B: a UDP bot talks at real time, a 20 ms Opus frame per tick
of its own clock, to a UDP bot that records when each frame arrives.

Room B runs in a process of its own (``tests/kit/realtime_call.py``). The
server runs in the test's process and its event loop; a speaker in that loop
would be held up by every stall exactly as the relay is, and the stall would
vanish from what we measure. As a separate process it stands for a caller on
another machine, and both its send times and its arrival times are read from
one clock (CLOCK_MONOTONIC) that the test shares.

The call runs for a baseline window (``BASELINE_S``) before the burst, then
through it. A control call (the same ``realtime_call`` process) runs at the
same time on a second, idle server (plain ``botcall serve`` in a process of its
own): it feels whatever else the machine does during the burst (a CPU hog
per core, other test suites) but not the burst. A load that changes between
the baseline window and the burst window is then no reason to fail. What is
asserted, over every packet sent while the server accepts and encodes the burst:

* the relay-added delay, ``arrival - send`` per packet, spreads (max - min) by
  at most 20 ms more than the larger of the baseline window's spread and the
  control call's spread in the same window (times 4: see BUSY_PROCESS_FACTOR). On a busy machine the speaker
  itself may be descheduled and send late, or two frames at once; that moves
  its send times and its arrivals alike and is not the relay's doing, so the
  send-to-arrival delay is what we hold the relay to. A machine that other work
  keeps busy delays any process's wakeups by itself, burst or not: the baseline
  and the control measure that, and the burst may add 20 ms to it;
* every gap between two arrivals is at most the gap between the two sends plus
  the same margin beyond the baseline's (or 4 times the control's) worst;
* the margin is 20 ms for 99 % of the packets, and 100 ms for the single worst
  one (see the comment at the assertions: a CPU hog per core makes the kernel
  itself hold a wakeup that long now and then).
* no packet was lost, in either call.

A relay held up behind the encoding (the bug this test is for: 60 s encoded at
full speed in the event loop) delays the call by hundreds of milliseconds
while the control call, on another server, is not delayed: it still fails.

On an idle machine the baseline spread is a few milliseconds, so this is the
issue's "no audio gap above 20 ms"; ``bench``-style figures are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from botcall_sdk import connect
from botcall.demo.signals import speech_like
from tests.e2e.test_playout import Channel, Ear, join_websocket, open_room, send_pcm
from tests.kit.cluster import serving_one_process
from tests.kit.server import running_server

pytestmark = pytest.mark.e2e

RATE = 48000
BURST_S = 60.0
ADDED_DELAY_SPREAD = 0.020
# On a machine whose cores are all taken the kernel wakes a process that has
# been working later than one that has been asleep (the control server). The
# burst's server works: it paces the encoding, and it shares this test's process
# and event loop with the TTS sender and room A's listener. Under stress-ng
# --cpu 2 beside other test suites its p99 reached 5x the control's (66 ms
# against 13 ms; 88 against 30), with or without the encoding's pacing
# (ENCODE_AHEAD_LIMIT): on a shared 2-core machine this test cannot tell those
# two apart, bench can. What it does catch is an event loop held behind the
# burst: 150 ms every 50 messages failed it in 4 runs of 4, the control's p99
# at 17 to 99 ms (153 ms against a bound of 100; 169/150; 447/200; 509/416).
BUSY_PROCESS_FACTOR = 3.0
SCHEDULER_OUTLIER = 0.100
BASELINE_S = 4.0  # a measurement window, not a wait for something to happen
WAIT = 60.0  # a safety net against a hung server or child, not a speed requirement
REPO = Path(__file__).resolve().parents[2]


class RealtimeCall:
    """Room B's call in its own process (``tests.kit.realtime_call``)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def line(self) -> str:
        assert self.process.stdout is not None
        with trio.fail_after(WAIT):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(1 << 16)
                assert chunk, "the real-time call ended early"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def stop(self) -> dict[str, dict[int, float]]:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"stop\n")
        result = json.loads(await self.line())
        return {name: {int(seq): t for seq, t in times.items()} for name, times in result.items()}


def realtime_call_command(url: str, room_id: str, speaker: str, listener: str) -> list[str]:
    return [sys.executable, "-m", "tests.kit.realtime_call", url, room_id, speaker, listener]


async def test_a_tts_burst_in_one_room_adds_no_gap_to_a_call_in_another(tmp_path):
    burst = speech_like(6.0, seed=7) * int(BURST_S / 6)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    control_data = tmp_path / "control"
    control_data.mkdir()
    async with running_server(tmp_path) as srv, serving_one_process(control_data) as control_server:
        room_a, room_b = await open_room(srv), await open_room(srv)
        created = await control_server.create_room(control_server.token(agent="creator#1"))
        assert created.status == 201, created.body
        room_c = created.json()["room_id"]
        async with trio.open_nursery() as nursery:
            process = await nursery.start(partial(
                trio.run_process,
                realtime_call_command(srv.url, room_b, srv.token(agent="caller#1"), srv.token(agent="callee#2")),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=env,
            ))
            control_process = await nursery.start(partial(
                trio.run_process,
                realtime_call_command(
                    control_server.url, room_c, control_server.token(agent="caller#5"), control_server.token(agent="callee#6")
                ),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=env,
            ))
            call, control_call = RealtimeCall(process), RealtimeCall(control_process)
            assert await call.line() == "ready"
            assert await control_call.line() == "ready"

            async with connect(srv.url, room_a, srv.token(agent="ear#3")) as listener:
                ear = Ear(listener)
                session = await join_websocket(srv, room_a, "tts#4", encoding="pcm16", sample_rate=RATE)
                ear.ssrc = session["media"]["ssrc"]
                async with open_websocket_url(session["websocket_url"]) as ws, trio.open_nursery() as reader:
                    channel = Channel(ws)
                    reader.start_soon(channel.read)
                    await channel.until(lambda: channel.of_type("welcome"))
                    baseline_start = time.monotonic()
                    await trio.sleep(BASELINE_S)
                    burst_start = time.monotonic()
                    await send_pcm(ws, burst)
                    # The server reads a message only once the one before is encoded:
                    # when the pong is back, all 60 s are encoded and queued.
                    await channel.ping("burst-accepted")
                    burst_end = time.monotonic()
                    playout = srv.state.media.relay.peer(session["session_id"]).playout
                    assert playout.queued_ms == BURST_S * 1000
                    assert not [e for _, e in channel.of_type("error")]
                    await ear.until(lambda: len(ear.packets) >= 25)  # room A is heard too
                    result = await call.stop()
                    control_result = await control_call.stop()
                    reader.cancel_scope.cancel()

    def covered(result: dict[str, dict[int, float]]) -> list[tuple[float, int]]:
        sent, arrived = result["sent"], result["arrived"]
        everything = sorted((t, seq) for seq, t in sent.items() if t <= burst_end)
        assert everything[0][0] < baseline_start and everything[-1][0] > burst_end - 0.1, "the call did not cover the burst"
        missing = [seq for _, seq in everything if seq not in arrived]
        assert not missing, f"{len(missing)} packets of the call were lost"
        return everything

    def figures(result: dict[str, dict[int, float]], start: float, end: float) -> tuple[float, float, float, int]:
        arrived = result["arrived"]
        window = [(t, seq) for t, seq in covered(result) if start <= t <= end]
        delays = sorted(arrived[seq] - t for t, seq in window)
        worst_gap = max((arrived[b] - arrived[a]) - (tb - ta) for (ta, a), (tb, b) in zip(window, window[1:]))
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        return delays[-1] - delays[0], p99 - delays[0], worst_gap, len(window)

    base_spread, _, base_gap, base_count = figures(result, baseline_start, burst_start)
    spread, spread_p99, worst_gap, count = figures(result, burst_start, burst_end)
    control_spread, control_p99, control_gap, control_count = figures(control_result, burst_start, burst_end)
    print(
        f"baseline: {base_count} packets, relay-added delay spread {base_spread * 1000:.2f} ms, worst gap "
        f"beyond the sender's {base_gap * 1000:.2f} ms; burst of {BURST_S:g} s accepted in "
        f"{burst_end - burst_start:.2f} s: {count} packets, spread {spread * 1000:.2f} ms "
        f"(to the 99th percentile {spread_p99 * 1000:.2f} ms), worst gap beyond the sender's {worst_gap * 1000:.2f} ms; "
        f"the control call meanwhile: {control_count} packets, spread {control_spread * 1000:.2f} ms "
        f"(p99 {control_p99 * 1000:.2f} ms), worst gap {control_gap * 1000:.2f} ms"
    )
    # What the machine alone does to a call, burst or not: the same call before
    # the burst (the same server, earlier), or the control call on the idle
    # server during it (the same moments, another process: one the kernel wakes
    # sooner, hence BUSY_PROCESS_FACTOR). The burst may add ADDED_DELAY_SPREAD
    # to the larger for 99 % of the packets. With
    # a CPU hog on every core (stress-ng --cpu 2), the operating system alone now
    # and then holds one wakeup of the server for up to ~90 ms (seen once in five
    # runs, one packet); so the single worst packet gets the coarser
    # SCHEDULER_OUTLIER bound. Idle, every packet is within a few ms.
    busy = 1 + BUSY_PROCESS_FACTOR
    assert spread_p99 <= max(base_spread, control_p99 * busy) + ADDED_DELAY_SPREAD
    assert spread <= max(base_spread, control_spread * busy) + SCHEDULER_OUTLIER
    assert worst_gap <= max(base_gap, control_gap * busy, 0.0) + SCHEDULER_OUTLIER
