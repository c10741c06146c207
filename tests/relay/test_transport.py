"""The UDP shell, with batched system calls (recvmmsg/sendmmsg) and without.

* Oversized datagrams are dropped and counted, never truncated and forwarded:
  by the extra byte of ``recvfrom``, or by MSG_TRUNC from ``recvmmsg``.
* Addresses from ``recvmmsg`` are exactly what ``recvfrom`` gives (IPv4,
  IPv6, IPv4-mapped, a scoped link-local address), one tuple object per peer.
* Collected sends keep per-destination order through EAGAIN and the
  backlog, count refusals per errno as ``sendto`` does, and never send a
  buffer the caller changed afterwards.
* Where the C library lacks the calls, the transport falls back to
  ``recvfrom``/``sendto``.
"""

import errno
import socket

import pytest
import trio

from botcall.relay import mmsg
from botcall.relay.core import MAX_DATAGRAM, MediaRelay
from botcall.relay.mmsg import ADDRESS_CACHE_SIZE, MSG_TRUNC, RECV_BATCH, SEND_BATCH, BatchedUdp
from botcall.relay.transport import MAX_PENDING, RECV_SIZE, UdpTransport, open_udp_socket

BATCHED = pytest.mark.parametrize("batched", [True, False], ids=["mmsg", "recvfrom"])


def test_the_read_size_is_one_byte_over_the_limit():
    assert RECV_SIZE == MAX_DATAGRAM + 1 == 1501


def test_batches_are_tens_of_datagrams():
    assert 16 <= RECV_BATCH <= SEND_BATCH <= MAX_PENDING <= 1024  # 1024: the kernel's UIO_MAXIOV per call


@BATCHED
async def test_oversized_datagrams_are_dropped_and_counted(autojump_clock, batched):
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=batched)
    assert (transport.batch is not None) == batched
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


def test_without_the_calls_the_transport_reads_with_recvfrom(monkeypatch):
    monkeypatch.setattr(mmsg, "_libc_calls", lambda: None)
    sock = open_udp_socket("127.0.0.1", 0)
    try:
        assert UdpTransport(sock).batch is None
        with pytest.raises(OSError) as refused:
            UdpTransport(sock, batched=True)
        assert refused.value.errno == errno.ENOSYS
    finally:
        sock.close()


def pair(family, host, peer_host=None):
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((host, 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET if peer_host and ":" not in peer_host else family, socket.SOCK_DGRAM)
    sender.bind((peer_host or host, 0))
    return receiver, sender


def read_batch(batch):
    return list(batch.received(batch.receive()))


def link_local():
    """A scoped IPv6 address of this machine (interface, address), or None."""
    try:
        with open("/proc/net/if_inet6") as table:
            for line in table:
                hexaddr, index, _, scope, _, name = line.split()
                if scope == "20":  # link scope
                    return name, socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hexaddr))
    except OSError:
        pass
    return None


@pytest.mark.parametrize(
    "family, host, peer_host",
    [
        (socket.AF_INET, "127.0.0.1", None),
        (socket.AF_INET6, "::1", None),
        (socket.AF_INET6, "::", "127.0.0.1"),  # an IPv4 peer of a dual-stack socket
    ],
    ids=["ipv4", "ipv6", "ipv4-mapped"],
)
def test_addresses_are_what_recvfrom_gives(family, host, peer_host):
    receiver, sender = pair(family, host, peer_host)
    try:
        port = receiver.getsockname()[1]
        target = (peer_host or ("::1" if host == "::" else host), port)
        sender.sendto(b"one", target)
        expected = receiver.recvfrom(100)
        batch = BatchedUdp.open(receiver)
        for payload in (b"two", b"three"):
            sender.sendto(payload, target)
        got = read_batch(batch)
        assert [data for data, _ in got] == [b"two", b"three"]
        assert [addr for _, addr in got] == [expected[1]] * 2
        assert got[0][1] is got[1][1]  # one tuple per peer, not one per packet
        # And back: a collected send reaches the peer's socket.
        assert batch.destination(expected[1])[2] in (16, 28)
        assert batch.send([b"back"], [expected[1]], 0, 1) == 1
        assert sender.recv(100) == b"back"
    finally:
        receiver.close()
        sender.close()


def test_a_scoped_link_local_address_matches_recvfrom():
    found = link_local()
    if found is None:
        pytest.skip("no link-local IPv6 address here")
    name, address = found
    scoped = (address, 0, 0, socket.if_nametoindex(name))
    receiver, sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        receiver.bind(scoped)
        sender.bind(scoped)
        target = receiver.getsockname()
        sender.sendto(b"one", target)
        expected = receiver.recvfrom(100)[1]
        assert expected[3] != 0
        batch = BatchedUdp.open(receiver)
        sender.sendto(b"two", target)
        [(data, addr)] = read_batch(batch)
        assert (data, addr) == (b"two", expected)
        batch.destination(addr)
        batch.send([b"back"], [addr], 0, 1)
        assert sender.recv(100) == b"back"
    finally:
        receiver.close()
        sender.close()


def test_a_cut_datagram_is_flagged_and_the_batch_goes_on():
    receiver, sender = pair(socket.AF_INET, "127.0.0.1")
    try:
        batch = BatchedUdp.open(receiver)
        target = receiver.getsockname()
        for size in (10, MAX_DATAGRAM + 1, MAX_DATAGRAM, 20):
            sender.sendto(b"x" * size, target)
        got = read_batch(batch)
        assert [None if data is None else len(data) for data, _ in got] == [10, None, MAX_DATAGRAM, 20]
        assert all(addr == sender.getsockname() for _, addr in got)
        with pytest.raises(BlockingIOError):
            batch.receive()
    finally:
        receiver.close()
        sender.close()
    assert MSG_TRUNC == 0x20


def test_one_call_reads_at_most_a_batch_and_the_address_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(mmsg, "ADDRESS_CACHE_SIZE", 3)
    receiver = open_udp_socket("127.0.0.1", 0)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
    try:
        for sender in senders:
            sender.bind(("127.0.0.1", 0))
        batch = BatchedUdp.open(receiver)
        for index in range(RECV_BATCH + 10):
            senders[index % 5].sendto(index.to_bytes(2, "big"), receiver.getsockname())
        first = read_batch(batch)
        second = read_batch(batch)
        assert len(first) == RECV_BATCH and len(second) == 10
        assert [int.from_bytes(data, "big") for data, _ in first + second] == list(range(RECV_BATCH + 10))
        assert [addr for _, addr in first + second] == [senders[i % 5].getsockname() for i in range(RECV_BATCH + 10)]
        assert len(batch.addresses) <= 3
    finally:
        receiver.close()
        for sender in senders:
            sender.close()
    assert ADDRESS_CACHE_SIZE >= 1024


class Receivers:
    """``count`` client sockets and what each got, in order."""

    def __init__(self, count):
        self.socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
        for sock in self.socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        self.addrs = [sock.getsockname() for sock in self.socks]

    def drain(self):
        got = []
        for sock in self.socks:
            mine = []
            while True:
                try:
                    mine.append(sock.recv(2048))
                except BlockingIOError:
                    break
            got.append(mine)
        return got

    def close(self):
        for sock in self.socks:
            sock.close()


def collect(transport, sends):
    """Transmit ``sends`` as within one handled batch, then flush."""
    transport._collecting = True
    for data, addr in sends:
        transport.transmit(data, addr)
    transport._collecting = False
    transport._flush_pending()


@BATCHED
def test_collected_sends_keep_order_and_count_refusals_as_sendto_does(batched):
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=batched)
    receivers = Receivers(3)
    try:
        sends = []
        for index in range(SEND_BATCH + 40):  # more than one sendmmsg
            sends.append((b"%d" % index, receivers.addrs[index % 3]))
            if index % 50 == 7:
                sends.append((b"refused", ("127.0.0.1", 0)))  # EINVAL from the kernel
        collect(transport, sends)
        got = receivers.drain()
    finally:
        receivers.close()
        transport.sock.close()
    for which in range(3):
        assert got[which] == [b"%d" % index for index in range(SEND_BATCH + 40) if index % 3 == which]
    refused = sum(1 for _, addr in sends if addr[1] == 0)
    assert dict(transport.counters) == {"send_error_EINVAL": refused}


def test_a_full_send_buffer_moves_the_rest_to_the_backlog_in_order():
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=True)
    receivers = Receivers(2)
    real_send = transport.batch.send_packed
    calls = []

    def send_then_block(first, count):
        calls.append((first, count))
        if len(calls) == 1:
            return real_send(first, min(count, 5))
        raise BlockingIOError(errno.EAGAIN, "full")

    transport.batch.send_packed = send_then_block
    try:
        a, b = receivers.addrs
        for addr in (a, b):
            transport.batch.destination(addr)  # known peers: one run of 20
        collect(transport, [(b"%d" % index, (a, b)[index % 2]) for index in range(20)])
        assert calls == [(0, 20), (5, 15)]
        assert {addr: len(queue) for addr, queue in transport._backlog.items()} == {a: 7, b: 8}
        # While a destination has a backlog, a new datagram queues behind it.
        collect(transport, [(b"20", a), (b"21", b)])
        assert len(calls) == 2
        transport._flush_once()
        got = receivers.drain()
    finally:
        receivers.close()
        transport.sock.close()
    assert got == [[b"%d" % i for i in range(0, 22, 2)], [b"%d" % i for i in range(1, 22, 2)]]
    assert not transport._backlog


def test_a_collected_buffer_is_copied_before_the_caller_reuses_it():
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=True)
    receivers = Receivers(1)
    try:
        buffer = bytearray(b"first")
        transport._collecting = True
        transport.transmit(buffer, receivers.addrs[0])
        buffer[:] = b"later"
        transport._collecting = False
        transport._flush_pending()
        assert receivers.drain() == [[b"first"]]
    finally:
        receivers.close()
        transport.sock.close()


def test_collecting_flushes_early_at_max_pending():
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=True)
    receivers = Receivers(1)
    try:
        transport._collecting = True
        for index in range(MAX_PENDING + 3):
            transport.transmit(b"%d" % index, receivers.addrs[0])
        assert len(transport._pending_data) == 3
        transport._collecting = False
        transport._flush_pending()
        got = receivers.drain()[0]
    finally:
        receivers.close()
        transport.sock.close()
    # Loopback may drop beyond the receiver's buffer; what arrives is in order.
    assert got == [b"%d" % index for index in range(MAX_PENDING + 3)]


def test_an_address_only_sendto_can_judge_goes_through_sendto():
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=True)
    receivers = Receivers(1)
    try:
        collect(transport, [(b"a", receivers.addrs[0]), (b"b", ("not-an-address", 1)), (b"c", receivers.addrs[0])])
        assert receivers.drain() == [[b"a", b"c"]]
    finally:
        receivers.close()
        transport.sock.close()
    assert set(transport.counters) == {name for name in transport.counters if name.startswith("send_error_")}
    assert sum(transport.counters.values()) == 1
