"""``NodeDirectory.flush`` against a real ``redis-server``: the supervisor's room
writer and its heartbeat both call it, at the same time.

Under a CPU hog (stress-ng --cpu 2) the two overlapped: both wrote the oldest
noted close, the first forgot it and the second's ``del`` raised ``KeyError``,
which ended the node's supervisor (the whole node exited; its peer answered
``503 worker_unavailable`` for a create routed to it).
"""

from __future__ import annotations

import time

import trio

from botcall.cluster.nodes import PREFIX, NodeDirectory
from botcall.cluster.resp import Redis
from tests.kit.redis import running_redis


def record(room_id: str) -> dict[str, str]:
    return {"room_id": room_id, "expires_at": str(time.time() + 3600)}


async def state(redis: Redis, room_id: str) -> dict[str, str]:
    values = await redis.execute("HGETALL", PREFIX + f"room:{room_id}")
    return {values[i].decode(): values[i + 1].decode() for i in range(0, len(values), 2)}


async def test_two_flushes_at_once_write_everything_once_and_raise_nothing(tmp_path):
    async with running_redis(tmp_path) as server:
        redis = Redis(server.url)
        try:
            node = NodeDirectory(redis, "node-a", "http://127.0.0.1:1", ttl=10, closed_for=60)
            rooms = [f"room-{i}" for i in range(6)]
            for room_id in rooms:
                node.note_room(record(room_id), 0)
            for room_id in rooms[:3]:
                node.note_closed(room_id, "room_deleted", time.time())
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(node.flush)
            assert not node.unwritten
            for room_id in rooms[:3]:
                assert (await state(redis, room_id))["state"] == "closed"
            for room_id in rooms[3:]:
                assert (await state(redis, room_id))["state"] == "open"
            members = await redis.execute("SMEMBERS", PREFIX + "node:node-a:rooms")
            assert sorted(m.decode() for m in members) == rooms[3:]
        finally:
            await redis.aclose()


async def test_a_close_noted_again_while_it_is_written_is_written_again(tmp_path):
    async with running_redis(tmp_path) as server:
        redis = Redis(server.url)
        try:
            node = NodeDirectory(redis, "node-a", "http://127.0.0.1:1", ttl=10, closed_for=60)
            node.note_room(record("room-1"), 0)
            node.note_closed("room-1", "room_deleted", time.time())
            write_close = node.room_closed
            calls = []

            async def renoted_meanwhile(room_id: str, reason: str, now: float) -> None:
                calls.append(reason)
                if len(calls) == 1:  # the worker died while the first close was on its way
                    node.note_closed(room_id, "worker_lost", now + 1)
                await write_close(room_id, reason, now)

            node.room_closed = renoted_meanwhile  # type: ignore[method-assign]
            await node.flush()
            assert calls == ["room_deleted", "worker_lost"]
            assert not node.unwritten
            assert (await state(redis, "room-1"))["reason"] == "worker_lost"
        finally:
            await redis.aclose()
