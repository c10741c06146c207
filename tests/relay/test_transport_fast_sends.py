"""What Python sends while it handles the compiled helper's returned datagrams (issue 17).

With ``fast_path="inline"`` or ``"thread"``, the datagrams the helper gives
back go to ``handle_datagram``; what the relay transmits meanwhile (in a 1:1
call, every packet of the bot's audio to its browser) is collected and sent
with ``sendmmsg`` once they are handled, not with one ``sendto`` each.

* Order: the helper's refused sends (EAGAIN) join the backlogs before
  anything Python sends meanwhile, and a collected send never overtakes its
  destination's backlog; a send to a destination without one goes at once.
* Through the real read loops (inline and thread) on real UDP sockets:
  everything Python transmits arrives, in order, in far fewer ``sendmmsg``
  calls than datagrams.
"""

import errno
import shutil
from contextlib import contextmanager

import pytest
import trio

from botcall.relay import fastpath
from botcall.relay.core import MediaRelay
from botcall.relay.transport import UdpTransport, open_udp_socket
from tests.relay.test_hot_path import client_socket, receive
from tests.relay.test_transport import Receivers, collect

pytestmark = pytest.mark.skipif(
    not fastpath.available() and shutil.which("gcc") is None,
    reason="botcall.relay._fastpath is not built and there is no gcc to build it",
)


# How collected sends leave: the helper's sendmmsg (what run() uses on an
# IPv4 socket), or BatchedUdp's (ctypes) where the transport has no helper.
SENDERS = pytest.mark.parametrize("sender", ["helper", "ctypes"])


class SendmmsgCalls:
    """Counts the transport's ``sendmmsg`` calls and the datagrams they sent (the real call runs)."""

    def __init__(self, transport, sender):
        self.calls = 0
        self.sent = 0
        if sender == "helper":
            real_list = transport._send_list

            def send_list(datagrams, addresses, start, end):
                next_index, error = real_list(datagrams, addresses, start, end)
                self.calls += 1  # at most 64 a call: counted once per 64 below
                self.calls += max(0, (next_index - start - 1) // 64)
                self.sent += next_index - start
                return next_index, error

            transport._send_list = send_list
            return
        real = transport.batch.send_packed

        def send_packed(first, count):
            sent = real(first, count)
            self.calls += 1
            self.sent += sent
            return sent

        transport.batch.send_packed = send_packed


@contextmanager
def fast_rig(sender, receivers):
    """A transport with the helper (not running) and ``receivers`` sockets: yields (transport, fast, receivers)."""
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=True, fast_path="inline")
    relay = MediaRelay(transport.transmit)
    fast = fastpath.FastForwarder(transport.sock, relay, transport.counters)
    if sender == "helper":
        transport._send_list = fast.send_list  # as run() sets it on an IPv4 socket
    sockets = Receivers(receivers)
    try:
        yield transport, fast, sockets
    finally:
        sockets.close()
        transport.sock.close()


@SENDERS
def test_the_helpers_refused_sends_go_before_what_python_sends_meanwhile(sender):
    with fast_rig(sender, 2) as (transport, fast, receivers):
        spy = SendmmsgCalls(transport, sender)
        browser, other = receivers.addrs
        # Python answers each returned datagram with a packet to the browser
        # and one to another peer (as a bot's audio goes to its browser).
        def handle(data, addr, now):
            transport.transmit(b"py-" + data, browser)
            transport.transmit(b"py-" + data, other)

        unsent = [(b"c-1", browser), (b"c-2", browser)]  # the helper forwarded them first; EAGAIN
        returned = [(b"%d" % index, ("127.0.0.1", 9)) for index in range(5)]
        transport._hand_back(handle, fast, returned, unsent, 1.0)
        # The browser has a backlog now: Python's packets for it queue behind
        # the helper's; the other peer's go at once (one a sendmmsg: a
        # backlogged datagram ends a run; by sendto through the helper's path,
        # which sends one by one while any backlog exists).
        assert list(transport._backlog[browser]) == [b"c-1", b"c-2"] + [b"py-%d" % index for index in range(5)]
        assert spy.sent == (5 if sender == "ctypes" else 0)
        assert receivers.drain() == [[], [b"py-%d" % index for index in range(5)]]
        transport._flush_once()
        assert receivers.drain() == [[b"c-1", b"c-2"] + [b"py-%d" % index for index in range(5)], []]
        assert not transport._backlog


@SENDERS
def test_a_collected_send_never_overtakes_its_destinations_backlog(sender):
    with fast_rig(sender, 2) as (transport, fast, receivers):
        spy = SendmmsgCalls(transport, sender)
        browser, other = receivers.addrs
        transport._enqueue(b"old", browser)  # a send the kernel refused earlier

        def handle(data, addr, now):
            transport.transmit(b"py-" + data, browser if data == b"0" else other)

        transport._hand_back(handle, fast, [(b"0", ("127.0.0.1", 9)), (b"1", ("127.0.0.1", 9))], [], 1.0)
        assert list(transport._backlog[browser]) == [b"old", b"py-0"]
        assert (spy.calls, spy.sent) == ((1, 1) if sender == "ctypes" else (0, 0))
        assert transport._collecting is False and transport._pending_data == []
        transport._flush_once()
        assert receivers.drain() == [[b"old", b"py-0"], [b"py-1"]]


@SENDERS
def test_python_raising_still_sends_what_it_collected_and_stops_collecting(sender):
    with fast_rig(sender, 1) as (transport, fast, receivers):

        def handle(data, addr, now):
            transport.transmit(data, receivers.addrs[0])
            if data == b"1":
                raise RuntimeError("a bug in a handler")

        with pytest.raises(RuntimeError):
            transport._hand_back(handle, fast, [(b"0", ("127.0.0.1", 9)), (b"1", ("127.0.0.1", 9))], [], 1.0)
        assert transport._collecting is False
        assert receivers.drain() == [[b"0", b"1"]]
        # Outside a handled batch, transmit sends at once again.
        transport.transmit(b"2", receivers.addrs[0])
        assert receivers.drain() == [[b"2"]]


@SENDERS
def test_the_helpers_sendmmsg_counts_refusals_and_leaves_odd_addresses_to_sendto(sender):
    with fast_rig(sender, 3) as (transport, fast, receivers):
        sends = []
        for index in range(200):  # more than one sendmmsg of 64
            sends.append((b"%d" % index, receivers.addrs[index % 3]))
            if index % 50 == 7:
                sends.append((b"refused", ("127.0.0.1", 0)))  # EINVAL from the kernel
            if index == 100:
                sends.append((b"odd", ("not-an-address", 1)))  # only sendto can judge it
        collect(transport, sends)
        got = receivers.drain()
    for which in range(3):
        assert got[which] == [b"%d" % index for index in range(200) if index % 3 == which]
    assert transport.counters["send_error_EINVAL"] == 4
    assert sum(transport.counters.values()) == 5  # and the odd one's, by whatever errno sendto gave


def test_a_full_buffer_in_the_helpers_sendmmsg_moves_the_rest_to_the_backlogs_in_order():
    with fast_rig("helper", 2) as (transport, fast, receivers):
        real = transport._send_list
        calls = []
    
        def send_then_block(datagrams, addresses, start, end):
            calls.append((start, end))
            if len(calls) == 1:
                sent, error = real(datagrams, addresses, start, start + 5)
                assert (sent, error) == (start + 5, 0)
                return sent, errno.EAGAIN
            raise AssertionError("no second call: the rest waits in the backlogs")
    
        transport._send_list = send_then_block
        a, b = receivers.addrs
        collect(transport, [(b"%d" % index, (a, b)[index % 2]) for index in range(20)])
        assert calls == [(0, 20)]
        assert {addr: len(queue) for addr, queue in transport._backlog.items()} == {a: 7, b: 8}
        # While a destination has a backlog, new datagrams go one by one: behind it, or at once.
        collect(transport, [(b"20", a), (b"21", b)])
        assert len(calls) == 1
        assert receivers.drain() == [[b"0", b"2", b"4"], [b"1", b"3"]]
        transport._flush_once()
        got = receivers.drain()
    assert got == [[b"%d" % i for i in range(6, 22, 2)], [b"%d" % i for i in range(5, 22, 2)]]
    assert not transport._backlog


async def test_the_transport_sends_through_the_helper_while_it_runs_on_ipv4():
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), fast_path="inline")
    relay = MediaRelay(transport.transmit)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run, relay)
            assert transport._send_list is not None and transport._send_list == transport.fast.send_list
            nursery.cancel_scope.cancel()
        assert transport._send_list is None
    finally:
        transport.sock.close()


@SENDERS
@pytest.mark.parametrize("mode", ["inline", "thread"])
async def test_the_read_loops_send_what_python_transmits_in_batches_in_order(mode, sender):
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=True, fast_path=mode)
    relay = MediaRelay(transport.transmit)
    fast = fastpath.FastForwarder(transport.sock, relay, transport.counters)
    if sender == "helper":
        transport._send_list = fast.send_list  # as run() sets it
    spy = SendmmsgCalls(transport, sender)
    sender, listener = client_socket(), client_socket()
    listener_addr = listener.getsockname()
    total = 400
    handled = []

    def handle(data, addr, now):
        # No route: every datagram comes back to Python, which sends it on
        # (as the relay sends a bot's packet on to its browser).
        handled.append(data)
        transport.transmit(b"out-" + data, listener_addr)

    got = []
    try:
        # Queued before the loop reads: the helper hands them back in batches.
        for index in range(total):
            sender.sendto(b"%d" % index, transport.local_address)
        async with trio.open_nursery() as nursery:
            if mode == "thread":
                nursery.start_soon(transport._read_loop_thread, handle, fast)
            else:
                nursery.start_soon(transport._read_loop_fast, handle, fast)
            got = await receive(listener, total)
            nursery.cancel_scope.cancel()
    finally:
        for sock in (sender, listener, transport.sock):
            sock.close()
    assert handled == [b"%d" % index for index in range(total)]
    assert got == [b"out-%d" % index for index in range(total)]
    # All of it through sendmmsg, tens a call (one sendto each before).
    assert spy.sent == total
    assert spy.calls <= total // 8, spy.calls
    assert not transport._backlog and transport._pending_data == []
