"""The compiled fast path's Python side (issue 17): its table, its counts.

``_fastpath.c`` reads the media socket with ``recvmmsg`` and forwards with
``sendmmsg``, in C, the RTP of the speakers :meth:`MediaRelay.fast_routes`
names: latched UDP peers whose packets need nothing but forwarding (no
playout, not muted, listeners all latched UDP bots). Everything else, and
every datagram after the first one it does not route in a batch, comes back
to :meth:`MediaRelay.handle_datagram` in arrival order, so the relay sees
exactly what it would without the helper.

The relay owns the state. :class:`FastForwarder` reprograms the helper's
whole table whenever ``MediaRelay.routes_generation`` moved (before the next
datagram is read: a peer that left, moved or was muted is never forwarded
from a stale route). At each reprogramming and at least every
``STATS_INTERVAL`` it folds the helper's per-route counts into the peers'
``rx_packets``/``rx_bytes``/``tx_packets`` and ``rate_limited`` drops, with
the rate window (it goes to the helper with the route and comes back, so a
reprogramming never restarts a speaker's window). Each forwarded packet of a
speaker with a speech tracker goes to :meth:`MediaRelay.track_forwarded`,
except on the level path (below).

Speech levels (RFC 6464; §18d of docs/bench-results.md): a speaker whose
tracker is on the level path (``SpeechTracker.level_handover``: a browser with
a negotiated level id, a bot sending ``BOT_AUDIO_LEVEL_ID``) hands the tracker's
detector state, stream origin, ``last_ms``, onset, ``interrupted``, barge-in
limit and its peer's ``last_voice`` to its route. The helper then parses each
forwarded packet's level, runs the detector and hands Python only the events
(started, stopped, the barge-in limit reached), in order among the mirrored
packets, which :meth:`MediaRelay.speech_from_fast_path` applies as
``_track_speech`` would. The relay's speaking sweep asks the helper
(``SpeechTracker.fast_expire``), which keeps ``last_voice`` and ``last_ms``. A
packet of the route without a level is forwarded and mirrored, and the rest of
its batch goes to Python (the thread pauses): the tracker comes back around it
(``level``/``set_level``); a tracker that left the level path (it now decodes
or counts sizes) stays in Python and the route mirrors again. A packet of the
route that Python forwards itself (after another datagram of its batch: in
the default configuration, after a bot's packet) is tracked by the route too
(``SpeechTracker.fast_track`` → ``level_track``): the state stays in C. The state comes back
at every reprogramming and when the thread stops: it passes, it is never shared.

Two ways to run it (``Config.media_fast_path``):

* ``"inline"``: the transport's read loop calls :meth:`FastForwarder.drain`
  after each Trio wakeup; the helper reads, forwards and returns in that call.
* ``"thread"``: :meth:`FastForwarder.start` starts the helper's own thread,
  which blocks in ``poll`` without the GIL and forwards routed packets with
  no Python at all (no Trio wakeup per packet). What it cannot route it keeps
  (a bounded queue of copies) and signals on an eventfd; it then stops
  reading until the transport has handled them in order (:meth:`collect`,
  then :meth:`resume`). A change of the relay's routes pauses it at once
  (``MediaRelay.on_routes_changed``) until its table is reprogrammed; a
  batch it was already forwarding finishes with the old table.

SRTP legs (``secure=True``, ``Config.media_fast_srtp``): a browser's leg is
routed too, once it is established. As a speaker: its DTLS is released (its
first SRTP authenticated in Python), its inbound session has exactly one SSRC
and it sends with the session's payload type; the helper authenticates and
decrypts each packet with the leg's own libsrtp session (pylibsrtp's library,
called through the addresses :func:`botcall.webrtc.srtp.libsrtp_function_addresses`
and :meth:`SrtpContext.session_addresses` give) and restamps it as
``WebRtcLeg.handle_media`` does; one that does not authenticate (forged,
replayed) comes back to Python untouched and is refused and counted there.
As a listener: the browser is in a room of two (its speaker is the only one
that reaches its :class:`~botcall.webrtc.leg.DownstreamSlots`), the speaker
holds a slot whose stream has numbered at least one packet, the speaker has
no speech tracker (its ``speaking`` never moves the slots), and the stream's
SSRC has an outbound libsrtp stream; the helper renumbers and protects each
packet as ``WebRtcSink.deliver_rtp`` does and the stream's numbering comes
back with the counts (and around any packet of the speaker that Python
handles, as the rate window does). A table keeps a reference to every
``SrtpContext`` it names, so no session is freed while C may use it.

Bounds (the helper's): ``MAX_ROUTES`` routes (beyond, the rest stay on the
Python path), ``MAX_FANOUT`` listeners a route, IPv4 only.

Without the compiled module (not built: no compiler or headers at install),
:func:`available` is False and the transport keeps its Python read loop.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
from types import ModuleType
from typing import TYPE_CHECKING, Callable

from botcall.audio.opus import PAYLOAD_TYPE as PAYLOAD_TYPE_OPUS
from botcall.audio.vad import SpeechEvent, SpeechStarted, SpeechStopped
from botcall.relay.core import Address, MediaPeer, MediaRelay, UdpSink
from botcall.relay.speech import SpeechTracker
from botcall.webrtc.leg import DownstreamSlots, OutboundStream, WebRtcLeg, WebRtcSink
from botcall.webrtc.srtp import SrtpContext, libsrtp_function_addresses

if TYPE_CHECKING:
    from botcall.relay._fastpath import LevelRoute

_helper_module: ModuleType | None
try:
    from botcall.relay import _fastpath as _helper_module
except ImportError:  # not built: the Python path serves
    _helper_module = None

# How often the helper's counts reach the peers when nothing else makes them.
STATS_INTERVAL = 1.0


def available() -> bool:
    """Whether the compiled helper is built and importable here."""
    return _helper_module is not None


def _ipv4(addr: Address) -> bool:
    return ":" not in addr[0]


class _BrowserStream:
    """A routed browser destination: where the helper's numbering of it goes back."""

    __slots__ = ("index", "listener", "stream", "slots", "slot")

    def __init__(self, index: int, listener: MediaPeer, stream: OutboundStream, slots: DownstreamSlots, slot: int) -> None:
        self.index = index
        self.listener = listener
        self.stream = stream
        self.slots = slots
        self.slot = slot


class _Route:
    """One programmed route: its speaker, listeners, browser streams, and the SRTP contexts C uses."""

    __slots__ = ("peer", "listeners", "browsers", "contexts", "level")

    def __init__(self, peer: MediaPeer, listeners: tuple[MediaPeer, ...], browsers: tuple[_BrowserStream, ...], contexts: tuple[SrtpContext, ...]) -> None:
        self.peer = peer
        self.listeners = listeners
        self.browsers = browsers
        self.contexts = contexts  # kept alive while the helper's table names their sessions
        self.level = False  # the helper owns the speaker's tracker's level path


class FastForwarder:
    """The helper for one socket and one relay.

    Args:
        sock: the relay's bound non-blocking UDP socket.
        relay: the relay whose routes it forwards.
        counters: where the helper's own drops are counted (``oversized``,
            ``send_error_<ERRNO>``): the transport's counters; a new one if None.
        secure: route established browser legs (SRTP) too.

    Raises:
        RuntimeError: the helper is not built (see :func:`available`).
    """

    def __init__(self, sock: socket.socket, relay: MediaRelay, counters: collections.Counter[str] | None = None, *, secure: bool = True) -> None:
        if _helper_module is None:
            raise RuntimeError("the compiled fast path (botcall.relay._fastpath) is not built")
        self._module = _helper_module
        self._helper = _helper_module.FastPath(sock.fileno())
        #: ``send_list(datagrams, addresses, start, end) -> (next, errno)``: the
        #: transport's collected sends through one ``sendmmsg`` per 64 (see ``_fastpath.c``).
        self.send_list: Callable[[list[bytes], list[Address], int, int], tuple[int, int]] = self._helper.send_list
        self.relay = relay
        self.max_fanout: int = _helper_module.MAX_FANOUT
        self.max_routes: int = _helper_module.MAX_ROUTES
        self._generation = -1
        self.secure = secure
        if secure:
            self._helper.set_srtp(*libsrtp_function_addresses())
        self._routes: list[_Route] = []
        # A routed speaker's source address -> its route: a packet of it that
        # comes to Python anyway (after another datagram of its batch, or
        # while paused) is counted against the same rate window.
        self._route_of: dict[Address, int] = {}
        self._next_stats = 0.0
        self.counters: collections.Counter[str] = collections.Counter() if counters is None else counters

    @property
    def next_stats(self) -> float:
        """When the counts are next due to be folded (the transport's timer checks)."""
        return self._next_stats

    @property
    def route_count(self) -> int:
        return len(self._routes)

    def drain(
        self, now: float, forward: bool, limit: int
    ) -> tuple[int, bool, list[tuple[bytes, Address]], list[tuple[bytes, Address]], int]:
        """Read up to ``limit`` datagrams; forward what the table routes.

        Args:
            now: the time the batch is read at (the rate limit's clock).
            forward: False while the transport has a send backlog (forwarded
                datagrams would overtake it): everything goes to Python.
            limit: datagrams to read at most.

        Returns:
            (received, emptied, to_python, unsent, receive errno): the
            datagrams for ``handle_datagram`` in arrival order, those the
            kernel refused (EAGAIN) for the transport's backlog, and the errno
            of a failed receive (0 if none).
        """
        if self.relay.routes_generation != self._generation:
            self._reprogram()
        elif now >= self._next_stats:
            self.take_stats(now)
        received, emptied, to_python, mirrored, unsent, error = self._helper.drain(now, forward, limit)
        if mirrored:
            self._speech(mirrored, now)
        return received, emptied, to_python, unsent, error

    def _speech(self, mirrored: list[tuple[bytes | tuple[str, int] | tuple[str, int, int], int]], now: float) -> None:
        """The helper's forwarded packets for speech detection and its level routes' events, in order."""
        routes, relay = self._routes, self.relay
        for payload, route_id in mirrored:
            route = routes[route_id]
            if isinstance(payload, bytes):
                if route.level:  # a packet without a level: the tracker comes back around it
                    self._track_without_level(route_id, route, payload, now)
                else:
                    relay.track_forwarded(route.peer, payload, now)
            else:
                relay.speech_from_fast_path(route.peer, _speech_event(payload), now)

    def handle_returned(self, handle: Callable[[bytes, Address, float], None], datagrams: list[tuple[bytes, Address]], now: float) -> None:
        """Hand the datagrams the helper returned to ``handle`` (``MediaRelay.handle_datagram``), in order.

        A routed speaker's packet among them is counted against the rate
        window the helper keeps for it: the window comes over before, and
        goes back after.
        """
        route_of = self._route_of
        if not route_of:
            for data, addr in datagrams:
                handle(data, addr, now)
            return
        helper, routes = self._helper, self._routes
        for data, addr in datagrams:
            route_id = route_of.get(addr)
            if route_id is None:
                handle(data, addr, now)
                continue
            # The helper's table is still the one route_of describes (even if
            # the relay changed meanwhile: it is reprogrammed after this).
            route = routes[route_id]
            peer = route.peer
            peer.window_start, peer.window_packets = helper.window(route_id)
            if route.browsers:
                self._fold_streams(route, helper.streams(route_id))
            handle(data, addr, now)  # a level route's tracker stays in C: SpeechTracker.fast_track
            helper.set_window(route_id, peer.window_start, peer.window_packets)
            if route.browsers:
                helper.set_streams(route_id, [_numbering(browser) for browser in route.browsers])

    def take_stats(self, now: float = 0.0) -> None:
        """Fold what the helper counted since the last call into the relay and ``counters``."""
        self._next_stats = now + STATS_INTERVAL
        rows, counters = self._helper.take_stats()
        routes, count = self._routes, self.relay.count_forwarded
        for route_id, packets, size, rate_limited, window_start, window_packets, streams in rows:
            route = routes[route_id]
            peer = route.peer
            count(peer, route.listeners, packets, size, rate_limited)
            peer.window_start, peer.window_packets = window_start, window_packets
            if streams:
                self._fold_streams(route, streams)
        for name, value in counters.items():
            prefix, _, number = name.rpartition("_")
            if number.isdigit():
                code = int(number)
                name = f"{prefix}_{errno.errorcode.get(code, code)}"
            self.counters[name] += value

    # --- with the helper's thread ("thread") -------------------------------------------

    def start(self, notify_fd: int, now: float) -> None:
        """Start the forwarding thread; it writes to the eventfd ``notify_fd`` when it kept datagrams."""
        self._reprogram()
        helper = self._helper
        self._notify_fd = notify_fd

        def changed() -> None:
            helper.pause()
            os.eventfd_write(notify_fd, 1)  # wake the read loop to reprogram

        self.relay.on_routes_changed = changed
        helper.start(notify_fd, now)

    def stop(self) -> None:
        """Stop the thread and wait for it; fold its last counts (idempotent)."""
        self.relay.on_routes_changed = None
        self._helper.stop()
        self.take_stats()
        self._levels_back()

    def collect(self, now: float) -> tuple[list[tuple[bytes, Address]], list[tuple[bytes, Address]]]:
        """What the thread kept: (for ``handle_datagram``, for the backlog), in arrival order.

        Forwarded packets of a speaker with a speech tracker go to it here.
        """
        to_python, mirrored, unsent = self._helper.collect()
        if mirrored:
            self._speech(mirrored, now)
        if now >= self._next_stats:
            self.take_stats(now)
        return to_python, unsent

    def resume(self, forward: bool, now: float) -> None:
        """Let the thread read again, with a table reprogrammed if the relay changed meanwhile.

        Args:
            forward: False while the transport has a send backlog.
            now: the relay's clock.
        """
        if self.relay.routes_generation != self._generation:
            if self._helper.pending():
                # The thread kept datagrams or events after the last collect and
                # before the change paused it (a speech event that moved a
                # group call's slots): they name routes of the current table.
                # It stays paused; the read loop collects them first.
                os.eventfd_write(self._notify_fd, 1)
                return
            self._reprogram()
        self._helper.resume(forward)

    def _fold_streams(self, route: _Route, streams: list[tuple[int, int, int, int, float]]) -> None:
        """Take the helper's numbering of a route's browser streams, and its failed protects."""
        by_index = {browser.index: browser for browser in route.browsers}
        for index, failed, last_seq, last_ts, last_time in streams:
            browser = by_index[index]
            browser.stream.continue_numbering(last_seq, last_ts, last_time)
            browser.slots.touch(browser.slot, last_time)
            if failed:
                # WebRtcSink.deliver_rtp counts a refused protect on the peer only, and sends nothing.
                listener = browser.listener
                listener.tx_packets -= failed
                listener.drops["srtp_protect_failed"] += failed

    # --- speech trackers on the level path -----------------------------------------------

    def _level_back(self, route_id: int, route: _Route) -> None:
        """Take a route's speaker tracker back from the helper (it stays programmed: see _level_out)."""
        found = self._helper.level(route_id)
        speech = route.peer.speech
        if found is None or speech is None:
            return
        _, _, state, _, _, last_ms, last_voice, _, _, _ = found
        # onset_ms and interrupted moved with the events as they came.
        speech.level_takeback([], state, last_ms)
        speech.fast_expire = speech.fast_track = None
        route.peer.last_voice = last_voice

    def _track_without_level(self, route_id: int, route: _Route, data: bytes, now: float) -> None:
        """A level route's packet without a level: Python's tracker takes it, with the state around it."""
        self._level_back(route_id, route)
        self.relay.track_forwarded(route.peer, data, now)
        self._level_out(route_id, route)

    def _level_out(self, route_id: int, route: _Route) -> None:
        """Give the tracker back to the helper, or leave it in Python if it left the level path."""
        level = _level_handover(route.peer)
        self._helper.set_level(route_id, level)
        route.level = level is not None
        if level is not None:
            self._expire_through(route_id, route)

    def _levels_back(self) -> None:
        """Take every tracker back (the table is about to change, or the thread stopped)."""
        for route_id, route in enumerate(self._routes):
            if route.level:
                self._level_back(route_id, route)
                self._helper.set_level(route_id, None)
                route.level = False

    def _expire_through(self, route_id: int, route: _Route) -> None:
        """Point the tracker's sweep and Python's packets of it at the route while it owns the level path."""
        peer = route.peer
        speech = peer.speech
        assert speech is not None
        helper, relay = self._helper, self.relay

        def fast_expire(now: float, sweep: float) -> SpeechStopped | None:
            found = helper.level_expire(route_id, now, sweep)
            if found is None:
                return None
            event = SpeechStopped(found[1], found[2])
            tracker: SpeechTracker | None = peer.speech
            assert tracker is not None
            tracker.level_event(event)
            return event

        def fast_track(data: bytes, now: float) -> None:
            found = helper.level_track(route_id, data, now)
            if found is None:  # no level: the tracker comes back around this packet
                self._track_without_level(route_id, route, data, now)
                return
            for event in found:
                relay.speech_from_fast_path(peer, _speech_event(event), now)

        speech.fast_expire = fast_expire
        speech.fast_track = fast_track

    def _reprogram(self) -> None:
        """Fold the old table's counts, then give the helper the relay's current routes."""
        self.take_stats(self._next_stats - STATS_INTERVAL)
        self._levels_back()
        generation = self.relay.routes_generation
        kept: list[_Route] = []
        route_of: dict[Address, int] = {}
        table = []
        for peer, listeners in self.relay.fast_routes(self.max_fanout, secure=self.secure):
            if len(kept) >= self.max_routes:
                break
            source = peer.addr
            assert source is not None  # fast_routes gives latched peers only
            if not _ipv4(source):
                continue
            contexts: list[SrtpContext] = []
            ssrc = peer.ssrc
            srtp_in: tuple[int, int, int, int] | None = None
            if peer.secure is not None:
                opened = _secure_source(peer)
                if opened is None:
                    continue
                srtp, ssrc = opened
                srtp_in = (srtp.session_addresses()[1], srtp.min_srtp_size, PAYLOAD_TYPE_OPUS, peer.ssrc)
                contexts.append(srtp)
            destinations: list[tuple[object, ...]] = []
            browsers: list[_BrowserStream] = []
            for index, listener in enumerate(listeners):
                addr = listener.addr
                if addr is None or not _ipv4(addr):
                    break
                if type(listener.sink) is UdpSink:
                    destinations.append((addr[0], addr[1]))
                    continue
                browser = _secure_destination(peer, listener, index)
                if browser is None:
                    break
                leg_srtp = browser.stream_context
                seq_offset, ts_offset, last_seq, last_ts, last_time, _ = browser.stream.numbering()
                assert last_seq is not None  # _secure_destination checked
                destinations.append(
                    (addr[0], addr[1], leg_srtp.session_addresses()[0], browser.stream.ssrc, browser.stream.payload_type,
                     seq_offset, ts_offset, last_seq, last_ts, last_time)
                )
                browsers.append(browser.record)
                contexts.append(leg_srtp)
            if len(destinations) != len(listeners):
                continue
            level = _level_handover(peer)
            table.append(
                (
                    len(kept),
                    (source[0], source[1]),
                    ssrc,
                    peer.payload_type,
                    self.relay.max_packets_per_second,
                    peer.speech is not None,
                    destinations,
                    peer.window_start,
                    peer.window_packets,
                    srtp_in,
                    level,
                )
            )
            route_of[source[0], source[1]] = len(kept)
            route = _Route(peer, listeners, tuple(browsers), tuple(contexts))
            route.level = level is not None
            kept.append(route)
        self._helper.set_routes(table)
        for route_id, route in enumerate(kept):
            if route.level:
                self._expire_through(route_id, route)
        self._routes = kept  # the old table's contexts are released only now: the helper no longer names them
        self._route_of = route_of
        self._generation = generation


def _speech_event(found: tuple[str, int] | tuple[str, int, int]) -> SpeechEvent | None:
    """A level route's event from the helper: started, stopped, or None for the barge-in limit."""
    if found[0] == "started":
        return SpeechStarted(found[1])
    if len(found) == 3:
        return SpeechStopped(found[1], found[2])
    return None


def _level_handover(peer: MediaPeer) -> LevelRoute | None:
    """What a route needs to run ``peer``'s tracker on the level path (``set_level``), or None."""
    speech = peer.speech
    if speech is None or peer.stream_origin is None:
        return None
    handover = speech.level_handover()
    if handover is None or speech.packet_ms is None:
        return None
    level_id, config, state = handover
    limit = peer.interruption_ms if peer.human and peer.interruption_ms is not None else -1
    return (level_id, config, state, peer.stream_origin, speech.packet_ms, speech.last_ms, peer.last_voice,
            speech.onset_ms, speech.interrupted, limit)


def _numbering(browser: _BrowserStream) -> tuple[int, int, int, float]:
    """(index, last seq, last timestamp, last time) of a routed browser stream, for ``set_streams``."""
    _, _, last_seq, last_ts, last_time, _ = browser.stream.numbering()
    return browser.index, 0 if last_seq is None else last_seq, last_ts, last_time


def _secure_source(peer: MediaPeer) -> tuple[SrtpContext, int] | None:
    """A browser speaker's SRTP context and the one SSRC it sends, if its leg can be routed."""
    leg = peer.secure
    if not isinstance(leg, WebRtcLeg):
        return None
    srtp = leg.srtp
    if srtp is None or leg.holding_dtls or peer.payload_type != PAYLOAD_TYPE_OPUS:
        return None
    inbound = srtp.inbound_ssrcs
    if len(inbound) != 1:
        return None
    (ssrc,) = inbound
    return srtp, ssrc


class _SecureDestination:
    __slots__ = ("record", "stream", "stream_context")

    def __init__(self, record: _BrowserStream, stream_context: SrtpContext) -> None:
        self.record = record
        self.stream = record.stream
        self.stream_context = stream_context


def _secure_destination(speaker: MediaPeer, listener: MediaPeer, index: int) -> _SecureDestination | None:
    """A browser listener the helper may renumber and protect ``speaker``'s packets for, or None."""
    sink = listener.sink
    if not isinstance(sink, WebRtcSink) or speaker.speech is not None or len(listener.fanout) != 1:
        return None
    srtp = sink.leg.srtp
    if srtp is None:
        return None
    slot = sink.slots.slot_of(speaker.ssrc)
    if slot is None:
        return None
    stream = sink.slots.streams[slot]
    _, _, last_seq, _, _, switched = stream.numbering()
    if stream.floor != speaker.ssrc or last_seq is None or switched or stream.ssrc not in srtp.outbound_ssrcs:
        return None
    return _SecureDestination(_BrowserStream(index, listener, stream, sink.slots, slot), srtp)
