"""Headless Firefox on a real-time audio clock: a call played through a PulseAudio null sink.

Headless Firefox without a sound device plays through its mock audio back-end,
whose clock runs slow (0.89-0.96 of real time on a busy machine) and makes its
jitter buffer grow call after call (docs/bench-results.md §16c).
``tests.kit.firefox.pulse_null_sink`` gives it a real-time clock instead; the
benchmark measures Firefox with it (``bench.mouth_to_ear --firefox-audio pulse``).
This test checks that such a Firefox really plays the call through that sink
(its stream shows up in the daemon) and hears the bot by content.
"""

from __future__ import annotations

import os
import subprocess
from urllib.parse import urlsplit

import pytest
import trio

from botcall_sdk import connect
from botcall.demo.signals import tone
from tests.e2e.test_firefox_call import median_frequency
from tests.kit.firefox import click, in_firefox, pulse_null_sink, wait_for, wait_state
from tests.kit.server import running_server
from tests.kit.speaking import keep_saying

pytestmark = [pytest.mark.firefox, pytest.mark.e2e]


def firefox_sink_inputs(server: str) -> str:
    """What the PulseAudio daemon at ``server`` is playing (``pactl list sink-inputs``)."""
    return subprocess.run(
        ["pactl", "list", "sink-inputs"], env={**os.environ, "PULSE_SERVER": server}, capture_output=True, text=True, timeout=10, check=True
    ).stdout


async def test_firefox_plays_a_call_through_the_pulseaudio_null_sink(tmp_path):
    with pulse_null_sink() as pulse:
        async with running_server(tmp_path) as srv:
            created = (await srv.create_room(srv.token(agent="creator#1"))).json()
            invite = urlsplit(created["invite_url"])
            async with connect(srv.url, created["room_id"], srv.token(agent="orion#8f3a")) as bot:
                speaking = trio.Event()

                async def bot_speaks():
                    speaking.set()
                    await keep_saying(bot, tone(440, 5.0))

                def human(client) -> dict:
                    client.navigate(f"{srv.url}{invite.path}#{invite.fragment}")
                    wait_state(client, "lobby")
                    click(client, "#join")
                    wait_state(client, "connected")
                    wait_for(client, "botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - 440) < 8")
                    remote = median_frequency(client)
                    # The call's audio is a stream of Firefox's in the daemon: polled, as
                    # the output opens a moment after the page starts playing.
                    inputs = ""
                    for _ in range(100):
                        inputs = firefox_sink_inputs(pulse)
                        if "Firefox" in inputs:
                            break
                        trio.from_thread.run(trio.sleep, 0.1)
                    click(client, "#hangup")
                    return {"remote": remote, "inputs": inputs}

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(bot_speaks)
                    await speaking.wait()
                    result = await in_firefox(human, pulse_server=pulse)
                    nursery.cancel_scope.cancel()
    assert abs(result["remote"] - 440) < 8
    assert "Firefox" in result["inputs"], result["inputs"]
