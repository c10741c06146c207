"""The light and native generators count what the classic one counts: through a relay that
drops, duplicates or corrupts every k-th datagram, loss, duplicates and bad
packets come out exact, SRTP is authenticated packet by packet, and the
latency is one per received packet.

The "relay" is a thread forwarding UDP on loopback by source address; every
test runs each generator on the same flows, so a generator that mis-counts
(or stops checking the SRTP tag) fails beside one that does not.
"""

from __future__ import annotations

import socket
import threading

import pytest

from bench.harness.lightgen import LightResult, run_light
from bench.harness.loadgen import Flow, run_load
from bench.harness.nativegen import run_native
from bench.harness.machine import open_socket
from bench.srtp_cost import handshake
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.srtp import SrtpContext

RATE = 50.0
DURATION = 0.6
WARMUP = 0.2
FLOWS = 4
GENERATORS = {"classic": run_load, "light": run_light, "native": run_native}


class ForwardingRelay:
    """Forwards each datagram to the receiver of its source, except every ``every``-th
    (counted over all flows, from 1), which it drops, sends twice, or sends with its
    last byte flipped (``action``).

    Attributes:
        seen / altered: datagrams received, and how many of them were dropped, doubled or corrupted.
    """

    def __init__(self, action: str, every: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.addr = self.sock.getsockname()
        self.routes: dict[tuple[str, int], tuple[str, int]] = {}
        self.action, self.every = action, every
        self.seen = self.altered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.seen += 1
            dest = self.routes[source]
            if self.seen % self.every:
                self.sock.sendto(data, dest)
                continue
            self.altered += 1
            if self.action == "duplicate":
                self.sock.sendto(data, dest)
                self.sock.sendto(data, dest)
            elif self.action == "corrupt":
                self.sock.sendto(data[:-1] + bytes([data[-1] ^ 0x01]), dest)

    def __enter__(self) -> "ForwardingRelay":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def sockets():
    opened: list[socket.socket] = []

    def make() -> socket.socket:
        sock = open_socket()
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close()


def call_flows(relay: ForwardingRelay, make, *, srtp: bool) -> list[Flow]:
    """``FLOWS`` flows through ``relay``; with ``srtp``, each sender protects and each receiver
    unprotects (keys of a real DTLS handshake), as a browser's leg does through the relay."""
    keys = None
    if srtp:
        server, client = handshake(DtlsCertificate.generate(), DtlsCertificate.generate())
        keys = (client.srtp_keys, server.srtp_keys)
    flows = []
    for index in range(FLOWS):
        sender, receiver = make(), make()
        sender.connect(relay.addr)
        relay.routes[sender.getsockname()] = receiver.getsockname()
        protect = unprotect = None
        if keys is not None:
            protect = SrtpContext.from_keys(keys[0]).protect
            unprotect = SrtpContext.from_keys(keys[1]).unprotect_untrusted
        flows.append(Flow(send_sock=sender, dest=relay.addr, recv_sock=receiver, ssrc=0x1000 + index, protect=protect, unprotect=unprotect))
    return flows


def run(generator: str, flows: list[Flow]):
    return GENERATORS[generator](flows, rate_per_flow=RATE, duration=DURATION, warmup=WARMUP)


def window_count() -> int:
    return FLOWS * round(RATE * DURATION)


@pytest.mark.parametrize("generator", sorted(GENERATORS))
@pytest.mark.parametrize("srtp", [False, True], ids=["plain", "srtp"])
def test_a_relay_dropping_every_10th_packet_shows_10_percent_loss(generator, srtp, sockets):
    with ForwardingRelay("drop", 10) as relay:
        result = run(generator, call_flows(relay, sockets, srtp=srtp))
    sent = window_count()
    assert result.sent == sent
    # Every 10th datagram of the whole run (warm-up included) is dropped: in the
    # window, sent / 10 of them, give or take the one the boundary splits.
    assert abs((result.sent - result.received) - sent / 10) <= 1
    assert result.loss == pytest.approx(0.1, abs=1.5 / sent)
    assert result.duplicates == 0 and result.bad == 0
    assert result.latencies_ms.size == result.received and result.latencies_ms.min() > 0
    assert relay.seen == FLOWS * round(RATE * (DURATION + WARMUP))


@pytest.mark.parametrize("generator", sorted(GENERATORS))
def test_duplicates_are_counted_once_and_never_measured_twice(generator, sockets):
    with ForwardingRelay("duplicate", 7) as relay:
        result = run(generator, call_flows(relay, sockets, srtp=False))
    assert result.received == result.sent == window_count() and result.loss == 0.0
    assert result.duplicates == relay.altered  # warm-up duplicates count too, as in run_load
    assert result.latencies_ms.size == result.received
    assert result.bad == 0


@pytest.mark.parametrize("generator", sorted(GENERATORS))
def test_a_corrupted_srtp_packet_fails_authentication_and_counts_as_lost(generator, sockets):
    with ForwardingRelay("corrupt", 5) as relay:
        result = run(generator, call_flows(relay, sockets, srtp=True))
    # A flipped bit in the tag: libsrtp refuses the packet (bad), so it is lost.
    assert result.bad == relay.altered > 0
    assert abs((result.sent - result.received) - window_count() / 5) <= 1


@pytest.mark.parametrize("generator", ["light", "native"])
def test_the_light_generators_report_their_cpu_before_and_after_the_window(generator, sockets):
    with ForwardingRelay("drop", 1_000_000) as relay:
        result = run(generator, call_flows(relay, sockets, srtp=True))
    assert isinstance(result, LightResult)
    assert result.received == result.sent and result.bad == 0
    assert result.prepare_cpu_s >= 0 and result.verify_cpu_s >= 0
    assert 0 <= result.generator_cpu_percent < 100


@pytest.mark.parametrize("generator", ["light", "native"])
def test_the_light_generators_time_packets_by_their_own_send_times(generator, sockets):
    # A relay that holds nothing adds ~nothing: every latency is far below the
    # 20 ms between a flow's packets (a latency taken from the wrong packet's
    # send time, e.g. off by one packet index, would be ~20 ms or negative).
    with ForwardingRelay("drop", 1_000_000) as relay:
        result = run(generator, call_flows(relay, sockets, srtp=False))
    assert result.received == result.sent
    assert 0 < result.latencies_ms.min() and result.latency_p50_ms < 10.0


def test_audio_levels_are_sent_as_chromium_and_sdk_bots_send_them():
    """``Flow.audio_level_id``: every packet carries an RFC 6464 level the relay's
    own parser reads, in the talk-spurt pattern, at the same size; what comes back
    is recognised with the extension (toward a bot) or without it (toward a browser)."""
    from bench.harness.lightgen import _build_packets, check_arrivals
    from bench.harness.loadgen import PAUSE_PACKETS, SPEECH_PACKETS
    from botcall.relay.speech import audio_level_untrusted
    from botcall.wire.rtp import parse_rtp_untrusted, payload_offset_untrusted

    sock = open_socket()
    try:
        flows = [Flow(send_sock=sock, dest=("127.0.0.1", 9), recv_sock=sock, ssrc=5, audio_level_id=1),
                 Flow(send_sock=sock, dest=("127.0.0.1", 9), recv_sock=sock, ssrc=6)]
        per_flow = SPEECH_PACKETS + PAUSE_PACKETS + 1
        packets = _build_packets(flows, per_flow, 172, 0, 960)
        levelled, bare = packets[0::2], packets[1::2]
        assert {len(p) for p in packets} == {172}
        assert all(p[0] == 0x80 for p in bare) and all(p[0] == 0x90 for p in levelled)
        levels = [audio_level_untrusted(p, 1, payload_offset_untrusted(p)) for p in levelled]
        assert levels == [(True, -20)] * SPEECH_PACKETS + [(False, -70)] * PAUSE_PACKETS + [(True, -20)]
        assert parse_rtp_untrusted(levelled[3]).extension is not None
        # The browser side gets it with the extension stripped (the relay rewrites toward browsers).
        stripped = [bytes([p[0] & ~0x10]) + p[1:12] + p[20:] for p in levelled]
        stamps = [1] * len(packets)
        for arrivals in (levelled, stripped):
            received, duplicates, bad, _ = check_arrivals(
                ((2, data, None) for data in arrivals + bare), flows, per_flow, stamps, len(packets), 0
            )
            assert (received, duplicates, bad) == (len(packets), 0, 0)
        with pytest.raises(ValueError):
            run_load(flows, rate_per_flow=RATE, duration=DURATION, warmup=WARMUP)  # the classic one sends no levels
    finally:
        sock.close()
