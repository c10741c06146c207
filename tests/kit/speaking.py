"""A bot that keeps talking, for tests whose other side listens for a while, and
what a bot hears of one speaker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from botcall.demo.signals import rms_dbfs


async def keep_saying(call: Any, pcm: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Say ``pcm`` over and over until cancelled, always one more queued behind the
    one playing, so the server's playout never runs dry between two says.
    ``nursery.start`` returns once the first say is queued."""
    previous = await call.say(pcm)
    task_status.started()
    while True:
        queued = await call.say(pcm)
        await previous.done()
        previous = queued


@asynccontextmanager
async def saying(call: Any, pcm: Any) -> AsyncIterator[None]:
    """``keep_saying(call, pcm)`` for as long as the block runs (its first say is
    queued when the block starts); stopped when it ends."""
    async with trio.open_nursery() as nursery:
        await nursery.start(keep_saying, call, pcm)
        yield
        nursery.cancel_scope.cancel()


async def frames_from(call: Any, participant_id: str, count: int, *, loud: bool = True) -> bytes:
    """``count`` decoded frames of one speaker (only audible ones when ``loud``)."""
    pcm = []
    async for frame in call.audio():
        if frame.speaker == participant_id and not frame.concealed and (not loud or rms_dbfs(frame.pcm) > -40):
            pcm.append(frame.pcm)
            if len(pcm) >= count:
                break
    return b"".join(pcm)
