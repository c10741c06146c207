"""A human in real headless Chromium talks to a bot through the relay.

The page is the PWA from the invite link; the human's fake microphone plays a
660 Hz WAV; the bot is the Python SDK over UDP. Audio is checked by content in
both directions, then mute and hang up are checked from the bot's side.

Set ``BOTCALL_SCREENSHOT=path.png`` to save a picture of the page mid-call
(the README's pictures come from tests/pwa/test_people.py).
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import pytest
import trio
from playwright.sync_api import BrowserContext, expect

from botcall.audio.wav import write_wav
from botcall.demo.signals import dominant_frequency, tone
from botcall_sdk import connect
from tests.kit.chromium import PageErrors, hooks, in_browser, wait_state
from tests.kit.server import running_server
from tests.kit.speaking import frames_from, saying  # frames_from: other tests import it from here

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


async def test_human_and_bot_hear_each_other_then_mute_and_hang_up(tmp_path):
    mic = tmp_path / "mic-660.wav"
    write_wav(mic, tone(660, 10.0, amplitude=0.4), sample_rate=48000, channels=1)
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        invite = urlsplit(created["invite_url"])
        async with connect(srv.url, created["room_id"], srv.token(agent="orion#8f3a")) as bot:
            events = bot.events()
            def human(context: BrowserContext) -> dict:
                page = context.new_page()
                errors = PageErrors(page)
                page.goto(f"{srv.url}{invite.path}#{invite.fragment}")
                wait_state(page, "lobby")
                # The lobby shows who is calling, with the identity from the attestation.
                bot_card = page.locator('#lobby-people li[data-kind="bot"]')
                expect(bot_card).to_contain_text("orion#8f3a")
                expect(bot_card).to_contain_text("gopi")
                expect(bot_card).to_contain_text("Verified")
                page.get_by_role("button", name=re.compile("Join")).click()
                wait_state(page, "connected")
                participant = hooks(page)["participantId"]
                # The bot's 440 Hz reaches the page's analyser on the remote track.
                page.wait_for_function("() => botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - 440) < 8")
                # The median of a few readings: a window that straddles a NetEq
                # time-stretch or a loop of the bot's WAV reads a few hertz off.
                remote = page.evaluate(
                    """async () => {
                        const readings = [];
                        for (let i = 0; i < 7; i++) {
                            readings.push(botcall.remoteFrequency());
                            await new Promise((resolve) => setTimeout(resolve, 150));
                        }
                        readings.sort((a, b) => a - b);
                        return readings[3];
                    }"""
                )
                screenshot = os.environ.get("BOTCALL_SCREENSHOT")
                if screenshot:
                    page.wait_for_function("() => document.querySelector('#duration').textContent !== '00:00'")
                    page.screenshot(path=screenshot, full_page=True)
                # The human's 660 Hz reaches the bot.
                heard = trio.from_thread.run(frames_from, bot, participant, 40)
                # Mute: the bot stops hearing the human (the relay drops it).
                page.get_by_role("button", name="Mute").click()
                expect(page.get_by_role("button", name="Mute")).to_have_attribute("aria-pressed", "true")
                muted = trio.from_thread.run(wait_for_event, events, "muted")
                peer = trio.from_thread.run_sync(lambda: relay_peer(srv, created["room_id"], participant))
                trio.from_thread.run(wait_until, lambda: peer.drops["muted"] >= 10)
                received_while_muted = trio.from_thread.run_sync(current_rx, srv, peer)
                # Hang up: the participant leaves and the bot is told.
                page.get_by_role("button", name="Hang up").click()
                wait_state(page, "ended")
                left = trio.from_thread.run(wait_for_event, events, "participant_left")
                forwarded_after_mute = trio.from_thread.run_sync(current_rx, srv, peer) - received_while_muted
                return {
                    "participant": participant,
                    "remote": remote,
                    "heard": heard,
                    "muted": muted,
                    "forwarded_after_mute": forwarded_after_mute,
                    "left": left,
                    "errors": errors.unexpected(),
                }

            async with saying(bot, tone(440, 5.0)):
                result = await in_browser(human, fake_mic_wav=str(mic))
    assert abs(result["remote"] - 440) < 8
    assert abs(dominant_frequency(result["heard"], 48000) - 660) < 5
    # The bot's events are numbered (docs/protocol.md "Resuming").
    assert result["muted"] == {"type": "muted", "participant_id": result["participant"], "muted": True, "seq": result["muted"]["seq"]}
    assert result["forwarded_after_mute"] == 0  # muted: nothing of the human's reached the bot
    assert result["left"]["participant_id"] == result["participant"] and result["left"]["reason"] == "left"
    assert result["errors"] == []


def relay_peer(srv, room_id, participant_id):
    """The relay's peer of a participant, its packet counts current (call on Trio's thread)."""
    session = next(s for s in srv.state.registry.sessions_in_room(room_id) if s.participant_id == participant_id)
    srv.state.media.relay.refresh_counts()
    return srv.state.media.relay.peer(session.session_id)


def current_rx(srv, peer):
    """``peer.rx_packets`` now: with the fast path (inline by default) the helper's
    counts otherwise reach the peer once a second (call on Trio's thread)."""
    srv.state.media.relay.refresh_counts()
    return peer.rx_packets


async def wait_until(predicate):
    """Poll a condition of the server's state (a safety timeout, not a speed requirement)."""
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.02)


async def wait_for_event(events, kind):
    with trio.fail_after(10):
        async for event in events:
            if event.raw["type"] == kind:
                return dict(event.raw)
