"""A browser asked for 10 ms packets (``browser_ptime_ms = 10``: ``a=ptime:10`` in
the answer) sends them, and every kind of bot still hears the human's tone.

Real headless Chromium with a 660 Hz fake microphone, the real server, and
three SDK bots in the room: a UDP bot (Opus packets forwarded as they come,
joined into 20 ms by the SDK's jitter buffer), a WebSocket pcm16 bot (each
packet decoded on arrival by the server: one frame per packet, so its length
is the packet's) and a WebSocket pcm16 bot on the mixed stream (the server's
jitter buffer and mix, 20 ms ticks). Firefox ESR too, with its default ICE
settings and the server's default media address (every local address).
"""

from __future__ import annotations

from functools import partial
from urllib.parse import urlsplit

import pytest
import trio
from playwright.sync_api import BrowserContext

from botcall.audio.wav import write_wav
from botcall.demo.signals import dominant_frequency, rms_dbfs, tone
from botcall_sdk import connect
from tests.kit.chromium import hooks, in_browser, join_call
from tests.kit.server import running_server

pytestmark = [pytest.mark.e2e]

FRAMES = 40


async def loud_frames(call, speaker: str, count: int, *, mixed: bool = False) -> list[bytes]:
    """``count`` audible, not concealed frames of one speaker, each as it came."""
    frames = []
    async for frame in call.audio(mixed=mixed) if mixed else call.audio():
        if frame.speaker == speaker and not frame.concealed and rms_dbfs(frame.pcm) > -40:
            frames.append(frame.pcm)
            if len(frames) >= count:
                break
    return frames


@pytest.mark.browser
async def test_a_browser_asked_for_10ms_packets_sends_them_and_every_bot_hears_its_tone(tmp_path):
    mic = tmp_path / "mic-660.wav"
    write_wav(mic, tone(660, 10.0, amplitude=0.4), sample_rate=48000, channels=1)
    async with running_server(tmp_path, browser_ptime_ms=10) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        invite = urlsplit(created["invite_url"])
        url = f"{srv.url}{invite.path}#{invite.fragment}"
        room = created["room_id"]
        async with (
            connect(srv.url, room, srv.token(agent="udp#1")) as udp,
            connect(srv.url, room, srv.token(agent="pcm#1"), transport="websocket", encoding="pcm16") as pcm,
            connect(srv.url, room, srv.token(agent="mix#1"), transport="websocket", encoding="pcm16", receive="mixed") as mixed,
        ):

            def human(context: BrowserContext) -> dict:
                page, errors = join_call(context, url)
                participant = hooks(page)["participantId"]
                heard = {
                    "udp": trio.from_thread.run(loud_frames, udp, participant, FRAMES),
                    "pcm16": trio.from_thread.run(loud_frames, pcm, participant, 2 * FRAMES),
                    "mixed": trio.from_thread.run(partial(loud_frames, mixed, "mix", FRAMES, mixed=True)),
                }
                answer = page.evaluate("botcall.pc.remoteDescription.sdp")
                page.get_by_role("button", name="Hang up").click()
                return {"heard": heard, "answer": answer, "errors": errors.unexpected()}

            result = await in_browser(human, fake_mic_wav=str(mic))
    assert "a=ptime:10" in result["answer"]
    heard = result["heard"]
    # Decoded on arrival, one frame per packet: the browser's packets last 10 ms.
    assert {len(frame) for frame in heard["pcm16"]} == {960}
    # The SDK's jitter buffer and the server's mix give 20 ms ticks, every one whole.
    assert {len(frame) for frame in heard["udp"]} == {1920}
    assert {len(frame) for frame in heard["mixed"]} == {1920}
    for path, frames in heard.items():
        assert abs(dominant_frequency(b"".join(frames), 48000) - 660) < 5, path
    assert result["errors"] == []


@pytest.mark.firefox
async def test_firefox_asked_for_10ms_packets_sends_them_and_bots_hear_its_tone(tmp_path):
    from tests.kit.firefox import FAKE_MIC_HZ, click, in_firefox, page, wait_state

    async with running_server(tmp_path, browser_ptime_ms=10) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        invite = urlsplit(created["invite_url"])
        room = created["room_id"]
        async with (
            connect(srv.url, room, srv.token(agent="udp#1")) as udp,
            connect(srv.url, room, srv.token(agent="pcm#1"), transport="websocket", encoding="pcm16") as pcm,
        ):

            def human(client) -> dict:
                client.navigate(f"{srv.url}{invite.path}#{invite.fragment}")
                wait_state(client, "lobby")
                click(client, "#join")
                wait_state(client, "connected")
                participant = page(client, "return botcall.participantId")
                heard = {
                    "udp": trio.from_thread.run(loud_frames, udp, participant, FRAMES),
                    "pcm16": trio.from_thread.run(loud_frames, pcm, participant, 2 * FRAMES),
                }
                answer = page(client, "return botcall.pc.remoteDescription.sdp")
                click(client, "#hangup")
                return {"heard": heard, "answer": answer}

            result = await in_firefox(human)
    assert "a=ptime:10" in result["answer"]
    assert {len(frame) for frame in result["heard"]["pcm16"]} == {960}  # one 10 ms frame per packet
    assert {len(frame) for frame in result["heard"]["udp"]} == {1920}
    for path, frames in result["heard"].items():
        assert abs(dominant_frequency(b"".join(frames), 48000) - FAKE_MIC_HZ) < 5, path
