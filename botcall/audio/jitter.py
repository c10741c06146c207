"""Adaptive jitter buffer for one incoming Opus RTP stream (sans-IO).

The buffer is a plain synchronous object: ``push(packet, arrival_time)`` for each
RTP packet received, ``pop(now)`` at the consumer's play-out cadence (every
``frame_duration``). It never reads a clock, never raises on network input and
holds at most ``capacity`` packets whatever is pushed.

Choosing the delay (NetEq's relative-delay idea, aimed at a late-loss goal):

* Every accepted packet gives one sample ``x = arrival - timestamp / clock_rate``
  (its transit time plus an unknown clock offset). The minimum of ``x`` over
  ``min_window`` seconds is the fastest transit seen; a packet's *relative
  delay* is ``x - minimum``. All delays below are relative delays.
* The samples feed a histogram with exponential forgetting (a memory of
  ``1 / (1 - forget_factor)`` packets, 40 s by default). The target is its
  ``quantile`` (99.1 %): the smallest delay that would have kept 0.9 % of recent
  packets late. A 99th percentile needs thousands of samples, hence the long
  memory; the histogram lives in absolute ``x`` and shifts when the minimum
  moves, so clock drift does not invalidate it.
* Grow quickly: a rise in jitter moves the quantile as soon as the late packets
  are 0.9 % of the memory (a fraction of a second for a real rise), and the
  play-out follows at the next missing frame.
* Shrink slowly: the target is capped by the largest delay seen in the last
  ``recent_window`` seconds (10 s), so it comes down about ten seconds after a
  burst of jitter ends; the forgetting alone would take minutes. In steady
  traffic the cap does not bind (the maximum of 500 samples lies well above
  their 99th percentile). Because the long memory still holds the burst, a
  recurring one lifts the target back with its first late packet.
* The target is clamped to ``[min_delay, max_delay]``; before ``_WARMUP_SAMPLES``
  samples it is at least ``initial_delay``.

Following the target. The consumer's ``pop`` calls are the clock: each renders
one frame, and the *current delay* is that of the frame due now,
``now - due_timestamp / clock_rate - minimum``. Without time stretching the
delay moves only in whole frames, so the play-out sits on the smallest step at
or above the target, and acts where it costs least:

* **Expand** (grow): the due frame is missing and the delay is below target, or
  nothing at all is buffered, or (once per frame) its successor has not arrived
  either and the delay is within ``wait_margin`` of the target. The buffer
  returns ``EXPAND`` (the decoder runs PLC) and keeps waiting for the same
  frame: one frame more delay, and a packet that is merely late gets played
  instead of lost.
* **Skip** (shrink for free): the due frame is missing, a later one is buffered
  and would still be on target: the missing frame is passed over without a
  concealment frame. Nothing that arrived is lost.
* **Discard** (shrink at a cost): the delay has been a whole frame above the
  target for ``shrink_interval``, or ``catchup_margin`` beyond that (after a
  delay spike released a burst, or a consumer stall): the due frame is dropped
  and counted as ``discarded``. With ``stall_margin`` (a bot's paced play-out),
  a delay that jumped a frame or more above where it last sat on target keeps
  up to that much backlog, played late and shed a frame per ``shrink_interval``;
  an excess that came from the target falling is cut at ``catchup_margin``.
* **Conceal**: the due frame is missing, later frames are buffered and the delay
  is on target: ``CONCEAL``, carrying the next packet's payload when it is the
  very next frame so the decoder can rebuild the lost one from Opus in-band FEC.

Silence. When the sender stops (end of a talk spurt, Opus DTX, a bot that is
done talking) nothing is buffered at the due time: the buffer expands for at
most ``idle_after`` seconds, then goes idle and ``pop`` returns ``None``. It
never conceals a frame that was not sent: expansions claim no sequence number.
The stream's next packet restarts play-out; it is held until its own delay
reaches the target (a talk-spurt start), so the delay adapts across the silence
at no cost. A packet whose timestamp jumps ahead while the numbering continues
(DTX: the sender skipped the silent frames) is re-timed the same way, so pauses
are rendered as silence, not as concealment.

Resynchronisation (counted in ``JitterStats.resyncs``):

* another SSRC takes over when the current one has been quiet for
  ``idle_after``, or after ``SWITCH_AFTER`` packets of the new one with none of
  the current one in between (what is still buffered is ``flushed``); until
  then its packets are dropped (``other_ssrc``), so a stream interleaved with
  the one playing never interrupts it;
* a sequence number more than ``capacity`` away from the highest seen, or a
  relative delay beyond ``jump_threshold`` seconds either way (a timestamp
  discontinuity), restarts the play-out on it: at once when nothing is buffered
  and it lies ahead, otherwise after ``SWITCH_AFTER`` consecutive such packets
  (the ones before are dropped as ``too_far``), so one stray packet cannot flush
  a playing buffer. A numbering jump keeps the delay statistics; a timing jump
  resets them.

Sequence numbers and timestamps are extended past wrap-around (``seq.py``)
before any of this. The first packet of a stream is placed in extension cycle 1
so that a packet reordered from before it still extends below it, and the first
packet after a restart two cycles above anything seen, so numbers never go
back. The ``sequence`` and ``timestamp`` of a ``PlayoutFrame`` are these
extended values (their low 16/32 bits are the wire values): ``AUDIO`` and
``CONCEAL`` sequence numbers increase strictly over the buffer's whole life.

Accounting: every pushed packet ends up in exactly one of ``played``,
``discarded``, ``late``, ``duplicate``, ``overflow``, ``too_far``,
``other_ssrc``, ``flushed``, or is still ``buffered``.

Frames are assumed to last ``frame_duration`` (20 ms Opus by default); a sender
using another packet duration is played one packet per ``pop`` and trimmed by
the discard rule.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TypedDict

from botcall.audio.delay import DelayEstimator
from botcall.wire.rtp import RtpPacket
from botcall.wire.seq import extend_u16, extend_u32

# Extension cycle sizes. A stream's first packet is placed in cycle 1 (so that a
# packet reordered from before it still extends below it: extend_* never go
# negative), and each later stream two cycles above everything seen before.
_SEQ_CYCLE = 1 << 16
_TS_CYCLE = 1 << 32

SWITCH_AFTER = 3
"""Consecutive packets of another SSRC, or of a discontinuous numbering or
timing, after which the buffer gives up the stream it is playing."""

# Until this many samples the target is at least ``initial_delay``: the
# quantile of a handful of samples is not worth starting on.
_WARMUP_SAMPLES = 50

# RFC 3550 §6.4.1 / §A.8: J += (|D| - J) / 16.
_RFC3550_GAIN = 1.0 / 16.0

# How many sequence numbers behind the play-out position we remember as played
# or missed, to tell a duplicate from a late packet.
_HISTORY = 512

_FILLING = 0
_PLAYING = 1


class FrameKind(enum.Enum):
    """What the consumer should render for one ``pop``."""

    AUDIO = "audio"
    """Decode ``payload``."""
    CONCEAL = "conceal"
    """Frame ``sequence`` is lost: decode ``fec_payload`` with FEC when present, else PLC."""
    EXPAND = "expand"
    """Play-out stretched by one frame while waiting for ``sequence``: run PLC."""


@dataclass(frozen=True, slots=True)
class PlayoutFrame:
    """One frame of play-out.

    Attributes:
        kind: ``AUDIO``, ``CONCEAL`` or ``EXPAND``.
        sequence: extended sequence number of the frame played (``AUDIO``), lost
            (``CONCEAL``) or awaited (``EXPAND``). ``AUDIO`` and ``CONCEAL``
            frames come out in strictly increasing ``sequence`` order, each
            sequence number at most once; ``EXPAND`` claims none.
        timestamp: extended RTP timestamp of that frame (the expected one when
            it is missing).
        payload: the Opus payload for ``AUDIO``, ``b""`` otherwise.
        fec_payload: for ``CONCEAL``, the payload of the next frame when it is
            already buffered (Opus in-band FEC can rebuild the lost frame from
            it); ``None`` otherwise.
    """

    kind: FrameKind
    sequence: int
    timestamp: int
    payload: bytes = b""
    fec_payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class JitterStats:
    """A snapshot of the buffer's state and counters (delays in seconds).

    Attributes:
        target_delay: the delay the buffer aims for, above the fastest transit seen.
        current_delay: the delay of the frame due at the last ``pop``.
        buffered_delay: audio buffered ahead of the play-out position (while
            filling or idle: the span of the packets held).
        buffered: packets held.
        mean_delay: mean delay of the ``AUDIO`` frames played.
        jitter: RFC 3550 §6.4.1 interarrival jitter of the current stream.
        received: packets pushed.
        played: ``AUDIO`` frames returned.
        concealed: ``CONCEAL`` frames returned.
        expanded: ``EXPAND`` frames returned.
        lost: sequence numbers the play-out passed that never arrived (a late
            arrival within the last 512 takes its number back out).
        late: packets that arrived after the play-out passed their frame.
        duplicate: copies of a packet already buffered or played.
        discarded: buffered frames dropped on purpose to cut the delay.
        overflow: buffered frames evicted because the window (``capacity``)
            moved past them (a consumer that stopped popping).
        too_far: packets dropped for a sequence or timing discontinuity before
            the buffer restarted on it.
        other_ssrc: packets of another SSRC dropped.
        flushed: buffered packets dropped by a restart.
        resyncs: restarts on a new SSRC, numbering or timing.
    """

    target_delay: float
    current_delay: float
    buffered_delay: float
    buffered: int
    mean_delay: float
    jitter: float
    received: int
    played: int
    concealed: int
    expanded: int
    lost: int
    late: int
    duplicate: int
    discarded: int
    overflow: int
    too_far: int
    other_ssrc: int
    flushed: int
    resyncs: int


class JitterOptions(TypedDict, total=False):
    """``JitterBuffer``'s keyword arguments, for callers that pass them along."""

    clock_rate: int
    frame_duration: float
    min_delay: float
    max_delay: float
    capacity: int | None
    initial_delay: float
    quantile: float
    forget_factor: float
    min_window: float
    recent_window: float
    shrink_interval: float
    catchup_margin: float
    stall_margin: float | None
    wait_margin: float
    idle_after: float
    jump_threshold: float


class JitterBuffer:
    """Adaptive jitter buffer for one RTP stream; see the module docstring.

    Args:
        clock_rate: RTP clock rate (Hz).
        frame_duration: duration of one packet and of one ``pop`` (seconds).
        min_delay: lower clamp of the target delay (seconds above the fastest transit).
        max_delay: upper clamp of the target delay.
        capacity: most packets held; by default twice ``max_delay`` in frames
            plus four, room for a full buffer plus a burst released by a spike.
        initial_delay: smallest target until ``_WARMUP_SAMPLES`` packets have
            arrived (after a timing resync, the previous target if larger).
        quantile: tail quantile of relative delay the target follows.
        forget_factor: per-packet forgetting of the delay histogram.
        min_window: seconds over which the fastest transit is remembered.
        recent_window: seconds of history whose largest delay caps the target.
        shrink_interval: how long the delay must stay a frame above the target
            before a buffered frame is discarded to cut it.
        catchup_margin: beyond ``target + frame + catchup_margin`` frames are
            discarded at once.
        stall_margin: the same bound while the delay sits a frame or more above
            where it last was within ``catchup_margin`` of the target (a stall: a
            pop held up, or a sender's held-up packets arriving at once): up to
            this much of the backlog is played late, then shed a frame per
            ``shrink_interval``. An excess that did not come from a jump (the
            target fell) is still cut at ``catchup_margin``. None: ``catchup_margin``.
        wait_margin: a missing frame whose successor is missing too is waited
            for (once) while the delay is below ``target + wait_margin``.
        idle_after: seconds of expansion with nothing buffered before going idle.
        jump_threshold: a relative delay beyond this many seconds either way is
            a timestamp discontinuity.

    Raises:
        ValueError: on parameters that cannot work (non-positive rate or frame,
            ``min_delay > max_delay``, a capacity that cannot hold ``max_delay``,
            quantile or forgetting out of range).
    """

    __slots__ = (
        "_inv_rate",
        "_spf",
        "_frame",
        "_min_delay",
        "_max_delay",
        "_capacity",
        "_initial_delay",
        "_warm_target",
        "_quantile",
        "_forget",
        "_min_window",
        "_recent_window",
        "_shrink_interval",
        "_catchup",
        "_stall",
        "_settled",
        "_wait_margin",
        "_idle_frames",
        "_quiet",
        "_jump",
        # The stream.
        "_est",
        "_ssrc",
        "_seq_base",
        "_ts_base",
        "_seq_high",
        "_ts_high",
        "_seq_ref",
        "_ts_ref",
        "_ts_origin",
        "_last_arrival",
        "_other_ssrc",
        "_other_run",
        "_far_run",
        "_prev_transit",
        "_jitter",
        # The play-out.
        "_state",
        "_buf",
        "_next_seq",
        "_floor",
        "_passed_low",
        "_cursor",
        "_missing_run",
        "_waited",
        "_above_since",
        "_history",
        "_current_delay",
        "_delay_sum",
        # Counters.
        "_received",
        "_played",
        "_concealed",
        "_expanded",
        "_lost",
        "_late",
        "_duplicate",
        "_discarded",
        "_overflow",
        "_too_far",
        "_dropped_other",
        "_flushed",
        "_resyncs",
    )

    # The stream and play-out state that ``_reset_stream`` and
    # ``_restart_position`` (re)assign.
    _est: DelayEstimator
    _seq_ref: int | None
    _ts_ref: int
    _ts_origin: int
    _last_arrival: float
    _other_ssrc: int | None
    _other_run: int
    _far_run: int
    _prev_transit: float | None
    _jitter: float
    _state: int
    _buf: dict[int, tuple[int, bytes]]
    _next_seq: int
    _floor: int | None
    _passed_low: int | None
    # The RTP timestamp due next; only read while playing (set on leaving filling).
    _cursor: int
    _missing_run: int
    _waited: int
    _above_since: float | None
    _history: bytearray

    def __init__(
        self,
        *,
        clock_rate: int = 48000,
        frame_duration: float = 0.020,
        min_delay: float = 0.020,
        max_delay: float = 0.480,
        capacity: int | None = None,
        initial_delay: float = 0.060,
        quantile: float = 0.991,
        forget_factor: float = 0.9995,
        min_window: float = 10.0,
        recent_window: float = 10.0,
        shrink_interval: float = 1.0,
        catchup_margin: float = 0.020,
        stall_margin: float | None = None,
        wait_margin: float = 0.020,
        idle_after: float = 0.100,
        jump_threshold: float = 3.0,
    ) -> None:
        if clock_rate <= 0 or frame_duration <= 0:
            raise ValueError("clock_rate and frame_duration must be positive")
        if not 0 <= min_delay <= max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        if not 0.5 < quantile < 1.0 or not 0.0 < forget_factor <= 1.0:
            raise ValueError("quantile must be in (0.5, 1) and forget_factor in (0, 1]")
        frames_for_max = int(math.ceil(max_delay / frame_duration))
        if capacity is None:
            capacity = 2 * frames_for_max + 4
        if capacity < frames_for_max + 2:
            raise ValueError(f"capacity {capacity} cannot hold max_delay ({frames_for_max} frames)")
        self._inv_rate = 1.0 / clock_rate
        self._spf = int(round(clock_rate * frame_duration))
        self._frame = frame_duration
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._capacity = capacity
        self._initial_delay = min(max(initial_delay, min_delay), max_delay)
        self._warm_target = self._initial_delay
        self._quantile = quantile
        self._forget = forget_factor
        self._min_window = min_window
        self._recent_window = recent_window
        self._shrink_interval = shrink_interval
        self._catchup = catchup_margin
        self._stall = catchup_margin if stall_margin is None else max(stall_margin, catchup_margin)
        self._settled: float | None = None  # the delay when it last sat within catchup_margin
        self._wait_margin = wait_margin
        self._idle_frames = max(1, int(round(idle_after / frame_duration)))
        self._quiet = self._idle_frames * frame_duration
        self._jump = jump_threshold
        self._received = self._played = self._concealed = self._expanded = 0
        self._lost = self._late = self._duplicate = self._discarded = 0
        self._overflow = self._too_far = self._dropped_other = self._flushed = 0
        self._resyncs = 0
        self._delay_sum = 0.0
        self._current_delay = 0.0
        self._ssrc: int | None = None
        self._seq_high = self._ts_high = 0
        self._seq_base = _SEQ_CYCLE
        self._ts_base = _TS_CYCLE
        self._reset_stream()

    # --- public API ----------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Most packets the buffer ever holds."""
        return self._capacity

    def __len__(self) -> int:
        """Packets held now (never more than ``capacity``)."""
        return len(self._buf)

    @property
    def target_delay(self) -> float:
        """The delay the play-out aims for (seconds above the fastest transit seen)."""
        est = self._est
        if est.count == 0:
            return self._warm_target
        target = est.relative()
        if est.count < _WARMUP_SAMPLES and target < self._warm_target:
            target = self._warm_target
        if target < self._min_delay:
            return self._min_delay
        if target > self._max_delay:
            return self._max_delay
        return target

    @property
    def stats(self) -> JitterStats:
        """A frozen snapshot of delays and counters (see ``JitterStats``)."""
        buffered_delay = 0.0
        if self._buf:
            stamps = [ts for ts, _ in self._buf.values()]
            # Playing: from the frame due next (missing or not); else from the oldest held.
            start = self._cursor if self._state == _PLAYING else min(stamps)
            buffered_delay = max(0.0, (max(stamps) + self._spf - start) * self._inv_rate)
        return JitterStats(
            target_delay=self.target_delay,
            current_delay=self._current_delay,
            buffered_delay=buffered_delay,
            buffered=len(self._buf),
            mean_delay=self._delay_sum / self._played if self._played else 0.0,
            jitter=self._jitter,
            received=self._received,
            played=self._played,
            concealed=self._concealed,
            expanded=self._expanded,
            lost=self._lost,
            late=self._late,
            duplicate=self._duplicate,
            discarded=self._discarded,
            overflow=self._overflow,
            too_far=self._too_far,
            other_ssrc=self._dropped_other,
            flushed=self._flushed,
            resyncs=self._resyncs,
        )

    def push(self, packet: RtpPacket, arrival_time: float) -> None:
        """Take one received packet. Never raises; a packet it cannot use is counted.

        Args:
            packet: the RTP packet as parsed from the wire.
            arrival_time: when it arrived (seconds, the clock of ``pop``'s ``now``).
        """
        self._received += 1
        self._push(packet, arrival_time)

    def _push(self, packet: RtpPacket, arrival_time: float) -> None:
        ssrc = packet.ssrc
        if ssrc != self._ssrc:
            if self._ssrc is not None:
                if not self._may_switch(ssrc, arrival_time):
                    self._dropped_other += 1
                    return
                self._resync()
            self._ssrc = ssrc
        self._other_run = 0

        wire_seq = packet.sequence_number & 0xFFFF
        wire_ts = packet.timestamp & 0xFFFFFFFF
        seq_ref = self._seq_ref
        if seq_ref is None:
            ext = self._seq_base | wire_seq
            if self._est.count == 0:
                ext_ts = self._ts_origin = self._ts_base | wire_ts
            else:
                # Restarted on a numbering jump: the timing carries on.
                ext_ts = extend_u32(self._ts_ref, wire_ts)
        else:
            ext = extend_u16(seq_ref, wire_seq)
            ext_ts = extend_u32(self._ts_ref, wire_ts)
        x = arrival_time - (ext_ts - self._ts_origin) * self._inv_rate

        if seq_ref is not None:
            skew = x - self._est.minimum
            jump = self._jump
            ahead = ext - seq_ref
            timing_ok = -jump <= skew <= jump
            if not timing_ok or not -self._capacity <= ahead <= self._capacity:
                # Ahead of the stream: numbered past it, or stamped too early.
                forward = ahead > self._capacity if timing_ok else skew < -jump
                if self._discontinuity(forward=forward, timing_ok=timing_ok):
                    self._push(packet, arrival_time)
                return
            self._far_run = 0

        self._last_arrival = arrival_time
        if ext in self._buf:
            self._duplicate += 1
            return
        low = self._next_seq if self._state == _PLAYING else self._floor
        if low is not None and ext < low:
            if not self._behind(ext, low):
                return
        elif low is None and seq_ref is not None and ext <= seq_ref - self._capacity:
            # Filling from the very start: older than anything the window can hold.
            self._late += 1
        else:
            self._admit(ext, ext_ts, packet.payload)
        self._sample(x, arrival_time)

    def pop(self, now: float) -> PlayoutFrame | None:
        """Return what to render for the next ``frame_duration`` of play-out.

        Args:
            now: the consumer's current time (seconds, the clock of the arrivals).

        Returns:
            An ``AUDIO``, ``CONCEAL`` or ``EXPAND`` frame while a stream plays;
            ``None`` when there is nothing to play (no stream yet, filling up to
            the target delay, or idle after the sender went silent): render
            silence, or the decoder's comfort noise.
        """
        if self._state == _FILLING:
            return self._pop_filling(now)
        return self._pop_playing(now)

    # --- arrival side ----------------------------------------------------------------

    def _may_switch(self, ssrc: int, arrival: float) -> bool:
        """Whether a packet of another SSRC takes over the stream."""
        if self._other_ssrc != ssrc:
            self._other_ssrc = ssrc
            self._other_run = 0
        self._other_run += 1
        quiet = arrival - self._last_arrival >= self._quiet
        return quiet or self._other_run >= SWITCH_AFTER

    def _discontinuity(self, *, forward: bool, timing_ok: bool) -> bool:
        """A packet far off in numbering or timing: restart on it, or drop and count it.

        Args:
            forward: the packet lies ahead of the stream (not a straggler).
            timing_ok: its relative delay is plausible (only the numbering jumped).

        Returns:
            True when the buffer restarted and the packet should be pushed again.
        """
        self._far_run += 1
        if (self._buf or not forward) and self._far_run < SWITCH_AFTER:
            self._too_far += 1
            return False
        if timing_ok:
            self._restart_position()
        else:
            self._resync()
        return True

    def _restart_position(self) -> None:
        """Drop the play-out position and what is buffered; keep the delay statistics."""
        self._resyncs += 1
        self._flushed += len(self._buf)
        self._buf.clear()
        self._state = _FILLING
        self._seq_ref = None
        self._seq_base = ((self._seq_high >> 16) + 2) << 16
        self._floor = None
        self._passed_low = None
        self._cursor = 0
        self._far_run = 0
        self._missing_run = 0
        self._above_since = None
        self._settled = None

    def _resync(self) -> None:
        """Forget the stream (flushing what it buffered); keep the counters."""
        self._resyncs += 1
        self._flushed += len(self._buf)
        self._warm_target = max(self._initial_delay, self.target_delay)
        self._seq_base = ((self._seq_high >> 16) + 2) << 16
        self._ts_base = ((self._ts_high >> 32) + 2) << 32
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._est = DelayEstimator(
            quantile=self._quantile,
            forget_factor=self._forget,
            max_delay=self._max_delay,
            min_window=self._min_window,
            recent_window=self._recent_window,
        )
        self._seq_ref = None
        self._ts_ref = 0
        self._ts_origin = 0
        self._last_arrival = -math.inf
        self._other_ssrc = None
        self._other_run = 0
        self._far_run = 0
        self._prev_transit = None
        self._jitter = 0.0
        self._state = _FILLING
        self._buf = {}
        self._next_seq = 0
        self._floor = None
        self._passed_low = None
        self._cursor = 0
        self._missing_run = 0
        self._waited = -1
        self._above_since = None
        self._settled = None
        self._history = bytearray(_HISTORY)

    def _sample(self, x: float, arrival: float) -> None:
        """Feed the delay estimator and the RFC 3550 jitter with one arrival."""
        self._est.add(x, arrival)
        prev = self._prev_transit
        if prev is not None:
            d = x - prev
            if d < 0.0:
                d = -d
            self._jitter += (d - self._jitter) * _RFC3550_GAIN
        self._prev_transit = x

    def _admit(self, ext: int, ext_ts: int, payload: bytes) -> None:
        """Buffer a packet, moving the window forward if it lies beyond it."""
        buf = self._buf
        if self._state == _PLAYING:
            low = self._next_seq
        elif self._floor is not None:
            low = self._floor
        elif buf:
            low = min(min(buf), ext)
        else:
            low = ext
        if ext >= low + self._capacity:
            self._evict_below(ext - self._capacity + 1)
        buf[ext] = (ext_ts, payload)
        if self._seq_ref is None or ext > self._seq_ref:
            self._seq_ref = ext
            if ext > self._seq_high:
                self._seq_high = ext
        if ext_ts > self._ts_ref:
            self._ts_ref = ext_ts
            if ext_ts > self._ts_high:
                self._ts_high = ext_ts

    def _evict_below(self, new_low: int) -> None:
        """Move the window start to ``new_low``: the consumer is not keeping up."""
        buf = self._buf
        if self._state == _PLAYING:
            start = self._next_seq
        elif self._floor is not None:
            start = self._floor
        else:
            start = min(buf)
        # Bounded: a packet more than ``capacity`` past the highest one is a
        # discontinuity, so new_low is at most about two capacities past start.
        for seq in range(start, new_low):
            if buf.pop(seq, None) is not None:
                self._overflow += 1
                self._mark(seq, seen=True)
            else:
                self._mark(seq, seen=False)
        if self._state == _PLAYING:
            if new_low > start:
                self._cursor += (new_low - start) * self._spf
                self._next_seq = new_low
        elif self._floor is None or self._floor < new_low:
            self._floor = new_low

    def _behind(self, ext: int, position: int) -> bool:
        """A packet for a sequence number the play-out has already passed.

        Args:
            ext: its extended sequence number.
            position: the play-out's position (``_next_seq`` while playing,
                else ``_floor``), which ``ext`` lies below.

        Returns:
            True for a late packet (still a delay sample), False for a duplicate.
        """
        low = self._passed_low
        if low is None or ext < low or position - ext > _HISTORY:
            self._late += 1
            return True
        slot = ext % _HISTORY
        if self._history[slot]:
            self._duplicate += 1
            return False
        self._history[slot] = 1
        self._late += 1
        self._lost -= 1
        return True

    def _mark(self, seq: int, *, seen: bool) -> None:
        """Record that the play-out passed ``seq``, having it (seen) or not (lost)."""
        self._history[seq % _HISTORY] = 1 if seen else 0
        if self._passed_low is None:
            self._passed_low = seq
        if not seen:
            self._lost += 1

    # --- play-out side ------------------------------------------------------------

    def _delay_of(self, ts: int, now: float) -> float:
        return now - (ts - self._ts_origin) * self._inv_rate - self._est.minimum

    def _pop_filling(self, now: float) -> PlayoutFrame | None:
        """Wait until the first buffered frame has the target delay, then start."""
        buf = self._buf
        if not buf:
            return None
        start = min(buf)
        ts = buf[start][0]
        delay = self._delay_of(ts, now)
        self._current_delay = delay
        if delay < self.target_delay:
            return None
        floor = self._floor
        if floor is not None:
            for seq in range(max(floor, start - _HISTORY), start):
                self._mark(seq, seen=False)
        self._state = _PLAYING
        self._next_seq = start
        self._cursor = ts
        self._missing_run = 0
        self._above_since = None
        self._settled = None
        return self._pop_playing(now)

    def _pop_playing(self, now: float) -> PlayoutFrame | None:
        buf = self._buf
        frame = self._frame
        spf = self._spf
        target = self.target_delay
        while True:
            seq = self._next_seq
            cursor = self._cursor
            delay = self._delay_of(cursor, now)
            self._current_delay = delay
            entry = buf.get(seq)
            if entry is None:
                return self._missing(now, seq, cursor, delay, target)
            ts, payload = entry
            if ts - cursor > spf // 2:
                # The timestamp jumped ahead while the numbering continues: the
                # sender paused (DTX). Re-time it like the start of a talk spurt.
                self._state = _FILLING
                self._floor = seq
                return self._pop_filling(now)
            excess = delay - frame - target
            margin = self._catchup
            if excess < margin:
                self._settled = delay
            elif (settled := self._settled) is not None and delay - settled >= frame:
                # The delay jumped (a stall): play its backlog late, up to the stall margin.
                margin = self._stall
            if excess >= 0.0 and seq + 1 in buf:
                since = self._above_since
                if since is None:
                    self._above_since = since = now
                if excess >= margin or now - since >= self._shrink_interval:
                    del buf[seq]
                    self._discarded += 1
                    self._mark(seq, seen=True)
                    self._next_seq = seq + 1
                    self._cursor = ts + spf
                    if excess < margin:
                        self._above_since = now
                    continue
            elif excess < 0.0:
                self._above_since = None
            del buf[seq]
            self._mark(seq, seen=True)
            self._next_seq = seq + 1
            self._cursor = ts + spf
            self._missing_run = 0
            self._played += 1
            self._delay_sum += delay
            return PlayoutFrame(FrameKind.AUDIO, seq, ts, payload)

    def _missing(
        self, now: float, seq: int, cursor: int, delay: float, target: float
    ) -> PlayoutFrame | None:
        """The due frame has not arrived: expand, skip it or conceal it."""
        buf = self._buf
        if not buf:
            if self._missing_run >= self._idle_frames:
                # The sender went quiet: stop concealing, restart on its next packet.
                self._state = _FILLING
                self._floor = seq
                return None
            return self._expand(seq, cursor)
        following = buf.get(seq + 1)
        if delay < target or (
            following is None and self._waited != seq and delay < target + self._wait_margin
        ):
            self._waited = seq
            return self._expand(seq, cursor)
        spf = self._spf
        if following is not None:
            nxt, nxt_ts = seq + 1, following[0]
        else:
            nxt = min(buf)
            nxt_ts = buf[nxt][0]
        if (
            self._delay_of(nxt_ts, now) >= target
            and nxt_ts - cursor <= (nxt - seq) * spf + spf // 2
        ):
            # Already a whole frame above target: pass over the gap rather than conceal it.
            for lost in range(seq, nxt):
                self._mark(lost, seen=False)
            self._next_seq = nxt
            self._cursor = nxt_ts
            return self._pop_playing(now)
        self._mark(seq, seen=False)
        self._next_seq = seq + 1
        self._cursor = cursor + spf
        self._missing_run += 1
        self._concealed += 1
        fec = None
        if following is not None and following[0] - cursor == spf:
            fec = following[1]
        return PlayoutFrame(FrameKind.CONCEAL, seq, cursor, b"", fec)

    def _expand(self, seq: int, cursor: int) -> PlayoutFrame:
        self._missing_run += 1
        self._expanded += 1
        self._above_since = None
        return PlayoutFrame(FrameKind.EXPAND, seq, cursor)
