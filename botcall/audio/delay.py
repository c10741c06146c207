"""The delay estimator behind the jitter buffer's target (sans-IO).

A tail quantile of relative delay with exponential forgetting, capped by the
recent maximum, over a millisecond histogram that follows clock drift.
``audio/jitter.py`` explains how the buffer uses it.
"""

from __future__ import annotations

import math
from collections import deque

# Histogram resolution of the delay estimator (seconds). Play-out moves in
# whole frames, so a millisecond is far finer than needed.
_BIN_WIDTH = 0.001
_BINS_PER_SECOND = 1000.0

# Lazily forgotten histogram weights are rescaled when they reach this.
_RESCALE_AT = 1e12


class DelayEstimator:
    """Target relative delay: a tail quantile with forgetting, capped by the recent maximum.

    Samples are ``x = arrival - timestamp / clock_rate``. It keeps:

    * the minimum of ``x`` over ``min_window`` seconds (the fastest transit);
    * a histogram of ``x`` over ``[minimum, minimum + max_delay]`` in
      ``_BIN_WIDTH`` bins with exponential forgetting (larger values count in
      the top bin, which is enough for any quantile below it), and its
      ``quantile`` bin;
    * the maximum of ``x`` over ``recent_window`` seconds.

    Forgetting is lazy: instead of decaying every bin per sample, each new
    sample weighs ``1 / forget_factor`` times the previous one, and everything
    is rescaled once the weights grow large. The quantile bin is tracked
    incrementally, so ``add`` costs O(1) amortised; the windowed minimum and
    maximum are kept per ``block_length`` block and recomputed once a block.

    Args:
        quantile: the tail quantile tracked, in (0.5, 1).
        forget_factor: per-sample forgetting, in (0, 1].
        max_delay: span of the histogram above the minimum (seconds).
        min_window: seconds over which the minimum is taken.
        recent_window: seconds over which the capping maximum is taken.
        block_length: granularity of both windows (seconds).
    """

    __slots__ = (
        "_quantile",
        "_forget_step",
        "_block_length",
        "_nbins",
        "_hist",
        "_weight",
        "_total",
        "_above",
        "_qbin",
        "_anchor",
        "_count",
        "_min",
        "_max",
        "_block",
        "_block_min",
        "_block_max",
        "_past_mins",
        "_past_maxes",
    )

    def __init__(
        self,
        *,
        quantile: float,
        forget_factor: float,
        max_delay: float,
        min_window: float,
        recent_window: float,
        block_length: float = 1.0,
    ) -> None:
        self._quantile = quantile
        self._forget_step = 1.0 / forget_factor
        self._block_length = block_length
        self._nbins = int(math.ceil(max_delay * _BINS_PER_SECOND)) + 2
        self._hist = [0.0] * self._nbins
        self._weight = 1.0
        self._total = 0.0
        self._above = 0.0
        self._qbin = 0
        self._anchor = 0.0
        self._count = 0
        self._min = math.inf
        self._max = -math.inf
        self._block: int | None = None
        self._block_min = math.inf
        self._block_max = -math.inf
        # Completed blocks only; the current block is kept apart.
        self._past_mins: deque[float] = deque(maxlen=_past_blocks(min_window, block_length))
        self._past_maxes: deque[float] = deque(maxlen=_past_blocks(recent_window, block_length))

    @property
    def count(self) -> int:
        """Samples added so far."""
        return self._count

    @property
    def minimum(self) -> float:
        """The smallest ``x`` over the minimum's window (``inf`` before any sample)."""
        return self._min

    def relative(self) -> float:
        """The target delay above the minimum (seconds); 0.0 before any sample.

        Returns:
            The upper edge of the quantile bin, or the recent maximum if that is
            lower, minus the minimum.
        """
        if self._count == 0:
            return 0.0
        quantile = self._anchor + (self._qbin + 1) * _BIN_WIDTH
        recent = self._max + _BIN_WIDTH
        return (quantile if quantile < recent else recent) - self._min

    def add(self, x: float, arrival: float) -> None:
        """Add one sample.

        Args:
            x: ``arrival - timestamp / clock_rate`` of a packet (seconds).
            arrival: its arrival time, which moves the windows.
        """
        block = int(arrival // self._block_length)
        if block != self._block:
            self._roll(block, x)
        else:
            if x < self._block_min:
                self._block_min = x
                if x < self._min:
                    self._min = x
                    self._reanchor()
            if x > self._block_max:
                self._block_max = x
                if x > self._max:
                    self._max = x
        self._count += 1

        b = int((x - self._anchor) * _BINS_PER_SECOND)
        if b >= self._nbins:
            b = self._nbins - 1
        elif b < 0:
            b = 0
        w = self._weight
        self._hist[b] += w
        self._total += w
        if b > self._qbin:
            self._above += w
        w *= self._forget_step
        self._weight = w
        if w > _RESCALE_AT:
            self._rescale()
        self._settle()

    def _roll(self, block: int, x: float) -> None:
        """Start a new block: recompute the windowed extremes (at most once a block)."""
        if self._block is not None:
            # Blocks an idle stream skipped hold no samples: the windows count
            # blocks that had some, so a pause does not empty them.
            self._past_mins.append(self._block_min)
            self._past_maxes.append(self._block_max)
        self._block = block
        self._block_min = self._block_max = x
        self._max = max(x, max(self._past_maxes, default=x))
        new_min = min(x, min(self._past_mins, default=x))
        if self._count == 0:
            self._anchor = self._min = new_min
        elif new_min != self._min:
            self._min = new_min
            self._reanchor()

    def _settle(self) -> None:
        """Move to the smallest bin with at most ``1 - quantile`` of the weight above it."""
        hist = self._hist
        limit = (1.0 - self._quantile) * self._total
        qbin = self._qbin
        above = self._above
        top = self._nbins - 1
        while above > limit and qbin < top:
            qbin += 1
            above -= hist[qbin]
        while qbin > 0 and above + hist[qbin] <= limit:
            above += hist[qbin]
            qbin -= 1
        self._qbin = qbin
        self._above = above if above > 0.0 else 0.0

    def _rescale(self) -> None:
        scale = 1.0 / self._weight
        self._hist = [v * scale for v in self._hist]
        self._weight = 1.0
        self._recount()

    def _recount(self) -> None:
        """Recompute the running sums exactly (after a rescale or a shift)."""
        self._total = math.fsum(self._hist)
        self._above = math.fsum(self._hist[self._qbin + 1 :])
        self._settle()

    def _reanchor(self) -> None:
        """Keep the minimum inside bin 0 by shifting whole bins (the minimum moved)."""
        shift = int(math.floor((self._min - self._anchor) * _BINS_PER_SECOND))
        if shift == 0:
            return
        hist = self._hist
        n = self._nbins
        if shift > 0:
            # The minimum rose (its window expired): the lowest bins merge into bin 0.
            k = min(shift, n - 1)
            hist = [math.fsum(hist[: k + 1])] + hist[k + 1 :] + [0.0] * k
            self._qbin = max(0, self._qbin - k)
        else:
            # The minimum fell: everything lies further above it; the top bins merge.
            k = min(-shift, n - 1)
            hist = [0.0] * k + hist[: n - k - 1] + [math.fsum(hist[n - k - 1 :])]
            self._qbin = min(n - 1, self._qbin + k)
        self._hist = hist
        self._anchor += shift * _BIN_WIDTH
        self._recount()


def _past_blocks(window: float, block_length: float) -> int:
    """Completed blocks kept so that they and the current one span ``window``."""
    return max(0, int(math.ceil(window / block_length)) - 1)


__all__ = ["DelayEstimator"]
