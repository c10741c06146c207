"""Rate-limit buckets every node shares, in Redis (``--redis``).

The per-agent limits on room creation and joins (``create_limit_per_agent``,
``join_limit_per_agent``) must hold for the whole cluster: an agent must not
get N times its budget by spreading requests over N workers or nodes. Each is
a token bucket in one Redis hash, ``botcall:rl:<name>:<sha256(key)>``
(``tokens``, ``at``), taken by one Lua script: atomic, so two nodes charging
the same agent at once cannot both spend the last token, and timed by Redis's
own ``TIME``, so the nodes' clocks need not agree. The hash expires once the
bucket would be full again (an idle agent costs nothing).

Redis unreachable: ``503 cluster_unavailable`` (fail closed). Creates and
joins need Redis anyway in clustered mode (placement, the shared replay
claim), so falling back to per-worker buckets would loosen the limit for
nothing.
"""

from __future__ import annotations

import hashlib

from botcall.cluster.nodes import PREFIX
from botcall.cluster.resp import Redis, RedisUnavailable
from botcall.config import RateLimit
from botcall.errors import ServiceUnavailable

# KEYS: the bucket. ARGV: rate (tokens/s), burst. Returns the seconds to wait
# (as a string: Lua numbers reach RESP as integers), "0" when granted.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or burst
local at = tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisBuckets:
    """``auth.ratelimit.SharedBuckets`` in Redis (see the module docstring).

    Args:
        redis: the connection (its own: a worker's, not the supervisor's).
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    @staticmethod
    def key(name: str, key: str) -> str:
        return PREFIX + f"rl:{name}:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    async def take(self, name: str, key: str, limit: RateLimit) -> float:
        """Take one token; 0.0 when granted, else the seconds to wait.

        Raises:
            ServiceUnavailable: ``cluster_unavailable`` (``Retry-After: 2``): Redis did not answer.
        """
        try:
            reply = await self.redis.execute("EVAL", _TAKE, 1, self.key(name, key), repr(limit.rate), limit.burst)
        except RedisUnavailable as exc:
            raise ServiceUnavailable(
                "the cluster's rate limits (Redis) cannot be reached; retry shortly",
                code="cluster_unavailable", headers={"Retry-After": "2"},
            ) from exc
        return float(reply)
