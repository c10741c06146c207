"""A bot and a Chromium human who opened an invite link: do they hear each other?

    call = await bot_and_invited_human(url, room_id, invite_url, token, tmp_path)
    assert abs(call.bot_heard_hz - HUMAN_HZ) < 5 and call.page_errors == []

The bot (the Python SDK over UDP) says ``BOT_HZ`` without pause; the page's
fake microphone plays ``HUMAN_HZ``. It returns once the page hears the bot's
tone (its analyser within 8 Hz of ``BOT_HZ``, louder than -50 dB) and the bot
has 40 loud frames of the human, whose frequency it reports. The restart tests
(with Redis and without) use it to check the invite link from before a crash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from playwright.sync_api import BrowserContext

from botcall.audio.wav import write_wav
from botcall.demo.signals import dominant_frequency, tone
from botcall_sdk import connect
from tests.kit.chromium import hooks, in_browser, join_call
from tests.kit.server import running_server
from tests.kit.speaking import frames_from, keep_saying

BOT_HZ = 440
HUMAN_HZ = 660


@dataclass(frozen=True)
class InviteCall:
    """What each side heard.

    Attributes:
        bot_join: the bot's join response.
        bot_heard_hz: the dominant frequency of the human's audio at the bot.
        page_errors: the page's unexpected console errors.
    """

    bot_join: dict[str, Any]
    bot_heard_hz: float
    page_errors: list[str]


def human_mic_wav(workdir: Path) -> Path:
    """Write the fake microphone's WAV (``HUMAN_HZ``, 10 s) into ``workdir``; its path."""
    mic = workdir / f"mic-{HUMAN_HZ}.wav"
    write_wav(mic, tone(HUMAN_HZ, 10.0, amplitude=0.4), sample_rate=48000, channels=1)
    return mic


@dataclass(frozen=True)
class BotRoom:
    """A running server with a room, its bot joined, and the human's side ready.

    Attributes:
        srv: the live server.
        room: the room's creation response (``room_id``, ``invite_url``).
        page_url: the invite link on this server, for the browser.
        bot: the bot's SDK call (agent ``orion#8f3a``).
        mic: the fake microphone's WAV (``HUMAN_HZ``).
    """

    srv: Any
    room: dict[str, Any]
    page_url: str
    bot: Any
    mic: Path


@asynccontextmanager
async def bot_room(workdir: Path) -> AsyncIterator[BotRoom]:
    """A server in ``workdir``, a room, a bot (the Python SDK over UDP) in it, and
    the human's fake microphone WAV: the start of most browser call tests."""
    mic = human_mic_wav(workdir)
    async with running_server(workdir) as srv:
        room = (await srv.create_room(srv.token(agent="creator#1"))).json()
        invite = urlsplit(room["invite_url"])
        async with connect(srv.url, room["room_id"], srv.token(agent="orion#8f3a")) as bot:
            yield BotRoom(srv, room, f"{srv.url}{invite.path}#{invite.fragment}", bot, mic)


async def bot_and_invited_human(server_url: str, room_id: str, invite_url: str, bot_token: str, workdir: Path) -> InviteCall:
    """A bot joins ``room_id`` through ``server_url`` and a human opens ``invite_url``
    (see the module docstring). ``workdir`` holds the fake microphone's WAV."""
    mic = human_mic_wav(workdir)
    async with connect(server_url, room_id, bot_token) as bot:

        def human(context: BrowserContext) -> dict[str, Any]:
            page, errors = join_call(context, invite_url)
            participant = hooks(page)["participantId"]
            page.wait_for_function(
                f"() => botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - {BOT_HZ}) < 8"
            )
            heard = trio.from_thread.run(frames_from, bot, participant, 40)
            return {"heard": heard, "errors": errors.unexpected()}

        async with trio.open_nursery() as speaking:
            speaking.start_soon(keep_saying, bot, tone(BOT_HZ, 5.0))
            result = await in_browser(human, fake_mic_wav=str(mic))
            speaking.cancel_scope.cancel()
        join = dict(bot.join_response)
    return InviteCall(join, dominant_frequency(result["heard"], 48000), list(result["errors"]))
