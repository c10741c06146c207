"""A human in real headless Firefox talks to a bot through the relay.

The Firefox twin of ``test_browser_call.py``, with one difference that is the
point: the server runs on its DEFAULT media settings and Firefox on its default
ICE settings. Firefox gathers host candidates only on the default-route
interface (as mDNS names) and never pairs with loopback, so this call connects
only because the relay announces every local address (``relay/addresses.py``).

The page is the PWA from the invite link; Firefox's fake microphone is a sine
(``tests.kit.firefox.FAKE_MIC_HZ``); the bot is the Python SDK over UDP playing
440 Hz. Audio is checked by content in both directions, then mute and hang up
are checked from the bot's side.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
import trio

from botcall_sdk import connect
from botcall.demo.signals import dominant_frequency, tone
from tests.e2e.test_browser_call import current_rx, frames_from, relay_peer, wait_for_event, wait_until
from tests.kit.firefox import FAKE_MIC_HZ, HOOKS, click, in_firefox, page, wait_for, wait_state
from tests.kit.server import running_server
from tests.kit.speaking import saying

pytestmark = [pytest.mark.firefox, pytest.mark.e2e]


async def test_firefox_human_and_bot_hear_each_other_then_mute_and_hang_up(tmp_path):
    async with running_server(tmp_path) as srv:
        # The defaults under test: media on every interface, nothing advertised.
        assert (srv.config.media_host, srv.config.media_advertised_host) == ("0.0.0.0", None)
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        invite = urlsplit(created["invite_url"])
        async with connect(srv.url, created["room_id"], srv.token(agent="orion#8f3a")) as bot:
            events = bot.events()

            def human(client) -> dict:
                client.navigate(f"{srv.url}{invite.path}#{invite.fragment}")
                wait_state(client, "lobby")
                wait_for(client, "document.querySelector('#lobby-people li[data-kind=\"bot\"]') !== null")
                lobby = page(client, "return document.querySelector('#lobby-people li[data-kind=\"bot\"]').textContent")
                click(client, "#join")
                wait_state(client, "connected")
                participant = page(client, "return botcall.participantId")
                offer = page(client, "return botcall.pc.localDescription.sdp")
                pair = selected_pair(client)
                # The bot's 440 Hz reaches the page's analyser on the remote track.
                wait_for(client, "botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - 440) < 8")
                remote = median_frequency(client)
                # The page's own meter hears its fake microphone, and both meter
                # bars move (the meters work in Firefox).
                local_level = wait_for(client, "botcall.localLevel() > -50 && botcall.localLevel()")
                wait_for(
                    client,
                    "['meter-local', 'meter-remote'].every((id) =>"
                    " parseFloat(document.getElementById(id).style.transform.replace('scaleX(', '')) > 0.1)",
                )
                # Firefox's fake microphone reaches the bot.
                heard = trio.from_thread.run(frames_from, bot, participant, 40)
                # Mute: the bot stops hearing the human (the relay drops it).
                click(client, "#mute")
                pressed = page(client, "return document.querySelector('#mute').getAttribute('aria-pressed')")
                muted = trio.from_thread.run(wait_for_event, events, "muted")
                peer = trio.from_thread.run_sync(lambda: relay_peer(srv, created["room_id"], participant))
                trio.from_thread.run(wait_until, lambda: peer.drops["muted"] >= 10)
                received_while_muted = trio.from_thread.run_sync(current_rx, srv, peer)
                # Hang up: the participant leaves and the bot is told at once.
                hung_up = time.monotonic()
                click(client, "#hangup")
                left = trio.from_thread.run(wait_for_event, events, "participant_left")
                left_after = time.monotonic() - hung_up
                wait_state(client, "ended")
                return {
                    "lobby": lobby,
                    "participant": participant,
                    "offer": offer,
                    "pair": pair,
                    "remote": remote,
                    "local_level": local_level,
                    "heard": heard,
                    "pressed": pressed,
                    "muted": muted,
                    "forwarded_after_mute": trio.from_thread.run_sync(current_rx, srv, peer) - received_while_muted,
                    "left": left,
                    "left_after": left_after,
                }

            async with saying(bot, tone(440, 5.0)):
                result = await in_firefox(human)
    assert "orion#8f3a" in result["lobby"] and "Verified" in result["lobby"]
    # It was Firefox's own offer (Opus 109, trickle), answered by the relay.
    assert "a=rtpmap:109 opus/48000/2" in result["offer"] and "a=ice-options:trickle" in result["offer"]
    # ...and Firefox reached the relay on a non-loopback address the relay announced.
    assert result["pair"]["remote"] in srv.state.media.hosts and result["pair"]["remote"] != "127.0.0.1"
    assert abs(result["remote"] - 440) < 8
    assert result["local_level"] > -50
    assert abs(dominant_frequency(result["heard"], 48000) - FAKE_MIC_HZ) < 5
    assert result["pressed"] == "true"
    # The bot's events are numbered (docs/protocol.md "Resuming").
    assert result["muted"] == {"type": "muted", "participant_id": result["participant"], "muted": True, "seq": result["muted"]["seq"]}
    assert result["forwarded_after_mute"] == 0
    assert result["left"]["participant_id"] == result["participant"] and result["left"]["reason"] == "left"
    # Told by the page's leave message, not found out by a timeout (ws grace, consent: 30 s).
    assert result["left_after"] < 3.0


def median_frequency(client) -> float:
    """The median of a few readings (a window over a jitter-buffer stretch reads a few hertz off)."""
    return client.execute_async_script(
        HOOKS
        + """
        const done = arguments[arguments.length - 1];
        const readings = [];
        const read = () => {
          readings.push(botcall.remoteFrequency());
          if (readings.length < 7) { setTimeout(read, 150); return; }
          readings.sort((a, b) => a - b);
          done(readings[3]);
        };
        read();
        """
    )


def selected_pair(client) -> dict:
    """The addresses of the nominated candidate pair, from the page's getStats()."""
    return client.execute_async_script(
        HOOKS
        + """
        const done = arguments[arguments.length - 1];
        botcall.pc.getStats().then((report) => {
          const stats = [];
          report.forEach((s) => stats.push(s));
          const pair = stats.find((s) => s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated);
          const byId = (id) => stats.find((s) => s.id === id) || {};
          done(pair ? {local: byId(pair.localCandidateId).address, remote: byId(pair.remoteCandidateId).address} : null);
        }).catch((err) => done({error: String(err)}));
        """
    )
