"""A human in headless Chromium and a bot talk through a two-node cluster: the
room lives on node B, the bot joins through node A, and the page is opened
from node A too, so its signaling WebSocket crosses nodes. Audio is checked by
content both ways.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import pytest
import trio
from playwright.sync_api import BrowserContext

from botcall.audio.wav import write_wav
from botcall_sdk import connect
from botcall.demo.signals import dominant_frequency, tone
from tests.cluster.test_nodes import start_nodes
from tests.e2e.test_browser_call import frames_from
from tests.kit.chromium import hooks, in_browser, join_call
from tests.kit.redis import running_redis
from tests.kit.speaking import keep_saying

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


async def test_a_browser_and_a_bot_hear_each_other_across_nodes(tmp_path):
    mic = tmp_path / "mic-660.wav"
    write_wav(mic, tone(660, 10.0, amplitude=0.4), sample_rate=48000, channels=1)
    async with running_redis(tmp_path) as redis, AsyncExitStack() as stack:
        nodes = await start_nodes(stack, tmp_path, redis, ["node-a", "node-b"])
        a, b = nodes["node-a"], nodes["node-b"]
        creator = a.token(agent="creator#1")
        (await a.create_room(creator)).json()  # node A now holds a room: the next goes to B
        created = (await a.create_room(creator)).json()
        invite = urlsplit(created["invite_url"])
        assert created["invite_url"].startswith(b.url)
        async with connect(a.url, created["room_id"], a.token(agent="orion#8f3a")) as bot:
            assert bot.join_response["media"]["port"] == b.workers[0].media_port

            async def bot_speaks():
                await keep_saying(bot, tone(440, 5.0))

            def human(context: BrowserContext) -> dict:
                # The invite opened on node A: page and signaling go through A to B.
                page, errors = join_call(context, f"{a.url}{invite.path}#{invite.fragment}")
                participant = hooks(page)["participantId"]
                page.wait_for_function("() => botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - 440) < 8")
                heard = trio.from_thread.run(frames_from, bot, participant, 40)
                return {"heard": heard, "errors": errors.unexpected()}

            async with trio.open_nursery() as nursery:
                nursery.start_soon(bot_speaks)
                result = await in_browser(human, fake_mic_wav=str(mic))
                nursery.cancel_scope.cancel()
    assert abs(dominant_frequency(result["heard"], 48000) - 660) < 5
    assert result["errors"] == []
