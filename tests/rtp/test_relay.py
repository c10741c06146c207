"""The routing core, driven directly: latching, strict forwarding, drops, consent."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from botcall.rtp.packet import parse_rtp_untrusted
from botcall.rtp.relay import MAX_PACKETS_PER_SECOND, MediaRelay
from botcall.rtp.rtcp import ReceiverReport, ReportBlock, Sdes, SdesChunk, SdesItem, SdesItemType, serialize_rtcp_compound
from botcall.rtp.stun import binding_request, parse_binding_response_untrusted
from tests.relaykit import Wire, answer_checks, is_check, latch, make_bot, rtp

A_ADDR = ("127.0.0.1", 50001)
B_ADDR = ("127.0.0.1", 50002)
EVIL_ADDR = ("127.0.0.1", 50666)


@pytest.fixture
def setup():
    wire = Wire()
    relay = MediaRelay(wire)
    a = make_bot(relay, wire, "a", 1111)
    b = make_bot(relay, wire, "b", 2222)
    return relay, wire, a, b


def test_binding_latches_and_answers_with_mapped_address(setup):
    relay, wire, a, _ = setup
    request = latch(relay, wire, a, A_ADDR)
    assert a.addr == A_ADDR
    check, reply = wire.to(A_ADDR)
    # First the relay's check of the address, then (to the retransmission) the
    # success, signed with the session's password and mapping our address.
    assert is_check(check) and len(check) <= len(request)
    assert parse_binding_response_untrusted(reply, a.ice_pwd, request[8:20]) == A_ADDR
    assert relay.counters["check_sent"] == relay.counters["check_verified"] == 1


def test_rtp_is_forwarded_unchanged_to_the_other_bot(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    wire.clear()
    packet = rtp(1111, seq=7)
    relay.handle_datagram(packet, A_ADDR, 1.0)
    assert wire.sent == [(packet, B_ADDR)]
    assert parse_rtp_untrusted(wire.sent[0][0]).ssrc == 1111
    assert a.rx_packets == 1 and b.tx_packets == 1


def test_three_bots_each_hear_the_other_two_as_separate_streams():
    wire = Wire()
    relay = MediaRelay(wire)
    peers = [make_bot(relay, wire, n, s) for n, s in (("a", 1), ("b", 2), ("c", 3))]
    for i, peer in enumerate(peers):
        latch(relay, wire, peer, ("127.0.0.1", 6000 + i))
    wire.clear()
    for i, peer in enumerate(peers):
        relay.handle_datagram(rtp(peer.ssrc), ("127.0.0.1", 6000 + i), 1.0)
    for i in range(3):
        heard = {parse_rtp_untrusted(d).ssrc for d in wire.to(("127.0.0.1", 6000 + i))}
        assert heard == {1, 2, 3} - {i + 1}


def test_rooms_are_isolated():
    wire = Wire()
    relay = MediaRelay(wire)
    a = make_bot(relay, wire, "a", 1, room="r1")
    b = make_bot(relay, wire, "b", 2, room="r2")
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    wire.clear()
    relay.handle_datagram(rtp(1), A_ADDR, 1.0)
    assert wire.sent == []


def test_right_ssrc_from_another_port_is_dropped_and_does_not_relatch(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    wire.clear()
    relay.handle_datagram(rtp(1111), EVIL_ADDR, 1.0)
    assert wire.sent == []
    assert relay.counters["unknown_source"] == 1
    assert a.addr == A_ADDR


def test_wrong_ssrc_and_payload_type_are_dropped_and_counted(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    wire.clear()
    relay.handle_datagram(rtp(2222), A_ADDR, 1.0)  # b's SSRC from a's address
    relay.handle_datagram(rtp(1111, pt=0), A_ADDR, 1.0)
    relay.handle_datagram(b"\x80\x6f\x00", A_ADDR, 1.0)  # truncated header
    assert wire.sent == []
    assert a.drops == {"wrong_ssrc": 1, "wrong_payload_type": 1, "malformed_rtp": 1}


def test_muted_peer_is_not_forwarded(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    relay.set_muted(a.session_id, True)
    wire.clear()
    relay.handle_datagram(rtp(1111), A_ADDR, 1.0)
    assert wire.sent == [] and a.drops["muted"] == 1
    relay.set_muted(a.session_id, False)
    relay.handle_datagram(rtp(1111), A_ADDR, 1.0)
    assert len(wire.to(B_ADDR)) == 1


def test_bad_password_gets_no_state_and_no_larger_reply(setup):
    relay, wire, a, _ = setup
    request = latch(relay, wire, a, EVIL_ADDR, password="not-the-password-at-all")
    assert a.addr is None
    assert all(len(reply) <= len(request) for reply in wire.to(EVIL_ADDR))
    assert relay.counters["stun_unauthorized"] == 1


def test_unknown_ufrag_gets_no_reply(setup):
    relay, wire, *_ = setup
    relay.handle_datagram(binding_request("nosuchufrag:x", "whatever-password-1234"), EVIL_ADDR, 0.0)
    assert wire.sent == []
    assert relay.counters["stun_unknown_ufrag"] == 1


def test_rebinding_moves_the_session(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    new_addr = ("127.0.0.1", 50100)
    latch(relay, wire, a, new_addr, now=5.0)
    assert a.addr == new_addr
    wire.clear()
    relay.handle_datagram(rtp(1111), A_ADDR, 6.0)  # the old address no longer speaks for a
    assert wire.sent == []
    relay.handle_datagram(rtp(2222), B_ADDR, 6.0)
    assert wire.to(new_addr) and not wire.to(A_ADDR)


def test_consent_expires_after_30_seconds_without_binding(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR, now=0.0)
    latch(relay, wire, b, B_ADDR, now=0.0)
    relay.handle_timeout(29.0)
    assert a.addr == A_ADDR
    latch(relay, wire, b, B_ADDR, now=20.0)  # b keeps its binding alive
    relay.handle_timeout(31.0)
    assert a.addr is None and b.addr == B_ADDR
    wire.clear()
    relay.handle_datagram(rtp(1111), A_ADDR, 31.5)
    assert wire.sent == [] and relay.counters["unknown_source"] == 1


def test_removed_peer_is_forgotten(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    relay.remove_peer(a.session_id)
    wire.clear()
    relay.handle_datagram(rtp(1111), A_ADDR, 1.0)
    relay.handle_datagram(binding_request(f"{a.ice_ufrag}:x", a.ice_pwd), A_ADDR, 1.0)
    assert wire.sent == []
    assert relay.peer_count() == 1


def test_rtcp_from_the_sender_is_relayed_and_spoofed_sender_dropped(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    wire.clear()
    report = serialize_rtcp_compound(
        [
            ReceiverReport(ssrc=1111, reports=(ReportBlock(ssrc=2222, fraction_lost=0, cumulative_lost=0, highest_sequence=5, jitter=0, last_sr=0, delay_since_last_sr=0),)),
            Sdes(chunks=(SdesChunk(ssrc=1111, items=(SdesItem(SdesItemType.CNAME, b"a"),)),)),
        ]
    )
    relay.handle_datagram(report, A_ADDR, 1.0)
    assert wire.to(B_ADDR) == [report]
    spoofed = serialize_rtcp_compound([ReceiverReport(ssrc=2222)])
    relay.handle_datagram(spoofed, A_ADDR, 1.0)
    assert wire.to(B_ADDR) == [report]
    assert a.drops["wrong_ssrc_rtcp"] == 1


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_random_spray_before_latching_forwards_and_answers_nothing(datagrams):
    wire = Wire()
    relay = MediaRelay(wire)
    make_bot(relay, wire, "a", 1111)
    make_bot(relay, wire, "b", 2222)
    for data in datagrams:
        relay.handle_datagram(data, EVIL_ADDR, 0.0)
    # Random bytes cannot carry a valid MESSAGE-INTEGRITY for a known ufrag, so
    # nothing is latched; any reply is an error no larger than its request.
    assert all(peer.addr is None for peer in relay.room_peers("room-1"))
    sizes = {len(d) for d in datagrams}
    assert all(len(reply) <= max(sizes, default=0) for reply, _ in wire.sent)


def test_malformed_flood_leaves_a_concurrent_call_intact(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    rng = random.Random(7)
    wire.clear()
    sent = []
    for seq in range(200):
        for _ in range(20):
            junk = bytes([rng.choice([0, 1, 22, 128, 129, 200])]) + rng.randbytes(rng.randint(0, 200))
            relay.handle_datagram(junk, (f"127.0.0.{rng.randint(2, 9)}", rng.randint(1, 65535)), seq * 0.02)
            relay.handle_datagram(junk, A_ADDR, seq * 0.02)  # even from a's own address
        packet = rtp(1111, seq=seq)
        sent.append(packet)
        relay.handle_datagram(packet, A_ADDR, seq * 0.02)
    assert wire.to(B_ADDR) == sent


def test_speaking_follows_packets_with_sound(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    changes = []
    relay.on_speaking = lambda peer, speaking: changes.append((peer.participant_id, speaking))
    relay.handle_datagram(rtp(1111, payload=b"\x01" * 80), A_ADDR, 1.0)  # a voiced frame
    relay.handle_datagram(rtp(2222, payload=b"\xf8"), B_ADDR, 1.0)  # b sends only silence frames
    relay.handle_timeout(1.05)
    assert changes == [("p-a", True)]
    relay.handle_timeout(1.5)
    assert changes == [("p-a", True), ("p-a", False)]


def test_a_flooding_speaker_is_capped_per_second(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    wire.clear()
    for seq in range(300):  # 300 valid packets within one second
        relay.handle_datagram(rtp(1111, seq=seq), A_ADDR, 1.0 + seq / 1000)
    assert len(wire.to(B_ADDR)) == MAX_PACKETS_PER_SECOND
    assert a.drops["rate_limited"] == 300 - MAX_PACKETS_PER_SECOND
    relay.handle_datagram(rtp(1111, seq=301), A_ADDR, 2.5)  # a new second: flowing again
    assert len(wire.to(B_ADDR)) == MAX_PACKETS_PER_SECOND + 1


def test_an_idle_relay_has_no_frequent_deadline(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    relay.handle_timeout(10.0)
    assert relay.next_deadline() >= 11.0  # only the once-a-second consent sweep
    woken = []
    relay.wake = lambda: woken.append(True)
    relay.handle_datagram(rtp(1111, payload=b"\x01" * 80), A_ADDR, 10.2)  # sound after silence
    assert woken == [True] and relay.next_deadline() <= 10.2
    relay.handle_datagram(rtp(1111, seq=2, payload=b"\x01" * 80), A_ADDR, 10.22)
    assert woken == [True]  # already pending: no second wake
