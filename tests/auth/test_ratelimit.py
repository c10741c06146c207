"""Token buckets and their bounded tables (sans-IO, time as an argument)."""

from __future__ import annotations

import pytest

from botcall.auth.ratelimit import BucketTable, Limiters, TokenBucket
from botcall.config import Config, RateLimit
from botcall.errors import RateLimited


def test_bucket_allows_a_burst_then_refills_at_the_rate():
    limit = RateLimit(rate=2.0, burst=3)
    bucket = TokenBucket(tokens=3, updated_at=100.0)
    assert [bucket.take(limit, 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(limit, 100.0) == pytest.approx(0.5)
    assert bucket.take(limit, 100.25) == pytest.approx(0.25)  # half a token there, nothing taken
    assert bucket.take(limit, 100.5) == 0.0
    assert bucket.take(limit, 100.5) == pytest.approx(0.5)
    # Refill stops at the burst size.
    assert bucket.level(limit, 1000.0) == 3


def test_bucket_ignores_a_clock_that_goes_backwards():
    limit = RateLimit(rate=1.0, burst=1)
    bucket = TokenBucket(tokens=0, updated_at=50.0)
    assert bucket.take(limit, 40.0) == pytest.approx(1.0)
    assert bucket.take(limit, 51.0) == 0.0


def test_table_keeps_separate_buckets_per_key():
    table = BucketTable(RateLimit(rate=1.0, burst=2), max_entries=10)
    assert table.take("a", 0) == table.take("a", 0) == 0.0
    assert table.take("a", 0) == pytest.approx(1.0)
    assert table.take("b", 0) == 0.0


def test_full_table_drops_refilled_buckets_but_never_a_draining_one():
    table = BucketTable(RateLimit(rate=1.0, burst=2), max_entries=2)
    table.take("a", 0.0)
    table.take("b", 0.0)
    # Both still refilling at t=0.5: a new key is refused (fail closed), with a wait.
    wait = table.take("c", 0.5)
    assert wait == pytest.approx(0.5) and len(table) == 2
    # "a" keeps its state: it is not reset by the pressure.
    assert table.take("a", 0.5) == 0.0
    # At t=3 both are full again and indistinguishable from absent: "c" gets a slot.
    assert table.take("c", 3.0) == 0.0
    assert len(table) <= 2


def test_prune_drops_only_full_buckets():
    table = BucketTable(RateLimit(rate=0.1, burst=5), max_entries=100)
    for key in range(10):
        table.take(key, 0.0)  # each at 4 tokens, full again at t=10
    table.take(0, 3.0)  # key 0 drained again: 3.3 tokens, full at t=20
    assert table.prune(9.9) == 0
    assert table.prune(10.0) == 9
    assert len(table) == 1
    assert table.prune(20.0) == 1


def test_limiters_raise_rate_limited_with_retry_after():
    config = Config(
        data_dir="/nonexistent",
        join_limit_per_ip=RateLimit(rate=0.1, burst=1),
        join_limit_per_agent=RateLimit(rate=1.0, burst=1),
    )
    limiters = Limiters.from_config(config)
    limiters.check_join(ip="10.0.0.1", agent=("iss", "a"), now=0)
    with pytest.raises(RateLimited) as info:
        limiters.check_join(ip="10.0.0.1", now=0.5)
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "10"
    with pytest.raises(RateLimited) as info:
        limiters.check_join(agent=("iss", "a"), now=0.5)
    assert info.value.headers["Retry-After"] == "1"
    limiters.check_join(ip="10.0.0.2", agent=("iss", "b"), now=0.5)
