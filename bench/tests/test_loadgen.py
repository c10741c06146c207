"""The load generator measures what it claims: counts, attribution, framing, SRTP.

Tiny loads on loopback for a fraction of a second; nothing here asserts on
speed. Counts are exact (the schedule is deterministic), latencies are checked
only for consistency (positive, ordered percentiles, one per received packet).
"""

import threading

import pytest

from bench.harness.loadgen import Flow, measure_direct, MIN_PACKET_SIZE, run_load
from bench.harness.machine import open_socket
from bench.srtp_cost import handshake
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.srtp import SrtpContext

RATE = 50.0
DURATION = 0.4
WARMUP = 0.1


def assert_consistent(result, *, flows):
    assert result.sent == flows * round(RATE * DURATION)
    assert result.received + round(result.loss * result.sent) == result.sent
    assert result.latencies_ms.size == result.received
    if result.received:
        assert 0 < result.latency_p50_ms <= result.latency_p99_ms <= result.latency_max_ms
        assert result.latencies_ms.min() > 0
    assert result.delivered_pps <= result.offered_pps
    assert result.duration_s > 0


@pytest.fixture
def sockets():
    opened = []

    def make():
        sock = open_socket()
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close()


def test_direct_run_delivers_every_packet_once():
    result = measure_direct(8, rate_per_flow=RATE, duration=DURATION, warmup=WARMUP)
    assert_consistent(result, flows=8)
    assert result.received == result.sent and result.loss == 0.0
    assert result.duplicates == 0 and result.bad == 0
    assert result.offered_pps == pytest.approx(8 * RATE, rel=0.25)


def test_wrong_ssrc_at_the_far_end_counts_as_bad_not_received(sockets):
    sender, receiver = sockets(), sockets()
    flow = Flow(send_sock=sender, dest=receiver.getsockname(), recv_sock=receiver, ssrc=7, recv_ssrc=8)
    result = run_load([flow], rate_per_flow=RATE, duration=DURATION, warmup=WARMUP)
    assert result.received == 0 and result.loss == 1.0
    assert result.bad == round(RATE * (DURATION + WARMUP))


def test_prefix_is_sent_and_strip_removes_it(sockets):
    # A TURN ChannelData header (RFC 8656 §12.4): channel 0x4000, length.
    sender, receiver = sockets(), sockets()
    prefix = b"\x40\x00\x00\xac"
    flows = [Flow(send_sock=sender, dest=receiver.getsockname(), recv_sock=receiver, prefix=prefix, strip=4, ssrc=99)]
    result = run_load(flows, rate_per_flow=RATE, duration=DURATION, warmup=WARMUP)
    assert_consistent(result, flows=1)
    assert result.received == result.sent and result.bad == 0
    # Without strip the header is misread: nothing is attributed.
    flows = [Flow(send_sock=sender, dest=receiver.getsockname(), recv_sock=receiver, prefix=prefix, strip=0, ssrc=99)]
    assert run_load(flows, rate_per_flow=RATE, duration=DURATION, warmup=WARMUP).received == 0


def test_shared_receive_socket_attributes_each_flow(sockets):
    receiver = sockets()
    flows = [Flow(send_sock=sockets(), dest=receiver.getsockname(), recv_sock=receiver, ssrc=1000 + i) for i in range(5)]
    result = run_load(flows, rate_per_flow=RATE, duration=DURATION, warmup=WARMUP)
    assert_consistent(result, flows=5)
    assert result.received == result.sent


def test_duplicates_are_counted_once(sockets):
    """A forwarder that sends every packet twice: each is measured once."""
    inbound, sender, receiver = sockets(), sockets(), sockets()
    inbound.setblocking(True)
    inbound.settimeout(0.05)
    stop = threading.Event()

    def duplicate():
        while not stop.is_set():
            try:
                data = inbound.recv(2048)
            except TimeoutError:
                continue
            for _ in range(2):
                inbound.sendto(data, receiver.getsockname())

    thread = threading.Thread(target=duplicate)
    thread.start()
    try:
        flow = Flow(send_sock=sender, dest=inbound.getsockname(), recv_sock=receiver, ssrc=5)
        result = run_load([flow], rate_per_flow=RATE, duration=DURATION, warmup=WARMUP)
    finally:
        stop.set()
        thread.join()
    assert_consistent(result, flows=1)
    assert result.received == result.sent
    # The run ends as soon as the last original arrives: its twin may be unread.
    sent_in_all = round(RATE * (DURATION + WARMUP))
    assert sent_in_all - 1 <= result.duplicates <= sent_in_all


def test_srtp_flow_protects_and_unprotects_with_real_libsrtp(sockets):
    server, client = handshake(DtlsCertificate.generate(), DtlsCertificate.generate())
    sending, receiving = SrtpContext.from_keys(client.srtp_keys), SrtpContext.from_keys(server.srtp_keys)
    sender, receiver = sockets(), sockets()
    flow = Flow(
        send_sock=sender,
        dest=receiver.getsockname(),
        recv_sock=receiver,
        ssrc=4242,
        protect=sending.protect,
        unprotect=receiving.unprotect_untrusted,
    )
    result = run_load([flow], rate_per_flow=RATE, duration=DURATION, warmup=WARMUP)
    assert_consistent(result, flows=1)
    assert result.received == result.sent and result.bad == 0
    # A second run continues the sequence: the same contexts protect and accept it.
    per_flow = round(RATE * (DURATION + WARMUP))
    again = run_load([flow], rate_per_flow=RATE, duration=DURATION, warmup=WARMUP, seq_base=per_flow)
    assert again.received == again.sent and again.bad == 0
    # The wrong keys authenticate nothing: every packet is bad.
    flow.protect = SrtpContext.from_keys(client.srtp_keys).protect
    flow.unprotect = SrtpContext.from_keys(client.srtp_keys).unprotect_untrusted
    result = run_load([flow], rate_per_flow=RATE, duration=DURATION, warmup=WARMUP)
    assert result.received == 0 and result.bad > 0


def test_cpu_of_another_process_is_sampled(sockets):
    import os

    result = measure_direct(2, rate_per_flow=RATE, duration=DURATION, warmup=WARMUP, cpu_pid=os.getpid())
    assert result.relay_cpu_s >= 0
    assert result.relay_cpu_percent >= 0


def test_bad_arguments_are_refused(sockets):
    a, b = sockets(), sockets()
    flow = Flow(send_sock=a, dest=b.getsockname(), recv_sock=b)
    with pytest.raises(ValueError):
        run_load([], duration=0.1)
    with pytest.raises(ValueError):
        run_load([flow], packet_size=MIN_PACKET_SIZE - 1)
    with pytest.raises(ValueError):
        run_load([flow], rate_per_flow=0)
    with pytest.raises(ValueError):
        run_load([flow, Flow(send_sock=a, dest=b.getsockname(), recv_sock=b, strip=4)], duration=0.1)
