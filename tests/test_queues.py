import trio

from botcall.queues import DropOldestQueue


async def test_drops_oldest_when_full_and_counts():
    q = DropOldestQueue(3)
    for i in range(5):
        q.put_nowait(i)
    assert q.dropped == 2
    assert [await q.get() for _ in range(3)] == [2, 3, 4]


async def test_get_waits_and_close_ends_iteration(autojump_clock):
    q = DropOldestQueue(2)
    got = []

    async def consume():
        async for item in q:
            got.append(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.sleep(1)
        q.put_nowait("a")
        await trio.sleep(1)
        q.put_nowait("b")
        q.close()
        q.put_nowait("ignored")
    assert got == ["a", "b"]
