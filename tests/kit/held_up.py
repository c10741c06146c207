"""A 20 ms consumer held up once, on a fake clock: the schedule the stall tests share
(the mix, paced pcm16, the jitter buffer's ``stall_margin``)."""

from __future__ import annotations

from collections.abc import Iterator

FRAME = 0.02


def held_up_ticks(packets: int, ticks: int, stall_at: int, stall: float) -> Iterator[tuple[float, range]]:
    """Packets arrive every 20 ms (packet ``k`` at ``20k`` ms); the consumer's tick
    comes every 20 ms too, except tick ``stall_at``, ``stall`` seconds late (its
    process descheduled), after which it pops back to back until its schedule is
    current (``_pcm_out``'s loop, whose ``sleep_until`` returns at once when late).

    Yields:
        Per tick: its time, and the packets that arrived since the last tick
        (push each with its own arrival time, ``k * FRAME``).
    """
    clock = 0.0
    pushed = 0
    for k in range(ticks):
        now = k * FRAME + stall if k == stall_at else max(k * FRAME, clock)
        arrived = pushed
        while pushed < packets and pushed * FRAME <= now:
            pushed += 1
        clock = now
        yield now, range(arrived, pushed)
