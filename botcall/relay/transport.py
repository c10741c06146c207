"""The one UDP media socket: the Trio shell around :class:`MediaRelay`.

The read loop waits once for readability, then drains the socket with
non-blocking ``recvfrom`` calls until it would block (measured here: ~11 µs per
forwarded packet, against 43-60 µs for ``await sock.recvfrom()`` per packet).
Under load it pauses about a millisecond between drains so that one wakeup
serves many packets (adaptive coalescing, see ``COALESCE_MIN_RATE``).
A datagram longer than ``MAX_DATAGRAM`` is dropped unread and counted
(``oversized``): the loop reads one byte more than that, so a longer one shows
instead of arriving silently truncated.
Sends are non-blocking ``sendto``; when the kernel buffer is full, datagrams
wait in a bounded per-destination backlog that drops its oldest entry (stale
audio is worth less than fresh audio), counted as ``send_backlog_dropped``.

Batched system calls (``mmsg.py``, where the C library has them): the drain
reads with ``recvmmsg``, up to ``RECV_BATCH`` datagrams a call (a longer
datagram arrives cut, flagged MSG_TRUNC, and is counted ``oversized``), and
what the relay transmits while it handles one such batch (or runs its
timers) is collected and sent with ``sendmmsg`` once the batch is handled,
in the order it was transmitted. Collecting stops at ``MAX_PENDING``
datagrams (a batch is flushed early), so memory and the delay a batch adds
stay bounded. A datagram whose destination already has a backlog joins that
backlog, as before, and when the kernel refuses a batch with EAGAIN the rest
of it goes to the backlogs in order: per-destination order always holds.
Outside a batch (WebSocket tasks, signaling) ``transmit`` sends at once.
Without the batched calls, or with ``batched=False``, the transport reads
with ``recvfrom`` and sends with ``sendto`` as described above.

The compiled fast path (``fast_path="inline"`` or ``"thread"`` where
``_fastpath.c`` is built, see ``fastpath.py``): the helper forwards the plain
RTP of the routes the relay programs in C and returns the rest, in arrival
order, to ``handle_datagram``; what it could not send (EAGAIN) joins the
backlogs in order, and while any backlog exists it forwards nothing
(everything goes through Python and the backlogs, as without it). What
Python transmits while it handles the returned datagrams (in a 1:1 call, the
bot's audio to its browser) is collected and sent with ``sendmmsg`` as in the
batched loop, after the helper's refused sends have joined the backlogs and
before the helper reads again (``_hand_back``); so is what the timers send.
On an IPv4 socket the helper's own ``sendmmsg`` sends them (``send_list``:
C lays out the batch, ~0.75 µs a datagram against ~1.0 for ``sendto`` and
~1.15 for ``BatchedUdp``'s Python layout, measured here at 25 a batch), with
or without ``batched``. Inline,
the drain reads through the helper after each Trio wakeup; with its thread,
the read loop waits on an eventfd the thread signals when it kept datagrams
for Python.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
from typing import Callable

import trio

from botcall.relay import fastpath
from botcall.relay.core import MAX_DATAGRAM, Address, MediaRelay
from botcall.relay.mmsg import MMSGHDR_SIZE, MSG_TRUNC, NAME_SIZE, SEND_BATCH, BatchedUdp

# One byte more than the largest datagram the relay takes: recvfrom cuts a
# longer one to this size, and the extra byte tells it was cut.
RECV_SIZE = MAX_DATAGRAM + 1
# Datagrams handled before yielding to other tasks (HTTP, timers) even when the
# socket still has more: bounds the latency other tasks see under load.
DRAIN_BATCH = 512
SOCKET_BUFFER = 4 * 1024 * 1024
# The timer loop never runs more often than this, however close the deadlines.
TIMER_RESOLUTION = 0.001
# Adaptive coalescing. Below COALESCE_MIN_RATE packets/s the loop waits for
# the socket again as soon as it is empty: each packet is forwarded the moment
# it arrives. Above it, the loop first pauses for COALESCE_DELAY, so packets
# gather and one wakeup (trio's epoll re-arm, its scheduler pass, and the
# interprocessor wakeups of the receivers) serves a batch of them. Trio's epoll
# timeouts have millisecond resolution: the pause is about 1 ms, which bounds
# the latency it adds. Measured with 1,000 bot legs at 50k packets/s: relay
# CPU per forwarded packet 16-17 µs -> 11-13 µs, relay-added p50 +0.3 ms
# (docs/bench-results.md). The threshold is where the two cost the same on
# the benchmark machine, whose timer wakeups are dear (a virtual machine: a
# timed sleep costs ~25 µs of CPU): at 5,000 packets/s pausing cost 34-40 µs
# per packet against 29-36 µs without, at 7,500 packets/s 27-32 against 37.
COALESCE_MIN_RATE = 6000.0
COALESCE_DELAY = 0.0005
RATE_WINDOW = 0.1
# Datagrams collected for one sendmmsg flush at most: a pass whose fan-out
# produces more flushes early (a batch of RECV_BATCH datagrams to a room of
# 16 is 1,024).
MAX_PENDING = 4 * SEND_BATCH
# What an encoding failure of a destination can raise (then sendto decides).
_BAD_DESTINATION = (OSError, ValueError, TypeError, IndexError, OverflowError)


def open_udp_socket(host: str, port: int) -> socket.socket:
    """Bind a non-blocking UDP socket with large kernel buffers.

    Args:
        host: local address to bind (``"127.0.0.1"``, ``"0.0.0.0"``, ``"::"``).
        port: local port, 0 for any.

    Returns:
        The bound socket.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for option, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        # SO_RCVBUFFORCE/SO_SNDBUFFORCE (33/32 on Linux) pass rmem_max when we
        # may; otherwise the plain option is capped by the sysctl.
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    sock.setblocking(False)
    sock.bind((host, port))
    return sock


def _errno_name(exc: OSError) -> str:
    """A failed call's errno by name (``EAGAIN``), its number if unnamed, or ``None``."""
    code = exc.errno
    return "None" if code is None else str(errno.errorcode.get(code, code))


class _Coalescing:
    """When the read loops pause to let packets gather (both loops share it).

    Over each ``RATE_WINDOW`` the loop counts what it read; at
    ``COALESCE_MIN_RATE`` packets a second or more, a batch that emptied the
    socket is followed by a ``COALESCE_DELAY`` pause instead of a wakeup per
    packet.
    """

    __slots__ = ("window_end", "window_packets", "busy")

    def __init__(self) -> None:
        self.window_end = 0.0
        self.window_packets = 0
        self.busy = False

    def pause_after(self, received: int, emptied: bool, now: float) -> bool:
        """Whether to pause after a batch of ``received`` datagrams read at ``now``."""
        self.window_packets += received
        if now >= self.window_end:
            self.busy = self.window_packets >= COALESCE_MIN_RATE * RATE_WINDOW
            self.window_end = now + RATE_WINDOW
            self.window_packets = 0
        return self.busy and emptied


class UdpTransport:
    """Owns the socket: read loop, bounded send backlog, relay timers.

    Args:
        sock: a bound non-blocking UDP socket (see :func:`open_udp_socket`).
        backlog_per_destination: datagrams kept per destination while the
            kernel send buffer is full.
        max_backlog_destinations: bound on destinations with a backlog.
        batched: use ``recvmmsg``/``sendmmsg``; None (the default) uses them
            where the C library has them, False never.
        fast_path: ``"inline"`` or ``"thread"``: forward plain RTP in the
            compiled helper where it is built (``fastpath.available()``);
            otherwise, or ``"off"``, in Python.
        fast_srtp: let the helper route established browser legs (SRTP) too.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        backlog_per_destination: int = 64,
        max_backlog_destinations: int = 4096,
        batched: bool | None = None,
        fast_path: str = "off",
        fast_srtp: bool = True,
    ) -> None:
        self.sock = sock
        #: The compiled helper in use once ``run`` started, or None.
        self.fast: fastpath.FastForwarder | None = None
        if fast_path not in ("off", "inline", "thread"):
            raise ValueError(f"fast_path must be off, inline or thread, not {fast_path!r}")
        self._fast_path = fast_path if fastpath.available() else "off"
        self._fast_srtp = fast_srtp
        self.counters: collections.Counter[str] = collections.Counter()
        self._backlog: dict[Address, collections.deque[bytes]] = {}
        self._backlog_size = backlog_per_destination
        self._max_backlog_destinations = max_backlog_destinations
        self._backlog_ready = trio.Event()
        self._sendto = sock.sendto
        # Pauses taken by the read loop to let packets gather (see COALESCE_MIN_RATE).
        self._wakeup = trio.Event()
        self.coalesced = 0
        #: The batched calls in use, or None (recvfrom/sendto).
        self.batch: BatchedUdp | None = None if batched is False else BatchedUdp.open(sock)
        if batched and self.batch is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available here")
        # While a batch is handled, transmit() appends here instead of sending.
        self._collecting = False
        self._pending_data: list[bytes] = []
        self._pending_addr: list[Address] = []
        # The compiled helper's sendmmsg for collected sends, while it runs on an IPv4 socket.
        self._send_list: Callable[[list[bytes], list[Address], int, int], tuple[int, int]] | None = None

    @property
    def local_address(self) -> Address:
        # getsockname() is untyped (Any); an IPv6 socket gives a 4-tuple, whose
        # first two items are still (host, port).
        address: Address = self.sock.getsockname()
        return address

    def transmit(self, data: bytes, addr: Address) -> None:
        """Send now if the kernel takes it, else queue it (bounded, oldest dropped).

        While a received batch is handled, collect it for one ``sendmmsg``.
        """
        if self._collecting:
            if type(data) is not bytes:
                # Sent later: a caller's reusable buffer must not change under it.
                data = bytes(data)
            self._pending_data.append(data)
            self._pending_addr.append(addr)
            if len(self._pending_data) >= MAX_PENDING:
                self._flush_pending()
            return
        if addr in self._backlog:
            self._enqueue(data, addr)
            return
        try:
            self._sendto(data, addr)
        except BlockingIOError:
            self._enqueue(data, addr)
        except OSError as exc:
            self.counters[f"send_error_{_errno_name(exc)}"] += 1

    def _flush_pending(self) -> None:
        """Send what was collected, in order, with as few ``sendmmsg`` calls as it takes."""
        datagrams, destinations = self._pending_data, self._pending_addr
        total = len(datagrams)
        if not total:
            return
        self._pending_data, self._pending_addr = [], []
        if self._send_list is not None:
            self._flush_through_helper(self._send_list, datagrams, destinations)
            return
        batch = self.batch
        if batch is None:
            for data, addr in zip(datagrams, destinations):
                self._send_one(data, addr)
            return
        backlog = self._backlog
        pack, send_packed = batch.pack, batch.send_packed
        start = 0
        while start < total:
            # The run from `start` that can go in one call: no backlog for
            # its destinations (they would overtake it), sockaddrs cached.
            end = pack(datagrams, destinations, start, total, backlog)
            if end == start:
                addr = destinations[start]
                if not (backlog and addr in backlog):
                    try:
                        batch.destination(addr)
                        continue  # encoded now: lay the run out again
                    except _BAD_DESTINATION:
                        pass
                # Backlogged, or an address only sendto can judge: alone.
                self._send_one(datagrams[start], addr)
                start += 1
                continue
            slot = 0
            while start < end:
                try:
                    sent = send_packed(slot, end - start)
                except BlockingIOError:
                    # The kernel buffer is full: the rest waits in the
                    # backlogs, each destination's datagrams in order.
                    for index in range(start, total):
                        self._enqueue(datagrams[index], destinations[index])
                    return
                except OSError as exc:
                    # sendmmsg fails only for its first datagram: count that
                    # one, as sendto would, and go on with the next.
                    self.counters[f"send_error_{_errno_name(exc)}"] += 1
                    sent = 1
                start += sent
                slot += sent

    def _flush_through_helper(
        self, send_list: Callable[[list[bytes], list[Address], int, int], tuple[int, int]], datagrams: list[bytes], destinations: list[Address]
    ) -> None:
        """Send what was collected with the compiled helper's ``sendmmsg`` (IPv4), in order.

        While any destination has a backlog (rare: the kernel's buffer was
        full), the rest goes one by one, so none overtakes its backlog.
        """
        total = len(datagrams)
        start = 0
        while start < total:
            if self._backlog:
                for index in range(start, total):
                    self._send_one(datagrams[index], destinations[index])
                return
            start, error = send_list(datagrams, destinations, start, total)
            if not error:
                continue
            if error == errno.EAGAIN:
                # The kernel buffer is full: the rest waits in the backlogs, in order.
                for index in range(start, total):
                    self._enqueue(datagrams[index], destinations[index])
                return
            if error < 0:
                # Not an IPv4 address the helper encodes: sendto decides.
                self._send_one(datagrams[start], destinations[start])
            else:
                # That one datagram refused, as sendto's would be: counted, skipped.
                self.counters[f"send_error_{errno.errorcode.get(error, error)}"] += 1
            start += 1

    def _send_one(self, data: bytes, addr: Address) -> None:
        if addr in self._backlog:
            self._enqueue(data, addr)
            return
        try:
            self._sendto(data, addr)
        except BlockingIOError:
            self._enqueue(data, addr)
        except OSError as exc:
            self.counters[f"send_error_{_errno_name(exc)}"] += 1

    def _enqueue(self, data: bytes, addr: Address) -> None:
        queue = self._backlog.get(addr)
        if queue is None:
            if len(self._backlog) >= self._max_backlog_destinations:
                self.counters["send_backlog_full"] += 1
                return
            queue = self._backlog[addr] = collections.deque(maxlen=self._backlog_size)
            self._backlog_ready.set()
        if len(queue) == self._backlog_size:
            self.counters["send_backlog_dropped"] += 1
        queue.append(data)

    async def run(self, relay: MediaRelay, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the socket until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flush_loop)
            nursery.start_soon(self._timer_loop, relay)
            task_status.started(self.local_address)
            if self._fast_path != "off":
                fast = self.fast = fastpath.FastForwarder(self.sock, relay, self.counters, secure=self._fast_srtp)
                relay.count_source = lambda: fast.take_stats(trio.current_time())
                if self.sock.family == socket.AF_INET:
                    self._send_list = fast.send_list
                try:
                    if self._fast_path == "thread":
                        await self._read_loop_thread(relay.handle_datagram, fast)
                    else:
                        await self._read_loop_fast(relay.handle_datagram, fast)
                finally:
                    relay.count_source = None
                    self._send_list = None
            elif self.batch is not None:
                await self._read_loop_batched(relay.handle_datagram, self.batch)
            else:
                await self._read_loop(relay.handle_datagram)

    async def _drain_loop(self, drain: Callable[[float], tuple[int, bool]]) -> None:
        """Wait for the socket, ``drain(now) -> (received, emptied)`` it, and
        when busy pause ``COALESCE_DELAY`` so packets gather (every read loop)."""
        sock = self.sock
        wait_readable = trio.lowlevel.wait_readable
        current_time = trio.current_time
        sleep = trio.sleep
        coalescing = _Coalescing()
        paused = False
        while True:
            # After a pause the socket almost always holds packets: read them
            # straight away instead of paying a scheduler pass to be told so.
            if not paused:
                await wait_readable(sock)
            paused = False
            # One clock read per batch: packets drained together arrived within
            # microseconds of each other.
            now = current_time()
            received, emptied = drain(now)
            if coalescing.pause_after(received, emptied, now):
                # Busy, and the socket is empty: let the next packets gather
                # instead of paying a wakeup for each one.
                self.coalesced += 1
                await sleep(COALESCE_DELAY)
                paused = True

    async def _read_loop_batched(self, handle: Callable[[bytes, Address, float], None], batch: BatchedUdp) -> None:
        """The read loop with ``recvmmsg`` and collected sends (see the module docstring)."""
        receive = batch.receive
        iter_headers, iter_names = batch.iter_headers, batch.iter_names
        headers_view, names_view, slot_views = batch.headers_view, batch.names_view, batch.slot_views
        header_size, name_size = MMSGHDR_SIZE, NAME_SIZE
        addresses = batch.addresses
        flush = self._flush_pending
        counters = self.counters

        def drain(now: float) -> tuple[int, bool]:
            received = 0
            # Read until the kernel says the socket is empty, even after a
            # short batch: stopping at a short batch (one call fewer) made
            # the loop pause while packets were still arriving, and cost
            # 1.2-1.5 ms of p50 at 25k packets/s (500 bot legs, measured).
            while received < DRAIN_BATCH:
                try:
                    count = receive()
                except BlockingIOError:
                    return received, True
                except OSError as exc:
                    counters[f"recv_error_{_errno_name(exc)}"] += 1
                    received += 1
                    continue
                received += count
                self._collecting = True
                try:
                    # BatchedUdp.received, inlined: one generator frame less per datagram.
                    for (namelen, flags, length), (raw,), view in zip(
                        iter_headers(headers_view[: count * header_size]),
                        iter_names(names_view[: count * name_size]),
                        slot_views,
                    ):
                        addr = addresses.get(raw)
                        if addr is None:
                            addr = batch.learn_address(raw, namelen)
                            if addr is None:
                                counters["recv_error_EAFNOSUPPORT"] += 1
                                continue
                        if flags & MSG_TRUNC:
                            counters["oversized"] += 1
                            continue
                        handle(view[:length].tobytes(), addr, now)
                finally:
                    self._collecting = False
                    flush()
            return received, False

        await self._drain_loop(drain)

    async def _read_loop_fast(self, handle: Callable[[bytes, Address, float], None], fast: fastpath.FastForwarder) -> None:
        """The read loop through the compiled helper (see the module docstring)."""
        fast_drain = fast.drain
        hand_back = self._hand_back
        counters = self.counters
        backlog = self._backlog

        def drain(now: float) -> tuple[int, bool]:
            received = 0
            emptied = False
            while received < DRAIN_BATCH:
                count, emptied, to_python, unsent, error = fast_drain(now, not backlog, DRAIN_BATCH - received)
                received += count
                if to_python or unsent:
                    hand_back(handle, fast, to_python, unsent, now)
                if error:
                    counters[f"recv_error_{errno.errorcode.get(error, error)}"] += 1
                    received += 1
                elif emptied:
                    break
            return received, emptied

        await self._drain_loop(drain)

    def _hand_back(
        self,
        handle: Callable[[bytes, Address, float], None],
        fast: fastpath.FastForwarder,
        to_python: list[tuple[bytes, Address]],
        unsent: list[tuple[bytes, Address]],
        now: float,
    ) -> None:
        """Take what the helper gave back: its refused sends, then the datagrams for Python.

        The helper's refused sends (EAGAIN) join the backlogs first: it sent
        them before anything it returned arrived (it forwards nothing of a
        batch after the first datagram it returns). What Python transmits
        while it handles the returned datagrams (a bot's audio to its
        browser, restamped and protected) is collected and sent with
        ``sendmmsg`` once they are handled, behind any backlog of its
        destination, as in the batched read loop; before the helper reads
        again, so nothing it forwards next overtakes it.
        """
        enqueue = self._enqueue
        for data, addr in unsent:
            enqueue(data, addr)
        if not to_python:
            return
        self._collecting = True
        try:
            fast.handle_returned(handle, to_python, now)
        finally:
            self._collecting = False
            self._flush_pending()

    async def _read_loop_thread(self, handle: Callable[[bytes, Address, float], None], fast: fastpath.FastForwarder) -> None:
        """The read loop when the helper's thread reads the socket (see the module docstring)."""
        notify_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        wait_readable = trio.lowlevel.wait_readable
        current_time = trio.current_time
        backlog = self._backlog
        hand_back = self._hand_back
        fast.start(notify_fd, current_time())
        try:
            while True:
                await wait_readable(notify_fd)
                try:
                    os.eventfd_read(notify_fd)
                except BlockingIOError:
                    pass
                now = current_time()
                to_python, unsent = fast.collect(now)
                if to_python or unsent:
                    hand_back(handle, fast, to_python, unsent, now)
                fast.resume(not backlog, now)
        finally:
            fast.stop()
            os.close(notify_fd)

    async def _read_loop(self, handle: Callable[[bytes, Address, float], None]) -> None:
        recvfrom = self.sock.recvfrom
        counters = self.counters

        def drain(now: float) -> tuple[int, bool]:
            for received in range(DRAIN_BATCH):
                try:
                    data, addr = recvfrom(RECV_SIZE)
                except BlockingIOError:
                    return received, True
                except OSError as exc:
                    counters[f"recv_error_{_errno_name(exc)}"] += 1
                    continue
                if len(data) > MAX_DATAGRAM:
                    counters["oversized"] += 1
                    continue
                handle(data, addr, now)
            return DRAIN_BATCH, False

        await self._drain_loop(drain)

    async def _flush_loop(self) -> None:
        while True:
            await self._backlog_ready.wait()
            self._backlog_ready = trio.Event()
            while self._backlog:
                await trio.lowlevel.wait_writable(self.sock)
                self._flush_once()

    def _flush_once(self) -> None:
        for addr in list(self._backlog):
            queue = self._backlog[addr]
            while queue:
                try:
                    self._sendto(queue[0], addr)
                except BlockingIOError:
                    return
                except OSError as exc:
                    self.counters[f"send_error_{_errno_name(exc)}"] += 1
                queue.popleft()
            del self._backlog[addr]

    async def _timer_loop(self, relay: MediaRelay) -> None:
        """Run the relay's timers at its deadlines; sleep otherwise.

        The relay calls ``wake`` when a deadline appears earlier than the one
        this loop sleeps towards (a DTLS handshake starting, sound after silence).
        """
        while True:
            now = trio.current_time()
            fast = self.fast
            if fast is not None and now >= fast.next_stats:
                # The helper's counts reach the peers (metrics) at least once a
                # second, even when no datagram wakes the read loop.
                fast.take_stats(now)
            if self.batch is not None or self._send_list is not None:
                # Timers send too (bot playout, DTLS retransmissions): batch them.
                self._collecting = True
                try:
                    relay.handle_timeout(now)
                finally:
                    self._collecting = False
                    self._flush_pending()
            else:
                relay.handle_timeout(now)
            with trio.move_on_at(max(relay.next_deadline(), now + TIMER_RESOLUTION)):
                await self._wakeup.wait()
            if self._wakeup.is_set():
                self._wakeup = trio.Event()

    def wake(self) -> None:
        """The relay's ``wake`` callback: its next deadline moved earlier."""
        self._wakeup.set()
