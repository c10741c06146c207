"""The Python bot SDK: join a room, talk, listen.

::

    import botcall

    async with botcall.connect("http://127.0.0.1:8080", room_id, token) as call:
        await call.play_wav("hello.wav")
        async for frame in call.audio():
            print(frame.participant_id, len(frame.pcm))

See :func:`connect` and :class:`Call`. Trio-native; :func:`run_in_asyncio`
runs a bot inside an asyncio program.
"""

from botcall.client.aio import run_in_asyncio
from botcall.client.call import AudioFrame, Call, CallError, connect
from botcall.client.http import BotCallHttpError, Room, create_room

__all__ = ["AudioFrame", "BotCallHttpError", "Call", "CallError", "Room", "connect", "create_room", "run_in_asyncio"]
