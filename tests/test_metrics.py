"""Prometheus counters never go down: not when peers leave, not for any event."""

import collections

from prometheus_client.parser import text_string_to_metric_families

from botcall.metrics import Metrics
from botcall.relay.core import MediaRelay
from tests.kit.relay import Wire, latch, make_bot, rtp

A_ADDR = ("127.0.0.1", 50001)
B_ADDR = ("127.0.0.1", 50002)


class FakeTransport:
    def __init__(self):
        self.counters = collections.Counter()


def scrape(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    text = metrics.render()[0].decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_packet_totals_keep_what_departed_peers_counted():
    wire = Wire()
    relay = MediaRelay(wire)
    udp = FakeTransport()
    metrics = Metrics(live_rooms=lambda: 1, live_sessions=relay.peer_count)
    metrics.attach_media(relay, udp)
    a, b = make_bot(relay, wire, "a", 1111), make_bot(relay, wire, "b", 2222)
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    for seq in range(5):
        relay.handle_datagram(rtp(1111, seq), A_ADDR, 1.0 + seq * 0.02)
    before = scrape(metrics)
    assert before[("botcall_media_received_packets_total", ())] == 5
    assert before[("botcall_media_sent_packets_total", ())] == 5
    relay.remove_peer(a.session_id)
    relay.remove_peer(b.session_id)
    after = scrape(metrics)
    assert after[("botcall_media_received_packets_total", ())] == 5
    assert after[("botcall_media_sent_packets_total", ())] == 5
    assert after[("botcall_media_peers", ())] == 0  # a gauge: this one may go down
    # Every counter sample is at least what it was.
    for key, value in before.items():
        if key[0].endswith("_total"):
            assert after[key] >= value, key


def test_an_event_counted_by_the_relay_and_the_transport_is_summed():
    relay = MediaRelay(Wire())
    udp = FakeTransport()
    metrics = Metrics(live_rooms=lambda: 0, live_sessions=lambda: 0)
    metrics.attach_media(relay, udp)
    relay.counters["oversized"] += 2
    udp.counters["oversized"] += 3
    assert scrape(metrics)[("botcall_media_events_total", (("event", "oversized"),))] == 5
