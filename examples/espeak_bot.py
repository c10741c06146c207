"""Speak a text with espeak-ng, then listen: prints when someone starts and stops talking.

Run it (needs ``espeak-ng`` on the PATH; ``apt-get install espeak-ng``)::

    python examples/espeak_bot.py --server http://127.0.0.1:8080 --room ROOM --token TOKEN \\
        --text "Hello, I am a bot. Say something."

or with ``BOTCALL_SERVER``, ``BOTCALL_ROOM`` and ``BOTCALL_TOKEN`` in the
environment. ``--utterances N`` leaves after hearing N utterances (default:
listen until Ctrl-C).

This is how a streamed text-to-speech plugs in: espeak-ng writes its WAV to
stdout as it synthesises, and ``call.say`` takes an async iterator of PCM
chunks at the engine's own rate (22050 Hz here) and sends them ahead while
the rest is still being made; the server plays them out in real time.
"""

from __future__ import annotations

import argparse
import os
import struct
from collections.abc import AsyncIterator

import anyio

import botcall_sdk

WAV_HEADER = 44  # espeak-ng --stdout: a plain 44-byte RIFF header, then 16-bit mono PCM


async def espeak_stream(text: str) -> tuple[int, AsyncIterator[bytes]]:
    """Start espeak-ng; return its sample rate and its PCM as it comes."""
    process = await anyio.open_process(["espeak-ng", "--stdout", text])
    assert process.stdout is not None
    header = b""
    async for chunk in process.stdout:
        header += chunk
        if len(header) >= WAV_HEADER:
            break
    if header[:4] != b"RIFF" or header[8:12] != b"WAVE" or len(header) < WAV_HEADER:
        raise RuntimeError(f"espeak-ng did not write a WAV header: {header[:16]!r}")
    (rate,) = struct.unpack_from("<I", header, 24)

    async def pcm() -> AsyncIterator[bytes]:
        # What came with the header first: when we read late (a busy machine),
        # espeak-ng may have written all of its output already, and then no
        # chunk follows it.
        pending = header[WAV_HEADER:]
        async with process:
            assert process.stdout is not None
            while True:
                whole = len(pending) & ~1  # whole 16-bit samples only
                if whole:
                    yield pending[:whole]
                    pending = pending[whole:]
                try:
                    pending += await process.stdout.receive()
                except anyio.EndOfStream:
                    return

    return rate, pcm()


async def run(server: str, room: str, token: str, text: str, utterances: int | None) -> None:
    async with botcall_sdk.connect(server, room, token) as call:
        print(f"joined room {room} as {call.participant_id}", flush=True)
        rate, pcm = await espeak_stream(text)
        speech = await call.say(pcm, sample_rate=rate)
        print(f"speaking {text!r} ({rate} Hz, streamed)", flush=True)
        heard = 0
        async for event in call.events():
            if isinstance(event, botcall_sdk.SpeechStarted) and event.participant_id != call.participant_id:
                print(f"{event.participant_id} started speaking (their stream at {event.stream_ms} ms)", flush=True)
            elif isinstance(event, botcall_sdk.SpeechStopped) and event.participant_id != call.participant_id:
                print(f"{event.participant_id} stopped speaking after {event.duration_ms} ms", flush=True)
                heard += 1
                if utterances is not None and heard >= utterances:
                    break
        if await speech.done() is None:
            print(f"my speech played to the end ({speech.sent_ms} ms)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("BOTCALL_SERVER", "http://127.0.0.1:8080"))
    parser.add_argument("--room", default=os.environ.get("BOTCALL_ROOM"))
    parser.add_argument("--token", default=os.environ.get("BOTCALL_TOKEN"))
    parser.add_argument("--text", default="Hello, I am a bot on BotCall. Say something and I will notice.")
    parser.add_argument("--utterances", type=int, default=None, help="leave after hearing this many utterances")
    args = parser.parse_args()
    if not args.room or not args.token:
        parser.error("--room and --token (or BOTCALL_ROOM and BOTCALL_TOKEN) are needed")
    try:
        anyio.run(run, args.server, args.room, args.token, args.text, args.utterances)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
