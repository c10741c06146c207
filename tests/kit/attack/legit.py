"""The concurrent call beside an attack: ``python -m tests.kit.attack.legit`` (a child process).

Started by :class:`tests.kit.attack.lab.ConcurrentCall`. It creates a room from
``SPEAKER``'s address and joins two SDK bots over UDP: the speaker (from
``SPEAKER``) says a continuous tone in paced 20 ms frames, the listener (from
``LISTENER``) timestamps every RTP packet it receives. Beside them a probe asks
``/healthz`` from ``PROBE`` every 0.2 s (deadline 1 s), and a sampler reads the
server's resident memory every 0.1 s. Everything is appended to ``--out`` as
JSON lines ``{"k": kind, "t": time.monotonic(), ...}``:

====  =================================================================
``a``  an RTP packet reached the listener (``q`` sequence number, ``n`` bytes)
``h``  a probe: ``status`` (0 when none), ``d`` seconds, ``error``
``r``  the server's resident memory ``b`` in bytes (None once it is gone)
``ready``  the listener hears the speaker and a probe passed
``event``, ``closed``, ``error``  what the bots were told, how they ended
====  =================================================================

It runs until SIGTERM or SIGINT. The test-kit shim here: the listener's
``Call._on_media`` is wrapped (``kit.record_arrivals``) to timestamp arrivals
before the SDK handles them.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

import trio

from tests.kit.system import HarnessError, read_proc_stat, set_priority
from botcall.demo.signals import tone
from botcall_sdk import Call, connect
from botcall_sdk import create_room
from tests.kit.attack.lab import CALL_NICE, HEALTHZ_DEADLINE, LISTENER, PROBE, PROBE_INTERVAL, RSS_SAMPLE_INTERVAL, SPEAKER, record_arrivals, source
from tests.kit.server import http_request
from tests.kit.speaking import keep_saying

READY_PACKETS = 10


class Recorder:
    """Appends records to the output file, one JSON object per line, flushed at once."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)

    def __call__(self, kind: str, **fields: Any) -> None:
        """Append one record; ``t`` defaults to now."""
        self._file.write(json.dumps({"k": kind, "t": time.monotonic(), **fields}) + "\n")


async def recorded(who: str, record: Recorder, part, *args: Any) -> None:
    """Run one part; if it fails (the server died, say), record why and let the others go on."""
    try:
        await part(*args)
    except Exception as exc:
        record("error", who=who, error=repr(exc)[:500])


async def listen(server: str, room_id: str, token: str, record: Recorder, heard: trio.Event) -> None:
    with source(LISTENER):
        async with connect(server, room_id, token) as call:
            count = 0

            def arrived(moment: float, seq: int, size: int) -> None:
                nonlocal count
                record("a", t=moment, q=seq, n=size)
                count += 1
                if count == READY_PACKETS:
                    heard.set()

            record_arrivals(call, arrived)
            await report_events("listener", call, record)


async def speak(server: str, room_id: str, token: str, record: Recorder) -> None:
    second_of_tone = tone(440.0, 1.0)
    with source(SPEAKER):
        async with connect(server, room_id, token) as call:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report_events, "speaker", call, record)
                await keep_saying(call, second_of_tone)


async def report_events(who: str, call: Call, record: Recorder) -> None:
    async for event in call.events():
        record("event", who=who, event=dict(event.raw))
    record("closed", who=who, reason=call.close_reason)


async def probe(server: str, record: Recorder, passed: trio.Event) -> None:
    with source(PROBE):
        while True:
            started = time.monotonic()
            try:
                response = await http_request(server + "/healthz", timeout=HEALTHZ_DEADLINE)
            except Exception as exc:  # any failure is a data point: timeout, refusal, garbage
                record("h", status=0, d=time.monotonic() - started, error=repr(exc)[:200])
            else:
                elapsed = time.monotonic() - started
                record("h", status=response.status, d=elapsed)
                if response.status == 200 and elapsed <= HEALTHZ_DEADLINE:
                    passed.set()
            await trio.sleep(max(0.0, started + PROBE_INTERVAL - time.monotonic()))


async def sample_memory(pid: int, record: Recorder) -> None:
    while True:
        try:
            record("r", b=read_proc_stat(pid).rss_bytes)
        except HarnessError:
            record("r", b=None)
            return
        await trio.sleep(RSS_SAMPLE_INTERVAL)


async def stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def main(args: argparse.Namespace) -> None:
    record = Recorder(args.out)
    tokens = json.loads(open(args.tokens).read())
    async with trio.open_nursery() as nursery:
        # Stop on a signal at any time, also while the call is still being set up.
        nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        nursery.start_soon(sample_memory, args.server_pid, record)
        passed = trio.Event()
        nursery.start_soon(probe, args.server, record, passed)
        with source(SPEAKER):
            room = await create_room(args.server, tokens["create"])
        heard = trio.Event()
        nursery.start_soon(recorded, "listener", record, listen, args.server, room.room_id, tokens["listener"], record, heard)
        nursery.start_soon(recorded, "speaker", record, speak, args.server, room.room_id, tokens["speaker"], record)
        await heard.wait()
        await passed.wait()
        record("ready", room_id=room.room_id)


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kit.attack.legit", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the server's base URL")
    parser.add_argument("--tokens", required=True, help="JSON file: create, speaker and listener attestations")
    parser.add_argument("--out", required=True, help="where the records go (JSON lines)")
    parser.add_argument("--server-pid", type=int, required=True, help="whose memory to sample")
    args = parser.parse_args()
    set_priority(CALL_NICE)
    try:
        trio.run(main, args)
    except Exception as exc:
        Recorder(args.out)("error", error=repr(exc)[:500])
        raise
    return 0


if __name__ == "__main__":
    sys.exit(cli())
