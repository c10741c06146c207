"""Independent WebRTC humans — aiortc (Python) and werift (Node.js) — in a call
with a bot, through renegotiation and ICE restart.

Each peer joins with the PWA's signaling (hello, join, one offer with every
candidate), sends its own tone and records what it hears (``tests/kit/peers``).
A UDP bot plays 440 Hz. Before and after each step — the same offer again and
an ICE restart (werift's ``restartIce()``; aiortc, which has none, gets new
credentials by hand and checks the relay with the answer's) — both directions must carry the
tones: the second of audio the peer records right after the answer is applied
is the bot's 440 Hz, and the bot hears the peer's own tone. The relay keeps one
DTLS association and drops nothing for want of it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import numpy as np
import pytest
import trio

from botcall_sdk import connect
from botcall.demo.signals import dominant_frequency, rms_dbfs, tone
from tests.e2e.test_browser_call import frames_from, relay_peer
from tests.kit.attack.lab import invite_secret
from tests.kit.peers.external import AIORTC, RATE, WERIFT, PeerKind, start_human
from tests.kit.server import running_server
from tests.kit.speaking import keep_saying

pytestmark = [pytest.mark.e2e]

# The peer's recording right after an answer: skip this much (the answer's
# round trip and the decoder settling), then judge one second.
SETTLE_SAMPLES = RATE // 5
JUDGED_SAMPLES = RATE
TONES = {"aiortc": 660.0, "werift": 550.0}


def judged(pcm: np.ndarray) -> tuple[float, float]:
    data = pcm.astype("<i2").tobytes()
    return dominant_frequency(data, RATE), rms_dbfs(data)


@pytest.mark.parametrize("kind", [AIORTC, WERIFT], ids=lambda kind: kind.name)
async def test_an_independent_human_keeps_audio_through_renegotiation(tmp_path, kind: PeerKind):
    peer_tone = TONES[kind.name]
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        signal_url = f"ws://{urlsplit(srv.url).netloc}/v1/signal/{created['room_id']}"
        async with connect(srv.url, created["room_id"], srv.token(agent="orion#8f3a")) as bot:

            async def bot_speaks() -> None:
                await keep_saying(bot, tone(440, 5.0))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(bot_speaks)
                human = await start_human(kind, nursery, signal_url, invite_secret(created["invite_url"]), peer_tone, tmp_path / "heard.raw")
                session = next(s for s in srv.state.registry.sessions_in_room(created["room_id"]) if s.kind == "human")
                peer = relay_peer(srv, created["room_id"], session.participant_id)
                checks = {}
                # Before any step, then after each one.
                for step in ("connected", *kind.steps):
                    start = human.samples
                    if step != "connected":
                        await human.command(step)
                        renegotiated = await human.wait_event("renegotiated")
                        start = renegotiated["samples"]
                        if step == "restart_ice" and kind is AIORTC:
                            # Its restart by hand: the relay answered a check with the new credentials.
                            assert renegotiated["checked_with_new_credentials"] >= 1
                    await human.wait_recorded(start + SETTLE_SAMPLES + JUDGED_SAMPLES)
                    heard = human.heard(start + SETTLE_SAMPLES, start + SETTLE_SAMPLES + JUDGED_SAMPLES)
                    from_peer = await frames_from(bot, session.participant_id, 25)
                    checks[step] = (*judged(heard), dominant_frequency(from_peer, RATE))
                await human.command("quit")
                assert human.process.stdin is not None
                await human.process.stdin.aclose()
                nursery.cancel_scope.cancel()
        counters = srv.state.media.relay.counters
    for step, (frequency, level, bot_heard) in checks.items():
        print(f"{kind.name} {step}: hears {frequency:.0f} Hz at {level:.0f} dBFS; the bot hears {bot_heard:.0f} Hz")
        assert abs(frequency - 440) < 5 and level > -30, (step, frequency, level)
        assert abs(bot_heard - peer_tone) < 5, (step, bot_heard)
    assert counters["dtls_connected"] == 1 and counters["renegotiated"] >= len(kind.steps)
    assert peer.drops.get("srtp_before_dtls", 0) == 0
    if "restart_ice" in kind.steps:
        assert counters["ice_restart"] == 1
