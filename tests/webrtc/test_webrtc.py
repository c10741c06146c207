"""A simulated browser against the relay, sans-IO: ICE-lite, DTLS-SRTP, rewriting.

The "browser" (``tests/kit/browser.py``) is our own DTLS endpoint in the client role with its own
certificate, an SRTP context from its handshake and Chrome-shaped STUN checks;
it answers the relay's checks as a conforming ICE agent does, with the
credentials of the offer, a real one captured from Chromium with its
fingerprint replaced.
"""

import re
import struct

import pytest
from hypothesis import example, given, strategies as st

from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.dtls.endpoint import DtlsEndpoint
from botcall.wire.rtp import RtpPacket, parse_rtp_untrusted
from botcall.relay.core import MediaRelay
from botcall.webrtc.srtp import SrtpContext
from botcall.wire.stun import binding_success, parse_binding_response_untrusted, parse_stun_untrusted
from botcall.relay.service import MediaService
from botcall.webrtc.leg import FLOOR_RELEASE, OutboundStream
from tests.kit.browser import BROWSER_ADDR as BROWSER, BROWSER_SEND_SSRC as BROWSER_SSRC, OFFER, OFFER_PWD, OFFER_UFRAG, RELAY_ADDR as RELAY, Browser
from tests.kit.hot_path import DIRECTIONS, measure
from tests.kit.relay import Wire, is_check, latch, make_session as session

EVIL = ("127.0.0.1", 53666)
BOT = ("127.0.0.1", 54000)
BOT2 = ("127.0.0.1", 54001)


def latch_bot(relay, wire, bot, addr, now=0.0):
    """A bot's latch (request, the relay's check answered, the request again), its replies taken off the wire."""
    latch(relay, wire, bot, addr, now)
    wire.take(addr)


@pytest.fixture
def call():
    wire = Wire()
    relay = MediaRelay(wire)
    media = MediaService(relay, wire, certificate=DtlsCertificate.generate(), hosts=("127.0.0.1",), port=40000)
    bot = session("bot", "bot", "udp", 1111)
    media.add_session(bot)
    latch_bot(relay, wire, bot, BOT)
    human = session("human", "human", "webrtc", 2222)
    browser = Browser.join(media, human, wire)
    return relay, wire, media, bot, browser


def test_answer_is_ice_lite_with_our_credentials(call):
    _, _, media, _, browser = call
    answer = browser.answer
    assert "a=ice-lite" in answer and "a=setup:passive" in answer
    assert f"a=ice-ufrag:{browser.human.ice_ufrag}" in answer
    assert "127.0.0.1 40000 typ host" in answer


def test_full_call_both_directions(call):
    relay, wire, _, bot, browser = call
    assert browser.ice_check()  # a signed success
    browser.handshake()
    assert relay.counters["dtls_connected"] == 1
    # Browser -> bot: decrypted, SSRC rewritten to the human's session SSRC.
    for seq in range(5):
        rtp = bytes(RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960, ssrc=BROWSER_SSRC, payload=b"human%d" % seq))
        relay.handle_datagram(browser.srtp.protect(rtp), BROWSER, 1.0 + seq * 0.02)
    heard = [parse_rtp_untrusted(d) for d in wire.take(BOT)]
    assert [p.payload for p in heard] == [b"human%d" % s for s in range(5)]
    assert {p.ssrc for p in heard} == {2222}
    # Bot -> browser: SRTP under the SSRC announced in the answer.
    for seq in range(5):
        rtp = bytes(RtpPacket(payload_type=111, sequence_number=60000 + seq, timestamp=seq * 960, ssrc=1111, payload=b"bot%d" % seq))
        relay.handle_datagram(rtp, BOT, 2.0 + seq * 0.02)
    got = [parse_rtp_untrusted(browser.srtp.unprotect_untrusted(d)) for d in wire.take(BROWSER)]
    assert [p.payload for p in got] == [b"bot%d" % s for s in range(5)]
    assert {p.ssrc for p in got} == {browser.out_ssrc}
    assert [p.sequence_number for p in got] == [(got[0].sequence_number + i) & 0xFFFF for i in range(5)]


def test_client_hello_from_unvalidated_address_is_ignored(call):
    relay, wire, _, _, browser = call
    hello = browser.dtls.start(0.0)
    for datagram in hello:
        relay.handle_datagram(datagram, EVIL, 0.0)  # before ICE: the CVE-2023-51443 race
    assert wire.take(EVIL) == []
    assert relay.counters["dtls_unvalidated_source"] == len(hello)
    browser.dtls = DtlsEndpoint(role="client", certificate=browser.certificate, remote_fingerprint=browser.dtls._remote_fingerprint)
    browser.ice_check()
    browser.handshake()  # the real handshake still succeeds
    assert browser.srtp is not None


def test_wrong_ice_password_gets_401_and_no_peer_address(call):
    relay, wire, _, _, browser = call
    replies = browser.ice_check(password="definitely-not-the-password")
    assert len(replies) == 1 and replies[0][:2] == b"\x01\x11"  # Binding error response
    assert relay.peer(browser.human.session_id).addr is None


def test_srtp_replay_and_garbage_are_dropped_and_counted(call):
    relay, wire, _, _, browser = call
    browser.ice_check()
    browser.handshake()
    packet = browser.srtp.protect(bytes(RtpPacket(payload_type=111, sequence_number=1, timestamp=0, ssrc=BROWSER_SSRC, payload=b"x")))
    relay.handle_datagram(packet, BROWSER, 1.0)
    relay.handle_datagram(packet, BROWSER, 1.0)
    relay.handle_datagram(b"\x80\x6f" + bytes(40), BROWSER, 1.0)
    assert len(wire.take(BOT)) == 1
    drops = relay.peer(browser.human.session_id).drops
    assert drops["srtp_replay"] == 1 and sum(drops.values()) == 2


def test_floor_passes_between_speakers_with_continuous_numbering(call):
    relay, wire, media, _, browser = call
    bot2 = session("bot2", "bot", "udp", 3333)
    media.add_session(bot2)
    latch_bot(relay, wire, bot2, BOT2)
    browser.ice_check()
    browser.handshake()
    wire.sent.clear()
    t = 1.0
    for i in range(10):  # both talk; the first one holds the floor
        relay.handle_datagram(bytes(RtpPacket(111, 100 + i, i * 960, 1111, payload=b"A")), BOT, t)
        relay.handle_datagram(bytes(RtpPacket(111, 9000 + i, 5000 + i * 960, 3333, payload=b"B")), BOT2, t)
        t += 0.02
    t += FLOOR_RELEASE  # A pauses; B goes on and gets the floor
    for i in range(10, 15):
        relay.handle_datagram(bytes(RtpPacket(111, 9000 + i, 5000 + i * 960, 3333, payload=b"B")), BOT2, t)
        t += 0.02
    got = [parse_rtp_untrusted(browser.srtp.unprotect_untrusted(d)) for d in wire.take(BROWSER)]
    assert [p.payload for p in got] == [b"A"] * 10 + [b"B"] * 5
    seqs = [p.sequence_number for p in got]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(15)]
    assert got[10].marker  # a new talk spurt
    assert got[10].timestamp - got[9].timestamp >= 960 * round(FLOOR_RELEASE / 0.02)


# --- Return routability: the relay's own check before any DTLS or media ------------------------


def test_the_relay_checks_a_browser_with_the_offers_credentials_before_the_success(call):
    relay, wire, _, _, browser = call
    request = browser.request(use_candidate=False)
    replies = browser.ice_check(request=request, answer=False)
    check, success = replies  # the check first, so its answer usually beats the ClientHello
    assert is_check(check) and len(check) <= len(request)
    attributes = parse_stun_untrusted(check).attributes
    assert attributes["USERNAME"] == f"{OFFER_UFRAG}:{browser.human.ice_ufrag}"
    assert attributes["PRIORITY"] == 1862270975 and "ICE-CONTROLLED" in attributes
    assert parse_stun_untrusted(check).check_message_integrity(OFFER_PWD.encode())
    assert parse_binding_response_untrusted(success, browser.human.ice_pwd, request[8:20]) == BROWSER
    # An answer signed with anything but the browser's own password verifies nothing.
    wrong = binding_success(parse_stun_untrusted(check), RELAY, browser.human.ice_pwd)
    relay.handle_datagram(wrong, BROWSER, 0.01)
    assert relay.counters["check_failed"] == 1 and relay.peer(browser.human.session_id).bound_addrs == set()
    relay.handle_datagram(browser.answer_check(check), BROWSER, 0.02)
    assert relay.counters["check_verified"] == 2 and relay.peer(browser.human.session_id).bound_addrs == {BROWSER}  # the bot's, the browser's


def test_a_spoofed_browser_request_never_brings_dtls_or_media_to_the_forged_address(call):
    """A human's valid check with the victim's address as its source: the victim gets
    the check and the success (each no larger than the request), then nothing."""
    relay, wire, _, bot, browser = call
    request = browser.request()
    replies = browser.ice_check(EVIL, request=request, answer=False)
    assert len(replies) == 2 and all(reply[0] < 4 and len(reply) <= len(request) for reply in replies)
    for datagram in browser.dtls.start(0.1):  # a ClientHello "from" the victim: kept, never answered
        relay.handle_datagram(datagram, EVIL, 0.1)
    assert relay.counters["dtls_early_held"] == 1
    for seq in range(20):
        relay.handle_datagram(bytes(RtpPacket(111, seq, seq * 960, 1111, payload=b"bot" * 30)), BOT, 0.2 + seq * 0.02)
    relay.handle_timeout(5.0)  # the check expires, and the kept ClientHello with it
    relay.handle_timeout(60.0)
    assert wire.take(EVIL) == [] and relay.peer(browser.human.session_id).addr is None
    assert relay.counters["check_timeout"] == 1 and relay.counters["dtls_connected"] == 0


def test_an_early_client_hello_is_handled_when_the_address_answers(call):
    """Chrome's ClientHello may beat its answer to our check: kept, then handled
    at once, so the handshake does not wait for a 1 s retransmission."""
    relay, wire, _, _, browser = call
    check, _success = browser.ice_check(answer=False)
    for datagram in browser.dtls.start(0.0):
        relay.handle_datagram(datagram, BROWSER, 0.0)
    assert wire.take(BROWSER) == [] and relay.counters["dtls_early_held"] == 1
    assert relay.peer(browser.human.session_id).addr is None  # nominated, not yet verified
    relay.handle_datagram(browser.answer_check(check), BROWSER, 0.01)
    assert relay.peer(browser.human.session_id).addr == BROWSER
    flights = [out for reply in wire.take(BROWSER) for out in browser.dtls.receive_untrusted(reply, 0.01)]
    assert flights  # the relay's flight went out with the verification
    for _ in range(5):
        for datagram in flights:
            relay.handle_datagram(datagram, BROWSER, 0.02)
        flights = [out for reply in wire.take(BROWSER) for out in browser.dtls.receive_untrusted(reply, 0.02)]
    assert browser.dtls.srtp_keys is not None and relay.counters["dtls_connected"] == 1


def test_dtls_from_an_authenticated_address_beyond_the_one_kept_is_dropped(call):
    relay, wire, _, _, browser = call
    browser.ice_check(EVIL, answer=False)
    hellos = browser.dtls.start(0.0) * 3
    for datagram in hellos:
        relay.handle_datagram(datagram, EVIL, 0.0)
    assert relay.counters["dtls_early_held"] == 1 and relay.counters["dtls_unverified_source"] == len(hellos) - 1


def test_a_roaming_browser_is_moved_only_once_its_new_address_answers(call):
    relay, wire, _, _, browser = call
    browser.ice_check()
    browser.handshake()
    new = ("127.0.0.1", 53001)
    check, _ = browser.ice_check(new, now=2.0, answer=False)  # renominates from a new address
    relay.handle_datagram(bytes(RtpPacket(111, 1, 0, 1111, payload=b"bot")), BOT, 2.1)
    assert relay.peer(browser.human.session_id).addr == BROWSER and wire.take(new) == []
    assert len(wire.take(BROWSER)) == 1  # media stays where it was verified
    relay.handle_datagram(browser.answer_check(check), new, 2.2)
    relay.handle_datagram(bytes(RtpPacket(111, 2, 960, 1111, payload=b"bot")), BOT, 2.3)
    assert relay.peer(browser.human.session_id).addr == new and len(wire.take(new)) == 1


def test_a_renegotiation_keeps_the_transaction_ids_used(call):
    relay, wire, media, _, browser = call
    request = browser.request()
    browser.ice_check(request=request)
    media.add_browser(browser.human, re.sub(r"a=fingerprint:.*", f"a=fingerprint:{browser.certificate.fingerprint}", OFFER))
    relay.handle_datagram(request, EVIL, 1.0)
    assert wire.take(EVIL) == [] and relay.counters["stun_replayed"] == 1


# --- The per-packet paths: identical behaviour, fewer copies ----------------------------------


class SeedOutboundStream:
    """The seed's OutboundStream.rewrite, verbatim: the oracle the fast path must match."""

    def __init__(self, ssrc, payload_type):
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.floor = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_seq = None
        self._last_ts = 0
        self._last_time = 0.0
        self._switched = False
        self.not_floor = 0

    def rewrite(self, data, speaker_ssrc, now):
        first, second, seq, timestamp, _ = struct.unpack_from("!BBHII", data)
        if speaker_ssrc != self.floor:
            if self.floor is not None and now - self._last_time < FLOOR_RELEASE:
                self.not_floor += 1
                return None
            self._take_floor(speaker_ssrc, seq, timestamp, now)
        size = 12 + 4 * (first & 0x0F)
        if first & 0x10:
            if len(data) < size + 4:
                return None
            size += 4 + 4 * int.from_bytes(data[size + 2 : size + 4], "big")
        if len(data) < size:
            return None
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        if self._last_seq is None or (out_seq - self._last_seq) & 0xFFFF < 0x8000:
            self._last_seq = out_seq
            self._last_ts = out_ts
        self._last_time = now
        marker = 0x80 if self._switched or second & 0x80 else 0
        self._switched = False
        header = struct.pack("!BBHII", 0x80 | (first & 0x20), marker | self.payload_type, out_seq, out_ts, self.ssrc)
        return header + data[size:]

    def _take_floor(self, speaker_ssrc, seq, timestamp, now):
        if self._last_seq is None:
            next_seq, next_ts = seq, timestamp
        else:
            gap_frames = max(1, round((now - self._last_time) / 0.020))
            next_seq = (self._last_seq + 1) & 0xFFFF
            next_ts = (self._last_ts + gap_frames * 960) & 0xFFFFFFFF
        self._seq_offset = (next_seq - seq) & 0xFFFF
        self._ts_offset = (next_ts - timestamp) & 0xFFFFFFFF
        self.floor = speaker_ssrc
        self._switched = True


speaker_packet = st.fixed_dictionaries(
    {
        "speaker": st.integers(0, 2),
        "dt": st.sampled_from([0.0, 0.005, 0.02, 0.1, FLOOR_RELEASE, 0.6]),
        "seq_step": st.sampled_from([1, 1, 1, 2, 0, -1, -5, 30000]),
        "csrcs": st.sampled_from([0, 0, 0, 1, 15]),
        "extension": st.sampled_from([None, None, 0, 1, 3]),
        "padding": st.booleans(),
        "marker": st.booleans(),
        "cut": st.sampled_from([None, None, None, 13, 20, 60]),  # truncated headers
    }
)


@given(events=st.lists(speaker_packet, max_size=60), start_seq=st.integers(0, 0xFFFF))
@example(events=[{"speaker": 0, "dt": 0.0, "seq_step": 1, "csrcs": 15, "extension": 3, "padding": True, "marker": False, "cut": 60}], start_seq=0)
def test_rewrite_matches_the_seed_stream_packet_for_packet(events, start_seq):
    """Floor passing, continuity across speakers, CSRC/extension stripping, SSRC/PT rewriting: as before."""
    ours, seed = OutboundStream(0xABCDEF01, 109), SeedOutboundStream(0xABCDEF01, 109)
    seqs = [start_seq, (start_seq + 20000) & 0xFFFF, 7]
    now = 1.0
    for event in events:
        speaker = event["speaker"]
        seqs[speaker] = (seqs[speaker] + event["seq_step"]) & 0xFFFF
        seq = seqs[speaker]
        now += event["dt"]
        first = 0x80 | (0x20 if event["padding"] else 0) | event["csrcs"] | (0x10 if event["extension"] is not None else 0)
        header = struct.pack("!BBHII", first, (0x80 if event["marker"] else 0) | 111, seq, (seq * 960 + speaker * 7) & 0xFFFFFFFF, 1000 + speaker)
        header += bytes(4 * event["csrcs"])
        if event["extension"] is not None:
            header += struct.pack("!HH", 0xBEDE, event["extension"]) + bytes(4 * event["extension"])
        data = header + b"payload-%d" % seq
        if event["cut"] is not None:
            data = data[: event["cut"]]
        assert ours.rewrite(data, 1000 + speaker, now) == seed.rewrite(data, 1000 + speaker, now)
        assert (ours.floor, ours.not_floor) == (seed.floor, seed.not_floor)


def test_bot_csrcs_and_extensions_are_stripped_toward_the_browser(call):
    relay, wire, _, _, browser = call
    browser.ice_check()
    browser.handshake()
    packets = [
        struct.pack("!BBHII", 0x80, 111, 10, 960, 1111) + b"plain",
        struct.pack("!BBHII", 0x92, 0x80 | 111, 11, 1920, 1111) + bytes(8) + b"\xbe\xde\x00\x01\x10\xff\x00\x00" + b"both",
        struct.pack("!BBHII", 0xA0, 111, 12, 2880, 1111) + b"padded\x00\x02",
    ]
    for index, packet in enumerate(packets):
        relay.handle_datagram(packet, BOT, 1.0 + index * 0.02)
    got = [browser.srtp.unprotect_untrusted(d) for d in wire.take(BROWSER)]
    parsed = [parse_rtp_untrusted(d) for d in got]
    assert [d[0] for d in got] == [0x80, 0x80, 0xA0]  # V=2, no CSRC, no extension; padding kept
    assert [p.payload for p in parsed] == [b"plain", b"both", b"padded"]
    assert [p.marker for p in parsed] == [True, True, False]  # the first of a talk spurt, then the bot's own
    assert [p.sequence_number - parsed[0].sequence_number for p in parsed] == [0, 1, 2]
    assert {p.ssrc for p in parsed} == {browser.out_ssrc} and {p.payload_type for p in parsed} == {111}


def test_browser_audio_is_restamped_for_bots_keeping_marker_and_extension(call):
    relay, wire, _, _, browser = call
    browser.ice_check()
    browser.handshake()
    extension = b"\xbe\xde\x00\x01\x10\x7f\x00\x00"
    sent = [
        struct.pack("!BBHII", 0x90, 0x80 | 109, 1, 0, BROWSER_SSRC) + extension + b"hello",
        struct.pack("!BBHII", 0x80, 111, 2, 960, BROWSER_SSRC) + b"again",
    ]
    for packet in sent:
        relay.handle_datagram(browser.srtp.protect(packet), BROWSER, 1.0)
    heard = wire.take(BOT)
    expected = [bytes((packet[0], (packet[1] & 0x80) | 111)) + packet[2:8] + (2222).to_bytes(4, "big") + packet[12:] for packet in sent]
    assert heard == expected


def test_dtls_state_is_released_after_the_first_authenticated_srtp(call):
    relay, wire, _, _, browser = call
    browser.ice_check()
    browser.handshake()
    leg = relay.peer(browser.human.session_id).secure
    assert not leg.dtls.released
    relay.handle_datagram(b"\x80\x6f" + bytes(40), BROWSER, 1.0)  # forged: proves nothing
    assert not leg.dtls.released and relay.counters["dtls_released"] == 0
    rtp = bytes(RtpPacket(payload_type=111, sequence_number=1, timestamp=0, ssrc=BROWSER_SSRC, payload=b"first"))
    relay.handle_datagram(browser.srtp.protect(rtp), BROWSER, 1.0)
    assert leg.dtls.released and relay.counters["dtls_released"] == 1
    assert leg.dtls.srtp_keys is not None
    # DTLS from the browser now changes nothing, and the call goes on both ways.
    relay.handle_datagram(browser.dtls.close()[0], BROWSER, 1.1)
    assert wire.take(BROWSER) == []
    relay.handle_datagram(browser.srtp.protect(bytes(RtpPacket(111, 2, 960, BROWSER_SSRC, payload=b"second"))), BROWSER, 1.1)
    relay.handle_datagram(bytes(RtpPacket(111, 5, 0, 1111, payload=b"bot")), BOT, 1.1)
    assert [parse_rtp_untrusted(d).payload for d in wire.take(BOT)] == [b"first", b"second"]
    assert parse_rtp_untrusted(browser.srtp.unprotect_untrusted(wire.take(BROWSER)[0])).payload == b"bot"
    assert relay.counters["dtls_released"] == 1


def test_a_listening_browser_releases_on_its_first_srtcp(call):
    relay, _, _, _, browser = call
    browser.ice_check()
    browser.handshake()
    leg = relay.peer(browser.human.session_id).secure
    report = struct.pack("!BBHI", 0x80, 201, 1, BROWSER_SSRC)  # an empty receiver report (RFC 3550 §6.4.2)
    relay.handle_datagram(browser.srtp.protect_rtcp(report), BROWSER, 1.0)
    assert relay.counters["rtcp_from_browser"] == 1 and leg.dtls.released


def test_the_final_flight_is_resent_until_the_browser_proves_it_finished(call):
    """The relay is connected before the browser; if its last flight is lost, the browser asks again."""
    relay, wire, _, _, browser = call
    browser.ice_check()
    flights = browser.dtls.start(0.0)
    final = None
    for _ in range(4):
        for datagram in flights:
            relay.handle_datagram(datagram, BROWSER, 0.0)
        replies = wire.take(BROWSER)
        if relay.counters["dtls_connected"] and final is None:
            final = replies  # the relay's CCS + Finished: lost on the way
            break
        flights = [out for reply in replies for out in browser.dtls.receive_untrusted(reply, 0.0)]
    assert final and browser.dtls.srtp_keys is None
    retransmission = browser.dtls.handle_timeout(browser.dtls.next_deadline())
    for datagram in retransmission:
        relay.handle_datagram(datagram, BROWSER, 1.0)
    for reply in wire.take(BROWSER):  # answered: the leg still holds OpenSSL's state
        browser.dtls.receive_untrusted(reply, 1.0)
    assert browser.dtls.srtp_keys is not None
    browser.srtp = SrtpContext.from_keys(browser.dtls.srtp_keys)
    relay.handle_datagram(browser.srtp.protect(bytes(RtpPacket(111, 1, 0, BROWSER_SSRC, payload=b"hi"))), BROWSER, 1.1)
    assert [parse_rtp_untrusted(d).payload for d in wire.take(BOT)] == [b"hi"]
    for datagram in retransmission:  # after the proof, a stale retransmission is not answered
        relay.handle_datagram(datagram, BROWSER, 2.0)
    assert wire.take(BROWSER) == []


def test_the_sans_io_benchmark_routes_every_packet():
    """The sans-IO hot path of ``python -m bench.srtp_hot_path`` at a tiny size: it checks delivery itself and raises otherwise."""

    best = measure(calls=2, packets=40, repeat=2)
    assert set(best) == set(DIRECTIONS)
    assert all(0 < value < 1e6 for value in best.values())
