"""A seeded, simulated one-way network link: the media demo's, the tests' and the benchmarks'.

Nothing here reads a clock or sleeps: the caller says when each item is sent
and asks for what has arrived by a given simulated time. Items are opaque (RTP
packets, datagrams, anything). ``SimLink`` is the model; ``transmit`` and
``merge_schedule`` drive it for a whole stream; ``NetworkConditions`` and
``simulate_network`` are the media demo's view of it (loss, exponential
jitter, delay, duplication) with a tally of what happened.

One-way delay of an item sent at ``t``::

    delay = base_delay + jitter_sample * scale(t) + outage_hold(t) [+ reorder_extra]

* ``jitter_sample``: drawn i.i.d. from ``jitter`` (see ``Jitter``) with mean
  ``jitter_mean``; ``scale(t)`` multiplies it inside ``bursts`` (periods of
  high jitter), and it never exceeds ``jitter_cap`` seconds.
* ``outage_hold``: delay spikes modelled as link outages. Outages start as a
  Poisson process (``spike_rate`` per second) and last ``U(spike_min,
  spike_max)`` seconds; an item sent during one is held until it ends, so the
  spike decays linearly and the held items arrive in a burst (what a blocked
  radio link or a full queue looks like).
* ``loss``: i.i.d. probability of dropping an item, or Gilbert-Elliott bursts
  when ``loss_burst > 1`` (mean burst length in items, same average loss).
* ``duplicate``: probability of delivering a second copy with its own delay.
* ``reorder``: probability of adding ``reorder_extra`` seconds to one item
  (beyond what jitter already reorders).
* ``fifo``: never deliver an item before one sent earlier (a single queue:
  jitter without reordering).
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_JITTER_CAP",
    "Arrival",
    "Burst",
    "Jitter",
    "NetworkConditions",
    "NetworkProfile",
    "NetworkTally",
    "SimLink",
    "merge_schedule",
    "simulate_network",
    "transmit",
]


class Jitter(enum.Enum):
    """Distribution of the per-item extra delay."""

    NONE = "none"
    EXPONENTIAL = "exponential"
    """|Laplace(0, mean)|: mean ``jitter_mean``; RFC 3550 jitter of i.i.d. samples equals the mean."""
    GAMMA = "gamma"
    """Gamma with shape ``gamma_shape`` and mean ``jitter_mean`` (a lighter tail)."""
    UNIFORM = "uniform"
    """Uniform on ``[0, 2 * jitter_mean]``."""


@dataclass(frozen=True)
class Burst:
    """A period of different jitter: samples are multiplied by ``factor``."""

    start: float
    end: float
    factor: float


@dataclass(frozen=True)
class NetworkProfile:
    """One direction's behaviour; see the module docstring for each field."""

    base_delay: float = 0.020
    jitter: Jitter = Jitter.EXPONENTIAL
    jitter_mean: float = 0.0
    gamma_shape: float = 2.0
    loss: float = 0.0
    loss_burst: float = 1.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_extra: float = 0.050
    spike_rate: float = 0.0
    spike_min: float = 0.050
    spike_max: float = 0.150
    bursts: tuple[Burst, ...] = ()
    fifo: bool = False
    jitter_cap: float = math.inf


@dataclass(order=True)
class _InFlight:
    arrival: float
    order: int
    item: Any = field(compare=False)


class SimLink:
    """One direction of a simulated link.

    ``send(item, now)`` schedules delivery; ``deliver(now)`` returns, in arrival
    order, every ``(arrival_time, item)`` due by ``now``. Send times must not go
    backwards (outages are generated as time advances).
    """

    def __init__(self, profile: NetworkProfile, seed: int) -> None:
        self.profile = profile
        self._rng = random.Random(seed)
        self._heap: list[_InFlight] = []
        self._order = 0
        self._last_send = -math.inf
        self._last_arrival = -math.inf
        # The current or next outage; drawn relative to the first send.
        self._outage: tuple[float, float] | None = None
        self._bad_state = False
        self.sent = 0
        self.lost = 0
        self.duplicated = 0

    def _jitter(self, t: float) -> float:
        p = self.profile
        mean = p.jitter_mean
        if mean <= 0 or p.jitter is Jitter.NONE:
            sample = 0.0
        elif p.jitter is Jitter.EXPONENTIAL:
            sample = self._rng.expovariate(1.0 / mean)
        elif p.jitter is Jitter.GAMMA:
            scale = mean / p.gamma_shape
            # A denormal mean underflows to a zero scale, which gammavariate refuses.
            sample = self._rng.gammavariate(p.gamma_shape, scale) if scale > 0 else 0.0
        else:
            sample = self._rng.uniform(0.0, 2.0 * mean)
        for burst in p.bursts:
            if burst.start <= t < burst.end:
                sample *= burst.factor
        return min(sample, p.jitter_cap)

    def _next_outage(self, after: float) -> tuple[float, float]:
        p = self.profile
        start = after + self._rng.expovariate(p.spike_rate)
        return start, start + self._rng.uniform(p.spike_min, p.spike_max)

    def _outage_hold(self, t: float) -> float:
        """How long an item sent at ``t`` waits for the current outage to end."""
        if self.profile.spike_rate <= 0:
            return 0.0
        if self._outage is None:
            self._outage = self._next_outage(t)
        while t >= self._outage[1]:
            self._outage = self._next_outage(self._outage[1])
        start, end = self._outage
        return end - t if t >= start else 0.0

    def _lose(self) -> bool:
        p = self.profile
        if p.loss <= 0:
            return False
        if p.loss_burst <= 1.0:
            return self._rng.random() < p.loss
        # Gilbert-Elliott: bad state loses everything, mean stay loss_burst items;
        # the good->bad rate gives the requested average loss.
        leave_bad = 1.0 / p.loss_burst
        enter_bad = p.loss * leave_bad / max(1e-9, 1.0 - p.loss)
        if self._bad_state:
            if self._rng.random() < leave_bad:
                self._bad_state = False
        elif self._rng.random() < enter_bad:
            self._bad_state = True
        return self._bad_state

    def _delay(self, t: float, hold: float) -> float:
        p = self.profile
        delay = p.base_delay + self._jitter(t) + hold
        if p.reorder > 0 and self._rng.random() < p.reorder:
            delay += p.reorder_extra
        return delay

    def _schedule(self, item: Any, arrival: float) -> None:
        if self.profile.fifo:
            arrival = max(arrival, self._last_arrival)
            self._last_arrival = arrival
        heapq.heappush(self._heap, _InFlight(arrival, self._order, item))
        self._order += 1

    def send(self, item: Any, now: float) -> None:
        """Put ``item`` on the link at simulated time ``now``."""
        if now < self._last_send:
            raise ValueError("send times must not go backwards")
        self._last_send = now
        self.sent += 1
        hold = self._outage_hold(now)
        if self._lose():
            self.lost += 1
            return
        self._schedule(item, now + self._delay(now, hold))
        p = self.profile
        if p.duplicate > 0 and self._rng.random() < p.duplicate:
            self.duplicated += 1
            self._schedule(item, now + self._delay(now, hold))

    def next_arrival(self) -> float | None:
        """When the next item arrives, or None when nothing is in flight."""
        return self._heap[0].arrival if self._heap else None

    def deliver(self, now: float) -> list[tuple[float, Any]]:
        """Everything arriving by ``now``, as ``(arrival_time, item)`` in arrival order."""
        out = []
        heap = self._heap
        while heap and heap[0].arrival <= now:
            entry = heapq.heappop(heap)
            out.append((entry.arrival, entry.item))
        return out


def transmit(
    items: Iterable[tuple[float, Any]], profile: NetworkProfile, seed: int
) -> list[tuple[float, Any]]:
    """Send every ``(send_time, item)`` over a fresh link; return all arrivals in order."""
    link = SimLink(profile, seed)
    for send_time, item in items:
        link.send(item, send_time)
    return link.deliver(math.inf)


def merge_schedule(
    arrivals: list[tuple[float, Any]], tick: float, start: float, end: float
) -> Iterable[tuple[float, Any | None]]:
    """Interleave arrivals with consumer ticks ``start, start + tick, ... < end``.

    Yields ``(time, item)`` for an arrival and ``(time, None)`` for a tick, in
    time order; an arrival at exactly a tick's time comes first (it was there
    when the consumer looked).
    """
    i = 0
    n = 0
    while True:
        t = start + n * tick
        if t >= end:
            break
        while i < len(arrivals) and arrivals[i][0] <= t:
            yield arrivals[i]
            i += 1
        yield t, None
        n += 1


# --- The media demo's network -----------------------------------------------------

MAX_JITTER_CAP = 10.0
"""The demo caps extra delays at this many times the mean jitter (keeps runs bounded)."""


@dataclass(frozen=True, slots=True)
class NetworkConditions:
    """A seeded simulated one-way path, as the media demo's options describe it.

    Attributes:
        loss: probability that a packet is dropped (independently).
        jitter: mean of the exponentially distributed extra delay, seconds
            (also its standard deviation); packets overtake each other when it
            exceeds the 20 ms packet spacing.
        delay: fixed one-way delay, seconds.
        duplicate: probability that a packet arrives twice (with its own delay).
        seed: the random seed; the same seed gives the same trace.
    """

    loss: float = 0.05
    jitter: float = 0.030
    delay: float = 0.040
    duplicate: float = 0.0
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), not {self.loss}")
        if not 0.0 <= self.duplicate <= 1.0:
            raise ValueError(f"duplicate must be in [0, 1], not {self.duplicate}")
        if self.jitter < 0 or self.delay < 0:
            raise ValueError("jitter and delay must not be negative")

    def profile(self) -> NetworkProfile:
        """These conditions as a ``NetworkProfile`` (jitter capped at ``MAX_JITTER_CAP`` means)."""
        return NetworkProfile(
            base_delay=self.delay,
            jitter=Jitter.EXPONENTIAL,
            jitter_mean=self.jitter,
            jitter_cap=MAX_JITTER_CAP * self.jitter,
            loss=self.loss,
            duplicate=self.duplicate,
        )


@dataclass(frozen=True, slots=True)
class Arrival:
    """One datagram reaching the receiver at ``time`` (simulated seconds)."""

    time: float
    data: bytes


@dataclass(frozen=True, slots=True)
class NetworkTally:
    """What the simulated network did to the stream."""

    sent: int
    lost: int
    duplicated: int
    reordered: int


def simulate_network(
    sends: Iterable[tuple[float, bytes]], conditions: NetworkConditions
) -> tuple[list[Arrival], NetworkTally]:
    """Pass timestamped datagrams through a ``SimLink`` with the given conditions.

    Args:
        sends: ``(send_time, datagram)`` in sending order (times never decrease).
        conditions: loss, delay, jitter, duplication and seed.

    Returns:
        The arrivals sorted by arrival time, and what happened on the way
        (``reordered`` counts arrivals sent before one that arrived earlier).
    """
    link = SimLink(conditions.profile(), conditions.seed)
    for index, (send_time, data) in enumerate(sends):
        link.send((index, data), send_time)
    delivered: list[tuple[float, tuple[int, bytes]]] = link.deliver(math.inf)
    reordered = 0
    latest = -1
    for _, (index, _) in delivered:
        if index < latest:
            reordered += 1
        latest = max(latest, index)
    arrivals = [Arrival(time, data) for time, (_, data) in delivered]
    return arrivals, NetworkTally(link.sent, link.lost, link.duplicated, reordered)
