"""A bounded queue that drops its oldest item when full (Trio).

Live audio and events go stale: when a consumer falls behind, the freshest
items are the ones worth keeping. ``trio.open_memory_channel`` would block the
producer or refuse the newest item instead, which is why this exists.
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """Bounded FIFO: ``put_nowait`` never blocks; ``get`` waits for an item.

    Args:
        maxlen: capacity; putting into a full queue discards the oldest item and
            counts it in ``dropped``.
    """

    def __init__(self, maxlen: int) -> None:
        self._items: collections.deque[T] = collections.deque(maxlen=maxlen)
        self._maxlen = maxlen
        self._ready = trio.Event()
        self._closed = False
        self.dropped = 0

    def put_nowait(self, item: T) -> None:
        """Append ``item``; drop the oldest when full. Ignored once closed."""
        if self._closed:
            return
        if len(self._items) == self._maxlen:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    async def get(self) -> T:
        """The oldest item, waiting for one.

        Raises:
            trio.EndOfChannel: the queue is closed and empty.
        """
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            await self._ready.wait()
            self._ready = trio.Event()
        return self._items.popleft()

    def get_nowait(self) -> T:
        """The oldest item.

        Raises:
            trio.WouldBlock: nothing queued.
        """
        if not self._items:
            raise trio.WouldBlock
        return self._items.popleft()

    def close(self) -> None:
        """No more items; waiting getters see ``EndOfChannel`` once it is drained."""
        self._closed = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    def __aiter__(self) -> DropOldestQueue[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
