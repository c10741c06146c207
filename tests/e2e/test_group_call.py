"""A group call against the real server: everyone hears everyone, at the same time.

Three participants talk over one another, each a different tone:

* a human in real headless Chromium (the PWA from the invite link), whose fake
  microphone plays 330 Hz;
* a simulated browser (``tests/kit/browser.py``: a real DTLS-SRTP peer in
  Python, offering what Chrome offers for three downstream tracks) sending
  550 Hz over real UDP;
* a bot (the Python SDK over UDP) saying 440 Hz.

Chromium's captured remote audio must hold 440 and 550 Hz *at once* (two
spectral peaks within ±5 Hz, each at least 40 dB above the noise floor, in
the same window, while the page's own tone is absent); the simulated browser
gets 330 and 440 Hz on two separate downstream tracks (its answer's SSRCs);
the bot hears both humans as separate per-speaker streams. With one
downstream track (the old single floor) each human would hear only one of the
others.

The second test is the issue's picture with three Chromium humans (330, 550,
770 Hz) and the 440 Hz bot: each page hears all three others at once.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import numpy as np
import pytest
import trio
from playwright.sync_api import BrowserContext
from trio_websocket import open_websocket_url

from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall.audio.wav import write_wav
from botcall_sdk import connect
from botcall.demo.signals import dominant_frequency, energy_fraction, rms_dbfs, spectral_peak, tone
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.wire.rtp import RtpPacket
from tests.kit.browser import Browser, browser_offer
from tests.kit.browser_udp import UdpBrowser, signal_browser, udp_browser
from tests.kit.chromium import hooks, in_browser, join_call
from tests.kit.page_audio import start_recording, take_recording
from tests.kit.server import running_server
from tests.kit.speaking import keep_saying

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM_HZ, SIMULATED_HZ, BOT_HZ = 330, 550, 440
RATE = 48000
# How much of the page's remote audio is analysed (the last of it: the jitter
# buffers have settled), and what a tone heard needs: a peak this far over the
# noise floor (the issue asks 20 dB; Chromium's decoded tones stand 70-90 dB
# over it, while an absent tone's window leakage reaches ~25 dB), and this share
# of the energy (measured: humans' tones 0.02-0.06 next to the bot's louder
# one, after Chromium's microphone processing; an absent tone ~1e-6).
WINDOW_S = 1.5
MIN_PEAK_DB = 40.0
MIN_SHARE = 0.005
MAX_ABSENT_SHARE = 1e-4


async def send_tone_forever(browser: UdpBrowser, frequency: int) -> None:
    """The simulated human talks: ``frequency`` Hz as Opus in 20 ms packets, paced at real time."""
    encoder = OpusEncoder()
    pcm = tone(frequency, 1.0, amplitude=0.3)
    start = trio.current_time()
    i = 0
    while True:
        chunk = pcm[(i % 50) * 1920 : (i % 50 + 1) * 1920]
        await browser.send_rtp(RtpPacket(111, i & 0xFFFF, (i * 960) & 0xFFFFFFFF, browser.core.send_ssrc, payload=encoder.encode(chunk)))
        i += 1
        await trio.sleep_until(start + i * 0.02)


async def hear_tracks(browser: UdpBrowser, frames: int) -> dict[int, bytes]:
    """Decoded audio per downstream SSRC, until two tracks have ``frames`` frames each."""
    decoders: dict[int, OpusDecoder] = {}
    pcm: dict[int, list[bytes]] = {}
    while sum(1 for chunks in pcm.values() if len(chunks) >= frames) < 2:
        packet = await browser.receive_rtp()
        decoder = decoders.setdefault(packet.ssrc, OpusDecoder())
        pcm.setdefault(packet.ssrc, []).append(decoder.decode_untrusted(packet.payload))
    return {ssrc: b"".join(chunks) for ssrc, chunks in pcm.items()}


async def bot_hears(bot, participants: set[str], frames: int) -> dict[str, bytes]:
    """Each of ``participants``' audible frames as the bot's per-speaker stream delivers them."""
    pcm: dict[str, list[bytes]] = {p: [] for p in participants}
    async for frame in bot.audio():
        chunks = pcm.get(frame.speaker)
        if chunks is not None and not frame.concealed and rms_dbfs(frame.pcm) > -40:
            chunks.append(frame.pcm)
            if all(len(c) >= frames for c in pcm.values()):
                return {p: b"".join(c) for p, c in pcm.items()}
    raise AssertionError("the bot's audio ended")


def page_hears_both(context: BrowserContext, url: str, others_done) -> dict:
    """Join from Chromium, record what the page plays, until WINDOW_S of both others' audio;
    stay in the call until ``others_done`` (an async function run in the Trio loop) returns."""
    page, errors = join_call(context, url)
    # The three negotiated tracks are playing, and sound comes.
    page.wait_for_function("() => botcall.remoteTracks === 3 && botcall.remoteLevel() > -50")
    start_recording(page)
    pieces: list[np.ndarray] = []
    # Poll the recorder until enough remote audio came (the browser's own pace).
    while sum(piece.size for piece in pieces) < RATE * (WINDOW_S + 1.0):
        page.wait_for_timeout(250)
        try:
            pieces.append(take_recording(page, RATE).remote)
        except AssertionError:
            continue  # nothing recorded yet
    trio.from_thread.run(others_done)
    return {
        "remote": np.concatenate(pieces),
        "tracks": page.evaluate("botcall.remoteTracks"),
        "participant": hooks(page)["participantId"],
        "errors": errors.unexpected(),
    }


async def test_two_humans_and_a_bot_each_hear_both_others_at_once(tmp_path):
    mic = tmp_path / "mic-330.wav"
    write_wav(mic, tone(CHROMIUM_HZ, 10.0, amplitude=0.4), sample_rate=RATE, channels=1)
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"), max_human_participants=2)).json()
        room_id = created["room_id"]
        invite = urlsplit(created["invite_url"])
        secret = created["invite_url"].split("#invite=")[1]
        ws_url = srv.url.replace("http://", "ws://") + f"/v1/signal/{room_id}"
        relay_addr = ("127.0.0.1", srv.state.media_port)
        certificate = DtlsCertificate.generate()
        async with connect(srv.url, room_id, srv.token(agent="orion#8f3a")) as bot, open_websocket_url(ws_url) as ws:
            with trio.fail_after(10):
                signaled = await signal_browser(ws, secret, browser_offer(certificate, 3), display_name="Sim")
            core = Browser(signaled.answer, certificate, relay_addr=relay_addr)
            assert len(core.out_ssrcs) == 3
            async with udp_browser(core) as simulated, trio.open_nursery() as nursery:
                await simulated.connect()

                async def bot_talks():
                    await keep_saying(bot, tone(BOT_HZ, 5.0))

                nursery.start_soon(bot_talks)
                nursery.start_soon(send_tone_forever, simulated, SIMULATED_HZ)
                url = f"{srv.url}{invite.path}#{invite.fragment}"
                results: dict = {}

                async def others_done():
                    # While the page is still in the call: the simulated browser's
                    # tracks and the bot's per-speaker streams.
                    human = next(s.participant_id for s in srv.state.registry.sessions_in_room(room_id) if s.kind == "human" and s.participant_id != signaled.participant_id)
                    with trio.fail_after(20):
                        results["tracks"] = await hear_tracks(simulated, 100)
                        results["bot"] = await bot_hears(bot, {human, signaled.participant_id}, 40)

                page = await in_browser(lambda context: page_hears_both(context, url, others_done), fake_mic_wav=str(mic))
                tracks, bot_heard = results["tracks"], results["bot"]
                nursery.cancel_scope.cancel()

    # Chromium: both others in the same window, each a clear peak of its own.
    assert page["tracks"] == 3  # one <audio> per negotiated track (the third, unused, is silent)
    window = page["remote"][-int(RATE * WINDOW_S) :]
    pcm = (np.clip(window, -1, 1) * 32767).astype("<i2").tobytes()
    for frequency in (BOT_HZ, SIMULATED_HZ):
        found, above = spectral_peak(pcm, RATE, frequency, tolerance=5.0)
        assert abs(found - frequency) <= 5 and above >= MIN_PEAK_DB, (frequency, found, above)
        assert energy_fraction(pcm, RATE, frequency) >= MIN_SHARE, frequency
    assert energy_fraction(pcm, RATE, CHROMIUM_HZ) < MAX_ABSENT_SHARE  # not its own voice
    assert page["errors"] == []
    # The simulated browser: the two others on two of its answer's tracks, one tone each.
    full = {ssrc: audio for ssrc, audio in tracks.items() if len(audio) >= 100 * 1920}
    assert set(full) <= set(core.out_ssrcs) and len(full) == 2
    heard = sorted(round(dominant_frequency(audio[len(audio) // 2 :], RATE)) for audio in full.values())
    assert abs(heard[0] - CHROMIUM_HZ) <= 5 and abs(heard[1] - BOT_HZ) <= 5, heard
    # The bot: each human as a stream of its own.
    assert abs(dominant_frequency(bot_heard[page["participant"]], RATE) - CHROMIUM_HZ) <= 5
    assert abs(dominant_frequency(bot_heard[signaled.participant_id], RATE) - SIMULATED_HZ) <= 5


HUMAN_HZ = (330, 550, 770)


def page_hears_all(context: BrowserContext, url: str, ready: threading.Barrier, done: threading.Barrier) -> dict:
    """One of several Chromium humans: join, wait for the others (``ready``), record
    until WINDOW_S of the call, stay until every page has recorded (``done``)."""
    page, errors = join_call(context, url)
    participant = hooks(page)["participantId"]
    ready.wait(timeout=BARRIER_S)
    page.wait_for_function("() => botcall.remoteTracks === 3 && botcall.remoteLevel() > -50")
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


BARRIER_S = 60.0


async def test_three_chromium_humans_and_a_bot_each_hear_all_three_others_at_once(tmp_path):
    """The issue's picture: 330, 550 and 770 Hz humans in Chromium and a 440 Hz bot."""
    mics = []
    for frequency in HUMAN_HZ:
        mic = tmp_path / f"mic-{frequency}.wav"
        write_wav(mic, tone(frequency, 10.0, amplitude=0.4), sample_rate=RATE, channels=1)
        mics.append(str(mic))
    ready, done = threading.Barrier(len(mics)), threading.Barrier(len(mics))
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"), max_human_participants=3)).json()
        room_id = created["room_id"]
        invite = urlsplit(created["invite_url"])
        url = f"{srv.url}{invite.path}#{invite.fragment}"
        pages: list[dict] = [{} for _ in mics]
        async with connect(srv.url, room_id, srv.token(agent="orion#8f3a")) as bot, trio.open_nursery() as nursery:

            async def bot_talks():
                await keep_saying(bot, tone(BOT_HZ, 5.0))

            async def human(index: int) -> None:
                pages[index] = await in_browser(lambda context: page_hears_all(context, url, ready, done), fake_mic_wav=mics[index])

            nursery.start_soon(bot_talks)
            async with trio.open_nursery() as humans:
                for index in range(len(mics)):
                    humans.start_soon(human, index)
                # While all three are in the call: the bot's per-speaker streams.
                with trio.fail_after(BARRIER_S):
                    while len([s for s in srv.state.registry.sessions_in_room(room_id) if s.kind == "human"]) < 3:
                        await trio.sleep(0.05)
                    ids = {s.participant_id: s for s in srv.state.registry.sessions_in_room(room_id) if s.kind == "human"}
                    bot_heard = await bot_hears(bot, set(ids), 40)
            nursery.cancel_scope.cancel()

    heard_by_bot = sorted(round(dominant_frequency(pcm, RATE)) for pcm in bot_heard.values())
    assert all(abs(h - f) <= 5 for h, f in zip(heard_by_bot, HUMAN_HZ)), heard_by_bot
    for own, page in zip(HUMAN_HZ, pages):
        window = page["remote"][-int(RATE * WINDOW_S) :]
        pcm = (np.clip(window, -1, 1) * 32767).astype("<i2").tobytes()
        for frequency in (BOT_HZ, *(f for f in HUMAN_HZ if f != own)):
            found, above = spectral_peak(pcm, RATE, frequency, tolerance=5.0)
            assert abs(found - frequency) <= 5 and above >= MIN_PEAK_DB, (own, frequency, found, above)
            assert energy_fraction(pcm, RATE, frequency) >= MIN_SHARE, (own, frequency)
        # A human does not hear itself: its own tone is absent.
        assert energy_fraction(pcm, RATE, own) < MAX_ABSENT_SHARE, own
        assert page["errors"] == []
