"""A bot that keeps talking, for tests whose other side listens for a while."""

from __future__ import annotations

from typing import Any


async def keep_saying(call: Any, pcm: Any) -> None:
    """Say ``pcm`` over and over until cancelled, always one more queued behind the
    one playing, so the server's playout never runs dry between two says."""
    previous = await call.say(pcm)
    while True:
        queued = await call.say(pcm)
        await previous.done()
        previous = queued
