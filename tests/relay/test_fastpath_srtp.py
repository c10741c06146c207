"""SRTP legs on the compiled fast path (issue 17): a bot <-> browser call through the real transport.

A UDP bot (no playout, no speech detection: the plain-relay profile) and the
kit's simulated browser (its own DTLS client and SRTP context) on real UDP
sockets, through a real ``UdpTransport`` and ``MediaService``, with the
helper inline, in its thread, and without SRTP routes (the Python path) as the
reference. Each case checks what a broken C path gets wrong:

* bot -> browser: what the browser gets decrypts with an *independent*
  pylibsrtp session (``pylibsrtp.Session`` on the browser's DTLS keys, not our
  ``SrtpContext``) to the bot's payloads, under the answer's SSRC, CSRCs and
  header extensions stripped, numbered without a gap across packets Python
  rewrote meanwhile (those behind the bot's RTCP in its batch);
* browser -> bot: the bot gets the browser's payloads, restamped with the
  human session's SSRC and payload type 111;
* replayed and forged SRTP from the browser never reaches the bot and is
  counted (``srtp_replay``, ``srtp_auth_failed``) exactly as in Python; a
  repeated bot packet is refused by libsrtp and counted
  ``srtp_protect_failed`` on the browser's peer, as in Python;
* the counters of both peers are those of the Python path, and with the helper
  almost no RTP reaches Python (the fast path is really taken).
"""

import shutil
import socket

import pylibsrtp
import pytest
import trio

from botcall.relay import fastpath
from botcall.relay.core import MediaRelay
from botcall.relay.service import MediaService
from botcall.relay.transport import UdpTransport, open_udp_socket
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.leg import FLOOR_RELEASE
from botcall.wire.rtp import RtpHeaderExtension, RtpPacket, parse_rtp_untrusted
from botcall.wire.stun import binding_request, parse_binding_response_untrusted
from tests.kit.browser import BROWSER_SEND_SSRC, Browser, browser_offer
from tests.kit.browser_udp import udp_browser
from tests.kit.relay import BOT_UFRAG, make_session, record_python
from tests.relay.test_hot_path import client_socket, latch_over_udp

pytestmark = pytest.mark.skipif(
    not fastpath.available() and shutil.which("gcc") is None,
    reason="botcall.relay._fastpath is not built and there is no gcc to build it",
)

BOT_SSRC, HUMAN_SSRC = 1111, 2222
PACKETS = 120
MODES = pytest.mark.parametrize("mode", ["inline", "thread", "python"])


def bot_rtp(seq, payload, csrc=(), extension=None):
    return bytes(
        RtpPacket(payload_type=111, sequence_number=seq & 0xFFFF, timestamp=seq * 960 & 0xFFFFFFFF, ssrc=BOT_SSRC, payload=payload,
                  csrc=tuple(csrc), extension=extension)
    )


# An RFC 6464 audio level as the SDK sends it (one-byte header, id 1), and a sender report.
LEVEL = RtpHeaderExtension(0xBEDE, b"\x10\x85\x00\x00")
BOT_SR = b"\x80\xc8\x00\x06" + BOT_SSRC.to_bytes(4, "big") + bytes(20)


def human_rtp(seq, payload):
    return bytes(RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960, ssrc=BROWSER_SEND_SSRC, payload=payload))


async def recv_some(sock, count, keep=None):
    """``count`` datagrams from a non-blocking socket (a safety-net timeout, not a speed requirement)."""
    got = []
    with trio.fail_after(10):
        while len(got) < count:
            await trio.lowlevel.wait_readable(sock)
            while len(got) < count:
                try:
                    got.append(sock.recv(2048))
                except BlockingIOError:
                    break
    return got


async def barrier(ctx):
    """Wait until the relay has handled every datagram sent to it so far (see test_fastpath.barrier).

    The bot's binding request queues behind them on the relay's one socket and
    goes to Python; its answer comes back once everything before it was
    forwarded or dropped. What else the bot received meanwhile is kept.
    """
    bot, sock = ctx["bot"], ctx["bot_sock"]
    request = binding_request(f"{bot.ice_ufrag}:{BOT_UFRAG}", bot.ice_pwd)
    sock.sendto(request, ctx["addr"])
    with trio.fail_after(10):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                continue
            if data[:2] == b"\x01\x01" and data[8:20] == request[8:20]:
                parse_binding_response_untrusted(data, bot.ice_pwd, request[8:20])
                return
            ctx["bot_got"].append(data)


def browser_drain(browser_sock):
    got = []
    while True:
        try:
            got.append(browser_sock.recv(2048))
        except BlockingIOError:
            return got


async def run_call(mode, script, *, speech=False):
    fast_path = "off" if mode == "python" else mode
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=False, fast_path="inline" if mode == "python" else fast_path, fast_srtp=mode != "python")
    relay = MediaRelay(transport.transmit, speech_detection=speech, max_packets_per_second=10**6)
    seen_by_python = record_python(relay)
    bot_sock = client_socket()
    ctx = {"relay": relay, "transport": transport, "python": seen_by_python, "bot_sock": bot_sock, "bot_got": []}
    try:
        async with trio.open_nursery() as nursery:
            addr = ctx["addr"] = await nursery.start(transport.run, relay)
            media = ctx["media"] = MediaService(relay, transport.transmit, certificate=DtlsCertificate.generate(), hosts=("127.0.0.1",), port=addr[1], bot_playout=False)
            bot_session = make_session("bot", "bot", "udp", BOT_SSRC)
            media.add_session(bot_session)
            bot = ctx["bot"] = relay.peer(bot_session.session_id)
            await latch_over_udp(bot_sock, bot, addr)
            human_session = make_session("human", "human", "webrtc", HUMAN_SSRC)
            certificate = DtlsCertificate.generate()
            core = Browser(media.add_browser(human_session, browser_offer(certificate)), certificate, relay_addr=addr)
            async with udp_browser(core) as browser:
                await browser.connect()
                ctx["browser"], ctx["human"] = browser, relay.peer(human_session.session_id)
                raw = browser.sock
                ctx["browser_sock"] = socket.socket(fileno=raw.dup().detach())  # a plain non-blocking view for draining
                ctx["browser_sock"].setblocking(False)
                try:
                    await script(ctx)
                finally:
                    ctx["browser_sock"].close()
            if transport.fast is not None:
                transport.fast.take_stats()
            nursery.cancel_scope.cancel()
    finally:
        bot_sock.close()
        transport.sock.close()
    return ctx


def independent_session(browser):
    """A pylibsrtp session of its own on the browser's DTLS keys: checks the relay's SRTP without our SrtpContext."""
    keys = browser.core.dtls.srtp_keys
    policy = pylibsrtp.Policy(key=keys.remote_key_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=keys.profile.libsrtp_profile)
    return pylibsrtp.Session(policy)


async def call_script(ctx):
    browser, bot_sock, addr = ctx["browser"], ctx["bot_sock"], ctx["addr"]
    srtp = browser.srtp
    # Browser -> bot, ahead of the bot's first packet (its DTLS is released by the first).
    sent = [srtp.protect(human_rtp(seq, b"human%03d" % seq)) for seq in range(PACKETS)]
    for seq, data in enumerate(sent):
        await browser.sock.sendto(data, addr)
        if seq == 0:
            await barrier(ctx)  # Python has set the route up: the thread's table is current
        await trio.sleep(0)
    ctx["bot_got"] += await recv_some(bot_sock, PACKETS - len(ctx["bot_got"]))  # the barrier kept the first
    # Replays (the last ten again) and forgeries (a tag byte flipped): dropped and counted.
    for data in sent[-10:]:
        await browser.sock.sendto(data, addr)
    for seq in range(PACKETS, PACKETS + 5):
        forged = bytearray(srtp.protect(human_rtp(seq, b"forged")))
        forged[-1] ^= 0x01
        await browser.sock.sendto(bytes(forged), addr)
    await trio.sleep(0)
    await barrier(ctx)
    # One more genuine packet after the attack still goes through.
    await browser.sock.sendto(srtp.protect(human_rtp(PACKETS + 10, b"after")), addr)
    # Bot -> browser, over a sequence-number wrap, every other packet with the SDK's
    # audio level extension, #20 with a CSRC (both stripped); #40-#44 go behind an
    # RTCP report without a pause, so the relay reads them in its batch and Python
    # rewrites them (the numbering must go on across); #80 is sent twice (libsrtp
    # refuses the repeat).
    start = 65536 - 60
    for i in range(PACKETS):
        seq = start + i
        data = bot_rtp(seq, b"bot%03d" % i, csrc=(0x5555,) if i == 20 else (), extension=LEVEL if i % 2 else None)
        if i == 40:
            bot_sock.sendto(BOT_SR, addr)
        bot_sock.sendto(data, addr)
        if i in (0, 44):
            # As for the browser's first packet; and after #40-#44, which
            # Python rewrote: the helper's thread, paused meanwhile, is back.
            await barrier(ctx)
        if i == 80:
            bot_sock.sendto(data, addr)
        if not 40 <= i < 44:
            await trio.sleep(0)
    await barrier(ctx)
    ctx["browser_got"] = browser_drain(ctx["browser_sock"])


@MODES
async def test_a_call_both_ways_on_the_fast_path_is_what_python_does(mode):
    ctx = await run_call(mode, call_script)
    relay, bot, human, browser = ctx["relay"], ctx["bot"], ctx["human"], ctx["browser"]
    # Browser -> bot: the payloads, in order, under the human session's SSRC and payload type 111.
    heard = [parse_rtp_untrusted(data) for data in ctx["bot_got"] if data[0] == 0x80]
    assert [packet.payload for packet in heard] == [b"human%03d" % seq for seq in range(PACKETS)] + [b"after"]
    assert {(packet.ssrc, packet.payload_type) for packet in heard} == {(HUMAN_SSRC, 111)}
    assert human.drops["srtp_replay"] == 10 and human.drops["srtp_auth_failed"] == 5
    assert relay.counters["srtp_replay"] == 10 and relay.counters["srtp_auth_failed"] == 5
    assert human.rx_packets == PACKETS + 1 and bot.tx_packets == PACKETS + 1
    # Bot -> browser: decrypted by an independent libsrtp session, the bot's payloads under the answer's SSRC.
    checker = independent_session(browser)
    got = [parse_rtp_untrusted(checker.unprotect(data)) for data in ctx["browser_got"] if data[0] == 0x80 and not 192 <= data[1] <= 223]
    assert [packet.payload for packet in got] == [b"bot%03d" % i for i in range(PACKETS)]
    assert {packet.ssrc for packet in got} == {browser.core.out_ssrc}
    assert all(not packet.csrc for packet in got)
    first = got[0].sequence_number
    assert [packet.sequence_number for packet in got] == [(first + i) & 0xFFFF for i in range(PACKETS)]
    assert [packet.timestamp for packet in got] == [(got[0].timestamp + i * 960) & 0xFFFFFFFF for i in range(PACKETS)]
    assert human.drops["srtp_protect_failed"] == 1  # the repeated packet, refused by libsrtp
    assert human.tx_packets == PACKETS and bot.rx_packets == PACKETS + 1
    rtp_in_python = [data for data in ctx["python"] if 128 <= data[0] <= 191 and not 192 <= data[1] <= 223]
    if mode == "python":
        assert len(rtp_in_python) == 2 * PACKETS + 1 + 10 + 5 + 1  # both ways, the repeat, the attacks, "after"
    else:
        routes = ctx["transport"].fast.route_count
        assert routes == 2, routes
        # The first packets of each direction set the routes up in Python (the
        # browser's releases its DTLS, the bot's takes the browser's slot); the
        # 15 attack packets and what followed the RTCP report in its batch come
        # back; everything else was decrypted / protected in C.
        assert len(rtp_in_python) < 40, len(rtp_in_python)


async def test_the_helper_holds_the_contexts_it_names_until_reprogrammed():
    """A browser that leaves: its route goes; the table's SRTP contexts stay referenced until it no longer names them."""

    async def script(ctx):
        await call_script(ctx)
        fast = ctx["transport"].fast
        leg_srtp = ctx["human"].secure.srtp
        assert fast.route_count == 2
        assert all(context is leg_srtp for route in fast._routes for context in route.contexts)
        ctx["relay"].remove_peer(ctx.pop("human").session_id)
        # Until the next read reprograms it, the table names the sessions: the forwarder keeps them.
        assert any(context is leg_srtp for route in fast._routes for context in route.contexts)
        ctx["bot_sock"].sendto(bot_rtp(500, b"late"), ctx["addr"])
        await barrier(ctx)  # that read reprogrammed the table first
        ctx["routes_after"] = fast.route_count
        ctx["kept_after"] = any(context is leg_srtp for route in fast._routes for context in route.contexts)
        ctx["late"] = browser_drain(ctx["browser_sock"])

    ctx = await run_call("inline", script)
    assert ctx["late"] == []
    assert ctx["routes_after"] == 1 and not ctx["kept_after"]  # the bot alone: a route to nobody


def test_the_table_refuses_srtp_without_the_functions():
    from botcall.relay import _fastpath

    sock = open_udp_socket("127.0.0.1", 0)
    try:
        helper = _fastpath.FastPath(sock.fileno())
        route = (0, ("127.0.0.1", 5000), 1, 111, 50, False, [("127.0.0.1", 5001, 1, 2, 111, 0, 0, 0, 0, 0.0)], -1e9, 0)
        with pytest.raises(ValueError):
            helper.set_routes([route])  # a browser destination before set_srtp
        with pytest.raises(ValueError):
            helper.set_routes([(*route[:6], [], *route[7:], (1, 28, 111, 2))])  # an SRTP source before set_srtp
        assert helper.route_count() == 0
    finally:
        sock.close()



@MODES
async def test_a_second_speaker_continues_the_numbering_the_helper_reached(mode):
    """The helper's numbering of the browser's stream goes back to Python: a bot that joins
    later and takes the floor continues right after the last packet the helper sent."""

    async def script(ctx):
        addr, bot_sock = ctx["addr"], ctx["bot_sock"]
        await ctx["browser"].sock.sendto(ctx["browser"].srtp.protect(human_rtp(0, b"hello")), addr)  # releases its DTLS
        for i in range(PACKETS):
            bot_sock.sendto(bot_rtp(1000 + i, b"bot%03d" % i), addr)
            await trio.sleep(0)
        await barrier(ctx)
        first = browser_drain(ctx["browser_sock"])
        relay = ctx["relay"]
        second = make_session("bot2", "bot", "udp", 3333)
        ctx["media"].add_session(second)
        other_sock = client_socket()
        try:
            await latch_over_udp(other_sock, relay.peer(second.session_id), addr)
            await trio.sleep(FLOOR_RELEASE + 0.05)  # the relay's clock is real time: the floor is free after this much silence
            for i in range(5):
                other_sock.sendto(bytes(RtpPacket(111, 7000 + i, 123456 + i * 960, 3333, payload=b"two%d" % i)), addr)
            await barrier(ctx)
        finally:
            other_sock.close()
        ctx["first"], ctx["second"] = first, browser_drain(ctx["browser_sock"])

    ctx = await run_call(mode, script)
    checker = independent_session(ctx["browser"])
    first = [parse_rtp_untrusted(checker.unprotect(data)) for data in ctx["first"] if data[0] == 0x80 and not 192 <= data[1] <= 223]
    second = [parse_rtp_untrusted(checker.unprotect(data)) for data in ctx["second"] if data[0] == 0x80 and not 192 <= data[1] <= 223]
    assert [packet.payload for packet in first] == [b"bot%03d" % i for i in range(PACKETS)]
    assert [packet.payload for packet in second] == [b"two%d" % i for i in range(5)]
    assert second[0].sequence_number == (first[-1].sequence_number + 1) & 0xFFFF
    gap = (second[0].timestamp - first[-1].timestamp) & 0xFFFFFFFF
    assert gap >= 960 * 15 and gap % 960 == 0  # the silence stays in the timestamps (>= 0.3 s)
    assert second[0].marker  # a new talk spurt


# --- the helper alone: fuzzed SRTP from a routed browser ---------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from botcall.webrtc.srtp import SrtpContext, SrtpProfile, libsrtp_function_addresses  # noqa: E402
from botcall.errors import SrtpError  # noqa: E402

KEY_RELAY, KEY_BROWSER = bytes(range(28)), bytes(range(100, 128))
PROFILE = SrtpProfile.AEAD_AES_128_GCM

# What the browser sends, one op each: a genuine packet, a replay of an earlier one,
# a genuine packet with one byte flipped, one cut short, random bytes under its SSRC.
srtp_ops = st.lists(
    st.one_of(
        st.tuples(st.just("valid"), st.integers(0, 0)),
        st.tuples(st.just("replay"), st.integers(0, 200)),
        st.tuples(st.just("flip"), st.integers(0, 400)),
        st.tuples(st.just("cut"), st.integers(0, 40)),
        st.tuples(st.just("random"), st.integers(0, 2**32 - 1)),
    ),
    max_size=60,
)


def browser_datagrams(ops):
    """The datagrams ``ops`` describe; a genuine packet's payload names its index in the list."""
    sender = SrtpContext(PROFILE, KEY_BROWSER, KEY_RELAY)
    sent, genuine, seq = [], [], 0
    for index, (kind, value) in enumerate(ops):
        if kind == "replay" and genuine:
            sent.append(genuine[value % len(genuine)])
            continue
        seq += 1
        data = sender.protect(human_rtp(seq, b"op%04d" % index + bytes(20)))
        if kind == "flip":
            mutable = bytearray(data)
            mutable[value % len(data)] ^= 1 << (value % 8)
            data = bytes(mutable)
        elif kind == "cut":
            data = data[: value % len(data)]
        elif kind == "random":
            data = data[:12] + value.to_bytes(4, "big") * 8
        else:
            genuine.append(data)
        sent.append(data)
    return sent


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(srtp_ops, st.integers(1, 70))
def test_fuzz_routed_srtp_is_decrypted_only_when_libsrtp_would_and_the_rest_returned_untouched(ops, limit):
    from botcall.relay import _fastpath

    datagrams = browser_datagrams(ops)
    # The reference: the relay's Python path, one context, every datagram in order.
    reference = SrtpContext(PROFILE, KEY_RELAY, KEY_BROWSER)
    outcomes = []
    for data in datagrams:
        try:
            outcomes.append(reference.unprotect_restamped_untrusted(data, 111, HUMAN_SSRC.to_bytes(4, "big")))
        except SrtpError:
            outcomes.append(None)
    expected = [plain for plain in outcomes if plain is not None]
    relay_sock = open_udp_socket("127.0.0.1", 0)
    browser, listener = client_socket(), client_socket()
    context = SrtpContext(PROFILE, KEY_RELAY, KEY_BROWSER)  # the leg's: C and "Python" below share it
    try:
        helper = _fastpath.FastPath(relay_sock.fileno())
        helper.set_srtp(*libsrtp_function_addresses())
        srtp_in = (context.session_addresses()[1], context.min_srtp_size, 111, HUMAN_SSRC)
        helper.set_routes([(0, browser.getsockname(), BROWSER_SEND_SSRC, 111, 10**6, False, [listener.getsockname()], -1e9, 0, srtp_in)])
        for data in datagrams:
            browser.sendto(data, relay_sock.getsockname())
        received, returned, in_python = 0, [], []
        while received < len(datagrams):
            count, _, to_python, mirrored, unsent, error = helper.drain(1.0, True, limit)
            assert error == 0 and mirrored == [] and unsent == []
            received += count
            for data, addr in to_python:  # what handle_media does with them, on the same session
                assert addr == browser.getsockname()
                returned.append(data)
                try:
                    in_python.append(context.unprotect_restamped_untrusted(data, 111, HUMAN_SSRC.to_bytes(4, "big")))
                except SrtpError:
                    pass
        forwarded = []
        while True:
            try:
                forwarded.append(listener.recv(2048))
            except BlockingIOError:
                break
    finally:
        for sock in (relay_sock, browser, listener):
            sock.close()
    # Walk the arrival order: each datagram was forwarded decrypted (only if the
    # reference decrypted it at that point, to the same bytes) or returned untouched.
    forwarded_at = returned_at = 0
    for data, plain in zip(datagrams, outcomes):
        if plain is not None and forwarded_at < len(forwarded) and forwarded[forwarded_at] == plain:
            forwarded_at += 1
        else:
            assert returned_at < len(returned) and returned[returned_at] == data
            returned_at += 1
    assert (forwarded_at, returned_at) == (len(forwarded), len(returned))
    # With what Python then decrypted from the returned ones, it is all the reference decrypted, in order.
    assert sorted(forwarded + in_python, key=expected.index) == expected


@pytest.mark.parametrize("mode", ["inline", "thread"])
async def test_with_speech_detection_the_browser_is_decrypted_in_c_and_tracked_in_python(mode):
    """Speech detection on: the browser's route is mirrored (decrypted in C, a copy of the
    plain packet to its speech tracker); the bot, tracked too, reaches the browser through Python."""

    async def script(ctx):
        browser, addr = ctx["browser"], ctx["addr"]
        for seq in range(PACKETS):
            await browser.sock.sendto(browser.srtp.protect(human_rtp(seq, b"\xfc" + bytes(40))), addr)
            if seq == 0:
                await barrier(ctx)  # Python has set the route up: the thread's table is current
            await trio.sleep(0)
        ctx["bot_got"] += await recv_some(ctx["bot_sock"], PACKETS - len(ctx["bot_got"]))  # the barrier kept the first
        for i in range(20):
            ctx["bot_sock"].sendto(bot_rtp(i, b"bot%03d" % i), addr)
        await barrier(ctx)
        ctx["browser_got"] = browser_drain(ctx["browser_sock"])

    ctx = await run_call(mode, script, speech=True)
    human, bot = ctx["human"], ctx["bot"]
    assert human.speech is not None and bot.speech is not None
    assert human.speech.last_ms > 0  # the tracker saw the packets C decrypted
    assert [parse_rtp_untrusted(data).ssrc for data in ctx["bot_got"]] == [HUMAN_SSRC] * PACKETS
    assert human.rx_packets == PACKETS
    checker = independent_session(ctx["browser"])
    got = [parse_rtp_untrusted(checker.unprotect(data)).payload for data in ctx["browser_got"] if data[0] == 0x80 and not 192 <= data[1] <= 223]
    assert got == [b"bot%03d" % i for i in range(20)]
    routed = {route.peer.human: route.browsers for route in ctx["transport"].fast._routes}
    assert routed == {True: ()}  # the bot's route is refused: its speaker is tracked
    rtp_in_python = [data for data in ctx["python"] if 128 <= data[0] <= 191]
    assert len(rtp_in_python) < 20 + 10, len(rtp_in_python)
