"""A real-time call between two UDP bots, run in its own process: the caller whose
audio must not suffer from another room's load.

    python -m tests.kit.realtime_call <server url> <room id> <speaker token> <listener token>

The speaker sends a 20 ms Opus frame on every tick of its own clock
(``trio.sleep_until``), the listener records when each one arrives. Both are
timed with ``time.monotonic`` (CLOCK_MONOTONIC, one clock for every process on
the machine, so the parent can place its own events on the same time line).

Protocol on the pipes: once the listener has heard ``READY_AFTER`` packets the
process prints ``ready``; it keeps talking until a line arrives on stdin, then
prints one JSON line ``{"sent": {seq: t}, "arrived": {seq: t}}`` and exits.

A process of its own because the server under test runs in the test's process:
a speaker in the same event loop would be held up by every stall of that loop
exactly as the relay is, and the stall would vanish from (arrival - send). Real
callers are on other machines; a process is the nearest thing.
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio

from botcall.audio.opus import OpusEncoder
from botcall_sdk import connect
from botcall.demo.signals import tone
from botcall.wire.rtp import parse_rtp_untrusted

FRAME = 0.020
FRAME_BYTES = 1920
READY_AFTER = 25  # half a second of the call heard: latched, playout settled
LAST_PACKETS_TIMEOUT = 2.0  # how long packets still in flight at the stop may take
SETUP_TIMEOUT = 20.0  # a safety net against a hung server, not a speed requirement


async def run(url: str, room_id: str, speaker_token: str, listener_token: str) -> None:
    encoder = OpusEncoder()
    pcm = tone(440, 1.0)
    payloads = [encoder.encode(pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]) for i in range(50)]
    sent: dict[int, float] = {}
    arrived: dict[int, float] = {}
    ready = trio.Event()

    class Heard:
        """Wakes the waiter for the last packets on every arrival."""

        event = trio.Event()

        def set(self) -> None:
            self.event.set()
            self.event = trio.Event()

        async def wait(self) -> None:
            await self.event.wait()

    heard = Heard()
    # connect() bounds its own join, welcome and latching with timeouts.
    async with connect(url, room_id, speaker_token) as speaker, connect(url, room_id, listener_token) as listener:
        original = listener._on_media

        def on_media(data: bytes, now: float) -> None:
            at = time.monotonic()
            packet = parse_rtp_untrusted(data)
            if packet.ssrc == speaker.ssrc:
                arrived.setdefault(packet.sequence_number, at)
                if len(arrived) >= READY_AFTER:
                    ready.set()
                heard.set()
            original(data, now)

        listener._on_media = on_media  # type: ignore[method-assign]

        async def talk() -> None:
            tick = trio.current_time()
            index = 0
            while True:
                tick += FRAME
                await trio.sleep_until(tick)
                # Stamped before the send: sendto is a checkpoint, and the
                # listener may read the packet before this task runs again.
                sent[speaker._seq] = time.monotonic()
                await speaker.send_opus(payloads[index % len(payloads)])
                index += 1

        async def announce() -> None:
            with trio.fail_after(SETUP_TIMEOUT):
                await ready.wait()
            print("ready", flush=True)

        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with stdin, trio.open_nursery() as nursery:
            nursery.start_soon(talk)
            nursery.start_soon(announce)
            await stdin.receive_some(64)  # the parent says stop (or closes the pipe)
            nursery.cancel_scope.cancel()
        # Stopped talking: wait for what is still on its way (a lost packet stays lost).
        with trio.move_on_after(LAST_PACKETS_TIMEOUT):
            while len(arrived) < len(sent):
                await heard.wait()
    print(json.dumps({"sent": sent, "arrived": arrived}), flush=True)


if __name__ == "__main__":
    trio.run(run, *sys.argv[1:5])
