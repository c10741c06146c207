"""A clustered node that restarts keeps its rooms and invite links (docs/architecture.md,
"Rooms survive a node restart"): real ``redis-server``, real node processes.

The node is stopped with ``kill -9``, not SIGTERM: SIGTERM is a drain, whose rooms
end with ``server_shutdown`` (every participant is told so) and must not come
back; a crash leaves nothing but Redis, which is what a restart must survive.
The restarted node binds the same HTTP port, so the invite link printed before
the crash names it.
"""

from __future__ import annotations

import re
import time
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import pytest
import trio

from botcall.cluster.nodes import PREFIX
from botcall.cluster.resp import Redis
from botcall_sdk import connect
from tests.kit.cluster import Servers
from tests.kit.invite_call import HUMAN_HZ, bot_and_invited_human
from tests.kit.redis import free_port, running_redis

pytestmark = pytest.mark.e2e

RESTORED = re.compile(r"node node-a restarted within its TTL: restoring (?P<count>\d+) room\(s\)")


def node_flags(name: str, port: int, ttl: str, redis_url: str, *extra: str) -> tuple[str, ...]:
    """The flags of a node named ``name`` on ``port`` (``Servers.start``)."""
    return ("--redis", redis_url, "--node-ttl", ttl, "--node-name", name, "--port", str(port), *extra)


async def room_record_written(client: Redis, room_id: str) -> None:
    """Wait until the worker's report of the room (its record) is in Redis (just after the 201)."""
    with trio.fail_after(10):
        while b"invite_digest" not in await client.execute("HGETALL", PREFIX + f"room:{room_id}"):
            await trio.sleep(0.05)


@pytest.mark.browser
async def test_a_restarted_node_keeps_its_rooms_and_the_old_invite_link_still_works(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    async with running_redis(tmp_path) as redis, AsyncExitStack() as stack:
        client = Redis(redis.url)
        stack.push_async_callback(client.aclose)
        nursery = await stack.enter_async_context(trio.open_nursery())
        nodes = Servers(nursery, data)
        # A TTL long enough for a crash and a restart on a busy machine (15 s); node B
        # would reap A if A were not back by then.
        a = await nodes.start(*node_flags("node-a", port, "15", redis.url))
        creator = a.token(agent="creator#1")
        kept = (await a.create_room(creator, max_human_participants=2, expires_in=600)).json()
        short = (await a.create_room(creator, expires_in=2)).json()  # expires while A is down
        assert kept["invite_url"].startswith(a.url) and short["invite_url"].startswith(a.url)
        # What Redis keeps of the invite: its SHA-256, never the secret itself.
        await room_record_written(client, kept["room_id"])
        secret = urlsplit(kept["invite_url"]).fragment.removeprefix("invite=")
        assert secret.encode() not in b"".join(await client.execute("HGETALL", PREFIX + f"room:{kept['room_id']}"))
        b = await nodes.start(*node_flags("node-b", free_port(), "15", redis.url))
        async with connect(b.url, kept["room_id"], a.token(agent="before#1")) as before:
            assert before.join_response["media"]["port"] == a.workers[0].media_port

        await nodes.crash(a)
        with trio.fail_after(10):
            while time.time() < short["expires_at_unix"] + 0.5:  # the short room's own deadline passes
                await trio.sleep(0.1)
        a = await nodes.start(*node_flags("node-a", port, "15", redis.url))
        assert int((await a.wait_for(RESTORED))["count"]) == 1  # the expired room is not among them

        # The expired room stays gone, on both nodes.
        for node in (a, b):
            gone = await node.request("GET", f"/v1/rooms/{short['room_id']}", bearer=creator)
            assert gone.status == 410, gone.body
        # The kept room answers from any node, owner and limits intact.
        got = await b.request("GET", f"/v1/rooms/{kept['room_id']}", bearer=creator)
        assert got.status == 200, got.body
        assert (got.json()["owner"], got.json()["max_human_participants"], got.json()["participants"]) == ("gopi", 2, [])
        # A bot joins again (through B), and a human opens the invite link from before the crash.
        invite = urlsplit(kept["invite_url"])
        call = await bot_and_invited_human(b.url, kept["room_id"], kept["invite_url"], a.token(agent="orion#8f3a"), tmp_path)
        assert call.bot_join["media"]["port"] == a.workers[0].media_port
        assert invite.netloc == urlsplit(a.url).netloc
        assert abs(call.bot_heard_hz - HUMAN_HZ) < 5
        assert call.page_errors == []
        nursery.cancel_scope.cancel()


async def test_a_node_back_after_its_ttl_finds_its_rooms_closed_node_lost(tmp_path):
    """Alone in the cluster (nobody else reaps it), a node that comes back after its
    heartbeat expired closes its own rooms ``node_lost``: other nodes may have
    answered ``410 node_lost`` for them meanwhile, and that answer stays true."""
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    async with running_redis(tmp_path) as redis, AsyncExitStack() as stack:
        client = Redis(redis.url)
        stack.push_async_callback(client.aclose)
        nursery = await stack.enter_async_context(trio.open_nursery())
        nodes = Servers(nursery, data)
        a = await nodes.start(*node_flags("node-a", port, "1", redis.url))
        creator = a.token(agent="creator#1")
        room = (await a.create_room(creator)).json()["room_id"]
        await room_record_written(client, room)
        await nodes.crash(a)
        with trio.fail_after(10):
            while await client.execute("EXISTS", PREFIX + "node:node-a"):  # the heartbeat expires
                await trio.sleep(0.1)
        assert (await client.execute("HGET", PREFIX + f"room:{room}", "state")) == b"open"  # nobody reaped it
        a = await nodes.start(*node_flags("node-a", port, "1", redis.url))
        got = await a.request("GET", f"/v1/rooms/{room}", bearer=creator)
        assert got.status == 410 and got.json()["error"]["reason"] == "node_lost", got.body
        joined = await a.join(a.token(agent="late#1"), room, agent_id="late#1")
        assert joined.status == 410 and joined.json()["error"]["reason"] == "node_lost"
        assert not any(RESTORED.search(line) for line in a.lines)
        # Human log lines say which process wrote them: the supervisor, the worker.
        assert any(" [node-a] botcall.cluster: " in line for line in a.lines)
        assert any(" [node-a/w0] botcall" in line for line in a.lines)
        nursery.cancel_scope.cancel()


async def test_a_drained_node_does_not_restore_the_rooms_it_closed(tmp_path):
    """SIGTERM drains: the rooms end with ``server_shutdown`` (participants are told)
    and a restart does not bring them back."""
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    async with running_redis(tmp_path) as redis, AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        nodes = Servers(nursery, data)
        a = await nodes.start(*node_flags("node-a", port, "15", redis.url, "--drain-timeout", "0.5"))
        creator = a.token(agent="creator#1")
        room = (await a.create_room(creator)).json()["room_id"]
        await nodes.stop(a)  # the drain times out and closes the room (server_shutdown)
        a = await nodes.start(*node_flags("node-a", port, "15", redis.url))
        got = await a.request("GET", f"/v1/rooms/{room}", bearer=creator)
        assert got.status == 410 and got.json()["error"]["reason"] == "server_shutdown", got.body
        assert not any(RESTORED.search(line) for line in a.lines)
        nursery.cancel_scope.cancel()
