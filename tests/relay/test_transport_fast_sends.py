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

import shutil

import pytest
import trio

from botcall.relay import fastpath
from botcall.relay.core import MediaRelay
from botcall.relay.transport import UdpTransport, open_udp_socket
from tests.relay.test_hot_path import client_socket
from tests.relay.test_transport import Receivers

pytestmark = pytest.mark.skipif(
    not fastpath.available() and shutil.which("gcc") is None,
    reason="botcall.relay._fastpath is not built and there is no gcc to build it",
)


class SendmmsgCalls:
    """Counts the transport's ``sendmmsg`` calls and the datagrams they sent (the real call runs)."""

    def __init__(self, transport):
        self.calls = 0
        self.sent = 0
        real = transport.batch.send_packed

        def send_packed(first, count):
            sent = real(first, count)
            self.calls += 1
            self.sent += sent
            return sent

        transport.batch.send_packed = send_packed


def fast_transport():
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=True, fast_path="inline")
    relay = MediaRelay(transport.transmit)
    return transport, fastpath.FastForwarder(transport.sock, relay, transport.counters)


def test_the_helpers_refused_sends_go_before_what_python_sends_meanwhile():
    transport, fast = fast_transport()
    receivers = Receivers(2)
    spy = SendmmsgCalls(transport)
    browser, other = receivers.addrs
    try:
        # Python answers each returned datagram with a packet to the browser
        # and one to another peer (as a bot's audio goes to its browser).
        def handle(data, addr, now):
            transport.transmit(b"py-" + data, browser)
            transport.transmit(b"py-" + data, other)

        unsent = [(b"c-1", browser), (b"c-2", browser)]  # the helper forwarded them first; EAGAIN
        returned = [(b"%d" % index, ("127.0.0.1", 9)) for index in range(5)]
        transport._hand_back(handle, fast, returned, unsent, 1.0)
        # The browser has a backlog now: Python's packets for it queue behind
        # the helper's; the other peer's go at once (a backlogged datagram
        # ends a sendmmsg run, so here one a call).
        assert list(transport._backlog[browser]) == [b"c-1", b"c-2"] + [b"py-%d" % index for index in range(5)]
        assert spy.sent == 5
        assert receivers.drain() == [[], [b"py-%d" % index for index in range(5)]]
        transport._flush_once()
        assert receivers.drain() == [[b"c-1", b"c-2"] + [b"py-%d" % index for index in range(5)], []]
        assert not transport._backlog
    finally:
        receivers.close()
        transport.sock.close()


def test_a_collected_send_never_overtakes_its_destinations_backlog():
    transport, fast = fast_transport()
    receivers = Receivers(2)
    spy = SendmmsgCalls(transport)
    browser, other = receivers.addrs
    try:
        transport._enqueue(b"old", browser)  # a send the kernel refused earlier

        def handle(data, addr, now):
            transport.transmit(b"py-" + data, browser if data == b"0" else other)

        transport._hand_back(handle, fast, [(b"0", ("127.0.0.1", 9)), (b"1", ("127.0.0.1", 9))], [], 1.0)
        assert list(transport._backlog[browser]) == [b"old", b"py-0"]
        assert (spy.calls, spy.sent) == (1, 1)
        assert transport._collecting is False and transport._pending_data == []
        transport._flush_once()
        assert receivers.drain() == [[b"old", b"py-0"], [b"py-1"]]
    finally:
        receivers.close()
        transport.sock.close()


def test_python_raising_still_sends_what_it_collected_and_stops_collecting():
    transport, fast = fast_transport()
    receivers = Receivers(1)
    try:

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
    finally:
        receivers.close()
        transport.sock.close()


@pytest.mark.parametrize("mode", ["inline", "thread"])
async def test_the_read_loops_send_what_python_transmits_in_batches_in_order(mode):
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=True, fast_path=mode)
    relay = MediaRelay(transport.transmit)
    fast = fastpath.FastForwarder(transport.sock, relay, transport.counters)
    spy = SendmmsgCalls(transport)
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
            with trio.fail_after(10):  # a safety net against a hung loop, not a speed requirement
                while len(got) < total:
                    await trio.lowlevel.wait_readable(listener)
                    while True:
                        try:
                            got.append(listener.recv(2048))
                        except BlockingIOError:
                            break
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
