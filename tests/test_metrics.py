"""Prometheus counters never go down: not when peers leave, not for any event; browser
legs are counted by path (through a TURN server's address, or direct)."""

import collections

from prometheus_client.parser import text_string_to_metric_families

from botcall.metrics import Metrics
from botcall.relay.core import MediaRelay
from botcall.relay.service import MediaService
from botcall.signaling.turn import TurnRelays
from botcall.webrtc.dtls.certificate import DtlsCertificate
from tests.kit.browser import Browser
from tests.kit.relay import Wire, latch, make_bot, make_session, rtp

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


TURN_AT = ("192.0.2.10", 49170)  # a relayed address of the TURN server (its host resolves to 192.0.2.10)
DIRECT_AT = ("198.51.100.7", 53000)


def test_browser_legs_count_by_path_whether_latched_at_a_turn_servers_address():
    wire = Wire()
    relay = MediaRelay(wire)
    media = MediaService(relay, wire, certificate=DtlsCertificate.generate(), hosts=("127.0.0.1",), port=40000)
    metrics = Metrics(live_rooms=lambda: 1, live_sessions=relay.peer_count)
    turn = TurnRelays.from_uris(("turn:turn.example:3478?transport=tcp",), {"turn.example": ["192.0.2.10"]}.__getitem__)
    metrics.attach_media(relay, FakeTransport(), turn)

    def legs():
        scraped = scrape(metrics)
        return {path: scraped[("botcall_browser_legs", (("path", path),))] for path in ("turn", "direct")}

    bot = make_session("bot", "bot", "udp", 1111)
    media.add_session(bot)
    latch(relay, wire, relay.peer(bot.session_id), ("192.0.2.10", 50000))  # a bot there is no browser leg
    via_turn = Browser.join(media, make_session("ada", "human", "webrtc", 2222), wire, TURN_AT)
    direct = Browser.join(media, make_session("bo", "human", "webrtc", 3333), wire, DIRECT_AT)
    assert legs() == {"turn": 0, "direct": 0}  # joined, not latched yet
    via_turn.ice_check()
    direct.ice_check()
    assert legs() == {"turn": 1, "direct": 1}
    relay.remove_peer(via_turn.human.session_id)
    assert legs() == {"turn": 0, "direct": 1}


def test_without_turn_every_browser_leg_is_direct():
    wire = Wire()
    relay = MediaRelay(wire)
    media = MediaService(relay, wire, certificate=DtlsCertificate.generate(), hosts=("127.0.0.1",), port=40000)
    metrics = Metrics(live_rooms=lambda: 1, live_sessions=relay.peer_count)
    metrics.attach_media(relay, FakeTransport())
    Browser.join(media, make_session("ada", "human", "webrtc", 2222), wire, TURN_AT).ice_check()
    scraped = scrape(metrics)
    assert scraped[("botcall_browser_legs", (("path", "turn"),))] == 0
    assert scraped[("botcall_browser_legs", (("path", "direct"),))] == 1
