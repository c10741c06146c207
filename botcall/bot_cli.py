"""``botcall bot``: join a room as a bot from the command line (on the Python SDK, ``botcall_sdk``).

    botcall bot --server http://127.0.0.1:8080 --room ROOM --token "$TOKEN" \\
        --play hello.wav --record heard.wav --seconds 30

Plays the WAV (if any; checked before joining), records what it hears (every
speaker mixed into one mono WAV, aligned on the 20 ms play-out clock), prints
the room's events as the server's JSON, and leaves after ``--seconds`` or when
the call ends.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import trio

from botcall.audio.wav import read_wav, write_wav
from botcall_sdk import BotCallError, connect


class Recorder:
    """Mixes every speaker's 20 ms frames into one track, slot by slot (bounded by ``max_seconds``)."""

    def __init__(self, *, start: float, sample_rate: int, max_seconds: float = 3600.0) -> None:
        self.start = start
        self.frame_samples = sample_rate // 50
        self.sample_rate = sample_rate
        self.max_slots = int(max_seconds * 50)
        self._slots: dict[int, np.ndarray] = {}

    def add(self, pcm: bytes, now: float) -> None:
        slot = round((now - self.start) / 0.02)
        if not 0 <= slot < self.max_slots:
            return
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)[: self.frame_samples]
        mixed = self._slots.get(slot)
        self._slots[slot] = samples if mixed is None else mixed + samples

    def pcm(self) -> bytes:
        if not self._slots:
            return b""
        out = np.zeros((max(self._slots) + 1) * self.frame_samples, dtype=np.int32)
        for slot, samples in self._slots.items():
            out[slot * self.frame_samples : slot * self.frame_samples + samples.size] += samples
        return np.clip(out, -32768, 32767).astype("<i2").tobytes()


async def run_bot(args: argparse.Namespace) -> int:
    speech_pcm: bytes | None = None
    if args.play:
        # Before joining: a missing or unreadable file is a one-line error, not a ghost in the room.
        try:
            speech_pcm = await trio.to_thread.run_sync(lambda: read_wav(args.play, sample_rate=48000, channels=1))
        except (OSError, ValueError) as exc:
            print(f"botcall bot: cannot play {args.play}: {exc}", file=sys.stderr)
            return 2
    try:
        async with connect(
            args.server, args.room, args.token, agent_id=args.agent, transport=args.transport, encoding=args.encoding, sample_rate=args.sample_rate
        ) as call:
            print(json.dumps({"joined": call.room_id, "participant_id": call.participant_id, "transport": call.transport}), flush=True)
            recorder = Recorder(start=trio.current_time(), sample_rate=call.sample_rate) if args.record else None

            async def events() -> None:
                async for event in call.events():
                    print(json.dumps(dict(event.raw)), flush=True)

            async def listen() -> None:
                async for frame in call.audio():
                    if recorder is not None:
                        recorder.add(frame.pcm, trio.current_time())

            with trio.move_on_after(args.seconds):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(events)
                    nursery.start_soon(listen)
                    if speech_pcm is not None:
                        speech = await call.say(speech_pcm, sample_rate=48000)
                        try:
                            await speech.done()
                        except BotCallError:
                            # Cut short because the call ended (the room was
                            # deleted, say): the normal end of a bot, not a failure.
                            if not call.closed:
                                raise
                    await call.wait_closed()
                    nursery.cancel_scope.cancel()
            if recorder is not None:
                write_wav(args.record, recorder.pcm(), sample_rate=call.sample_rate, channels=1)
                print(json.dumps({"recorded": str(args.record)}), flush=True)
    except (BotCallError, OSError, ValueError) as exc:
        print(f"botcall bot: {exc}", file=sys.stderr)
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="BotCall base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--room", required=True, help="room id")
    parser.add_argument("--token", required=True, help="BotAuth attestation (JWT)")
    parser.add_argument("--agent", default=None, help="agent id (default: the token's sub)")
    parser.add_argument("--play", default=None, help="a WAV file to speak (any PCM WAV)")
    parser.add_argument("--record", default=None, help="write what the bot hears to this WAV")
    parser.add_argument("--transport", choices=("udp", "websocket"), default="udp")
    parser.add_argument("--encoding", choices=("opus", "pcm16"), default="opus", help="websocket transport only")
    parser.add_argument("--sample-rate", type=int, choices=(16000, 24000, 48000), default=48000)
    parser.add_argument("--seconds", type=float, default=3600.0, help="leave after this long")


def run(args: argparse.Namespace) -> int:
    if args.encoding == "pcm16" and args.transport != "websocket":
        print("botcall bot: --encoding pcm16 needs --transport websocket", file=sys.stderr)
        return 2
    try:
        return trio.run(run_bot, args)
    except KeyboardInterrupt:
        return 0
