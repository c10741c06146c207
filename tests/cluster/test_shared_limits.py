"""The per-agent create and join limits hold across a cluster's nodes (one token
bucket per agent in a real ``redis-server``), where per-node buckets would give an
agent a budget per node."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from botcall.cluster.buckets import RedisBuckets
from botcall.cluster.resp import Redis
from botcall.config import RateLimit
from botcall.errors import ServiceUnavailable
from tests.kit.cluster import serving_workers
from tests.kit.redis import running_redis

pytestmark = pytest.mark.e2e

TIGHT = {"BOTCALL_CREATE_LIMIT_PER_AGENT": "rate=0.001,burst=3", "BOTCALL_JOIN_LIMIT_PER_AGENT": "rate=0.001,burst=2"}


async def test_an_agents_budget_is_one_for_the_whole_cluster(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    async with running_redis(tmp_path) as redis, AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(serving_workers(
                data, workers=1, env=TIGHT, extra=("--redis", redis.url, "--node-ttl", "2", "--node-name", name),
            ))
            for name in ("node-a", "node-b")
        ]
        creator = a.token(agent="creator#1")
        created = [await node.create_room(creator) for node in (a, b, a, b)]
        assert [r.status for r in created] == [201, 201, 201, 429], [r.body for r in created]
        assert created[3].error_code == "rate_limited" and int(created[3].headers["retry-after"]) > 100
        rooms = [r.json() for r in created[:3]]
        # Placement spread them: both nodes' workers charged the one bucket.
        on_a = next(room["room_id"] for room in rooms if room["invite_url"].startswith(a.url))
        on_b = next(room["room_id"] for room in rooms if room["invite_url"].startswith(b.url))
        assert (await b.create_room(a.token(agent="other#1"))).status == 201  # another agent's own budget
        joins = [
            await a.join(a.token(agent="joiner#1"), on_a, agent_id="joiner#1"),
            await b.join(a.token(agent="joiner#1"), on_b, agent_id="joiner#1"),
            await a.join(a.token(agent="joiner#1"), on_b, agent_id="joiner#1"),
        ]
        assert [r.status for r in joins] == [200, 200, 429], [r.body for r in joins]


async def test_the_bucket_refills_and_fails_closed_without_redis(tmp_path):
    async with running_redis(tmp_path) as redis:
        buckets = RedisBuckets(Redis(redis.url, timeout=0.5))
        # One token a second: a busy machine's delays between the calls (ms) cannot refill it.
        limit = RateLimit(rate=1.0, burst=2)
        assert [await buckets.take("t", "agent", limit) for _ in range(2)] == [0.0, 0.0]
        wait = await buckets.take("t", "agent", limit)
        assert 0.5 < wait <= 1.0
        assert await buckets.take("t", "someone else", limit) == 0.0
        await trio.sleep(wait)  # Redis's clock refills one token in `wait`
        assert await buckets.take("t", "agent", limit) == 0.0
        await redis.stop()
        with pytest.raises(ServiceUnavailable) as refused:
            await buckets.take("t", "agent", limit)
        assert refused.value.code == "cluster_unavailable" and refused.value.status == 503
        await buckets.redis.aclose()
