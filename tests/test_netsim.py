"""The seeded network simulator (``botcall/demo/netsim.py``) does what its profile says."""

from __future__ import annotations

import statistics

import pytest

from botcall.demo.netsim import Burst, Jitter, NetworkProfile, SimLink, merge_schedule, transmit

TICK = 0.020


def items(n: int, start: float = 0.0) -> list[tuple[float, int]]:
    return [(start + i * TICK, i) for i in range(n)]


def delays(arrivals, start: float = 0.0) -> dict[int, float]:
    out: dict[int, float] = {}
    for t, i in arrivals:
        out.setdefault(i, t - (start + i * TICK))
    return out


def test_same_seed_same_trace_other_seed_other_trace():
    profile = NetworkProfile(jitter_mean=0.02, loss=0.1, duplicate=0.05, reorder=0.1, spike_rate=0.5)
    a = transmit(items(2000), profile, seed=9)
    assert a == transmit(items(2000), profile, seed=9)
    assert a != transmit(items(2000), profile, seed=10)


@pytest.mark.parametrize("kind", [Jitter.EXPONENTIAL, Jitter.GAMMA, Jitter.UNIFORM])
def test_jitter_has_the_requested_mean_and_rfc3550_jitter(kind):
    profile = NetworkProfile(base_delay=0.030, jitter=kind, jitter_mean=0.020)
    d = delays(transmit(items(20_000), profile, seed=1))
    extra = [d[i] - 0.030 for i in range(20_000)]
    assert min(extra) >= 0.0
    assert statistics.fmean(extra) == pytest.approx(0.020, rel=0.05)
    mean_abs_diff = statistics.fmean(abs(a - b) for a, b in zip(extra, extra[1:]))
    if kind is Jitter.EXPONENTIAL:
        # For i.i.d. exponential delays E|X1 - X2| equals the mean: RFC 3550 jitter ~ J.
        assert mean_abs_diff == pytest.approx(0.020, rel=0.05)


def test_no_jitter_is_a_pure_delay():
    d = delays(transmit(items(100), NetworkProfile(base_delay=0.05, jitter=Jitter.NONE), seed=1))
    assert all(v == pytest.approx(0.05) for v in d.values())


def test_iid_loss_rate():
    link = SimLink(NetworkProfile(loss=0.15), seed=3)
    for t, i in items(20_000):
        link.send(i, t)
    assert link.lost / link.sent == pytest.approx(0.15, abs=0.01)
    assert len(link.deliver(1e9)) == 20_000 - link.lost


def test_bursty_loss_keeps_the_average_and_the_burst_length():
    arrivals = transmit(items(50_000), NetworkProfile(loss=0.10, loss_burst=4.0), seed=4)
    received = {i for _, i in arrivals}
    lost = [i for i in range(50_000) if i not in received]
    assert len(lost) / 50_000 == pytest.approx(0.10, abs=0.015)
    runs = []
    run = 1
    for a, b in zip(lost, lost[1:]):
        if b == a + 1:
            run += 1
        else:
            runs.append(run)
            run = 1
    assert statistics.fmean(runs) == pytest.approx(4.0, rel=0.15)


def test_duplicates_arrive_twice():
    link = SimLink(NetworkProfile(duplicate=0.2, jitter_mean=0.01), seed=5)
    for t, i in items(5000):
        link.send(i, t)
    arrivals = link.deliver(1e9)
    assert len(arrivals) == 5000 + link.duplicated
    assert link.duplicated / 5000 == pytest.approx(0.2, abs=0.02)
    counts = {}
    for _, i in arrivals:
        counts[i] = counts.get(i, 0) + 1
    assert max(counts.values()) == 2 and sum(1 for c in counts.values() if c == 2) == link.duplicated


def test_outages_hold_packets_and_release_them_in_a_burst():
    profile = NetworkProfile(base_delay=0.020, jitter=Jitter.NONE, spike_rate=0.5, spike_min=0.1, spike_max=0.1)
    d = delays(transmit(items(5000), profile, seed=6))
    held = [i for i in range(5000) if d[i] > 0.020 + 1e-9]
    assert held, "no outage in 100 s at one per 2 s"
    # Inside one outage the delay falls by one send interval per packet and all
    # of them arrive at the same moment (the end of the outage).
    first = held[0]
    outage = [i for i in held if i - first < 5]
    assert [round(d[i] - d[first], 9) for i in outage] == [round(-TICK * (i - first), 9) for i in outage]
    assert len({round(i * TICK + d[i], 9) for i in outage}) == 1
    assert max(d.values()) <= 0.020 + 0.1 + 1e-9


def test_fifo_never_reorders():
    arrivals = transmit(items(5000), NetworkProfile(jitter_mean=0.05, fifo=True), seed=7)
    assert [i for _, i in arrivals] == list(range(5000))
    shuffled = transmit(items(5000), NetworkProfile(jitter_mean=0.05), seed=7)
    assert [i for _, i in shuffled] != list(range(5000))


def test_reorder_adds_the_extra_delay_to_some_packets():
    d = delays(transmit(items(10_000), NetworkProfile(jitter=Jitter.NONE, reorder=0.1, reorder_extra=0.07), seed=8))
    late = [i for i, v in d.items() if v > 0.021]
    assert len(late) / 10_000 == pytest.approx(0.1, abs=0.01)
    assert all(d[i] == pytest.approx(0.02 + 0.07) for i in late)


def test_bursts_scale_the_jitter_inside_their_window():
    profile = NetworkProfile(base_delay=0.0, jitter_mean=0.002, bursts=(Burst(20.0, 40.0, 10.0),))
    d = delays(transmit(items(3000), profile, seed=9))
    inside = [d[i] for i in range(3000) if 20.0 <= i * TICK < 40.0]
    outside = [d[i] for i in range(3000) if not 20.0 <= i * TICK < 40.0]
    assert statistics.fmean(inside) == pytest.approx(0.020, rel=0.1)
    assert statistics.fmean(outside) == pytest.approx(0.002, rel=0.1)


def test_deliver_returns_only_what_is_due_in_arrival_order():
    link = SimLink(NetworkProfile(jitter_mean=0.03), seed=10)
    for t, i in items(500):
        link.send(i, t)
    got = []
    now = 0.0
    while link.next_arrival() is not None:
        now += 0.005
        batch = link.deliver(now)
        assert all(t <= now for t, _ in batch)
        assert link.next_arrival() is None or link.next_arrival() > now
        got.extend(batch)
    assert [t for t, _ in got] == sorted(t for t, _ in got)
    assert sorted(i for _, i in got) == list(range(500))


def test_sending_back_in_time_is_refused():
    link = SimLink(NetworkProfile(), seed=1)
    link.send("a", 1.0)
    with pytest.raises(ValueError):
        link.send("b", 0.5)


def test_merge_schedule_interleaves_arrivals_before_ticks_at_the_same_time():
    arrivals = [(0.0, "a"), (0.02, "b"), (0.021, "c")]
    events = list(merge_schedule(arrivals, 0.02, 0.0, 0.05))
    assert events == [(0.0, "a"), (0.0, None), (0.02, "b"), (0.02, None), (0.021, "c"), (0.04, None)]
