"""The routing core, driven directly: latching with return routability, strict forwarding, drops, consent."""

import collections
import heapq
import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from botcall.relay.service import MediaService
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.ice_lite import CHECK_TIMEOUT, MAX_PENDING_CHECKS, TRANSACTION_MEMORY, UNKNOWN_SOURCE_CHECK_INTERVAL
from botcall.wire.rtp import parse_rtp_untrusted
from botcall.audio.vad import SpeechStarted, SpeechStopped
from botcall.relay.core import MAX_PACKETS_PER_SECOND, MediaRelay
from botcall.wire.rtcp import ReceiverReport, ReportBlock, Sdes, SdesChunk, SdesItem, SdesItemType, serialize_rtcp_compound
from botcall.signaling.rooms import Capabilities, Identity, MediaSpec, Session
from botcall.wire.stun import (
    Class,
    Message,
    Method,
    answer_check_untrusted,
    binding_check,
    binding_error,
    binding_request,
    binding_success,
    parse_binding_response_untrusted,
    parse_stun_untrusted,
)
from tests.kit.relay import BOT_UFRAG, Wire, is_check, latch, make_bot, rtp

A_ADDR = ("127.0.0.1", 50001)
B_ADDR = ("127.0.0.1", 50002)
EVIL_ADDR = ("127.0.0.1", 50666)
CERTIFICATE = DtlsCertificate.generate()
OFFER = (Path(__file__).parent.parent / "signaling" / "data" / "chrome156_mic.sdp").read_text()


def human_session():
    return Session(
        session_id="sess-human",
        room_id="room-1",
        participant_id="p-human",
        kind="human",
        identity=Identity.human("human"),
        media=MediaSpec(transport="webrtc"),
        capabilities=Capabilities(),
        ssrc=3333,
        ice_ufrag="ufhumanx",
        ice_pwd="pwdhuman0123456789abcdefghij",
        created_at=0.0,
        expires_at=1e12,
    )


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


def test_speaking_follows_packets_with_sound_when_no_decoder_is_left():
    """With the decoder budget spent, speech detection falls back to packet sizes
    (silence and DTX frames are a few bytes) through the same hysteresis."""
    wire = Wire()
    changes, events = [], []
    relay = MediaRelay(
        wire,
        max_speech_decoders=0,
        on_speaking=lambda peer, speaking: changes.append((peer.participant_id, speaking)),
        on_event=lambda peer, event: events.append((peer.participant_id, event)),
    )
    a, b = make_bot(relay, wire, "a", 1111), make_bot(relay, wire, "b", 2222)
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    for k in range(5):  # 100 ms of voiced frames from a; b sends only silence frames
        relay.handle_datagram(rtp(1111, seq=k, payload=b"\x01" * 80), A_ADDR, 1.0 + 0.02 * k)
        relay.handle_datagram(rtp(2222, seq=k, payload=b"\xf8"), B_ADDR, 1.0 + 0.02 * k)
    assert changes == [("p-a", True)]  # confirmed after 60 ms of speech
    speech = [(who, event) for who, event in events if isinstance(event, (SpeechStarted, SpeechStopped))]
    assert speech == [("p-a", SpeechStarted(0))]  # the onset, on a's stream clock
    # a goes quiet (no packets at all): the sweep ends the run after the hangover.
    relay.handle_timeout(1.2)
    assert changes == [("p-a", True)]
    relay.handle_timeout(1.6)
    assert changes == [("p-a", True), ("p-a", False)]
    assert [event for who, event in events if isinstance(event, SpeechStopped)] == [SpeechStopped(100, 100)]


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


def test_an_idle_relay_has_no_frequent_deadline():
    wire = Wire()
    relay = MediaRelay(wire, max_speech_decoders=0)  # packet sizes decide: deterministic
    a, b = make_bot(relay, wire, "a", 1111), make_bot(relay, wire, "b", 2222)
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    relay.handle_timeout(10.0)
    assert relay.next_deadline() >= 11.0  # only the once-a-second consent sweep
    woken = []
    relay.wake = lambda: woken.append(True)
    for k in range(3):  # sound after silence: speech is confirmed at the third frame
        relay.handle_datagram(rtp(1111, seq=k, payload=b"\x01" * 80), A_ADDR, 10.2 + 0.02 * k)
    assert woken == [True] and relay.next_deadline() <= 10.4  # the speaking sweep has work
    relay.handle_datagram(rtp(1111, seq=3, payload=b"\x01" * 80), A_ADDR, 10.26)
    assert woken == [True]  # already pending: no second wake


# --- Return routability: replay, spoofed sources, checks, rebinding, amplification -----------


def test_a_replayed_request_never_moves_the_session_nor_gets_anything(setup):
    """Every request bot a ever sent, replayed from another port, at any time:
    after more than 32 newer requests and after consent expired and a re-latch."""
    relay, wire, a, b = setup
    captured = [latch(relay, wire, a, A_ADDR, now=0.0)]
    latch(relay, wire, b, B_ADDR, now=0.0)
    now = 0.0
    for _ in range(40):  # keepalives: more than the 32 ids the old window held
        now += 0.5
        captured.append(latch(relay, wire, a, A_ADDR, now=now))
    relay.handle_timeout(now + 31.0)  # a goes quiet: consent expires
    assert a.addr is None
    now += 31.5
    captured.append(latch(relay, wire, a, A_ADDR, now=now))  # and latches again
    latch(relay, wire, b, B_ADDR, now=now)
    assert a.addr == A_ADDR
    wire.clear()
    for index, request in enumerate(captured):  # spaced below the rate limit
        relay.handle_datagram(request, EVIL_ADDR, now + 1.0 + index * 0.2)
    now += 1.0 + len(captured) * 0.2
    relay.handle_datagram(rtp(2222, payload=b"\x01" * 100), B_ADDR, now)
    assert a.addr == A_ADDR and wire.to(EVIL_ADDR) == []
    assert relay.counters["stun_replayed"] == len(captured)
    assert len(wire.to(A_ADDR)) == 1  # b's audio still reaches a, and only a


def test_a_spoofed_source_with_valid_credentials_gets_only_the_check(setup):
    """The attacker's own session, a forged source (the victim's): no media, no success."""
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    evil = make_bot(relay, wire, "evil", 6666)
    wire.clear()
    request = binding_request(f"{evil.ice_ufrag}:evil", evil.ice_pwd)
    relay.handle_datagram(request, EVIL_ADDR, 1.0)
    [check] = wire.to(EVIL_ADDR)
    assert is_check(check) and len(check) <= len(request)
    for seq in range(50):  # the room talks; nobody answers the check
        relay.handle_datagram(rtp(1111, seq, payload=b"\x01" * 100), A_ADDR, 1.0 + seq * 0.02)
        relay.handle_datagram(rtp(2222, seq, payload=b"\x01" * 100), B_ADDR, 1.0 + seq * 0.02)
    relay.handle_timeout(10.0)  # the check expires
    assert wire.to(EVIL_ADDR) == [check] and evil.addr is None
    assert relay.counters["check_timeout"] == 1 and relay.counters["check_verified"] == 2  # a's and b's


def test_only_the_right_answer_from_the_checked_address_verifies_it(setup):
    relay, wire, a, b = setup
    latch(relay, wire, b, B_ADDR)
    wire.clear()
    request = binding_request(f"{a.ice_ufrag}:bot", a.ice_pwd)
    relay.handle_datagram(request, A_ADDR, 1.0)
    [check] = wire.to(A_ADDR)
    good = answer_check_untrusted(check, ("192.0.2.99", 3478), username=f"bot:{a.ice_ufrag}", password=a.ice_pwd)
    # From another address, signed with another key, for another transaction, an error: nothing.
    relay.handle_datagram(good, EVIL_ADDR, 1.01)
    wrong_key = answer_check_untrusted(
        binding_check(f"bot:{a.ice_ufrag}", "someone-else's-password", transaction_id=check[8:20]),
        A_ADDR,
        username=f"bot:{a.ice_ufrag}",
        password="someone-else's-password",
    )
    relay.handle_datagram(wrong_key, A_ADDR, 1.02)
    relay.handle_datagram(good[:8] + bytes(12) + good[20:], A_ADDR, 1.03)  # breaks FINGERPRINT too
    other_transaction = binding_success(parse_stun_untrusted(binding_request("x:y", a.ice_pwd)), A_ADDR, a.ice_pwd)
    relay.handle_datagram(other_transaction, A_ADDR, 1.04)
    relay.handle_datagram(binding_error(parse_stun_untrusted(check), 400), A_ADDR, 1.05)
    relay.handle_datagram(rtp(2222, payload=b"\x01" * 100), B_ADDR, 1.06)
    assert a.addr is None and wire.to(A_ADDR) == [check]
    assert relay.counters["check_failed"] == 3 and relay.counters["stun_unexpected_response"] == 1
    # The right answer, from the right address, in time: verified and latched.
    relay.handle_datagram(good, A_ADDR, 1.1)
    assert a.addr == A_ADDR and relay.counters["check_verified"] == 2
    relay.handle_datagram(good, A_ADDR, 1.2)  # used once
    assert relay.counters["stun_unexpected_response"] == 2


def test_an_answer_after_the_check_expired_verifies_nothing(setup):
    relay, wire, a, _ = setup
    request = binding_request(f"{a.ice_ufrag}:bot", a.ice_pwd)
    relay.handle_datagram(request, A_ADDR, 1.0)
    [check] = wire.to(A_ADDR)
    answer = answer_check_untrusted(check, ("192.0.2.99", 3478), username=f"bot:{a.ice_ufrag}", password=a.ice_pwd)
    relay.handle_datagram(answer, A_ADDR, 1.0 + CHECK_TIMEOUT)
    assert a.addr is None and relay.counters["check_timeout"] == 1


def test_a_bot_without_fingerprint_padding_gets_no_check_larger_than_its_request(setup):
    relay, wire, a, _ = setup
    message = Message(Method.BINDING, Class.REQUEST, bytes(12), {"USERNAME": f"{a.ice_ufrag}:bot"})
    message.add_message_integrity(a.ice_pwd.encode())
    bare = bytes(message)[:-8]  # no FINGERPRINT: 8 bytes short of the check
    bare = bare[:2] + (len(bare) - 20).to_bytes(2, "big") + bare[4:]
    relay.handle_datagram(bare, A_ADDR, 1.0)
    assert relay.counters["stun_binding_success"] == 1  # authenticated...
    assert wire.to(A_ADDR) == [] and relay.counters["check_suppressed"] == 1  # ...but nothing fits


class SimBot:
    """A bot as the SDK behaves on a simulated network: RTP every 20 ms (if
    speaking), answers the relay's checks, binds again after 250 ms of silence
    (retransmitting at 50 ms), keeps alive every 10 s."""

    def __init__(self, peer, addr, *, speaking):
        self.peer, self.addr, self.speaking = peer, addr, speaking
        self.seq = 0
        self.last_media = None
        self.silence_handled = False
        self.request = None
        self.next_retransmit = None
        self.bound = False
        self.received = []  # (time, data) of media

    def new_request(self, now):
        self.request = binding_request(f"{self.peer.ice_ufrag}:{BOT_UFRAG}", self.peer.ice_pwd)
        self.bound = False
        self.next_retransmit = now + 0.05
        return [self.request]

    def tick(self, now):
        out = []
        if self.speaking:
            self.seq += 1
            out.append(rtp(self.peer.ssrc, self.seq, payload=b"\x01" * 100))
        if self.last_media is not None and not self.silence_handled and now - self.last_media >= 0.25:
            self.silence_handled = True
            out += self.new_request(now)
        if self.request is not None and not self.bound and now >= self.next_retransmit:
            out.append(self.request)
            self.next_retransmit = now + 0.05
        return out

    def receive(self, data, now):
        if data[0] >= 128:
            self.received.append((now, data))
            self.last_media = now
            self.silence_handled = False
            return []
        if is_check(data):
            answer = answer_check_untrusted(data, ("192.0.2.99", 3478), username=f"{BOT_UFRAG}:{self.peer.ice_ufrag}", password=self.peer.ice_pwd)
            return [answer] + ([self.request] if self.request is not None and not self.bound else [])
        if self.request is not None and data[8:20] == self.request[8:20]:
            self.bound = True
        return []


def run_network(relay, wire, bots, until, *, delay=0.03, loss=0.0, seed=1, rebind=None, start=0.0):
    """Shuttle datagrams between the relay and SimBots on a 20 ms tick with a
    one-way ``delay`` and seeded ``loss``; ``rebind = (time, bot, new address)``
    gives a bot a new source address (a NAT rebinding). Returns the time each
    bot's first datagram left from its new address."""
    rng = random.Random(seed)
    in_flight = []  # (arrival, order, destination, data, source)
    order = 0
    now = start
    first_from_new = None
    while now < until:
        if rebind is not None and now >= rebind[0] and rebind[1].addr != rebind[2]:
            rebind[1].addr = rebind[2]
        for bot in bots:
            for data in bot.tick(now):
                if rebind is not None and bot is rebind[1] and bot.addr == rebind[2] and first_from_new is None:
                    first_from_new = now
                if rng.random() >= loss:
                    order += 1
                    heapq.heappush(in_flight, (now + delay, order, "relay", data, bot.addr))
        step_end = now + 0.02
        while in_flight and in_flight[0][0] < step_end:
            arrival, _, destination, data, source = heapq.heappop(in_flight)
            if destination == "relay":
                since = len(wire.sent)
                relay.handle_datagram(data, source, arrival)
                for out, dest in wire.sent[since:]:
                    if rng.random() >= loss:
                        order += 1
                        heapq.heappush(in_flight, (arrival + delay, order, dest, out, None))
            else:
                for bot in bots:
                    if bot.addr == destination:
                        for reply in bot.receive(data, arrival):
                            if rng.random() >= loss:
                                order += 1
                                heapq.heappush(in_flight, (arrival + delay, order, "relay", reply, bot.addr))
        relay.handle_timeout(step_end)
        now = step_end
    return first_from_new


@pytest.mark.parametrize("who", ["speaker", "listener"])
@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_a_rebinding_bot_is_followed_within_a_second(setup, who, loss):
    """A NAT gives a bot a new port mid-call. The speaker is followed through its
    RTP (the relay checks the unknown source carrying its SSRC); a listener
    through the request it sends when audio stops. Either way media flows to
    the new address less than a second after its first packet from there."""
    relay, wire, a, b = setup
    speaker, listener = SimBot(a, A_ADDR, speaking=True), SimBot(b, B_ADDR, speaking=True)
    for bot in (speaker, listener):
        latch(relay, wire, bot.peer, bot.addr)
    wire.clear()
    moving = speaker if who == "speaker" else listener
    other = listener if moving is speaker else speaker
    if moving is listener:
        listener.speaking = False  # a listener sends no RTP
    new_addr = ("127.0.0.1", 50999)
    to_new_addr = []  # (data, checks verified so far) of what went to the new address

    def transmit(data, addr):
        if addr == new_addr:
            to_new_addr.append((data, relay.counters["check_verified"]))
        wire(data, addr)

    relay.transmit = transmit
    moving.peer.sink._transmit = transmit
    verified_before = relay.counters["check_verified"]
    first = run_network(relay, wire, [speaker, listener], 6.0, loss=loss, seed=5, rebind=(2.0, moving, new_addr))
    assert moving.peer.addr == new_addr and relay.counters["rebound"] == 1
    # Media reaches the moving bot at its new address within a second of its first packet from there.
    arrived = [t for t, _ in moving.received if t > first]
    assert arrived and arrived[0] - first < 1.0
    if moving is speaker:
        assert relay.counters["unknown_source_check"] >= 1
        heard = [t for t, _ in other.received if t > first]  # and its audio goes on reaching the listener
        assert heard and heard[-1] > 5.5
    # Nothing but checks went to the new address before it answered one.
    assert to_new_addr and all(is_check(data) for data, verified in to_new_addr if verified == verified_before)
    assert any(data[0] >= 128 for data, _ in to_new_addr) or moving is speaker


def test_rtp_with_a_latched_bots_ssrc_from_elsewhere_only_gets_rate_limited_small_checks(setup):
    relay, wire, a, b = setup
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    wire.clear()
    for index in range(100):  # 2 s of a's SSRC from a forged address, voice-sized and tiny
        relay.handle_datagram(rtp(1111, index, payload=b"\x01" * 100), EVIL_ADDR, 1.0 + index * 0.02)
        relay.handle_datagram(rtp(1111, index), EVIL_ADDR, 1.0 + index * 0.02)
    to_evil = wire.to(EVIL_ADDR)
    assert all(is_check(data) and len(data) <= 12 + 100 for data in to_evil)
    assert len(to_evil) <= 2.0 / UNKNOWN_SOURCE_CHECK_INTERVAL + 1
    assert a.addr == A_ADDR and relay.counters["unknown_source_check"] == len(to_evil)


sprayed = st.tuples(
    st.sampled_from(["junk", "bot", "bot_replay", "browser", "rtp", "rtcp", "dtls", "answer"]),
    st.integers(0, 7),  # which forged address
    st.integers(0, 400),  # size, or padding
    st.floats(0.0, 0.5),  # time step
)


@settings(max_examples=150, deadline=None)
@given(st.lists(sprayed, max_size=60), st.randoms(use_true_random=False))
def test_unverified_senders_never_get_more_than_they_sent(events, rng):
    """A randomised spray from forged addresses: junk, valid and replayed requests
    of bots and of a browser, RTP/RTCP with latched SSRCs, DTLS, stray answers.
    An address that never answered a check gets STUN only, never more datagrams
    or bytes than it sent; each datagram out is at most the size of the one
    that caused it. A browser request may get two (the check, then the
    success); so a browser's credentials get at most twice the bytes."""
    wire = Wire()
    relay = MediaRelay(wire)
    media = MediaService(relay, wire, certificate=CERTIFICATE, hosts=("127.0.0.1",), port=40000)
    a, b = make_bot(relay, wire, "a", 1111), make_bot(relay, wire, "b", 2222)
    latch(relay, wire, a, A_ADDR)
    latch(relay, wire, b, B_ADDR)
    human = human_session()
    media.add_browser(human, OFFER)
    captured = [binding_request(f"{a.ice_ufrag}:bot", a.ice_pwd) for _ in range(3)]
    for request in captured:
        relay.handle_datagram(request, A_ADDR, 0.0)
    wire.clear()
    sent_in: dict = collections.Counter()
    sent_out: dict = collections.Counter()
    browser_credentials = set()
    now = 1.0
    for kind, which, size, step in events:
        source = ("127.0.0.66", 7000 + which)
        now += step
        if kind == "junk":
            data = bytes([rng.choice([0, 1, 22, 128, 200, 255])]) + rng.randbytes(size % 200)
        elif kind == "bot":
            data = binding_request(f"{a.ice_ufrag}:bot{'x' * (size % 40)}", a.ice_pwd)
        elif kind == "bot_replay":
            data = captured[size % len(captured)]
        elif kind == "browser":
            data = binding_request(f"{human.ice_ufrag}:Lvk6", human.ice_pwd, use_candidate=bool(size % 2), controlling=True, priority=2130706431)
            browser_credentials.add(source)
        elif kind == "rtp":
            data = rtp(rng.choice([1111, 2222, 3333]), payload=b"\x01" * (size % 300))
        elif kind == "rtcp":
            data = bytes((0x80, 201, 0, 1)) + rng.choice([1111, 2222]).to_bytes(4, "big") + bytes(size % 100)
        elif kind == "dtls":
            data = bytes((22, 0xFE, 0xFD)) + rng.randbytes(size % 300)
        else:
            data = answer_check_untrusted(binding_check(f"bot:{a.ice_ufrag}", a.ice_pwd, transaction_id=rng.randbytes(12)), source, username=f"bot:{a.ice_ufrag}", password=a.ice_pwd)
        since = len(wire.sent)
        relay.handle_datagram(data, source, now)
        relay.handle_timeout(now)
        replies = [out for out, dest in wire.sent[since:] if dest == source]
        assert all(out[0] < 4 and len(out) <= len(data) for out in replies)
        assert len(replies) <= (2 if kind == "browser" else 1)
        sent_in[source] += len(data)
        sent_out[source] += sum(map(len, replies))
    assert {dest for _, dest in wire.sent} <= set(sent_in) | {A_ADDR, B_ADDR}
    for source, received in sent_out.items():
        limit = 2 * sent_in[source] if source in browser_credentials else sent_in[source]
        assert received <= limit, (source, received, sent_in[source])
    assert a.addr == A_ADDR and b.addr == B_ADDR


def test_memory_per_peer_is_bounded_under_a_flood_of_fresh_requests():
    """A session's own credentials, fresh transaction ids, forged sources: the
    rate limit drops most, the log keeps 2048 ids, at most four checks wait."""

    class Counting:
        def __init__(self):
            self.count = 0

        def __call__(self, data, addr):
            self.count += 1

    wire = Counting()
    relay = MediaRelay(wire)
    evil = make_bot(relay, wire, "evil", 6666)
    template = binding_request(f"{evil.ice_ufrag}:evil", evil.ice_pwd, transaction_id=bytes(12))
    message = parse_stun_untrusted(template)

    def fresh(index):
        request = Message(Method.BINDING, Class.REQUEST, index.to_bytes(12, "big"), dict(message.attributes))
        del request.attributes["MESSAGE-INTEGRITY"], request.attributes["FINGERPRINT"]
        request.add_message_integrity(evil.ice_pwd.encode())
        return bytes(request)

    def flood(first, count):
        for index in range(first, first + count):
            relay.handle_datagram(fresh(index), ("127.0.0.66", 1024 + index % 60000), index * 0.05)
            if index % 20 == 0:
                relay.handle_timeout(index * 0.05)

    flood(0, 5000)  # 250 s at 20 requests/s: the log fills
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        flood(5000, 5000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 16 * 1024, grown  # the second 5000 requests added (next to) nothing
    ice = evil.ice
    assert len(ice.log) == TRANSACTION_MEMORY and ice.log.nbytes <= 32 * 1024
    assert len(ice.pending_checks) <= MAX_PENDING_CHECKS and len(ice.candidates) == 0
    assert len(relay._checks) <= MAX_PENDING_CHECKS and len(relay._unverified) == 0
    assert relay.counters["stun_rate_limited"] > 4000 and evil.addr is None
