"""The hot-path changes the benchmarks motivated keep the relay's behaviour.

* ``MediaPeer.fanout`` (the precomputed sinks of the other peers) follows
  every membership change: a leaver hears nothing more, a newcomer hears
  everyone, rooms stay apart.
* The transport's adaptive coalescing: a burst above ``COALESCE_MIN_RATE``
  makes the read loop pause between drains, a trickle never does, and either
  way every packet is forwarded, in order. Real UDP sockets on 127.0.0.1, a
  virtual clock (``autojump_clock``).
"""

import socket

import pytest
import trio

from botcall.wire.rtp import parse_rtp_untrusted
from botcall.relay.core import MediaRelay
from botcall.wire.stun import answer_check_untrusted, binding_request, parse_binding_response_untrusted
from botcall.relay.transport import COALESCE_MIN_RATE, DRAIN_BATCH, RATE_WINDOW, UdpTransport, open_udp_socket
from tests.kit.relay import BOT_UFRAG, Wire, latch, make_bot, rtp


def test_fanout_follows_membership():
    wire = Wire()
    relay = MediaRelay(wire)
    addrs = {name: ("127.0.0.1", 41000 + i) for i, name in enumerate("abcd")}
    a, b, c = (make_bot(relay, wire, name, 100 + i) for i, name in enumerate("abc"))
    other_room = make_bot(relay, wire, "d", 200, room="elsewhere")
    for peer, name in ((a, "a"), (b, "b"), (c, "c"), (other_room, "d")):
        latch(relay, wire, peer, addrs[name])
    wire.sent.clear()

    relay.handle_datagram(rtp(100, 1), addrs["a"], 1.0)
    assert {dest for _, dest in wire.sent} == {addrs["b"], addrs["c"]}
    assert len(a.fanout) == 2 and len(other_room.fanout) == 0

    relay.remove_peer(c.session_id)  # c leaves: nobody sends to it any more
    wire.sent.clear()
    relay.handle_datagram(rtp(100, 2), addrs["a"], 1.0)
    relay.handle_datagram(rtp(101, 2), addrs["b"], 1.0)
    assert [dest for _, dest in wire.sent] == [addrs["b"], addrs["a"]]
    assert c.fanout == ()

    e = make_bot(relay, wire, "e", 104)  # a newcomer hears both, and is heard
    latch(relay, wire, e, ("127.0.0.1", 41010))
    wire.sent.clear()
    relay.handle_datagram(rtp(100, 3), addrs["a"], 1.0)
    relay.handle_datagram(rtp(104, 1), ("127.0.0.1", 41010), 1.0)
    assert sorted(dest for _, dest in wire.sent) == sorted([addrs["b"], ("127.0.0.1", 41010), addrs["a"], addrs["b"]])
    assert wire.to(addrs["d"]) == []


def test_removed_room_leaves_no_fanout_behind():
    wire = Wire()
    relay = MediaRelay(wire)
    a, b = make_bot(relay, wire, "a", 1), make_bot(relay, wire, "b", 2)
    relay.remove_peer(a.session_id)
    relay.remove_peer(b.session_id)
    assert a.fanout == () and b.fanout == ()
    assert relay.room_peers("room") == []


def client_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def receive(sock, count):
    got = []
    with trio.fail_after(5):
        while len(got) < count:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    got.append(sock.recv(2048))
                except BlockingIOError:
                    break
    return got


async def latch_over_udp(sock, peer, relay_addr):
    """As the SDK does: a request, the relay's check answered, the request again, the success."""
    request = binding_request(f"{peer.ice_ufrag}:{BOT_UFRAG}", peer.ice_pwd)
    sock.sendto(request, relay_addr)
    [check] = await receive(sock, 1)
    sock.sendto(answer_check_untrusted(check, relay_addr, username=f"{BOT_UFRAG}:{peer.ice_ufrag}", password=peer.ice_pwd), relay_addr)
    sock.sendto(request, relay_addr)
    [success] = await receive(sock, 1)
    parse_binding_response_untrusted(success, peer.ice_pwd, request[8:20])


async def forward(packets_per_pause, pauses, pause, batched):
    """Bot A sends ``pauses`` bursts of ``packets_per_pause`` packets through a
    real transport to bot B; returns (what B got, the transport).

    ``batched``: recvmmsg/sendmmsg, or recvfrom/sendto (the fallback)."""
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=batched)
    # One sender stands for many here: lift the per-speaker rate limit.
    relay = MediaRelay(transport.transmit, max_packets_per_second=10**9)
    a, b = make_bot(relay, transport.transmit, "a", 7), make_bot(relay, transport.transmit, "b", 8)
    sock_a, sock_b = client_socket(), client_socket()
    relay_addr = transport.local_address
    total = packets_per_pause * pauses
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run, relay)
            for sock, peer in ((sock_a, a), (sock_b, b)):
                await latch_over_udp(sock, peer, relay_addr)
            receiving = []

            async def collect():
                receiving.extend(await receive(sock_b, total))

            nursery.start_soon(collect)
            seq = 0
            for _ in range(pauses):
                for _ in range(packets_per_pause):
                    sock_a.sendto(rtp(7, seq), relay_addr)
                    seq += 1
                await trio.sleep(pause)
            with trio.fail_after(5):
                while len(receiving) < total:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        for sock in (sock_a, sock_b, transport.sock):
            sock.close()
    return receiving, transport


BATCHED = pytest.mark.parametrize("batched", [True, False], ids=["mmsg", "recvfrom"])


@BATCHED
async def test_a_burst_is_coalesced_and_fully_forwarded(autojump_clock, batched):
    burst = int(COALESCE_MIN_RATE * RATE_WINDOW) + DRAIN_BATCH  # above the rate in one window
    got, transport = await forward(burst, 3, RATE_WINDOW, batched)
    assert [parse_rtp_untrusted(data).sequence_number for data in got] == list(range(3 * burst))
    assert transport.coalesced >= 1


@BATCHED
async def test_a_trickle_is_forwarded_without_pauses(autojump_clock, batched):
    got, transport = await forward(1, 20, 0.02, batched)  # 50 packets/s
    assert [parse_rtp_untrusted(data).sequence_number for data in got] == list(range(20))
    assert transport.coalesced == 0
