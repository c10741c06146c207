"""Token buckets (sans-IO): per agent and per client IP, for room creation, joins and queries.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second;
each request takes one. ``BucketTable`` keeps one bucket per key in a bounded,
least-recently-used ordered table. A bucket that has refilled completely is
indistinguishable from a fresh one, so it can be dropped at any time; when the
table is full of buckets that are still refilling, new keys are refused (fail
closed) rather than evicting a bucket, because evicting would hand a flooding
client a fresh burst.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from botcall.config import Config, RateLimit
from botcall.errors import RateLimited

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class TokenBucket:
    """One bucket. ``tokens`` is the level at ``updated_at``."""

    tokens: float
    updated_at: float

    def level(self, limit: RateLimit, now: float) -> float:
        """Tokens available at ``now``."""
        elapsed = max(0.0, now - self.updated_at)
        return min(float(limit.burst), self.tokens + elapsed * limit.rate)

    def take(self, limit: RateLimit, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens if available.

        Returns:
            0.0 when granted; otherwise the seconds until ``cost`` tokens will be there
            (nothing is taken then).
        """
        level = self.level(limit, now)
        if now > self.updated_at:
            self.updated_at = now
        self.tokens = level
        if level >= cost:
            self.tokens = level - cost
            return 0.0
        return (cost - level) / limit.rate

    def refill_time(self, limit: RateLimit, now: float) -> float:
        """Seconds until this bucket is full again."""
        return max(0.0, (limit.burst - self.level(limit, now)) / limit.rate)


class BucketTable(Generic[K]):
    """Buckets by key with a hard size limit.

    Args:
        limit: rate and burst shared by every bucket.
        max_entries: the most buckets kept at once.
    """

    def __init__(self, limit: RateLimit, max_entries: int) -> None:
        self.limit = limit
        self.max_entries = max_entries
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: K, now: float) -> float:
        """Take one token from ``key``'s bucket.

        Returns:
            0.0 when granted, else the seconds to wait before retrying.
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                self._drop_refilled_front(now)
            if len(self._buckets) >= self.max_entries:
                # The least recently used bucket is the first that can make room.
                oldest = next(iter(self._buckets.values()))
                return oldest.refill_time(self.limit, now)
            bucket = TokenBucket(tokens=float(self.limit.burst), updated_at=now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        return bucket.take(self.limit, now)

    def _drop_refilled_front(self, now: float) -> None:
        # The front holds the least recently used buckets, the likeliest to be full.
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if bucket.level(self.limit, now) < self.limit.burst:
                return
            del self._buckets[key]

    def prune(self, now: float) -> int:
        """Drop every bucket that has refilled completely. Returns how many."""
        full = [k for k, b in self._buckets.items() if b.level(self.limit, now) >= self.limit.burst]
        for key in full:
            del self._buckets[key]
        return len(full)


class SharedBuckets(Protocol):
    """Buckets every node of a cluster shares (``--redis``: ``cluster/buckets.py``).

    ``take`` charges one request to bucket ``name`` of ``key`` (both plain text),
    refilled by ``limit``; it returns 0.0 when granted, else the seconds to wait,
    and raises ``ServiceUnavailable`` (``cluster_unavailable``) when the shared
    store cannot be reached: a limit that must be global is not silently
    loosened to a per-worker one.
    """

    async def take(self, name: str, key: str, limit: RateLimit) -> float: ...


@dataclass(frozen=True)
class Limiters:
    """All the API's buckets. Each ``check_*`` raises ``RateLimited`` (429 + Retry-After) or returns."""

    create_per_agent: BucketTable[tuple[str, str]]
    create_per_ip: BucketTable[str]
    join_per_agent: BucketTable[tuple[str, str]]
    join_per_ip: BucketTable[str]
    query_per_ip: BucketTable[str]

    @classmethod
    def from_config(cls, config: Config) -> Limiters:
        """Build the tables from ``config``'s limits."""
        size = config.rate_limit_table_max
        return cls(
            create_per_agent=BucketTable(config.create_limit_per_agent, size),
            create_per_ip=BucketTable(config.create_limit_per_ip, size),
            join_per_agent=BucketTable(config.join_limit_per_agent, size),
            join_per_ip=BucketTable(config.join_limit_per_ip, size),
            query_per_ip=BucketTable(config.query_limit_per_ip, size),
        )

    @staticmethod
    def _check(table: BucketTable[K], key: K, now: float, what: str) -> None:
        wait = table.take(key, now)
        if wait > 0:
            raise RateLimited(f"too many {what}; retry in {math.ceil(wait)} s", retry_after=wait)

    def check_create(self, *, ip: str | None = None, agent: tuple[str, str] | None = None, now: float) -> None:
        """Charge one room creation to ``ip`` and/or ``agent`` (``(issuer, sub)``)."""
        if ip is not None:
            self._check(self.create_per_ip, ip, now, "room creations from this address")
        if agent is not None:
            self._check(self.create_per_agent, agent, now, "room creations by this agent")

    def check_join(self, *, ip: str | None = None, agent: tuple[str, str] | None = None, now: float) -> None:
        """Charge one join to ``ip`` and/or ``agent``."""
        if ip is not None:
            self._check(self.join_per_ip, ip, now, "joins from this address")
        if agent is not None:
            self._check(self.join_per_agent, agent, now, "joins by this agent")

    def check_query(self, *, ip: str, now: float) -> None:
        """Charge one room query or deletion to ``ip``."""
        self._check(self.query_per_ip, ip, now, "room requests from this address")

    def prune(self, now: float) -> int:
        """Drop refilled buckets from every table."""
        tables = (self.create_per_agent, self.create_per_ip, self.join_per_agent, self.join_per_ip, self.query_per_ip)
        return sum(table.prune(now) for table in tables)
