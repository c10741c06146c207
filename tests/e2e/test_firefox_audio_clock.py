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

from urllib.parse import urlsplit

import pytest

from botcall_sdk import connect
from botcall.demo.signals import tone
from tests.e2e.test_firefox_call import median_frequency
from tests.kit.firefox import click, in_firefox, join_call, pulse_events, pulse_null_sink, wait_for, wait_for_sink_input
from tests.kit.server import running_server
from tests.kit.speaking import saying

pytestmark = [pytest.mark.firefox, pytest.mark.e2e]


async def test_firefox_plays_a_call_through_the_pulseaudio_null_sink(tmp_path):
    # The daemon's events are followed from before Firefox starts: its stream's
    # "new" event cannot pass unseen.
    with pulse_null_sink() as pulse, pulse_events(pulse) as events:
        async with running_server(tmp_path) as srv:
            created = (await srv.create_room(srv.token(agent="creator#1"))).json()
            invite = urlsplit(created["invite_url"])
            async with connect(srv.url, created["room_id"], srv.token(agent="orion#8f3a")) as bot, saying(bot, tone(440, 5.0)):

                def human(client) -> dict:
                    join_call(client, f"{srv.url}{invite.path}#{invite.fragment}")
                    wait_for(client, "botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - 440) < 8")
                    remote = median_frequency(client)
                    # The call's audio is a stream of Firefox's in the daemon (its output
                    # may open a moment after the page starts playing: the daemon says when).
                    inputs = wait_for_sink_input(pulse, events, "Firefox")
                    click(client, "#hangup")
                    return {"remote": remote, "inputs": inputs}

                result = await in_firefox(human, pulse_server=pulse)
    assert abs(result["remote"] - 440) < 8
    assert "Firefox" in result["inputs"], result["inputs"]
