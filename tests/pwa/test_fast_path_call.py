"""A real Chromium call with the browser leg's SRTP on the compiled fast path (issue 17).

The plain-relay profile (``media_fast_path = "thread"``, no bot playout, no
speech detection): the Python SDK bot says 440 Hz over UDP, the page's fake
microphone plays 660 Hz; each side must hear the other's tone
(``tests/kit/invite_call.py``), and the relay's Python must have seen only a
few of the call's RTP packets: the rest were decrypted (Chromium's SRTP),
renumbered and protected (toward Chromium) in C with the legs' own libsrtp
sessions. Chromium's own SRTP stack is the independent check of what C
protects, and its packets of what C decrypts.
"""

from __future__ import annotations

import shutil

import pytest

from botcall.relay import fastpath
from botcall.relay.core import MediaRelay
from tests.kit.invite_call import HUMAN_HZ, bot_and_invited_human
from tests.kit.server import running_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(not fastpath.available() and shutil.which("gcc") is None, reason="the compiled fast path is not built"),
]


async def test_a_chromium_call_hears_both_tones_with_srtp_on_the_fast_path(tmp_path, monkeypatch):
    forwarders: list[fastpath.FastForwarder] = []
    original_init = fastpath.FastForwarder.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        forwarders.append(self)

    monkeypatch.setattr(fastpath.FastForwarder, "__init__", recording_init)
    rtp_in_python = []
    original_handle = MediaRelay.handle_datagram

    def counting_handle(self, data, addr, now):
        if len(data) > 1 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:  # RTP, not RTCP
            rtp_in_python.append(len(data))
        original_handle(self, data, addr, now)

    monkeypatch.setattr(MediaRelay, "handle_datagram", counting_handle)
    async with running_server(
        tmp_path, media_port=0, media_fast_path="thread", media_bot_playout=False, speech_detection=False
    ) as srv:
        room = (await srv.create_room(srv.token(agent="creator#1"))).json()
        call = await bot_and_invited_human(srv.url, room["room_id"], room["invite_url"], srv.token(agent="orion#8f3a"), tmp_path)
        relay = srv.state.media.relay
        human = next(peer for peer in relay.all_peers() if peer.human)
        bot = next(peer for peer in relay.all_peers() if not peer.human)
        [forwarder] = forwarders
        forwarder.take_stats()
        routes = [(route.peer.human, bool(route.contexts)) for route in forwarder._routes]
    assert call.page_errors == []
    assert abs(call.bot_heard_hz - HUMAN_HZ) < 5
    # Both directions were routed with SRTP: the human's (decrypt) and the bot's (protect toward the page).
    assert sorted(routes) == [(False, True), (True, True)]
    forwarded = human.rx_packets + bot.rx_packets
    assert forwarded > 100
    assert len(rtp_in_python) < forwarded / 4, (len(rtp_in_python), forwarded)
