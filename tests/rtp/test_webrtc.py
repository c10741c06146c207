"""A simulated browser against the relay, sans-IO: ICE-lite, DTLS-SRTP, rewriting.

The "browser" is our own DTLS endpoint in the client role with its own
certificate, an SRTP context from its handshake and Chrome-shaped STUN checks;
the offer is a real one captured from Chromium with its credentials replaced.
"""

import re
from pathlib import Path

import pytest

from botcall.rtp.dtls import DtlsCertificate, DtlsEndpoint
from botcall.rtp.packet import RtpPacket, parse_rtp_untrusted
from botcall.rtp.relay import MediaRelay
from botcall.rtp.srtp import SrtpContext
from botcall.rtp.stun import binding_request
from botcall.media import MediaService
from botcall.signaling.rooms import Capabilities, Identity, MediaSpec, Session, SessionAdded
from botcall.rtp.webrtc import FLOOR_RELEASE

OFFER = (Path(__file__).parent.parent / "signaling" / "data" / "chrome156_mic.sdp").read_text()
BROWSER = ("127.0.0.1", 53000)
EVIL = ("127.0.0.1", 53666)
BOT = ("127.0.0.1", 54000)
BOT2 = ("127.0.0.1", 54001)
BROWSER_SSRC = 1951877580


class Wire:
    def __init__(self):
        self.sent = []

    def __call__(self, data, addr):
        self.sent.append((data, addr))

    def take(self, addr):
        mine = [d for d, a in self.sent if a == addr]
        self.sent = [(d, a) for d, a in self.sent if a != addr]
        return mine


def session(name, kind, transport, ssrc):
    return Session(
        session_id=f"sess-{name}",
        room_id="room",
        participant_id=f"p-{name}",
        kind=kind,
        identity=Identity.human(name) if kind == "human" else Identity.bot(agent_id=name, controller="c", issuer="i", scopes=("call:voice",)),
        media=MediaSpec(transport=transport),
        capabilities=Capabilities(),
        ssrc=ssrc,
        ice_ufrag=f"uf{name}xx",
        ice_pwd=f"pwd{name}0123456789abcdefghij",
        created_at=0.0,
        expires_at=1e12,
    )


class Browser:
    def __init__(self, media, human, wire):
        self.cert = DtlsCertificate.generate()
        offer = re.sub(r"a=fingerprint:.*", f"a=fingerprint:{self.cert.fingerprint}", OFFER)
        self.answer = media.add_browser(human, offer)
        fingerprint = re.search(r"a=fingerprint:(.*)\r\n", self.answer).group(1)
        self.out_ssrc = int(re.search(r"a=ssrc:(\d+) cname", self.answer).group(1))
        self.dtls = DtlsEndpoint(role="client", certificate=self.cert, remote_fingerprint=fingerprint)
        self.human, self.wire, self.relay = human, wire, media.relay
        self.srtp = None

    def ice_check(self, addr=BROWSER, now=0.0, password=None, use_candidate=True):
        request = binding_request(
            f"{self.human.ice_ufrag}:Lvk6", password or self.human.ice_pwd, use_candidate=use_candidate, controlling=True, priority=2130706431
        )
        self.relay.handle_datagram(request, addr, now)
        return self.wire.take(addr)

    def handshake(self, now=0.0):
        flights = self.dtls.start(now)
        for _ in range(20):
            for datagram in flights:
                self.relay.handle_datagram(datagram, BROWSER, now)
            flights = []
            for reply in self.wire.take(BROWSER):
                flights += self.dtls.receive_untrusted(reply, now)
            if self.dtls.srtp_keys is not None and not flights:
                break
        self.srtp = SrtpContext.from_keys(self.dtls.srtp_keys)


@pytest.fixture
def call():
    wire = Wire()
    relay = MediaRelay(wire)
    media = MediaService(relay, wire, certificate=DtlsCertificate.generate(), host="127.0.0.1", port=40000)
    bot = session("bot", "bot", "udp", 1111)
    media.on_registry_event(SessionAdded(bot))
    relay.handle_datagram(binding_request(f"{bot.ice_ufrag}:x", bot.ice_pwd), BOT, 0.0)
    wire.take(BOT)
    human = session("human", "human", "webrtc", 2222)
    browser = Browser(media, human, wire)
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
    browser.dtls = DtlsEndpoint(role="client", certificate=browser.cert, remote_fingerprint=browser.dtls._remote_fingerprint)
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
    media.on_registry_event(SessionAdded(bot2))
    relay.handle_datagram(binding_request(f"{bot2.ice_ufrag}:x", bot2.ice_pwd), BOT2, 0.0)
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
