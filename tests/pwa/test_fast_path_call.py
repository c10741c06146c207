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
    humans = set()  # kept: the helper's counts are folded into them when their routes go
    tables = []
    forwarders = set()
    both_routed = [False]  # the table routes both directions with SRTP now  # each table the helper was given: (speaker is human, SRTP contexts named, browser destinations)
    original_reprogram = fastpath.FastForwarder._reprogram

    def recording_reprogram(self):
        original_reprogram(self)
        tables.append(sorted((route.peer.human, bool(route.contexts), len(route.browsers)) for route in self._routes))
        both_routed[0] = tables[-1] == [(False, True, 1), (True, True, 0)]
        humans.update(route.peer for route in self._routes if route.peer.human)
        forwarders.add(self)

    monkeypatch.setattr(fastpath.FastForwarder, "_reprogram", recording_reprogram)
    rtp_in_python = []
    original_handle = MediaRelay.handle_datagram

    def counting_handle(self, data, addr, now):
        if len(data) > 1 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:  # RTP, not RTCP
            rtp_in_python.append(both_routed[0])
        original_handle(self, data, addr, now)

    monkeypatch.setattr(MediaRelay, "handle_datagram", counting_handle)
    async with running_server(
        tmp_path, media_port=0, media_fast_path="thread", media_bot_playout=False, speech_detection=False
    ) as srv:
        room = (await srv.create_room(srv.token(agent="creator#1"))).json()
        call = await bot_and_invited_human(srv.url, room["room_id"], room["invite_url"], srv.token(agent="orion#8f3a"), tmp_path)
        [forwarder] = forwarders
        forwarder.take_stats()  # the counts of routes still in the table (those that went were folded then)
    [human] = humans
    forwarded = human.rx_packets + human.tx_packets  # page -> bot and bot -> page
    assert call.page_errors == []
    assert abs(call.bot_heard_hz - HUMAN_HZ) < 5  # the page's 660 Hz, decrypted in C, at the bot
    # The page heard the bot's 440 Hz (bot_and_invited_human waits for it), protected in C:
    # both directions were routed with the legs' SRTP at once.
    assert [(False, True, 1), (True, True, 0)] in tables, tables
    assert forwarded > 100
    # While both directions were routed, RTP reached Python only beside what C cannot
    # route (STUN consent checks, RTCP: the rest of such a batch comes to Python too).
    # Before (the page loading, DTLS) and after (one side gone), Python had it all.
    in_python_while_routed = sum(rtp_in_python)
    assert in_python_while_routed < max(20, forwarded / 10), (in_python_while_routed, len(rtp_in_python), forwarded)
