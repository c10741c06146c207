"""Unit tests of the adaptive jitter buffer, one behaviour each, on hand-built timelines.

Packets are built directly (``RtpPacket``), sent every 20 ms and delivered at
chosen times; the consumer pops every 20 ms at a fixed phase. Nothing sleeps:
time is the argument.
"""

from __future__ import annotations

import pytest

from botcall.audio.jitter import FrameKind, JitterBuffer, PlayoutFrame
from botcall.wire.rtp import RtpPacket
from botcall.demo.netsim import merge_schedule
from tests.kit.held_up import held_up_ticks

FRAME = 0.020
SPF = 960
SSRC = 0x1234ABCD


def packet(i: int, *, seq0: int = 1000, ts0: int = 50_000, ssrc: int = SSRC, ts: int | None = None) -> RtpPacket:
    """Packet number ``i`` of a stream; its payload names it."""
    return RtpPacket(
        payload_type=111,
        sequence_number=(seq0 + i) & 0xFFFF,
        timestamp=(ts0 + i * SPF if ts is None else ts) & 0xFFFFFFFF,
        ssrc=ssrc,
        payload=b"frame-%d-%x" % (i, ssrc),
    )


def name(i: int, ssrc: int = SSRC) -> bytes:
    return b"frame-%d-%x" % (i, ssrc)


def run(
    jb: JitterBuffer, arrivals: list[tuple[float, RtpPacket]], *, end: float, phase: float = 0.007
) -> list[tuple[float, PlayoutFrame | None]]:
    """Deliver ``arrivals`` and pop every 20 ms from ``phase`` to ``end``; return the pops."""
    pops = []
    for t, item in merge_schedule(sorted(arrivals, key=lambda a: a[0]), FRAME, phase, end):
        if item is None:
            pops.append((t, jb.pop(t)))
        else:
            jb.push(item, t)
            assert len(jb) <= jb.capacity
    return pops


def frames(pops, *kinds: FrameKind) -> list[PlayoutFrame]:
    return [f for _, f in pops if f is not None and (not kinds or f.kind in kinds)]


def played_at(pops) -> dict[int, float]:
    """When each packet (by its number in the stream) was played."""
    return {int(f.payload.split(b"-")[1]): t for t, f in pops if f is not None and f.kind is FrameKind.AUDIO}


def steady(n: int, delay: float = 0.030, **kw) -> list[tuple[float, RtpPacket]]:
    """``n`` packets sent every 20 ms from t=0, each arriving ``delay`` later."""
    return [(i * FRAME + delay, packet(i, **kw)) for i in range(n)]


def pinned(**kw) -> JitterBuffer:
    """A buffer whose target stays at 60 ms on a quiet network (the clamp binds)."""
    return JitterBuffer(min_delay=0.060, initial_delay=0.060, **kw)


def test_in_order_stream_plays_every_frame_in_order_after_the_initial_delay():
    jb = pinned()
    pops = run(jb, steady(100), end=2.5)
    audio = frames(pops, FrameKind.AUDIO)
    assert [f.payload for f in audio] == [name(i) for i in range(100)]
    seqs = [f.sequence for f in audio]
    assert seqs == list(range(seqs[0], seqs[0] + 100))
    assert [s & 0xFFFF for s in seqs] == [1000 + i for i in range(100)]
    assert [f.timestamp & 0xFFFFFFFF for f in audio] == [50_000 + i * SPF for i in range(100)]
    # Nothing is played before the initial 60 ms of delay has built up.
    first_time = next(t for t, f in pops if f is not None)
    assert 0.030 + 0.060 <= first_time < 0.030 + 0.060 + FRAME
    s = jb.stats
    assert (s.played, s.lost, s.late, s.concealed, s.duplicate, s.discarded) == (100, 0, 0, 0, 0, 0)
    assert s.jitter == pytest.approx(0.0, abs=1e-9)
    assert s.received == 100


def test_end_of_stream_expands_briefly_then_goes_idle():
    jb = JitterBuffer(idle_after=0.100)
    pops = run(jb, steady(30), end=2.0)
    last_audio = max(k for k, (_, f) in enumerate(pops) if f is not None and f.kind is FrameKind.AUDIO)
    tail = [f for _, f in pops[last_audio + 1 :]]
    assert [f.kind for f in tail[:5]] == [FrameKind.EXPAND] * 5
    assert all(f is None for f in tail[5:]) and len(tail) > 20
    # The expansions wait for the frame after the last one and claim no number.
    assert {f.sequence for f in tail[:5]} == {frames(pops, FrameKind.AUDIO)[-1].sequence + 1}
    assert jb.stats.lost == 0 and jb.stats.concealed == 0


def test_reordering_within_the_delay_is_undone():
    arrivals = steady(40)
    # Packet 11 overtakes 10, and 21 overtakes both 19 and 20, all within 60 ms.
    arrivals[10] = (10 * FRAME + 0.055, packet(10))
    arrivals[19] = (19 * FRAME + 0.065, packet(19))
    arrivals[20] = (20 * FRAME + 0.050, packet(20))
    jb = pinned()
    pops = run(jb, arrivals, end=1.5)
    assert [f.payload for f in frames(pops, FrameKind.AUDIO)] == [name(i) for i in range(40)]
    assert frames(pops, FrameKind.CONCEAL) == []
    assert jb.stats.late == 0 and jb.stats.played == 40


def test_duplicates_are_counted_not_played():
    arrivals = steady(30)
    arrivals.append((3 * FRAME + 0.031, packet(3)))  # while 3 is still buffered
    arrivals.append((10 * FRAME + 0.300, packet(10)))  # long after 10 was played
    jb = pinned()
    pops = run(jb, arrivals, end=1.2)
    assert [f.payload for f in frames(pops, FrameKind.AUDIO)] == [name(i) for i in range(30)]
    s = jb.stats
    assert (s.duplicate, s.late, s.played, s.received) == (2, 0, 30, 32)


def test_missing_frame_is_concealed_with_the_next_payload_for_fec_then_its_late_arrival_is_counted():
    arrivals = steady(40)
    arrivals[20] = (20 * FRAME + 0.200, packet(20))  # arrives ~140 ms after its slot
    jb = pinned()
    pops = run(jb, arrivals, end=1.5)
    concealed = frames(pops, FrameKind.CONCEAL)
    assert len(concealed) == 1
    (c,) = concealed
    assert c.sequence & 0xFFFF == 1020
    assert c.timestamp & 0xFFFFFFFF == 50_000 + 20 * SPF
    assert c.fec_payload == name(21)  # the successor was buffered: FEC can rebuild 20
    assert c.payload == b""
    audio = frames(pops, FrameKind.AUDIO)
    assert [f.payload for f in audio] == [name(i) for i in range(40) if i != 20]
    sequence = [f.sequence for f in frames(pops, FrameKind.AUDIO, FrameKind.CONCEAL)]
    assert sequence == sorted(set(sequence))  # the late copy of 20 was never played
    s = jb.stats
    assert (s.concealed, s.late, s.lost, s.played) == (1, 1, 0, 39)


def test_a_lost_frame_without_a_buffered_successor_gets_no_fec_payload():
    arrivals = [a for a in steady(40) if a[1] is not None]
    del arrivals[20]  # 20 never arrives
    # Frame i plays at 0.107 + 0.02 i; 21 arrives just after 20's slot.
    arrivals[20] = (21 * FRAME + 0.090, packet(21))
    jb = pinned(wait_margin=0.0)
    pops = run(jb, arrivals, end=1.5)
    (c,) = frames(pops, FrameKind.CONCEAL)
    assert c.sequence & 0xFFFF == 1020 and c.fec_payload is None
    assert jb.stats.lost == 1 and jb.stats.late == 0


def test_waiting_once_saves_a_slightly_late_frame_whose_successor_is_also_late():
    arrivals = steady(40)
    # 20 and 21 both arrive 10 ms after 20's slot: nothing to conceal 20 from.
    arrivals[20] = (20 * FRAME + 0.105, packet(20))
    arrivals[21] = (20 * FRAME + 0.106, packet(21))
    jb = pinned()
    pops = run(jb, arrivals, end=1.5)
    assert [f.payload for f in frames(pops, FrameKind.AUDIO)] == [name(i) for i in range(40)]
    assert jb.stats.expanded >= 1 and jb.stats.late == 0 and jb.stats.concealed == 0


def test_sequence_and_timestamp_wrap_around():
    seq0, ts0 = 65530, (1 << 32) - 3 * SPF
    arrivals = [(i * FRAME + 0.030, packet(i, seq0=seq0, ts0=ts0)) for i in range(20)]
    arrivals[5], arrivals[6] = (6 * FRAME + 0.031, packet(5, seq0=seq0, ts0=ts0)), arrivals[6]
    jb = JitterBuffer()
    pops = run(jb, arrivals, end=1.0)
    audio = frames(pops, FrameKind.AUDIO)
    assert [f.payload for f in audio] == [name(i) for i in range(20)]
    seqs = [f.sequence for f in audio]
    assert seqs == list(range(seqs[0], seqs[0] + 20))
    assert [s & 0xFFFF for s in seqs] == [(seq0 + i) & 0xFFFF for i in range(20)]
    assert 0 in [s & 0xFFFF for s in seqs]
    stamps = [f.timestamp for f in audio]
    assert all(b - a == SPF for a, b in zip(stamps, stamps[1:]))
    assert jb.stats.late == 0 and jb.stats.resyncs == 0


def test_a_packet_reordered_from_before_the_first_one_is_still_played():
    arrivals = steady(20)
    arrivals[0] = (0.045, packet(0))  # overtaken by packet 1, which starts the stream
    jb = pinned()
    pops = run(jb, arrivals, end=1.0)
    assert [f.payload for f in frames(pops, FrameKind.AUDIO)] == [name(i) for i in range(20)]


def test_ssrc_change_resyncs_to_the_new_stream():
    a = steady(30)
    b_start = 30 * FRAME + 0.3
    b = [(b_start + i * FRAME + 0.030, packet(i, seq0=7, ts0=999_999, ssrc=0xB)) for i in range(30)]
    jb = pinned()
    pops = run(jb, a + b, end=b_start + 1.2)
    audio = frames(pops, FrameKind.AUDIO)
    assert [f.payload for f in audio] == [name(i) for i in range(30)] + [name(i, 0xB) for i in range(30)]
    s = jb.stats
    assert s.resyncs == 1 and s.other_ssrc == 0 and s.flushed == 0 and s.played == 60


def test_a_stray_packet_of_another_ssrc_does_not_take_over():
    arrivals = steady(40)
    stray = packet(3, seq0=9, ts0=1, ssrc=0xBAD)
    arrivals.append((10 * FRAME + 0.031, stray))
    jb = pinned()
    pops = run(jb, arrivals, end=1.5)
    assert [f.payload for f in frames(pops, FrameKind.AUDIO)] == [name(i) for i in range(40)]
    assert jb.stats.other_ssrc == 1 and jb.stats.resyncs == 0


def test_a_new_ssrc_interleaved_with_the_playing_one_waits_until_it_goes_quiet():
    a = steady(60)
    b = [(0.5 + i * FRAME + 0.0301, packet(i, seq0=7, ts0=1, ssrc=0xB)) for i in range(40)]
    jb = pinned()
    pops = run(jb, a + b, end=2.0)
    audio = [f.payload for f in frames(pops, FrameKind.AUDIO)]
    from_a = [p for p in audio if not p.endswith(b"-b")]
    from_b = [int(p.split(b"-")[1]) for p in audio if p.endswith(b"-b")]
    # While a keeps sending, b never takes over (each a packet resets b's run);
    # three b packets in a row after a's last one switch, flushing a's tail.
    assert audio == from_a + [name(i, 0xB) for i in from_b]
    a_end = 59 * FRAME + 0.030
    first_b_after_a = min(i for i in range(40) if b[i][0] > a_end)
    assert from_b == list(range(first_b_after_a + 2, 40))
    s = jb.stats
    assert s.resyncs == 1
    assert from_a == [name(i) for i in range(60 - s.flushed)] and 1 <= s.flushed <= 4
    assert s.other_ssrc == first_b_after_a + 2


def test_three_packets_of_a_new_ssrc_in_a_row_take_over_a_stalled_stream():
    a = steady(20)
    # a stalls 50 ms (less than idle_after) while b sends three packets.
    b = [(20 * FRAME + 0.030 + k * 0.010, packet(k, seq0=7, ts0=1, ssrc=0xB)) for k in range(30)]
    jb = pinned()
    pops = run(jb, a + b, end=1.5)
    audio = [f.payload for f in frames(pops, FrameKind.AUDIO)]
    assert [p for p in audio if p.endswith(b"-b")] == [name(k, 0xB) for k in range(2, 30)]
    assert jb.stats.other_ssrc == 2 and jb.stats.resyncs == 1


def test_numbering_jump_after_silence_restarts_play_out_and_keeps_statistics():
    first = steady(50)
    # One second of silence, then the numbering jumps by 10000 (a restarted
    # encoder) while the timestamps stay consistent with the clock.
    resume = 50 * FRAME + 1.0
    second = [
        (resume + i * FRAME + 0.030, packet(10_000 + i, ts=50_000 + round((resume + i * FRAME) * 48000)))
        for i in range(30)
    ]
    jb = pinned()
    pops = run(jb, first + second, end=resume + 1.0)
    audio = frames(pops, FrameKind.AUDIO)
    assert [f.payload for f in audio] == [name(i) for i in range(50)] + [name(10_000 + i) for i in range(30)]
    s = jb.stats
    assert s.resyncs == 1 and s.too_far == 0 and s.late == 0 and s.concealed == 0


def test_numbering_jump_while_playing_needs_three_packets_then_flushes():
    arrivals = steady(40)
    jumped = [(i * FRAME + 0.030, packet(30_000 + i)) for i in range(40, 80)]
    jb = pinned()
    pops = run(jb, arrivals + jumped, end=2.0)
    audio = frames(pops, FrameKind.AUDIO)
    s = jb.stats
    assert s.resyncs == 1 and s.too_far == 2
    assert [f.payload for f in audio if f.payload.startswith(b"frame-300")] == [
        name(30_000 + i) for i in range(42, 80)
    ]
    assert s.received == s.played + s.too_far + s.flushed + s.buffered + s.discarded + s.late


def test_timestamp_jump_resyncs_the_timing():
    arrivals = steady(40)
    # From packet 40 on, the timestamps jump by 2^31 (another clock), numbering continues.
    jumped = [(i * FRAME + 0.030, packet(i, ts=50_000 + (1 << 31) + i * SPF)) for i in range(40, 90)]
    jb = pinned()
    pops = run(jb, arrivals + jumped, end=2.5)
    payloads = [f.payload for f in frames(pops, FrameKind.AUDIO)]
    assert payloads[:38] == [name(i) for i in range(38)]
    assert payloads[-40:] == [name(i) for i in range(50, 90)]
    s = jb.stats
    assert s.resyncs == 1 and s.too_far == 2


def test_silence_goes_idle_then_the_next_talk_spurt_restarts_on_target():
    first = steady(50)
    gap = 3.0
    # Same numbering, timestamps follow the clock (a bot that stopped sending).
    second = [(gap + 50 * FRAME + i * FRAME + 0.030, packet(50 + i, ts=50_000 + (50 + i) * SPF + int(gap * 48000))) for i in range(50)]
    jb = pinned()
    pops = run(jb, first + second, end=gap + 3.0)
    assert [f.payload for f in frames(pops, FrameKind.AUDIO)] == [name(i) for i in range(100)]
    kinds = [None if f is None else f.kind for _, f in pops]
    first_end = max(k for k, f in enumerate(kinds) if f is FrameKind.AUDIO and k < len(kinds) // 2)
    assert kinds[first_end + 1 : first_end + 6] == [FrameKind.EXPAND] * 5
    assert frames(pops, FrameKind.CONCEAL) == []
    # The restart waited for the target delay again: its first frame plays 60-80 ms
    # after arriving, like the very first one.
    resume_time = next(t for t, f in pops if f is not None and f.payload == name(50))
    assert 0.060 <= resume_time - second[0][0] < 0.080
    s = jb.stats
    # Five expansions after each talk spurt, nothing else.
    assert (s.lost, s.late, s.played, s.expanded) == (0, 0, 100, 10)


def test_dtx_timestamp_gap_is_rendered_as_silence_not_concealment():
    # Packet 30 comes 100 ms (5 frames) of silence later: the timestamp jumps,
    # the sequence number does not (Opus DTX).
    arrivals = steady(30)
    shift = 5 * FRAME
    arrivals += [(i * FRAME + shift + 0.030, packet(i, ts=50_000 + i * SPF + 5 * SPF)) for i in range(30, 60)]
    jb = pinned()
    pops = run(jb, arrivals, end=2.0)
    assert [f.payload for f in frames(pops, FrameKind.AUDIO)] == [name(i) for i in range(60)]
    assert frames(pops, FrameKind.CONCEAL) == []
    s = jb.stats
    assert s.lost == 0 and s.late == 0
    kinds = [None if f is None else (f.kind, f.payload) for _, f in pops]
    pause = kinds[kinds.index((FrameKind.AUDIO, name(29))) + 1 : kinds.index((FrameKind.AUDIO, name(30)))]
    assert 5 <= len(pause) <= 6 and all(k is None or k[0] is FrameKind.EXPAND for k in pause)
    # The delay after the pause is the same as before it.
    played = played_at(pops)
    assert played[29] - 29 * FRAME == pytest.approx(played[30] - (30 * FRAME + shift), abs=1e-9)


def test_delay_grows_when_the_network_delay_steps_up():
    # Constant 30 ms, then from packet 100 on, 150 ms: the buffer waits for the
    # late frames (expansions) instead of losing them all.
    arrivals = [(i * FRAME + (0.030 if i < 100 else 0.150), packet(i)) for i in range(300)]
    jb = pinned()
    pops = run(jb, arrivals, end=7.0)
    s = jb.stats
    assert s.late == 0 and s.lost == 0
    assert s.expanded >= 6
    assert [f.payload for f in frames(pops, FrameKind.AUDIO)] == [name(i) for i in range(300)]


def test_target_shrinks_by_discarding_when_far_above_it():
    # A 200 ms initial target on a jitter-free network: once warm, the target is
    # the 20 ms floor, so the buffer catches up by discarding frames at once.
    jb = JitterBuffer(initial_delay=0.200)
    pops = run(jb, steady(200), end=4.5)
    s = jb.stats
    assert s.target_delay == pytest.approx(0.020)
    assert 6 <= s.discarded <= 9
    audio = frames(pops, FrameKind.AUDIO)
    last_time = next(t for t, f in reversed(pops) if f is not None and f.kind is FrameKind.AUDIO)
    assert last_time - (199 * FRAME + 0.030) < s.target_delay + 2 * FRAME
    assert len(audio) + s.discarded == 200
    assert [f.sequence for f in audio] == sorted(f.sequence for f in audio)


def test_slow_shrink_discards_one_frame_per_interval():
    jb = JitterBuffer(initial_delay=0.200, catchup_margin=1.0, shrink_interval=1.0)
    run(jb, steady(260), end=5.7)
    # Above target from ~1.1 s (warm-up) on: one discard per second.
    assert 3 <= jb.stats.discarded <= 5


def test_a_missing_frame_is_skipped_without_concealment_when_a_frame_above_target():
    arrivals = [a for i, a in enumerate(steady(200)) if i != 150]
    jb = JitterBuffer(initial_delay=0.200, catchup_margin=1.0, shrink_interval=100.0)
    pops = run(jb, arrivals, end=4.5)
    s = jb.stats
    assert s.concealed == 0 and s.lost == 1 and s.discarded == 0
    assert name(150) not in [f.payload for f in frames(pops)]
    # The skip cut the delay by one frame.
    played = played_at(pops)
    delay_before = played[149] - 149 * FRAME
    delay_after = played[151] - 151 * FRAME
    assert delay_after == pytest.approx(delay_before - FRAME, abs=1e-9)


def test_overflow_keeps_the_buffer_bounded_and_plays_the_newest():
    jb = JitterBuffer()
    for i in range(1000):
        jb.push(packet(i), i * FRAME)
        assert len(jb) <= jb.capacity
    s = jb.stats
    assert s.overflow == 1000 - jb.capacity and len(jb) == jb.capacity
    now = 1000 * FRAME
    played = []
    for k in range(jb.capacity):
        f = jb.pop(now + k * FRAME)
        if f is not None and f.kind is FrameKind.AUDIO:
            played.append(f.payload)
    assert played and played == [name(i) for i in range(1000 - len(played), 1000)]


def test_rfc3550_jitter_follows_the_recursive_estimator():
    # Transit alternates 0 / 10 ms: every |D| is 10 ms (RFC 3550 §6.4.1).
    arrivals = [(i * FRAME + 0.020 + (0.010 if i % 2 else 0.0), packet(i)) for i in range(40)]
    jb = JitterBuffer()
    for t, p in arrivals:
        jb.push(p, t)
    expected = 0.0
    for _ in range(39):
        expected += (0.010 - expected) / 16
    assert jb.stats.jitter == pytest.approx(expected, rel=1e-9)


def test_stats_snapshot_is_frozen_and_consistent():
    jb = JitterBuffer()
    run(jb, steady(10), end=0.15)
    s = jb.stats
    with pytest.raises(AttributeError):
        s.played = 5  # type: ignore[misc]
    assert s.buffered == len(jb) and s.received == s.played + s.buffered
    assert s.buffered_delay == pytest.approx(s.buffered * FRAME)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clock_rate": 0},
        {"frame_duration": 0.0},
        {"min_delay": 0.3, "max_delay": 0.2},
        {"capacity": 5},
        {"quantile": 1.0},
        {"forget_factor": 0.0},
    ],
)
def test_unworkable_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        JitterBuffer(**kwargs)


def test_nothing_to_play_before_any_packet():
    jb = JitterBuffer()
    assert jb.pop(0.0) is None
    assert jb.stats.target_delay == pytest.approx(0.060)


def test_buffered_delay_while_idle_is_the_span_of_what_is_held():
    jb = pinned()
    run(jb, steady(30), end=1.5)  # played out, expanded, now idle
    assert jb.stats.buffered == 0 and jb.stats.buffered_delay == 0.0
    for i in (40, 42):  # the stream comes back; nothing popped yet
        jb.push(packet(i), 2.0 + (i - 40) * FRAME)
    assert jb.stats.buffered_delay == pytest.approx(3 * FRAME)


def _held_up_consumer(buffer: JitterBuffer, frames: int, stall_at: int, stall: float) -> list[PlayoutFrame]:
    """Packets every 20 ms; pops every 20 ms except one ``stall`` late, then back to back."""
    out: list[PlayoutFrame] = []
    for now, arrived in held_up_ticks(frames, frames + 20, stall_at, stall):
        for k in arrived:
            buffer.push(packet(k), k * 0.02)
        frame = buffer.pop(now)
        if frame is not None:
            out.append(frame)
    return out


def test_stall_margin_plays_a_held_up_pops_backlog_and_only_that():
    """``stall_margin`` keeps what a stall piled up (the default cuts it at 20 ms);
    an excess that did not jump (the start-up target falling) is cut as before."""
    steady = JitterBuffer(stall_margin=0.25)
    _held_up_consumer(steady, 200, 60, 0.0)
    stalled = JitterBuffer(stall_margin=0.25)
    _held_up_consumer(stalled, 200, 60, 0.15)
    old = JitterBuffer()
    _held_up_consumer(old, 200, 60, 0.15)
    assert stalled.stats.discarded == steady.stats.discarded  # nothing lost to the stall
    assert old.stats.discarded >= steady.stats.discarded + 3  # the default drops the backlog
    unstalled_default = JitterBuffer()
    _held_up_consumer(unstalled_default, 200, 60, 0.0)
    assert steady.stats.discarded == unstalled_default.stats.discarded  # in-order: as before
