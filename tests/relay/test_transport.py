"""The UDP shell: oversized datagrams are dropped and counted, never truncated and forwarded."""

import socket

import trio

from botcall.relay.core import MAX_DATAGRAM, MediaRelay
from botcall.relay.transport import RECV_SIZE, UdpTransport, open_udp_socket


def test_the_read_size_is_one_byte_over_the_limit():
    assert RECV_SIZE == MAX_DATAGRAM + 1 == 1501


async def test_oversized_datagrams_are_dropped_and_counted(autojump_clock):
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0))
    relay = MediaRelay(transport.transmit)
    seen = []
    handle = relay.handle_datagram

    def record(data, addr, now):
        seen.append(len(data))
        handle(data, addr, now)

    relay.handle_datagram = record
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    try:
        async with trio.open_nursery() as nursery:
            relay_addr = await nursery.start(transport.run, relay)
            # 0xFF is no protocol of ours: what reaches the relay is counted as unknown_kind.
            for size in (60_000, MAX_DATAGRAM + 1, MAX_DATAGRAM, 12):
                sender.sendto(b"\xff" * size, relay_addr)
            with trio.fail_after(5):
                while len(seen) < 2:
                    await trio.sleep(0.001)
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        sender.close()
        transport.sock.close()
    assert seen == [MAX_DATAGRAM, 12]
    assert transport.counters["oversized"] == 2
    assert relay.counters["unknown_kind"] == 2
