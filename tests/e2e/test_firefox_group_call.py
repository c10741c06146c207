"""A group call with a human in Firefox: everyone hears everyone, at the same time.

The Firefox twin of ``test_group_call.py``: a bot (the Python SDK over UDP)
saying 440 Hz, a human in headless Chromium whose fake microphone plays
330 Hz, and a human in headless Firefox (Firefox's fake microphone, 1 kHz),
all in one room, talking over one another. The server runs on its default
media settings and Firefox on its default ICE settings.

Each page records what it plays (the PWA's recorder, ``tests.kit.page_audio``)
and must hold both others' tones *at once* (two spectral peaks within ±5 Hz,
each at least 40 dB over the noise floor, in the same window) and not its own;
the bot must hear each human as a stream of its own, by tone.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import numpy as np
import pytest
import trio
from playwright.sync_api import BrowserContext

from botcall.audio.wav import write_wav
from botcall.demo.signals import dominant_frequency, energy_fraction, spectral_peak, tone
from botcall_sdk import connect
from tests.e2e.test_group_call import BOT_HZ, MAX_ABSENT_SHARE, MIN_PEAK_DB, MIN_SHARE, RATE, WINDOW_S, bot_hears
from tests.kit import firefox
from tests.kit.chromium import hooks, in_browser, join_call
from tests.kit.page_audio import start_recording, take_recording
from tests.kit.server import running_server
from tests.kit.speaking import keep_saying

pytestmark = [pytest.mark.firefox, pytest.mark.browser, pytest.mark.e2e]

CHROMIUM_HZ = 330
FIREFOX_HZ = firefox.FAKE_MIC_HZ
BARRIER_S = 60.0  # a safety net against a hung browser, not a speed requirement
THREE_TRACKS_PLAYING = "botcall.remoteTracks === 3 && botcall.remoteLevel() > -50"


def chromium_human(context: BrowserContext, url: str, ready: threading.Barrier, done: threading.Barrier) -> dict:
    page, errors = join_call(context, url)
    participant = hooks(page)["participantId"]
    ready.wait(timeout=BARRIER_S)
    page.wait_for_function(f"() => {THREE_TRACKS_PLAYING}")
    start_recording(page)
    pieces: list[np.ndarray] = []
    while sum(piece.size for piece in pieces) < RATE * (WINDOW_S + 1.0):
        page.wait_for_timeout(250)
        try:
            pieces.append(take_recording(page, RATE).remote)
        except AssertionError:
            continue  # nothing recorded yet
    done.wait(timeout=BARRIER_S)
    return {"remote": np.concatenate(pieces), "participant": participant, "errors": errors.unexpected()}


def firefox_human(client, url: str, ready: threading.Barrier, done: threading.Barrier) -> dict:
    client.navigate(url)
    firefox.wait_state(client, "lobby")
    firefox.click(client, "#join")
    firefox.wait_state(client, "connected")
    participant = firefox.page(client, "return botcall.participantId")
    offer = firefox.page(client, "return botcall.pc.localDescription.sdp")
    ready.wait(timeout=BARRIER_S)
    firefox.wait_for(client, THREE_TRACKS_PLAYING)
    firefox.start_recording(client)
    pieces: list[np.ndarray] = []
    while sum(piece.size for piece in pieces) < RATE * (WINDOW_S + 1.0):
        firefox.wait_for(client, "new Promise((resolve) => setTimeout(() => resolve(true), 250))")
        try:
            pieces.append(firefox.take_recording(client, RATE).remote)
        except AssertionError:
            continue  # nothing recorded yet
    done.wait(timeout=BARRIER_S)
    return {"remote": np.concatenate(pieces), "participant": participant, "offer": offer}


def assert_hears_both_others(name: str, remote: np.ndarray, own: int, others: tuple[int, int]) -> None:
    window = remote[-int(RATE * WINDOW_S) :]
    pcm = (np.clip(window, -1, 1) * 32767).astype("<i2").tobytes()
    for frequency in others:
        found, above = spectral_peak(pcm, RATE, frequency, tolerance=5.0)
        print(f"{name} hears {frequency} Hz: peak at {found:.1f} Hz, {above:.0f} dB over the floor, share {energy_fraction(pcm, RATE, frequency):.3f}")
        assert abs(found - frequency) <= 5 and above >= MIN_PEAK_DB, (name, frequency, found, above)
        assert energy_fraction(pcm, RATE, frequency) >= MIN_SHARE, (name, frequency)
    print(f"{name}'s own {own} Hz: share {energy_fraction(pcm, RATE, own):.1e}")
    assert energy_fraction(pcm, RATE, own) < MAX_ABSENT_SHARE, (name, "hears itself")


async def test_a_firefox_human_a_chromium_human_and_a_bot_each_hear_both_others_at_once(tmp_path):
    mic = tmp_path / f"mic-{CHROMIUM_HZ}.wav"
    write_wav(mic, tone(CHROMIUM_HZ, 10.0, amplitude=0.4), sample_rate=RATE, channels=1)
    ready, done = threading.Barrier(2), threading.Barrier(2)
    async with running_server(tmp_path) as srv:
        assert (srv.config.media_host, srv.config.media_advertised_host) == ("0.0.0.0", None)
        created = (await srv.create_room(srv.token(agent="creator#1"), max_human_participants=2)).json()
        room_id = created["room_id"]
        invite = urlsplit(created["invite_url"])
        url = f"{srv.url}{invite.path}#{invite.fragment}"
        results: dict[str, dict] = {}
        async with connect(srv.url, room_id, srv.token(agent="orion#8f3a")) as bot, trio.open_nursery() as nursery:

            async def bot_talks():
                await keep_saying(bot, tone(BOT_HZ, 5.0))

            async def in_chromium():
                results["chromium"] = await in_browser(lambda context: chromium_human(context, url, ready, done), fake_mic_wav=str(mic))

            async def in_firefox():
                results["firefox"] = await firefox.in_firefox(lambda client: firefox_human(client, url, ready, done))

            nursery.start_soon(bot_talks)
            async with trio.open_nursery() as humans:
                humans.start_soon(in_chromium)
                humans.start_soon(in_firefox)
                # While both are in the call: the bot's per-speaker streams.
                with trio.fail_after(BARRIER_S):
                    while len([s for s in srv.state.registry.sessions_in_room(room_id) if s.kind == "human"]) < 2:
                        await trio.sleep(0.05)
                    ids = {s.participant_id for s in srv.state.registry.sessions_in_room(room_id) if s.kind == "human"}
                    bot_heard = await bot_hears(bot, ids, 40)
            nursery.cancel_scope.cancel()

    chromium, firefox_page = results["chromium"], results["firefox"]
    # It was Firefox's own offer (Opus 109), in the same room as Chromium's.
    assert "a=rtpmap:109 opus/48000/2" in firefox_page["offer"]
    assert_hears_both_others("chromium", chromium["remote"], CHROMIUM_HZ, (BOT_HZ, FIREFOX_HZ))
    assert_hears_both_others("firefox", firefox_page["remote"], FIREFOX_HZ, (BOT_HZ, CHROMIUM_HZ))
    assert chromium["errors"] == []
    assert abs(dominant_frequency(bot_heard[chromium["participant"]], RATE) - CHROMIUM_HZ) <= 5
    assert abs(dominant_frequency(bot_heard[firefox_page["participant"]], RATE) - FIREFOX_HZ) <= 5
