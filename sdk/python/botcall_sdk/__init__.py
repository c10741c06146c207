"""BotCall's Python SDK: a bot joins a room, speaks and listens — on asyncio or Trio.

::

    import asyncio, botcall_sdk

    async def main():
        async with botcall_sdk.connect("http://127.0.0.1:8080", room_id, token) as call:
            speech = await call.say("hello.wav")
            await speech.done()

    asyncio.run(main())

See :func:`connect`, :class:`Call`, :class:`Speech` and the events in
:mod:`botcall_sdk.events`. Built on anyio: the same code runs under
``asyncio.run`` and ``trio.run``, many calls in one event loop.
"""

from botcall_sdk import _events as events
from botcall_sdk._call import AudioFrame, Call, Interruption, Mark, Speech, connect
from botcall_sdk._errors import (
    AuthError,
    BadRequest,
    BotCallError,
    CallClosed,
    CallError,
    HttpError,
    InvalidServerUrl,
    RateLimited,
    RoomFull,
    RoomUnavailable,
    ServerBusy,
    ServerFault,
    Unreachable,
)
from botcall_sdk._events import (
    Chat,
    Cleared,
    Event,
    EventsLost,
    Interrupted,
    MarkReached,
    Muted,
    Participant,
    ParticipantJoined,
    ParticipantLeft,
    Pong,
    RoomClosed,
    ServerError,
    Speaking,
    SpeechStarted,
    SpeechStopped,
    StreamStarted,
    Unknown,
)
from botcall_sdk._http import Room, create_room

__version__ = "0.1.0"

__all__ = [
    "AudioFrame", "AuthError", "BadRequest", "BotCallError", "Call", "CallClosed", "CallError", "Chat", "Cleared",
    "Event", "EventsLost", "HttpError", "Interrupted", "Interruption", "InvalidServerUrl", "Mark", "MarkReached", "Muted",
    "Participant", "ParticipantJoined", "ParticipantLeft", "Pong", "RateLimited", "Room", "RoomClosed", "RoomFull",
    "RoomUnavailable", "ServerBusy", "ServerError", "ServerFault", "Speaking", "Speech", "SpeechStarted",
    "SpeechStopped", "StreamStarted", "Unknown", "Unreachable", "connect", "create_room", "events",
]
