"""Latching against the real server over real UDP on 127.0.0.1: a replayed request,
a forged source address, and an SDK bot whose address changes mid-call.

Bot A is driven by hand (a raw socket and the join API) so the test holds the
exact bytes of its Binding requests; bot B is the SDK, talking a tone.
"""

import socket
import struct

import pytest
import trio

from botcall.demo.signals import tone
from botcall_sdk import connect
from botcall.errors import BadPacket
from botcall.wire.stun import answer_check_untrusted, binding_request, parse_binding_response_untrusted
from tests.kit.server import running_server

pytestmark = pytest.mark.e2e

HAND_UFRAG = "handbot1"


async def open_room(srv):
    created = await srv.create_room(srv.token(agent="creator#1"))
    assert created.status == 201, created.body
    return created.json()["room_id"]


async def join_by_hand(srv, room_id, agent):
    joined = await srv.join(srv.token(agent=agent), room_id, agent_id=agent)
    assert joined.status == 200, joined.body
    return joined.json()["media"]


def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def drain(sock):
    got = []
    while True:
        try:
            got.append(sock.recvfrom(4096))
        except BlockingIOError:
            return got


async def latch_by_hand(sock, media, relay_addr):
    """Request, the relay's check answered, the request again: returns the request sent."""
    request = binding_request(f"{media['ice_ufrag']}:{HAND_UFRAG}", media["ice_pwd"])
    sock.sendto(request, relay_addr)
    with trio.fail_after(5):
        while True:
            await trio.lowlevel.wait_readable(sock)
            for data, source in drain(sock):
                if data[:2] == b"\x00\x01":
                    answer = answer_check_untrusted(data, source, username=f"{HAND_UFRAG}:{media['ice_ufrag']}", password=media["ice_pwd"])
                    sock.sendto(answer, relay_addr)
                    sock.sendto(request, relay_addr)
                    continue
                try:
                    parse_binding_response_untrusted(data, media["ice_pwd"], request[8:20])
                except BadPacket:
                    continue
                return request


def forge_udp(source_port, dest, payload):
    """Send ``payload`` to ``dest`` on 127.0.0.1 with a forged UDP source port (a raw socket).

    Returns:
        False if raw sockets are not allowed here.
    """
    try:
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except PermissionError:
        return False
    with raw:
        # The kernel writes the IP header (source 127.0.0.1); the UDP header is ours,
        # with checksum 0 ("none", allowed over IPv4, RFC 768).
        header = struct.pack("!HHHH", source_port, dest[1], 8 + len(payload), 0)
        raw.sendto(header + payload, (dest[0], 0))
    return True


async def test_a_replayed_binding_request_gets_nothing_and_moves_nothing(tmp_path):
    async with running_server(tmp_path) as srv:
        room = await open_room(srv)
        relay = srv.state.media.relay
        relay_addr = ("127.0.0.1", srv.state.media_port)
        a_media = await join_by_hand(srv, room, "alice#1")
        a_sock, attacker = udp_socket(), udp_socket()
        try:
            captured = [await latch_by_hand(a_sock, a_media, relay_addr)]
            async with connect(srv.url, room, srv.token(agent="bob#2")) as b, trio.open_nursery() as nursery:
                await b.say(tone(440, 10.0))
                for _ in range(3):  # keepalives: new transactions from A's verified address
                    request = binding_request(f"{a_media['ice_ufrag']}:{HAND_UFRAG}", a_media["ice_pwd"])
                    a_sock.sendto(request, relay_addr)
                    captured.append(request)
                    await trio.sleep(0.05)
                # A is latched and hears B (waited for, not timed: a busy machine may be slow).
                await wait_for_rtp(a_sock, 6)
                a_peer = relay.peer(next(p.session_id for p in relay.all_peers() if p.ssrc == a_media["ssrc"]))
                for _ in range(3):
                    for request in captured:
                        attacker.sendto(request, relay_addr)
                    await trio.sleep(0.2)
                # A keeps hearing B throughout; the replays' window has passed by then.
                await wait_for_rtp(a_sock, 21)
                assert drain(attacker) == []  # not even an answer
                assert a_peer.addr == a_sock.getsockname()
                assert relay.counters["stun_replayed"] >= 3 * len(captured) - relay.counters["stun_rate_limited"]
                nursery.cancel_scope.cancel()
        finally:
            a_sock.close()
            attacker.close()


async def test_a_forged_source_gets_the_check_and_nothing_more(tmp_path):
    """The attacker's own session, its request sent "from" a victim's port: the victim
    gets the relay's check (no larger than the request), never the room's audio."""
    async with running_server(tmp_path) as srv:
        room = await open_room(srv)
        relay = srv.state.media.relay
        relay_addr = ("127.0.0.1", srv.state.media_port)
        evil_media = await join_by_hand(srv, room, "mallory#6")
        victim = udp_socket()  # a third party: only records what arrives
        try:
            async with connect(srv.url, room, srv.token(agent="bob#2")) as b, trio.open_nursery() as nursery:
                await b.say(tone(440, 10.0))
                requests = [binding_request(f"{evil_media['ice_ufrag']}:evil", evil_media["ice_pwd"]) for _ in range(3)]
                for request in requests:
                    if not forge_udp(victim.getsockname()[1], relay_addr, request):
                        victim.sendto(request, relay_addr)  # no raw sockets: the same bytes from the same address
                    await trio.sleep(0.15)
                await trio.sleep(1.0)  # the room keeps talking
                got = [data for data, _ in drain(victim)]
                nursery.cancel_scope.cancel()
        finally:
            victim.close()
        assert got and all(data[:2] == b"\x00\x01" and len(data) <= len(requests[0]) for data in got)
        assert len(got) <= len(requests)
        evil = next(p for p in relay.all_peers() if p.ssrc == evil_media["ssrc"])
        assert evil.addr is None and relay.counters["check_sent"] >= len(got)


async def wait_for_rtp(sock, count, timeout=10.0):
    """Read RTP from ``sock`` until ``count`` packets came (a safety net, not a speed bound)."""
    heard = 0
    with trio.fail_after(timeout):
        while heard < count:
            await trio.lowlevel.wait_readable(sock)
            heard += sum(1 for data, _ in drain(sock) if data[0] >= 128)


async def wait_until(predicate, timeout):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


@pytest.mark.parametrize("who", ["listener", "speaker"])
async def test_an_sdk_bot_that_rebinds_is_followed_within_a_second(tmp_path, who):
    """A NAT gives the bot a new port mid-call (the SDK moves to a new local
    socket and tells nobody). A listener notices its audio stopped and binds
    from the new port; a speaker's RTP from there makes the relay check it."""
    async with running_server(tmp_path) as srv:
        room = await open_room(srv)
        relay = srv.state.media.relay
        async with connect(srv.url, room, srv.token(agent="alice#1")) as a, connect(srv.url, room, srv.token(agent="bob#2")) as b:
            moving, other = (a, b) if who == "listener" else (b, a)
            talker = other if who == "listener" else moving
            async with trio.open_nursery() as nursery:
                await talker.say(tone(440, 10.0))
                peer = relay.peer(moving.session_id)
                await wait_until(lambda: other.counters["received"] + moving.counters["received"] > 10, 5)
                old = peer.addr
                await moving.rebind_socket()
                switched = trio.current_time()
                new_port = moving.local_address[1]
                await wait_until(lambda: peer.addr is not None and peer.addr[1] == new_port, 1.0)
                moved_after = trio.current_time() - switched
                received = (moving if who == "listener" else other).counters["received"]
                await wait_until(lambda: (moving if who == "listener" else other).counters["received"] > received + 5, 1.0)
                nursery.cancel_scope.cancel()
        assert old != peer.addr and moved_after < 1.0
        assert relay.counters["rebound"] >= 1
        if who == "speaker":
            assert relay.counters["unknown_source_check"] >= 1
        else:
            assert a.counters["silence_binds"] >= 1
