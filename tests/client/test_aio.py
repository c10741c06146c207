import asyncio

import trio

from botcall.client import run_in_asyncio


def test_a_trio_function_runs_inside_asyncio_and_returns():
    async def trio_side(x):
        for _ in range(50):
            await trio.sleep(0)
        return x * 2

    async def main():
        # Both loops run at once: asyncio keeps ticking while Trio works.
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await run_in_asyncio(trio_side, 21)
        task.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result == 42 and ticks > 0


def test_exceptions_cross_over():
    async def boom():
        raise KeyError("x")

    async def main():
        try:
            await run_in_asyncio(boom)
        except KeyError:
            return "raised"

    assert asyncio.run(main()) == "raised"


def test_cancelling_the_asyncio_task_cancels_trio():
    cancelled = []

    started = asyncio.Event()

    async def forever():
        started.set()  # guest mode: same thread, so asyncio objects may be touched
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    async def main():
        task = asyncio.create_task(run_in_asyncio(forever))
        await started.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(main()) == "cancelled" and cancelled == [True]
