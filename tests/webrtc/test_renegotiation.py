"""A second offer on a live peer connection, sans-IO: the simulated browser against the relay.

What a browser's renegotiation may change (the same offer again, an added
transceiver, a direction, an ICE restart) must not touch the DTLS association,
the SRTP contexts or the outbound stream: packets keep flowing both ways with
continuous numbering, and nothing is dropped as ``srtp_before_dtls``.
"""

import dataclasses
import re

import pytest

from botcall.errors import SdpError
from botcall.relay.core import MediaRelay
from botcall.relay.service import MediaService
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.wire.rtp import RtpPacket, parse_rtp_untrusted
from botcall.wire.stun import binding_request
from tests.kit.browser import BROWSER_ADDR as BROWSER, BROWSER_SEND_SSRC, CHROME_PRIORITY, Browser, sdp_value
from tests.kit.relay import Wire, latch, make_session as session

BOT = ("127.0.0.1", 54000)
VIDEO_SECTION = (
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:1\r\n"
    "a=sendrecv\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
)


class Call:
    """A UDP bot and a connected simulated browser in one room; the clock is ``now``."""

    def __init__(self) -> None:
        self.wire = Wire()
        self.relay = MediaRelay(self.wire)
        self.media = MediaService(self.relay, self.wire, certificate=DtlsCertificate.generate(), hosts=("127.0.0.1",), port=40000)
        self.bot = session("bot", "bot", "udp", 1111)
        self.media.add_session(self.bot)
        latch(self.relay, self.wire, self.bot, BOT, 0.0)
        self.wire.take(BOT)
        self.browser = Browser.join(self.media, session("human", "human", "webrtc", 2222), self.wire)
        self.browser.ice_check()
        self.browser.handshake()
        self.wire.take(BROWSER)
        self.now = 1.0
        self.seq = 0

    def restart_ice(self):
        """What the registry's ``restart_ice`` does for the session: new credentials."""
        human = self.browser.human
        self.browser.human = dataclasses.replace(human, ice_ufrag=f"{human.ice_ufrag}r", ice_pwd=f"{human.ice_pwd}R")
        return self.browser.human

    def talk(self, frames=5):
        """``frames`` packets each way; returns (what the bot got from the human, what the browser got)."""
        relay, browser = self.relay, self.browser
        for _ in range(frames):
            self.seq += 1
            human = RtpPacket(111, self.seq, self.seq * 960, BROWSER_SEND_SSRC, payload=b"human%d" % self.seq)
            relay.handle_datagram(browser.srtp.protect(bytes(human)), BROWSER, self.now)
            bot = RtpPacket(111, 40000 + self.seq, self.seq * 960, 1111, payload=b"bot%d" % self.seq)
            relay.handle_datagram(bytes(bot), BOT, self.now)
            self.now += 0.02
        heard = [parse_rtp_untrusted(d) for d in self.wire.take(BOT) if d[0] >> 6 == 2]
        got = [parse_rtp_untrusted(browser.srtp.unprotect_untrusted(d)) for d in self.wire.take(BROWSER) if d[0] >> 6 == 2]
        return heard, got


@pytest.fixture
def call():
    return Call()


def assert_continuous(before, after, ssrc):
    """The browser's stream went on: one SSRC, sequence numbers and timestamps without a jump."""
    packets = before + after
    assert {p.ssrc for p in packets} == {ssrc}
    assert [p.sequence_number for p in packets] == [(packets[0].sequence_number + i) & 0xFFFF for i in range(len(packets))]
    assert [p.timestamp for p in packets] == [(packets[0].timestamp + 960 * i) & 0xFFFFFFFF for i in range(len(packets))]


def o_line(answer):
    session_id, version = re.search(r"^o=- (\d+) (\d+) ", answer, re.M).groups()
    return int(session_id), int(version)


def test_the_same_offer_again_keeps_dtls_srtp_and_the_stream(call):
    first = call.browser.answer
    heard_before, got_before = call.talk()
    peer = call.relay.peer(call.browser.human.session_id)
    leg, srtp = peer.secure, peer.secure.srtp
    second = call.browser.renegotiate(call.media)
    # The same credentials, fingerprint and SSRC; the same o= session, one version up (RFC 3264 §8).
    for pattern in (r"a=ice-ufrag:(\S+)", r"a=ice-pwd:(\S+)", r"a=fingerprint:([^\r\n]+)", r"a=ssrc:(\d+) cname"):
        assert sdp_value(first, pattern) == sdp_value(second, pattern)
    assert o_line(second) == (o_line(first)[0], o_line(first)[1] + 1)
    assert call.relay.peer(call.browser.human.session_id) is peer and peer.secure is leg and leg.srtp is srtp
    heard_after, got_after = call.talk()
    assert [p.payload for p in heard_after] == [b"human%d" % n for n in range(6, 11)]
    assert_continuous(got_before, got_after, call.browser.out_ssrc)
    assert call.relay.counters["srtp_before_dtls"] == 0 and call.relay.counters["dtls_connected"] == 1
    assert call.relay.counters["renegotiated"] == 1


def test_a_third_offer_raises_the_version_again(call):
    first = o_line(call.browser.answer)
    call.browser.renegotiate(call.media)
    assert o_line(call.browser.renegotiate(call.media)) == (first[0], first[1] + 2)


@pytest.mark.parametrize("added", ["video", "audio"])
def test_an_added_transceiver_is_rejected_cleanly_and_the_call_goes_on(call, added):
    _, got_before = call.talk()
    section = VIDEO_SECTION if added == "video" else VIDEO_SECTION.replace("m=video", "m=audio").replace("VP8/90000", "opus/48000/2")
    offer = call.browser.offer().replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1") + section
    answer = call.browser.renegotiate(call.media, offer)
    assert f"m={added} 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=inactive\r\n" in answer
    assert "a=group:BUNDLE 0\r\n" in answer
    heard, got_after = call.talk()
    assert len(heard) == 5
    assert_continuous(got_before, got_after, call.browser.out_ssrc)
    assert call.relay.counters["srtp_before_dtls"] == 0


@pytest.mark.parametrize("direction, answered", [("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive"), ("sendrecv", "sendrecv")])
def test_a_direction_change_is_answered_and_keeps_the_leg(call, direction, answered):
    peer = call.relay.peer(call.browser.human.session_id)
    leg = peer.secure
    answer = call.browser.renegotiate(call.media, call.browser.offer().replace("a=sendrecv", f"a={direction}"))
    assert f"a={answered}\r\n" in answer
    assert call.relay.peer(call.browser.human.session_id) is peer and peer.secure is leg
    # Back to sendrecv: the stream is where it was.
    _, got_before = call.talk()
    call.browser.renegotiate(call.media)
    _, got_after = call.talk()
    assert_continuous(got_before, got_after, call.browser.out_ssrc)


def test_an_ice_restart_gets_new_credentials_and_keeps_dtls(call):
    old_ufrag, old_pwd = call.browser.relay_ufrag, call.browser.relay_pwd
    _, got_before = call.talk()
    answer = call.browser.renegotiate(call.media, call.browser.offer(ice_restart=True), restart_ice=call.restart_ice)
    new_ufrag = sdp_value(answer, r"a=ice-ufrag:(\S+)")
    assert new_ufrag == call.browser.human.ice_ufrag != old_ufrag
    assert sdp_value(answer, r"a=ice-pwd:(\S+)") == call.browser.human.ice_pwd != old_pwd
    peer = call.relay.peer(call.browser.human.session_id)
    assert (peer.ice_ufrag, peer.remote_ufrag) == (new_ufrag, call.browser.ufrag)
    # Media goes on to the selected address while the browser checks again.
    _, got_during = call.talk(2)
    # The old credentials are gone (401); the new ones check, and the relay's
    # check to the browser uses the browser's new credentials.
    stale = binding_request(f"{old_ufrag}:{call.browser.ufrag}", old_pwd, use_candidate=True, controlling=True, priority=CHROME_PRIORITY)
    call.relay.handle_datagram(stale, BROWSER, call.now)
    assert call.relay.counters["stun_unknown_ufrag"] == 1 and call.wire.take(BROWSER) == []
    assert call.browser.ice_check(now=call.now)  # a signed success
    _, got_after = call.talk()
    assert_continuous(got_before, got_during + got_after, call.browser.out_ssrc)
    assert call.relay.counters["dtls_connected"] == 1 and call.relay.counters["srtp_before_dtls"] == 0
    assert call.relay.counters["ice_restart"] == 1


def test_an_ice_restart_without_a_way_to_new_credentials_is_refused(call):
    with pytest.raises(SdpError, match="restarts ICE"):
        call.media.add_browser(call.browser.human, call.browser.offer(ice_restart=True))
    assert call.relay.counters["ice_restart"] == 0


def test_a_new_peer_connection_gets_a_new_leg(call):
    """A reload or the page's own restart: a new certificate, so a new DTLS association."""
    old = call.relay.peer(call.browser.human.session_id)
    fresh = Browser.join(call.media, call.browser.human, call.wire)
    peer = call.relay.peer(call.browser.human.session_id)
    assert peer is not old and peer.secure.srtp is None
    fresh.ice_check(now=2.0)
    fresh.handshake(now=2.0)
    assert call.relay.counters["dtls_connected"] == 2
