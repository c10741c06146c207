"""The compiled fast path (``_fastpath.c``, ``fastpath.py``) keeps the relay's behaviour.

* Fuzz (Hypothesis): random datagrams (empty, short, odd first bytes, the
  routed source's SSRC and payload type or not, oversized) from a routed and
  an unrouted source. Every datagram is either forwarded unchanged (and then
  it is exactly a packet the relay would forward), handed to Python
  unchanged and in order, or counted ``oversized``; never both, never lost,
  never a crash.
* Through the real transport on real UDP sockets, with the helper and
  without: the same packets arrive in the same order; the peers' counters
  agree; mute, the rate limit, wrong SSRC / payload type, a peer leaving, a
  re-latch and a listener that is not a plain UDP bot all behave as on the
  Python path; the helper's table follows the relay's state.
"""

import os
import select
import shutil
import time

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from botcall.relay import fastpath
from botcall.relay.core import MAX_DATAGRAM, MediaRelay
from botcall.relay.transport import UdpTransport, open_udp_socket
from botcall.wire.rtp import parse_rtp_untrusted
from botcall.wire.stun import binding_request, parse_binding_response_untrusted
from tests.kit.relay import BOT_UFRAG, make_bot, record_python, rtp
from tests.relay.test_hot_path import client_socket, latch_over_udp, receive

# The test command's set-up installs gcc and Python's headers, so there the
# helper is always built: a build that failed silently must fail here, not skip.
# Only a machine without a compiler skips.
pytestmark = pytest.mark.skipif(
    not fastpath.available() and shutil.which("gcc") is None,
    reason="botcall.relay._fastpath is not built and there is no gcc to build it",
)


def test_the_compiled_helper_is_built_where_a_compiler_is() -> None:
    assert fastpath.available(), "gcc is here but botcall.relay._fastpath is not built: pip install -e . failed to compile it"

SSRC = 0x11223344
PT = 111
# A datagram the helper always hands to Python (a STUN-range first byte).
BARRIER = b"\x00\x01\x00\x00ordering-barrier"


def helper_for(sock):
    from botcall.relay import _fastpath

    return _fastpath.FastPath(sock.fileno())


def forwardable(data):
    """What the helper may forward from the routed source: what MediaRelay.handle_rtp forwards."""
    return (
        12 <= len(data) <= MAX_DATAGRAM
        and 128 <= data[0] <= 191
        and not 192 <= data[1] <= 223
        and data[8:12] == SSRC.to_bytes(4, "big")
        and data[1] & 0x7F == PT
    )


def rtp_like():
    header = st.builds(
        lambda first, second, rest, ssrc: bytes([first, second]) + rest + ssrc,
        st.sampled_from([0x80, 0x90, 0xBF, 0x00, 0x16, 0xC0, 0xFF]),
        st.sampled_from([PT, PT | 0x80, 0, 200, 201, 223, 224]),
        st.binary(min_size=6, max_size=6),
        st.sampled_from([SSRC.to_bytes(4, "big"), b"\x00\x00\x00\x00"]),
    )
    return st.one_of(
        st.binary(max_size=40),
        st.builds(lambda h, body: (h + body)[: len(h) + len(body)], header, st.binary(max_size=200)),
        st.builds(lambda h, cut: h[:cut], header, st.integers(0, 12)),
        st.builds(lambda h, n: h + bytes(n), header, st.sampled_from([MAX_DATAGRAM - 12, MAX_DATAGRAM - 11, 3000])),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), rtp_like()), max_size=80), st.integers(1, 130))
def test_fuzz_every_datagram_is_forwarded_returned_or_counted_once(datagrams, limit):
    fuzz_once(datagrams, limit, threaded=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), rtp_like()), max_size=80))
def test_fuzz_the_thread_likewise(datagrams):
    fuzz_once(datagrams, 0, threaded=True)


def fuzz_once(datagrams, limit, *, threaded):
    relay_sock = open_udp_socket("127.0.0.1", 0)
    routed, stranger, listener = client_socket(), client_socket(), client_socket()
    helper = helper_for(relay_sock)
    routed_addr, stranger_addr = routed.getsockname(), stranger.getsockname()
    try:
        helper.set_routes([(0, routed.getsockname(), SSRC, PT, 10**6, False, [listener.getsockname()], -1e9, 0)])
        target = relay_sock.getsockname()
        for from_routed, data in datagrams:
            (routed if from_routed else stranger).sendto(data, target)
        returned, received, forwarded = [], 0, []
        expected_oversized = sum(len(data) > MAX_DATAGRAM for _, data in datagrams)
        deadline = time.monotonic() + 30  # a safety net against a hung helper, not a speed requirement
        if threaded:
            # An ordering barrier: a last datagram for Python from the stranger.
            # The thread hands it over after everything before it was forwarded
            # (sendmmsg, then the eventfd), counted or handed over too.
            stranger.sendto(BARRIER, target)
            notify = os.eventfd(0, os.EFD_NONBLOCK)
            helper.start(notify, 1.0)
            try:
                while (BARRIER, stranger_addr) not in returned:
                    ready, _, _ = select.select([notify], [], [], max(0.0, deadline - time.monotonic()))
                    assert ready, f"the barrier never came back: {len(returned)} datagrams returned"
                    os.eventfd_read(notify)
                    to_python, mirrored, unsent = helper.collect()
                    assert mirrored == [] and unsent == []
                    returned += to_python
                    helper.resume(True)
                assert returned.pop() == (BARRIER, stranger_addr)  # the last one, alone behind everything
                forwarded = drain_socket(listener)
                oversized = helper.take_stats()[1].get("oversized", 0)
            finally:
                helper.stop()
                os.close(notify)
            routes = []
        else:
            while received < len(datagrams) and time.monotonic() < deadline:
                count, emptied, to_python, mirrored, unsent, error = helper.drain(1.0, True, limit)
                assert 0 <= count <= limit and error == 0 and mirrored == [] and unsent == []
                received += count
                returned += to_python
            assert received == len(datagrams)
            forwarded = drain_socket(listener)
            routes, counters = helper.take_stats()
            oversized = counters.get("oversized", 0)
    finally:
        for sock in (relay_sock, routed, stranger, listener):
            sock.close()
    assert oversized == expected_oversized
    assert all(forwardable(data) for data in forwarded)
    if not threaded:
        assert sum(row[1] for row in routes) == len(forwarded)
    # Forwarded and returned interleave into the arrival order: each datagram
    # exactly once, the returned ones with the address they came from.
    addresses = {True: routed_addr, False: stranger_addr}
    kept = [(addresses[from_routed], data) for from_routed, data in datagrams if len(data) <= MAX_DATAGRAM]
    assert interleaves(kept, forwarded, returned, routed_addr)


def drain_socket(sock):
    got = []
    while True:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            return got


def interleaves(kept, forwarded, returned, routed_addr):
    """Whether ``kept`` is ``forwarded`` (from the routed source) merged with ``returned``, orders kept."""
    reachable = {0}  # datagrams of `forwarded` used so far, after each step
    for index, (addr, data) in enumerate(kept):
        step = set()
        for used in reachable:
            back = index - used
            if used < len(forwarded) and addr == routed_addr and forwarded[used] == data:
                step.add(used + 1)
            if back < len(returned) and returned[back] == (data, addr):
                step.add(used)
        if not step:
            return False
        reachable = step
    return any(used == len(forwarded) and len(kept) - used == len(returned) for used in reachable)


def test_after_a_datagram_for_python_the_batch_goes_to_python_in_order():
    relay_sock = open_udp_socket("127.0.0.1", 0)
    routed, listener = client_socket(), client_socket()
    helper = helper_for(relay_sock)
    try:
        helper.set_routes([(0, routed.getsockname(), SSRC, PT, 10**6, True, [listener.getsockname()], -1e9, 0)])
        sequence = [rtp(SSRC, 1), rtp(SSRC, 2), b"\x00\x01\x00\x00stun", rtp(SSRC, 3), rtp(SSRC, 4, pt=0)]
        for data in sequence:
            routed.sendto(data, relay_sock.getsockname())
        count, emptied, to_python, mirrored, unsent, error = helper.drain(1.0, True, 512)
        # It returned after the batch with the STUN datagram: the socket was not read again.
        assert (count, emptied, error, unsent) == (5, False, 0, [])
        assert [data for data, _ in to_python] == sequence[2:]
        assert all(addr == routed.getsockname() for _, addr in to_python)
        assert mirrored == [(sequence[0], 0), (sequence[1], 0)]  # copies for speech detection
        assert [listener.recv(2048), listener.recv(2048)] == sequence[:2]
        assert helper.drain(1.0, True, 512)[:2] == (0, True)
        [(route_id, packets, size, limited, window_start, window_packets, streams)], counters = helper.take_stats()
        assert (route_id, packets, size, limited, window_start, window_packets, streams) == (0, 2, len(sequence[0]) * 2, 0, 1.0, 2, [])
        assert helper.take_stats() == ([], {})
    finally:
        for sock in (relay_sock, routed, listener):
            sock.close()


def test_the_table_refuses_what_it_cannot_hold():
    from botcall.relay import _fastpath

    sock = open_udp_socket("127.0.0.1", 0)
    helper = helper_for(sock)
    ok = (0, ("127.0.0.1", 5000), SSRC, PT, 200, False, [("127.0.0.1", 5001)], -1e9, 0)
    try:
        helper.set_routes([ok])
        for bad in (
            [ok, ok],  # the same source twice
            [(0, ("::1", 5000), SSRC, PT, 200, False, [], -1e9, 0)],
            [(0, ("127.0.0.1", 70000), SSRC, PT, 200, False, [], -1e9, 0)],
            [(0, ("127.0.0.1", 5000), SSRC, PT, 200, False, [("127.0.0.1", 5001)] * (_fastpath.MAX_FANOUT + 1), -1e9, 0)],
        ):
            with pytest.raises(ValueError):
                helper.set_routes(bad)
        assert helper.route_count() == 1  # the table before the refusal stays
    finally:
        sock.close()


async def run_call(fast_path, script, *, max_packets_per_second=200):
    """Bots a and b (and c, a listener of another kind when asked) latched over
    real UDP through a real transport; ``script(ctx)`` sends; returns ctx."""
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=False, fast_path=fast_path)
    assert transport._fast_path == fast_path
    relay = MediaRelay(transport.transmit, max_packets_per_second=max_packets_per_second)
    a, b = make_bot(relay, transport.transmit, "a", 7), make_bot(relay, transport.transmit, "b", 8)
    sock_a, sock_b = client_socket(), client_socket()
    seen_by_python = record_python(relay)
    ctx = {"relay": relay, "transport": transport, "a": a, "b": b, "sock_a": sock_a, "sock_b": sock_b, "python": seen_by_python}
    try:
        async with trio.open_nursery() as nursery:
            ctx["addr"] = await nursery.start(transport.run, relay)
            for sock, peer in ((sock_a, a), (sock_b, b)):
                await latch_over_udp(sock, peer, ctx["addr"])
            await script(ctx)
            if transport.fast is not None:
                transport.fast.take_stats()
            nursery.cancel_scope.cancel()
    finally:
        for sock in (sock_a, sock_b, transport.sock):
            sock.close()
    return ctx


async def barrier(ctx):
    """Wait until the relay has handled everything sent to it so far.

    a's binding request queues behind every datagram sent before it on the
    relay's socket, and each path keeps that order: the helper hands it and
    everything after it in its batch to Python, and its thread stops until
    Python resumes it. Once the answer is back, every earlier datagram was
    forwarded or dropped, and a forwarded one is already in the listener's
    socket (loopback delivers within ``sendto``): no waiting for "nothing more".
    """
    a, sock = ctx["a"], ctx["sock_a"]
    request = binding_request(f"{a.ice_ufrag}:{BOT_UFRAG}", a.ice_pwd)
    sock.sendto(request, ctx["addr"])
    with trio.fail_after(10):  # a safety net against a hung relay, not a speed requirement
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                continue
            if data[:2] == b"\x01\x01" and data[8:20] == request[8:20]:  # its success response
                parse_binding_response_untrusted(data, a.ice_pwd, request[8:20])
                return


async def send_and_collect(ctx, packets, expect):
    """Send ``packets`` from a, one trio checkpoint apart; what b got once the relay
    handled them all (see ``barrier``): exactly ``expect`` packets."""
    for data in packets:
        ctx["sock_a"].sendto(data, ctx["addr"])
        await trio.sleep(0.001)
    await barrier(ctx)
    got = drain_socket(ctx["sock_b"])
    assert len(got) == expect, [parse_rtp_untrusted(data).sequence_number for data in got]
    return got


FAST = pytest.mark.parametrize("fast_path", ["inline", "off"])


async def check_plain_rtp_arrives_in_order_and_is_counted_as_in_python(fast_path):
    async def script(ctx):
        ctx["got"] = await send_and_collect(ctx, [rtp(7, seq) for seq in range(300)], 300)

    ctx = await run_call(fast_path, script, max_packets_per_second=10**6)
    assert [parse_rtp_untrusted(data).sequence_number for data in ctx["got"]] == list(range(300))
    a, b = ctx["a"], ctx["b"]
    assert (a.rx_packets, a.rx_bytes, b.tx_packets) == (300, 300 * len(rtp(7, 0)), 300)
    rtp_in_python = [data for data in ctx["python"] if data[0] == 0x80]
    if fast_path != "off":
        # The first packet starts the stream (StreamStarted) in Python; the rest never reach it.
        assert len(rtp_in_python) == 1 and ctx["transport"].fast.route_count == 1  # b never spoke
        assert a.speech is not None and a.speech.last_ms > 0  # speech detection saw the forwarded packets
    else:
        assert len(rtp_in_python) == 300


async def check_mute_wrong_ssrc_and_payload_type_are_dropped_as_in_python(fast_path):
    async def script(ctx):
        relay, a = ctx["relay"], ctx["a"]
        ctx["first"] = await send_and_collect(ctx, [rtp(7, 1), rtp(7, 2)], 2)
        ctx["wrong"] = await send_and_collect(ctx, [rtp(99, 3), rtp(7, 4, pt=0)], 0)
        relay.set_muted(a.session_id, True)
        ctx["muted"] = await send_and_collect(ctx, [rtp(7, 5), rtp(7, 6)], 0)
        relay.set_muted(a.session_id, False)
        ctx["again"] = await send_and_collect(ctx, [rtp(7, 7)], 1)

    ctx = await run_call(fast_path, script)
    assert [parse_rtp_untrusted(d).sequence_number for d in ctx["first"] + ctx["again"]] == [1, 2, 7]
    assert dict(ctx["a"].drops) == {"wrong_ssrc": 1, "wrong_payload_type": 1, "muted": 2}
    assert ctx["a"].rx_packets == 3


async def check_the_rate_limit_holds_across_reprogramming(fast_path):
    async def script(ctx):
        relay = ctx["relay"]
        first = [rtp(7, seq) for seq in range(30)]
        for data in first:
            ctx["sock_a"].sendto(data, ctx["addr"])
        await receive(ctx["sock_b"], 30)
        # Someone joins (the table is reprogrammed): a's window goes on.
        make_bot(relay, ctx["transport"].transmit, "c", 9, room="another")
        for seq in range(30, 80):
            ctx["sock_a"].sendto(rtp(7, seq), ctx["addr"])
        await barrier(ctx)
        ctx["got"] = drain_socket(ctx["sock_b"])

    ctx = await run_call(fast_path, script, max_packets_per_second=50)
    assert len(ctx["got"]) == 20
    assert ctx["a"].rx_packets == 50
    assert ctx["a"].drops["rate_limited"] == 30
    assert ctx["relay"].counters["rate_limited"] == 30


async def check_a_leaver_hears_nothing_and_a_moved_bot_is_followed(fast_path):
    async def script(ctx):
        relay, b = ctx["relay"], ctx["b"]
        ctx["before"] = await send_and_collect(ctx, [rtp(7, 1), rtp(7, 2)], 2)
        # b moves to another socket (a NAT rebinding): latching follows, the route too.
        moved = client_socket()
        ctx["sock_b"].close()
        ctx["sock_b"] = moved
        await latch_over_udp(moved, b, ctx["addr"])
        ctx["moved"] = await send_and_collect(ctx, [rtp(7, 3)], 1)
        relay.remove_peer(b.session_id)
        ctx["after"] = await send_and_collect(ctx, [rtp(7, 4)], 0)

    ctx = await run_call(fast_path, script)
    assert [parse_rtp_untrusted(d).sequence_number for d in ctx["before"] + ctx["moved"]] == [1, 2, 3]
    assert ctx["after"] == []


@FAST
async def test_plain_rtp_arrives_in_order_and_is_counted_as_in_python(autojump_clock, fast_path):
    await check_plain_rtp_arrives_in_order_and_is_counted_as_in_python(fast_path)


async def test_plain_rtp_arrives_in_order_and_is_counted_as_in_python_with_the_thread():
    await check_plain_rtp_arrives_in_order_and_is_counted_as_in_python("thread")  # real time: the thread forwards while Trio sleeps


@FAST
async def test_mute_wrong_ssrc_and_payload_type_are_dropped_as_in_python(autojump_clock, fast_path):
    await check_mute_wrong_ssrc_and_payload_type_are_dropped_as_in_python(fast_path)


async def test_mute_wrong_ssrc_and_payload_type_are_dropped_as_in_python_with_the_thread():
    await check_mute_wrong_ssrc_and_payload_type_are_dropped_as_in_python("thread")  # real time: the thread forwards while Trio sleeps


@FAST
async def test_the_rate_limit_holds_across_reprogramming(autojump_clock, fast_path):
    await check_the_rate_limit_holds_across_reprogramming(fast_path)


async def test_the_rate_limit_holds_across_reprogramming_with_the_thread():
    await check_the_rate_limit_holds_across_reprogramming("thread")  # real time: the thread forwards while Trio sleeps


@FAST
async def test_a_leaver_hears_nothing_and_a_moved_bot_is_followed(autojump_clock, fast_path):
    await check_a_leaver_hears_nothing_and_a_moved_bot_is_followed(fast_path)


async def test_a_leaver_hears_nothing_and_a_moved_bot_is_followed_with_the_thread():
    await check_a_leaver_hears_nothing_and_a_moved_bot_is_followed("thread")  # real time: the thread forwards while Trio sleeps


def test_the_switches_and_which_speakers_qualify():
    from botcall.config import Config
    from botcall.errors import ConfigError
    from botcall.relay.service import MediaService
    from botcall.webrtc.dtls.certificate import DtlsCertificate
    from tests.kit.relay import Wire, latch, make_session

    with pytest.raises(ConfigError):
        Config(media_fast_path="turbo")
    with pytest.raises(ConfigError):
        Config(media_fast_path="thread")  # with playouts nothing qualifies: only cost
    assert Config(media_fast_path="thread", media_bot_playout=False).media_fast_path == "thread"
    assert Config().media_fast_path == "inline" and Config().media_bot_playout and Config().speech_detection
    with pytest.raises(ValueError):
        UdpTransport(open_udp_socket("127.0.0.1", 0), fast_path="on")
    wire = Wire()
    relay = MediaRelay(wire, speech_detection=False)
    media = MediaService(relay, wire, certificate=DtlsCertificate.generate(), hosts=("127.0.0.1",), port=40000, bot_playout=False)
    for name, transport, ssrc in (("u1", "udp", 11), ("u2", "udp", 12), ("w", "websocket", 13)):
        media.add_session(make_session(name, "bot", transport, ssrc, room_id="r"))
    u1, u2, w = (relay.peer(f"sess-{name}") for name in ("u1", "u2", "w"))
    assert u1.playout is None and u1.speech is None and w.playout is not None  # WebSocket bots keep their playout
    latch(relay, wire, u1, ("127.0.0.1", 5001), bot_ufrag="x")
    latch(relay, wire, u2, ("127.0.0.1", 5002), bot_ufrag="x")
    assert relay.fast_routes(16) == []  # no first packet yet; and a WebSocket listener
    relay.remove_peer(w.session_id)
    for peer, port in ((u1, 5001), (u2, 5002)):
        relay.handle_datagram(rtp(peer.ssrc, 1), ("127.0.0.1", port), 1.0)
    assert relay.fast_routes(16) == [(u1, (u2,)), (u2, (u1,))]
    assert relay.fast_routes(0) == []  # more listeners than the helper holds
    generation = relay.routes_generation
    relay.set_muted(u1.session_id, True)
    assert relay.routes_generation > generation and relay.fast_routes(16) == [(u2, (u1,))]


async def check_counts_are_current_on_demand(fast_path):
    async def script(ctx):
        fast = ctx["transport"].fast
        fast.take_stats(trio.current_time())  # the next fold by the timer is a second away
        await send_and_collect(ctx, [rtp(7, seq) for seq in range(50)], 50)
        # Forwarded in C and not folded yet; a metrics scrape (or a test) asks for them now.
        ctx["relay"].refresh_counts()
        ctx["counts"] = (ctx["a"].rx_packets, ctx["b"].tx_packets)

    ctx = await run_call(fast_path, script, max_packets_per_second=10**6)
    assert ctx["counts"] == (50, 50)
    assert ctx["relay"].count_source is None  # the transport stopped: nothing to fold


async def test_counts_are_current_on_demand():
    await check_counts_are_current_on_demand("inline")  # real time: the timer's fold is a second away


async def test_counts_are_current_on_demand_with_the_thread():
    await check_counts_are_current_on_demand("thread")
