"""Echo bot: says back what each speaker says, once they stop talking.

Run it (the server, a room and a bot token; ``botcall demo`` prints a room,
``botcall token`` a token)::

    python examples/echo_bot.py --server http://127.0.0.1:8080 --room ROOM --token TOKEN

or with ``BOTCALL_SERVER``, ``BOTCALL_ROOM`` and ``BOTCALL_TOKEN`` in the
environment. ``--backend trio`` runs the same code under Trio (the SDK is
built on anyio); ``--replies N`` leaves after N echoes (default: run until
interrupted with Ctrl-C).

How: ``call.audio()`` gives 20 ms frames per speaker; the server's speech
events (``SpeechStarted``/``SpeechStopped``) say when each speaker's utterance
begins and ends. The bot keeps a short pre-roll per speaker (the detector
fires a little after the first syllable), records from ``SpeechStarted`` and,
once the frames up to ``SpeechStopped``'s ``stream_ms`` are in (on a busy
machine they can come after the event), hands the utterance to ``call.say``.
"""

from __future__ import annotations

import argparse
import collections
import os

import anyio
import anyio.abc

import botcall_sdk

PRE_ROLL_FRAMES = 15  # 300 ms before the detector's onset
MAX_UTTERANCE_FRAMES = 50 * 30  # an echo is at most 30 s long
MAX_PENDING_ECHOES = 64  # one per speaker at a time, and the SDK hears at most 64 speakers
FRAME_MS = 20


async def echo(server: str, room: str, token: str, replies: int | None) -> None:
    async with botcall_sdk.connect(server, room, token) as call:
        print(f"echo bot joined room {room} as {call.participant_id}", flush=True)
        pre_roll: dict[str, collections.deque[bytes]] = collections.defaultdict(lambda: collections.deque(maxlen=PRE_ROLL_FRAMES))
        recording: dict[str, list[bytes]] = {}
        heard_to: dict[str, int] = {}  # the stream position each recording has reached
        ends: dict[str, tuple[int, int]] = {}  # speech_stopped came: (stream_ms, duration_ms)
        rate = call.sample_rate
        # Finished utterances, to be said back in order (a few at most: we say them as they come).
        send, receive = anyio.create_memory_object_stream[tuple[str, int, bytes]](MAX_PENDING_ECHOES)

        def finish_if_heard(speaker: str) -> None:
            # Frames can trail the speech_stopped event (a busy machine holds our
            # jitter buffer up): the utterance is whole once the frame at its end is here.
            end = ends.get(speaker)
            if end is not None and heard_to.get(speaker, -1) >= end[0] - FRAME_MS:
                del ends[speaker]
                send.send_nowait((speaker, end[1], b"".join(recording.pop(speaker))))

        async def listen() -> None:
            async for frame in call.audio():
                if frame.speaker is None or frame.speaker == call.participant_id or frame.speaker not in call.participants:
                    continue  # not known yet, ourselves, or gone (the last frames of one who left)
                if frame.speaker in recording:
                    if len(recording[frame.speaker]) < MAX_UTTERANCE_FRAMES:
                        recording[frame.speaker].append(frame.pcm)
                    heard_to[frame.speaker] = max(heard_to.get(frame.speaker, -1), frame.stream_ms)
                    finish_if_heard(frame.speaker)
                else:
                    pre_roll[frame.speaker].append(frame.pcm)

        async def follow_speech() -> None:
            async for event in call.events():
                if isinstance(event, botcall_sdk.SpeechStarted) and event.participant_id != call.participant_id:
                    if event.participant_id not in recording:
                        recording[event.participant_id] = list(pre_roll.pop(event.participant_id, ()))
                        heard_to.pop(event.participant_id, None)
                elif isinstance(event, botcall_sdk.SpeechStopped) and event.participant_id in recording:
                    ends[event.participant_id] = (event.stream_ms, event.duration_ms)
                    finish_if_heard(event.participant_id)
                elif isinstance(event, botcall_sdk.ParticipantLeft):
                    # Their last frames may still come (the SDK plays what it had): an
                    # utterance cut by the leave is dropped, and nothing of theirs is kept.
                    for table in (pre_roll, recording, heard_to, ends):
                        table.pop(event.participant_id, None)

        async def say_back(group: anyio.abc.TaskGroup) -> None:
            count = 0
            async for speaker, duration_ms, utterance in receive:
                print(f"heard {speaker} for {duration_ms} ms; saying it back", flush=True)
                speech = await call.say(utterance, sample_rate=rate)
                count += 1
                if replies is not None and count >= replies:
                    await speech.done()  # the last echo plays out before we leave
                    group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(listen)
            group.start_soon(follow_speech)
            group.start_soon(say_back, group)
        print("echo bot leaves", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("BOTCALL_SERVER", "http://127.0.0.1:8080"))
    parser.add_argument("--room", default=os.environ.get("BOTCALL_ROOM"))
    parser.add_argument("--token", default=os.environ.get("BOTCALL_TOKEN"))
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--replies", type=int, default=None, help="leave after this many echoes")
    args = parser.parse_args()
    if not args.room or not args.token:
        parser.error("--room and --token (or BOTCALL_ROOM and BOTCALL_TOKEN) are needed")
    try:
        anyio.run(echo, args.server, args.room, args.token, args.replies, backend=args.backend)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
