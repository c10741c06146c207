"""Clustered mode: BotCall nodes as separate processes on loopback sharing a real
``redis-server``. Any node accepts any request; a token is single-use across
nodes; a node that dies has its rooms closed (``node_lost``) while the others'
calls go on; a drained node takes no new rooms.
"""

from __future__ import annotations

import os
import re
import signal
from contextlib import AsyncExitStack

import pytest
import trio

from botcall_sdk import connect
from botcall.cluster.nodes import NodeDirectory, request_drain
from botcall.cluster.resp import Redis
from botcall.demo.signals import dominant_frequency, tone
from tests.kit.cluster import serving_workers
from tests.kit.redis import running_redis

pytestmark = pytest.mark.e2e


async def say_through(call, pcm) -> None:
    """Say ``pcm`` and wait until the server has played it all."""
    await (await call.say(pcm)).done()

# The product's node TTL (10 s) unless a test is about losing a node: a short
# TTL also shortens the Redis timeout (TTL / 4), which a CPU-starved machine may
# miss, and the heartbeat's period (TTL / 3).
LOST_NODE_TTL = "2"


async def start_nodes(stack: AsyncExitStack, tmp_path, redis, names, *, node_ttl: str | None = None, extra=lambda name: ()):
    """Start ``names`` as nodes on ``redis``; ``extra(name)``: more flags for that node."""
    data = tmp_path / "data"  # one dev issuer trusted by every node
    data.mkdir(exist_ok=True)
    ttl = ("--node-ttl", node_ttl) if node_ttl is not None else ()
    nodes = {}
    for name in names:
        flags = ("--redis", redis.url, *ttl, "--node-name", name, *extra(name))
        nodes[name] = await stack.enter_async_context(serving_workers(data, workers=1, extra=flags))
    # Every node sees every other one in the registry before the test starts.
    client = Redis(redis.url)
    stack.push_async_callback(client.aclose)
    with trio.fail_after(20):
        while {n.node_id for n in await NodeDirectory(client, "", "", ttl=1, closed_for=0).nodes()} != set(names):
            await trio.sleep(0.1)
    return nodes


async def hear_tone(speaker, listener, freq, frames=50):
    heard = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(say_through, speaker, tone(freq, 3.0))
        with trio.fail_after(15):
            async for frame in listener.audio():
                if frame.speaker == speaker.participant_id and not frame.concealed:
                    heard.append(frame.pcm)
                if len(heard) >= frames:
                    break
        nursery.cancel_scope.cancel()
    return dominant_frequency(b"".join(heard[10:]), 48000)


async def test_any_node_accepts_any_request_and_tokens_are_single_use_across_nodes(tmp_path):
    async with running_redis(tmp_path) as redis, AsyncExitStack() as stack:
        nodes = await start_nodes(stack, tmp_path, redis, ["node-a", "node-b"])
        a, b = nodes["node-a"], nodes["node-b"]
        creator = a.token(agent="creator#1")
        here = (await a.create_room(creator)).json()
        there = (await a.create_room(creator)).json()  # node A now carries a room: B is less loaded
        assert here["invite_url"].startswith(a.url) and there["invite_url"].startswith(b.url)
        # A bot joins B's room through A and another through B: both reach B's worker.
        async with connect(a.url, there["room_id"], a.token(agent="via-a#1")) as x, connect(
            b.url, there["room_id"], a.token(agent="via-b#2")
        ) as y:
            assert x.join_response["websocket_url"].startswith(b.url.replace("http", "ws"))
            assert x.join_response["media"]["port"] == y.join_response["media"]["port"] == b.workers[0].media_port
            assert abs(await hear_tone(x, y, 440) - 440) < 5
            assert abs(await hear_tone(y, x, 880) - 880) < 5
        # GET and DELETE from the node that does not hold the room.
        got = await a.request("GET", f"/v1/rooms/{there['room_id']}", bearer=creator)
        assert got.status == 200 and got.json()["room_id"] == there["room_id"]
        deleted = await a.request("DELETE", f"/v1/rooms/{here['room_id']}", bearer=b.token(agent="creator#1"))
        assert deleted.status == 200 and deleted.json()["state"] == "closed"
        # A token used on node A is refused on node B.
        fresh = (await b.create_room(creator)).json()["room_id"]
        once = a.token(agent="once#1")
        first = await a.join(once, there["room_id"], agent_id="once#1")
        assert first.status == 200, first.body
        again = await b.join(once, fresh, agent_id="once#1")
        assert again.status == 401 and again.error_code == "attestation_replayed"


async def test_a_dead_node_loses_its_rooms_and_the_other_nodes_call_goes_on(tmp_path):
    async with running_redis(tmp_path) as redis, AsyncExitStack() as stack:
        nodes = await start_nodes(stack, tmp_path, redis, ["node-a", "node-b"], node_ttl=LOST_NODE_TTL)
        a, b = nodes["node-a"], nodes["node-b"]
        creator = a.token(agent="creator#1")
        doomed = (await a.create_room(creator)).json()["room_id"]  # on A
        kept = (await a.create_room(creator)).json()["room_id"]  # on B
        async with connect(b.url, kept, b.token(agent="k#1")) as k1, connect(b.url, kept, b.token(agent="k#2")) as k2:
            assert k1.join_response["media"]["port"] == b.workers[0].media_port
            arrivals = []
            killed = trio.Event()
            answers = []

            async def ask_for_the_lost_room():
                await killed.wait()
                with trio.fail_after(30):
                    while not answers or answers[-1].status != 410:
                        agent = f"late#{len(answers)}"
                        answers.append(await b.join(b.token(agent=agent), doomed, agent_id=agent))
                        await trio.sleep(0.2)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(say_through, k1, tone(660, 15.0))
                nursery.start_soon(ask_for_the_lost_room)
                with trio.fail_after(40):
                    async for frame in k2.audio():
                        if frame.speaker != k1.participant_id:
                            continue
                        arrivals.append((trio.current_time(), frame.concealed, frame.pcm))
                        if len(arrivals) == 25:
                            os.kill(a.process.pid, signal.SIGKILL)  # the whole node: its worker follows
                            killed_at = trio.current_time()
                            killed.set()
                        if answers and answers[-1].status == 410 and len(arrivals) > 100:
                            break
                nursery.cancel_scope.cancel()
            joined = answers[-1]
            assert joined.status == 410 and joined.json()["error"] == {
                "code": "room_closed", "message": joined.json()["error"]["message"], "reason": "node_lost"
            }
            assert trio.current_time() - killed_at < 15
            after = arrivals[25:]
            assert abs(dominant_frequency(b"".join(pcm for _, _, pcm in after), 48000) - 660) < 5
            gaps = [q[0] - p[0] for p, q in zip(after, after[1:])]
            assert max(gaps) < 0.25, sorted(gaps)[-5:]  # see test_workers: a loaded, shared machine
        got = await b.request("GET", f"/v1/rooms/{doomed}", bearer=creator)
        assert got.status == 410 and got.json()["error"]["reason"] == "node_lost"
        # New rooms go to the surviving node.
        created = await b.create_room(creator)
        assert created.status == 201 and created.json()["invite_url"].startswith(b.url)


async def test_a_drained_node_takes_no_new_rooms_and_ends_when_its_rooms_do(tmp_path):
    async with running_redis(tmp_path) as redis, AsyncExitStack() as stack:
        nodes = await start_nodes(stack, tmp_path, redis, ["node-a", "node-b"])
        a, b = nodes["node-a"], nodes["node-b"]
        creator = a.token(agent="creator#1")
        staying = (await a.create_room(creator)).json()
        assert staying["invite_url"].startswith(a.url)  # a room keeps node A draining, not gone
        client = Redis(redis.url)
        stack.push_async_callback(client.aclose)
        await request_drain(client, "node-a")
        await a.wait_for(re.compile(r"draining node node-a"))
        for _ in range(3):  # through the drained node too: they all land on B
            created = await a.create_room(creator)
            assert created.status == 201 and created.json()["invite_url"].startswith(b.url)
        assert a.process.returncode is None
        # Its last room ends (deleted through the other node): node A exits on its own.
        deleted = await b.request("DELETE", f"/v1/rooms/{staying['room_id']}", bearer=creator)
        assert deleted.status == 200
        with trio.fail_after(30):
            await a.process.wait()
        assert a.process.returncode == 0


async def test_a_redis_restart_keeps_calls_and_refuses_new_work_clearly_until_it_is_back(tmp_path):
    async with running_redis(tmp_path) as redis, AsyncExitStack() as stack:
        nodes = await start_nodes(stack, tmp_path, redis, ["node-a", "node-b"])
        a, b = nodes["node-a"], nodes["node-b"]
        creator = a.token(agent="creator#1")
        room = (await a.create_room(creator)).json()["room_id"]
        async with connect(a.url, room, a.token(agent="s#1")) as speaker, connect(a.url, room, a.token(agent="l#2")) as listener:
            await redis.stop()
            # Media does not depend on Redis: the call goes on while it is down.
            assert abs(await hear_tone(speaker, listener, 550) - 550) < 5
            created = await b.create_room(creator)
            assert created.status == 503 and created.error_code == "cluster_unavailable"
            assert created.headers["retry-after"] == "2"
            joined = await b.join(b.token(agent="late#1"), room, agent_id="late#1")
            assert joined.status == 503 and joined.error_code == "cluster_unavailable"
            await redis.start()  # empty: the nodes register again and write their rooms back
            with trio.fail_after(20):
                while True:
                    joined = await b.join(b.token(agent="back#1"), room, agent_id="back#1")
                    if joined.status == 200:
                        break
                    assert joined.status in (503, 404), joined.body
                    await trio.sleep(0.2)
            assert joined.json()["media"]["port"] == a.workers[0].media_port  # through B, to A's worker
            assert abs(await hear_tone(listener, speaker, 770) - 770) < 5
