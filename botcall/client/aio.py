"""Running a Trio bot inside an asyncio application (Trio's guest mode).

``trio.lowlevel.start_guest_run`` runs Trio on top of the running asyncio loop:
both schedulers share the thread, so the bot's callbacks may touch the
application's objects directly. ::

    async def bot():
        async with botcall.connect(server, room, token) as call:
            await call.play_wav("hello.wav")

    async def main():                     # an asyncio program
        result = await botcall.client.run_in_asyncio(bot)

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar, TypeVarTuple, Unpack, cast

import outcome as outcome_
import trio

T = TypeVar("T")
Args = TypeVarTuple("Args")


async def run_in_asyncio(async_fn: Callable[[Unpack[Args]], Awaitable[T]], *args: Unpack[Args]) -> T:
    """Run ``async_fn(*args)`` under Trio, as a guest of the running asyncio loop.

    Returns:
        What ``async_fn`` returned.

    Raises:
        Whatever ``async_fn`` raised. Cancelling the awaiting asyncio task
        cancels the Trio run.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[outcome_.Outcome[T | None]] = loop.create_future()
    running: list[tuple[trio.CancelScope, trio.lowlevel.TrioToken]] = []

    async def main() -> T | None:
        with trio.CancelScope() as scope:
            running.append((scope, trio.lowlevel.current_trio_token()))
            return await async_fn(*args)
        return None  # cancelled from the asyncio side

    def finished(outcome: outcome_.Outcome[T | None]) -> None:
        if not done.done():
            done.set_result(outcome)

    trio.lowlevel.start_guest_run(
        main,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        done_callback=finished,
        host_uses_signal_set_wakeup_fd=True,
    )
    try:
        outcome = await asyncio.shield(done)
    except asyncio.CancelledError:
        if running:
            scope, token = running[0]
            token.run_sync_soon(scope.cancel)
        await done
        raise
    # main() returns None (not a T) only when its scope was cancelled, which happens
    # only after CancelledError above, so this is async_fn's own result.
    return cast(T, outcome.unwrap())
