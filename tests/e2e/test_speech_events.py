"""Speech events of a real browser: a headless Chromium human speaks phrases with pauses.

The fake microphone plays an espeak-ng track (``speech_track``: a 2 s lead,
four phrases, pauses of 1.0-1.5 s). A bot in the room records the human's audio
as it receives it, with ``AudioFrame.stream_ms``, and every event.

Ground truth: the speech segments **in what the bot received**, found by
energy (20 ms frames above -45 dBFS, gaps under 400 ms bridged, as the
relay's hangover does). This rather than aligning with the WAV because the
received audio is on exactly the events' clock (the same RTP timestamps), and
Chromium's capture (its own start time, the looping file, echo cancellation,
noise suppression, AGC) changes what is sent in ways only the received audio
shows; the source is clean speech over digital silence, so energy is exact.

Asserted: one ``speech_started`` per segment, its ``stream_ms`` at most 250 ms
after the segment's start (and not before it by more than a frame), and it
reaches the bot at most 250 ms after the segment's first frame did; one
``speech_stopped`` per segment, near its end; no event inside a pause. The
page's own speaking light (``data-speaking`` of the human's own list item)
turned on as many times as the bot got ``speech_started``.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import numpy as np
import pytest
import trio
from playwright.sync_api import BrowserContext

from botcall.audio.wav import write_wav
from botcall_sdk import connect
from tests.kit.chromium import hooks, in_browser, join_call, wait_state
from tests.kit.server import running_server
from tests.kit.speech_corpus import speech_track

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

THRESHOLD_DBFS = -45.0
BRIDGE_MS = 400
PHRASES = 4


def segments(frames: list[tuple[int, float]]) -> list[tuple[int, int]]:
    """(start_ms, end_ms) of the loud runs of ``(stream_ms, dbfs)`` frames, gaps < BRIDGE_MS bridged."""
    runs: list[list[int]] = []
    for stream_ms, level in sorted(frames):
        if level <= THRESHOLD_DBFS:
            continue
        if runs and stream_ms - runs[-1][1] < BRIDGE_MS:
            runs[-1][1] = stream_ms + 20
        else:
            runs.append([stream_ms, stream_ms + 20])
    return [(start, end) for start, end in runs if end - start >= 60]


async def test_speech_events_follow_a_browser_humans_phrases(tmp_path):
    track = speech_track(seed=3, phrases=PHRASES, pause_s=(1.0, 1.5), lead_s=2.0, voices=("en-us", "en-gb-x-rp+m3"))
    mic = tmp_path / "phrases.wav"
    write_wav(mic, (np.clip(track.samples, -1, 1) * 32767).astype("<i2").tobytes(), sample_rate=48000, channels=1)
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        invite = urlsplit(created["invite_url"])
        async with connect(srv.url, created["room_id"], srv.token(agent="listener#1")) as bot:
            human_id: list[str] = []
            received: list[tuple[int, float, float]] = []  # stream_ms, dBFS, arrival
            events: list[tuple[float, dict]] = []
            heard_enough = trio.Event()

            async def listen() -> None:
                async for frame in bot.audio():
                    if human_id and frame.speaker == human_id[0] and not frame.concealed:
                        pcm = np.frombuffer(frame.pcm, "<i2").astype(np.float64) / 32768
                        level = 10 * np.log10(max(float(np.mean(pcm * pcm)), 1e-14))
                        received.append((frame.stream_ms, level, time.monotonic()))

            async def watch() -> None:
                async for typed in bot.events():
                    event = dict(typed.raw)
                    events.append((time.monotonic(), event))
                    if event["type"] == "participant_joined" and event["participant"]["kind"] == "human":
                        human_id.append(event["participant"]["participant_id"])
                    stops = [e for _, e in events if e["type"] == "speech_stopped" and human_id and e["participant_id"] == human_id[0]]
                    if len(stops) >= PHRASES:
                        heard_enough.set()

            def human(context: BrowserContext) -> dict:
                page, errors = join_call(context, f"{srv.url}{invite.path}#{invite.fragment}")
                me = hooks(page)["participantId"]
                # Count the page's own speaking light turning on (its list item's data-speaking).
                page.evaluate(
                    """(me) => {
                        window.lightOn = 0;
                        let last = 'false';
                        const look = () => {
                            const item = document.querySelector(`li[data-participant-id="${CSS.escape(me)}"]`);
                            const now = item ? item.dataset.speaking : 'false';
                            if (now === 'true' && last !== 'true') window.lightOn += 1;
                            last = now;
                        };
                        new MutationObserver(look).observe(document.body, { subtree: true, attributes: true, childList: true });
                    }""",
                    me,
                )
                trio.from_thread.run(heard_enough.wait)
                page.wait_for_function("() => !botcall.participants.some((p) => p.speaking)")
                light_on = page.evaluate("window.lightOn")
                page.get_by_role("button", name="Hang up").click()
                wait_state(page, "ended")
                return {"me": me, "light_on": light_on, "errors": errors.unexpected()}

            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                nursery.start_soon(watch)
                with trio.fail_after(60):
                    result = await in_browser(human, fake_mic_wav=str(mic))
                nursery.cancel_scope.cancel()

    me = result["me"]
    assert human_id == [me]
    mine = [(arrived, e) for arrived, e in events if e.get("participant_id") == me]
    started = [(arrived, e["stream_ms"]) for arrived, e in mine if e["type"] == "speech_started"]
    stopped = [e["stream_ms"] for _, e in mine if e["type"] == "speech_stopped"]
    last_stop = stopped[PHRASES - 1]
    truth = [s for s in segments([(ms, level) for ms, level, _ in received]) if s[0] < last_stop]
    print("truth", truth, "started", [ms for _, ms in started], "stopped", stopped)
    assert len(truth) == PHRASES
    started = started[:PHRASES]
    stopped = stopped[:PHRASES]
    assert len(started) == PHRASES
    for (begin, end), (arrived, onset_ms), stop_ms in zip(truth, started, stopped):
        assert -20 <= onset_ms - begin <= 250, (begin, onset_ms)
        first_frame_arrival = min(a for ms, _, a in received if ms >= begin)
        assert arrived - first_frame_arrival <= 0.250
        assert abs(stop_ms - end) <= 250, (end, stop_ms)
    # Nothing in the pauses: every event of the human lies at a segment's edge.
    for _, e in mine:
        if e["type"] in ("speech_started", "speech_stopped") and e["stream_ms"] < last_stop:
            assert any(begin - 20 <= e["stream_ms"] <= end + 250 for begin, end in truth), e
    all_started = [e for _, e in mine if e["type"] == "speech_started"]
    assert PHRASES <= result["light_on"] <= len(all_started)
    assert result["errors"] == []
