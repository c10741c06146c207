"""Offers a call cannot work with get a clear ``bad_offer`` error, never a silent call.

Each case is a real Chromium offer (``tests/signaling/data/chrome156_mic.sdp``)
with one thing broken, sent over the real signaling WebSocket: no fingerprint,
no Opus (an unknown payload type only), a TCP media protocol, and candidate
lists that are complete but cannot pair with the relay's UDP candidates. The
error names what is wrong, no media leg is set up, and the same socket then
gets an answer to the unbroken offer.
"""

import json
import re

import pytest

from botcall.errors import SdpError
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.sdp import check_candidate_pair, parse_offer_untrusted
from tests.kit.browser import browser_offer
from tests.kit.server import running_server
from tests.signaling.test_human_signaling import hello_and_join, receive, room_with_invite, signal_url
from trio_websocket import open_websocket_url

OFFER = browser_offer(DtlsCertificate.generate())
M_LINE = "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126"


def with_candidates(offer: str, *lines: str, trickle: bool = False) -> str:
    """``offer`` with ``lines`` as its audio candidates and ``a=end-of-candidates``
    (with ``trickle``, the trickle option stays and the end is not announced)."""
    if trickle:
        return offer.replace("a=mid:0\n", "a=mid:0\n" + "".join(f"{line}\n" for line in lines))
    offer = offer.replace("a=ice-options:trickle\n", "")
    return offer.replace("a=mid:0\n", "a=mid:0\n" + "".join(f"{line}\n" for line in lines) + "a=end-of-candidates\n")


TCP_HOST = "a=candidate:1 1 tcp 2105524479 192.0.2.9 9 typ host tcptype active"
UDP6_HOST = "a=candidate:2 1 udp 2113937151 fd00::99 50000 typ host"
UDP4_HOST = "a=candidate:3 1 udp 2113937151 192.0.2.9 50000 typ host"
MDNS_HOST = "a=candidate:4 1 udp 2113937151 3d1d6fbb-21c4-4f5f-9d3c-1a2b3c4d5e6f.local 50000 typ host"
RTCP_ONLY = "a=candidate:5 2 udp 2113937150 192.0.2.9 50001 typ host"

BROKEN = {
    "no fingerprint": (re.sub(r"a=fingerprint:[^\n]*\n", "", OFFER), "no a=fingerprint"),
    "no Opus": (OFFER.replace(M_LINE, "m=audio 9 UDP/TLS/RTP/SAVPF 0 8"), "offers no Opus"),
    "an unknown payload type": (OFFER.replace(M_LINE, "m=audio 9 UDP/TLS/RTP/SAVPF 96"), "offers no Opus"),
    "TCP media": (OFFER.replace("UDP/TLS/RTP/SAVPF", "TCP/TLS/RTP/SAVPF"), "TCP/TLS/RTP/SAVPF"),
    "TCP candidates only": (with_candidates(OFFER, TCP_HOST), "no usable candidate pair"),
    "IPv6 candidates only": (with_candidates(OFFER, UDP6_HOST), "no usable candidate pair"),
    "no candidates, no trickle": (with_candidates(OFFER), "no usable candidate pair"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_a_broken_offer_gets_bad_offer_and_no_media_leg(tmp_path, case):
    offer, reason = BROKEN[case]
    # Media on IPv4 loopback only: the relay's one candidate is udp 127.0.0.1.
    async with running_server(tmp_path, media_host="127.0.0.1") as srv:
        room_id, secret = await room_with_invite(srv)
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            _, joined = await hello_and_join(ws, secret)
            await ws.send_message(json.dumps({"type": "offer", "sdp": offer}))
            error = await receive(ws)
            session = next(s for s in srv.state.registry.sessions_in_room(room_id) if s.kind == "human")
            leg_after_error = srv.state.media.relay.peer(session.session_id)
            # The socket stays open, and the unbroken offer is answered.
            await ws.send_message(json.dumps({"type": "offer", "sdp": OFFER}))
            answer = await receive(ws)
    assert error["type"] == "error" and error["code"] == "bad_offer", error
    assert error["message"].startswith("cannot answer this offer: ") and reason in error["message"], error
    assert leg_after_error is None
    assert answer["type"] == "answer" and "a=candidate:" in answer["sdp"]
    assert joined["participant_id"] == session.participant_id


def test_candidates_that_can_pair_or_may_still_come_are_accepted():
    hosts = ("127.0.0.1",)
    for offer in (
        OFFER,  # trickle, no candidates yet (what browsers send): not judged
        with_candidates(OFFER, TCP_HOST, trickle=True),  # more may trickle
        with_candidates(OFFER, UDP4_HOST),
        with_candidates(OFFER, TCP_HOST, MDNS_HOST),  # an mDNS name may be either family
        with_candidates(OFFER, UDP6_HOST, UDP4_HOST),
    ):
        check_candidate_pair(parse_offer_untrusted(offer), hosts)
    # IPv6 pairs with an IPv6 relay address.
    check_candidate_pair(parse_offer_untrusted(with_candidates(OFFER, UDP6_HOST)), ("127.0.0.1", "::1"))


def test_candidates_that_cannot_pair_are_refused_with_both_sides_named():
    for candidates, named in (((TCP_HOST,), "tcp IPv4"), ((UDP6_HOST, RTCP_ONLY), "udp IPv6"), ((), "none")):
        offer = parse_offer_untrusted(with_candidates(OFFER, *candidates))
        with pytest.raises(SdpError, match="no usable candidate pair") as refused:
            check_candidate_pair(offer, ("127.0.0.1",))
        assert named in str(refused.value) and "udp 127.0.0.1" in str(refused.value)


def test_an_offers_candidates_and_their_end_are_read():
    offer = parse_offer_untrusted(with_candidates(OFFER, UDP4_HOST, RTCP_ONLY))
    assert [(c.transport, c.address, c.kind) for c in offer.candidates] == [("udp", "192.0.2.9", "host")]
    assert offer.end_of_candidates and offer.candidates_complete
    assert not parse_offer_untrusted(OFFER).candidates_complete  # trickle, no end yet
