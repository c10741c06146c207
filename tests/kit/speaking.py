"""A bot that keeps talking, for tests whose other side listens for a while, and
what a bot hears of one speaker."""

from __future__ import annotations

from typing import Any

from botcall.demo.signals import rms_dbfs


async def keep_saying(call: Any, pcm: Any) -> None:
    """Say ``pcm`` over and over until cancelled, always one more queued behind the
    one playing, so the server's playout never runs dry between two says."""
    previous = await call.say(pcm)
    while True:
        queued = await call.say(pcm)
        await previous.done()
        previous = queued


async def frames_from(call: Any, participant_id: str, count: int, *, loud: bool = True) -> bytes:
    """``count`` decoded frames of one speaker (only audible ones when ``loud``)."""
    pcm = []
    async for frame in call.audio():
        if frame.speaker == participant_id and not frame.concealed and (not loud or rms_dbfs(frame.pcm) > -40):
            pcm.append(frame.pcm)
            if len(pcm) >= count:
                break
    return b"".join(pcm)
