"""Property tests of the jitter buffer over seeded simulated networks and arbitrary input.

Hypothesis draws the network (loss 0-20 %, bursty or not, duplication,
reordering, jitter up to 100 ms from several distributions, delay spikes,
FIFO or not), the numbering (wrapping in the middle of the stream) and the
consumer's phase; the stream is played through ``botcall.demo.netsim`` on a simulated
clock. Invariants checked on every example: order, uniqueness, payload
identity, bounded memory and complete accounting. A separate property shows
the delay tracking the jitter: up during a burst, down again after it.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from botcall.audio.jitter import FrameKind, JitterBuffer
from botcall.wire.rtp import RtpPacket
from botcall.demo.netsim import Burst, Jitter, NetworkProfile, merge_schedule, transmit

FRAME = 0.020
SPF = 960
INDEX = struct.Struct("!I")


def stream(count: int, seq0: int, ts0: int, ssrc: int = 0xC0FFEE) -> list[tuple[float, RtpPacket]]:
    """``count`` packets sent every 20 ms from t=1 s; the payload carries the index."""
    return [
        (
            1.0 + i * FRAME,
            RtpPacket(
                payload_type=111,
                sequence_number=(seq0 + i) & 0xFFFF,
                timestamp=(ts0 + i * SPF) & 0xFFFFFFFF,
                ssrc=ssrc,
                payload=INDEX.pack(i) + b"opus",
            ),
        )
        for i in range(count)
    ]


def total_accounted(jb: JitterBuffer) -> int:
    s = jb.stats
    return (
        s.played + s.discarded + s.late + s.duplicate + s.overflow + s.too_far
        + s.other_ssrc + s.flushed + s.buffered
    )


networks = st.builds(
    NetworkProfile,
    base_delay=st.floats(0.0, 0.100),
    jitter=st.sampled_from(list(Jitter)),
    jitter_mean=st.floats(0.0, 0.100),
    gamma_shape=st.floats(0.5, 4.0),
    loss=st.floats(0.0, 0.20),
    loss_burst=st.sampled_from([1.0, 4.0]),
    duplicate=st.floats(0.0, 0.10),
    reorder=st.floats(0.0, 0.20),
    reorder_extra=st.floats(0.005, 0.150),
    spike_rate=st.sampled_from([0.0, 0.5]),
    fifo=st.booleans(),
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    profile=networks,
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(20, 700),
    wrap_offset=st.integers(-50, 50),
    ts0=st.integers(0, 2**32 - 1),
    phase=st.floats(0.0, FRAME, exclude_max=True),
)
@example(  # Heavy i.i.d. jitter: most packets overtake each other.
    profile=NetworkProfile(jitter=Jitter.EXPONENTIAL, jitter_mean=0.1, loss=0.2, duplicate=0.1),
    seed=1, count=700, wrap_offset=0, ts0=2**32 - 100 * SPF, phase=0.0,
)
@example(  # A denormal jitter mean (once crashed the simulator's gamma draw).
    profile=NetworkProfile(jitter=Jitter.GAMMA, jitter_mean=5e-324), seed=0, count=20, wrap_offset=0, ts0=0, phase=0.0,
)
@example(  # Clean network: everything must be played.
    profile=NetworkProfile(jitter=Jitter.NONE), seed=2, count=300, wrap_offset=0, ts0=0, phase=0.01,
)
def test_simulated_networks_keep_every_invariant(profile, seed, count, wrap_offset, ts0, phase):
    # The numbering wraps in the middle of the stream.
    seq0 = (65536 - count // 2 + wrap_offset) & 0xFFFF
    sent = stream(count, seq0, ts0)
    arrivals = transmit(sent, profile, seed)
    first_arrival: dict[int, float] = {}
    for t, p in arrivals:
        first_arrival.setdefault(INDEX.unpack_from(p.payload)[0], t)

    jb = JitterBuffer()
    last_seq = -1
    played: set[int] = set()
    end = 1.0 + count * FRAME + 1.5 + profile.base_delay + 5 * profile.jitter_mean
    for t, item in merge_schedule(arrivals, FRAME, 1.0 + phase, end):
        if item is not None:
            jb.push(item, t)
            assert len(jb) <= jb.capacity
            continue
        frame = jb.pop(t)
        assert len(jb) <= jb.capacity
        if frame is None:
            continue
        if frame.kind is FrameKind.EXPAND:
            # Waiting claims no number: it is the next one still to come.
            assert frame.sequence > last_seq and frame.payload == b"" and frame.fec_payload is None
            continue
        assert frame.sequence > last_seq  # strictly increasing: nothing twice, nothing backwards
        last_seq = frame.sequence
        if frame.kind is FrameKind.AUDIO:
            i = INDEX.unpack_from(frame.payload)[0]
            assert i not in played
            played.add(i)
            # The frame is the packet its numbers say, and it had arrived.
            assert frame.sequence & 0xFFFF == (seq0 + i) & 0xFFFF
            assert frame.timestamp & 0xFFFFFFFF == (ts0 + i * SPF) & 0xFFFFFFFF
            assert first_arrival[i] <= t
        else:
            assert frame.kind is FrameKind.CONCEAL and frame.payload == b""
            if frame.fec_payload is not None:
                nxt = INDEX.unpack_from(frame.fec_payload)[0]
                assert (seq0 + nxt) & 0xFFFF == (frame.sequence + 1) & 0xFFFF

    s = jb.stats
    assert s.received == len(arrivals)
    assert total_accounted(jb) == s.received
    assert s.played == len(played)
    assert s.lost >= 0 and s.resyncs == 0 and s.other_ssrc == 0
    assert s.jitter >= 0.0
    if profile.jitter is Jitter.NONE and profile.loss == 0 and profile.reorder == 0 and profile.spike_rate == 0:
        # Nothing late or lost on a clean network: every packet is played once,
        # but for the two discarded while the delay shrinks from the initial
        # 60 ms to the 20 ms floor.
        assert (s.late, s.lost, s.concealed) == (0, 0, 0)
        assert s.played + s.discarded == count and s.discarded <= 2


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            st.integers(-3, 8) | st.integers(-40_000, 40_000),  # sequence step
            st.integers(-2000, 2000) | st.integers(0, 2**32 - 1),  # timestamp jitter / garbage
            st.sampled_from([7, 7, 7, 8]),  # SSRC
            st.floats(-0.01, 0.3, allow_nan=False),  # arrival step
        ),
        # A burst of consecutive packets arriving together (a released queue,
        # or a sender far ahead of real time).
        st.tuples(st.just("burst"), st.integers(1, 120)),
        st.tuples(st.just("pop"), st.floats(0.0, 0.2, allow_nan=False)),
        # The consumer's cadence for a while.
        st.tuples(st.just("pops"), st.integers(1, 40)),
    ),
    max_size=300,
)


@given(ops=ops, seq=st.integers(0, 0xFFFF), ts=st.integers(0, 2**32 - 1))
# Regression examples, one per kind of odd input:
@example(  # a sender far ahead of real time, nobody popping: overflow, then play
    ops=[("burst", 120), ("pops", 40), ("burst", 120), ("pops", 40)], seq=65500, ts=2**32 - 5000
)
@example(  # numbering jumping back and forth by half the range while playing
    ops=[("burst", 10), ("pops", 5)] + [("push", 30_000, 0, 7, 0.02), ("push", -30_000, 0, 7, 0.02)] * 4 + [("pops", 20)],
    seq=0, ts=0,
)
@example(  # garbage timestamps with continuous numbering
    ops=[("burst", 10), ("pops", 5)] + [("push", 1, 2**31 + k, 7, 0.02) for k in range(5)] + [("pops", 20)],
    seq=100, ts=0,
)
@example(  # two SSRCs flapping packet by packet, arrival time going backwards
    ops=[("push", 1, 0, 7, 0.02), ("push", 1, 0, 8, -0.01)] * 10 + [("pops", 20)], seq=65535, ts=0
)
@example(  # a long silence then the same stream again, then a duplicate of an old packet
    ops=[("burst", 20), ("pops", 30), ("pop", 0.2), ("push", 1, 0, 7, 5.0), ("pops", 10), ("push", -25, 0, 7, 0.0), ("pops", 5)],
    seq=7, ts=123,
)
def test_arbitrary_input_never_raises_and_stays_bounded(ops, seq, ts):
    jb = JitterBuffer()
    now = 0.0
    last_seq = -1

    def push(seq: int, stamp: int, ssrc: int) -> None:
        jb.push(RtpPacket(111, seq & 0xFFFF, stamp & 0xFFFFFFFF, ssrc, b"x"), now)

    def pop() -> None:
        nonlocal last_seq
        frame = jb.pop(now)
        if frame is not None and frame.kind is not FrameKind.EXPAND:
            assert frame.sequence > last_seq
            last_seq = frame.sequence

    for op in ops:
        if op[0] == "push":
            _, dseq, dts, ssrc, dt = op
            seq += dseq
            now += dt
            push(seq, ts + seq * SPF + dts if abs(dts) <= 2000 else dts, ssrc)
        elif op[0] == "burst":
            for _ in range(op[1]):
                seq += 1
                push(seq, ts + seq * SPF, 7)
        elif op[0] == "pop":
            now += op[1]
            pop()
        else:
            for _ in range(op[1]):
                now += FRAME
                pop()
        assert len(jb) <= jb.capacity
        assert total_accounted(jb) == jb.stats.received
    s = jb.stats
    assert s.lost >= 0
    for counter in ("played", "concealed", "expanded", "late", "duplicate", "discarded", "overflow", "too_far", "other_ssrc", "flushed", "resyncs"):
        if getattr(s, counter):
            event(counter)


# Each example simulates about a minute of audio: a few suffice.
@settings(max_examples=10, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    calm=st.floats(0.001, 0.003),
    burst_mean=st.floats(0.030, 0.060),
    burst_length=st.floats(5.0, 15.0),
    loss=st.floats(0.0, 0.10),
)
def test_delay_grows_during_a_jitter_burst_and_shrinks_after_it(seed, calm, burst_mean, burst_length, loss):
    base = 0.020
    burst_start = 21.0
    burst_end = burst_start + burst_length
    duration = burst_end - 1.0 + 40.0
    profile = NetworkProfile(
        base_delay=base,
        jitter=Jitter.EXPONENTIAL,
        jitter_mean=calm,
        loss=loss,
        bursts=(Burst(burst_start, burst_end, burst_mean / calm),),
    )
    count = int(duration / FRAME)
    arrivals = transmit(stream(count, 1234, 5678), profile, seed)
    jb = JitterBuffer()
    checkpoints = {"before": burst_start, "grown": burst_start + 2.0, "burst_end": burst_end}
    targets = {}
    delays: dict[str, list[float]] = {"burst_tail": [], "after_tail": []}
    for t, item in merge_schedule(arrivals, FRAME, 1.005, 1.0 + duration):
        if item is not None:
            jb.push(item, t)
            continue
        frame = jb.pop(t)
        for key, when in checkpoints.items():
            if key not in targets and t >= when:
                targets[key] = jb.target_delay
        if frame is not None and frame.kind is FrameKind.AUDIO:
            sent_at = 1.0 + INDEX.unpack_from(frame.payload)[0] * FRAME
            if burst_end - 3.0 <= sent_at < burst_end:
                delays["burst_tail"].append(t - sent_at - base)
            elif sent_at >= burst_end + 30.0:
                delays["after_tail"].append(t - sent_at - base)
    after = jb.target_delay
    # Grows quickly: two seconds into the burst the target has at least doubled;
    # by its end it covers twice the burst's mean jitter.
    assert targets["grown"] >= 2 * targets["before"]
    assert targets["burst_end"] >= 2 * burst_mean
    # Shrinks again: 40 s after the burst the target and the actual play-out
    # delay are back below half their burst values.
    assert after <= 0.5 * targets["burst_end"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(delays["after_tail"]) <= 0.5 * mean(delays["burst_tail"])
