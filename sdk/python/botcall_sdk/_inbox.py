"""A bounded queue for one reader that drops its oldest item (anyio, any backend)."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Inbox(Generic[T]):
    """What the call hands the application (frames, events), ``limit`` items at most.

    A reader slower than the call loses the oldest items (counted in
    ``dropped``) rather than holding the call up. Iterating ends when the call
    ends and the queue is empty.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._items: deque[T] = deque()
        self._ready = anyio.Event()
        self._closed = False

    def put_nowait(self, item: T) -> None:
        if self._closed:
            return
        if len(self._items) >= self.limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    def __aiter__(self) -> Inbox[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready = anyio.Event()
            await self._ready.wait()
        return self._items.popleft()
