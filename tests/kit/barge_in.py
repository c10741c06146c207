"""A human barges in on a bot, in real headless Chromium: the scenario and its measures.

Shared by ``tests/e2e/test_barge_in.py`` (one barge-in, asserted) and
``bench/barge_in.py`` (many, printed).

The scenario:

* the human's fake microphone plays :func:`mic_track`: ``lead_s`` of silence,
  a spoken phrase, then silence (Chromium loops the file, so every loop is one
  more barge-in);
* the bot waits for the human's audio to flow (``stream_started``), for the
  page to record and for the human to finish a phrase (``speech_stopped``), then sends
  a 10 s reply (:func:`reply`) in a burst, with a mark every second; the relay
  plays it out;
* the human starts speaking; after ``min_speech_ms`` the relay clears the bot's
  queue and the bot gets ``interrupted``; once the human's ``speech_stopped``
  comes the bot sends the next reply, which the next loop of the microphone
  interrupts again;
* the page records its microphone and the remote audio on one clock
  (``tests.kit.page_audio``); after each interruption the test takes the piece
  recorded since the previous one.

The measures (:func:`measure`), per barge-in, all read off the page:

* **onset**: the first 10 ms block of the page's microphone above -45 dBFS after
  half a second of quiet. This is the mouth on the page's clock — the WAV
  schedule as the page hears it, so it includes nothing of the relay's
  detector; the microphone reaches the recorder ~13 ms after capture (FACTS.md).
* **bot's last sample at the ear**: where the remote audio stops matching the
  reply (``page_audio.follow``: the reply has a quiet chirp under the speech so
  every 20 ms of it can be found, and NetEq's time-stretching is followed).
  Both are on the AudioContext's clock; the output device adds the same
  latency to neither (the recorder sees the remote audio as it goes to the
  output), so ``latency = last bot sample - onset`` is what the human hears.
* **heard truth**: the position in the reply of that last sample (content, not
  time: time-stretching cannot fool it); ``heard_ms`` of the ``interrupted``
  event, made relative to the reply's start, is compared with it.
* **marks**: each mark event's arrival at the bot (Unix time) against the moment
  the marked position of the reply reached the page's output (the recorder's
  clock mapped with ``getOutputTimestamp`` and ``performance.timeOrigin``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import trio
from playwright.sync_api import BrowserContext

from botcall.audio.opus import OpusEncoder
from botcall.audio.wav import write_wav
from botcall_sdk import connect
from tests.kit.chromium import hooks, in_browser, join_call, wait_state
from tests.kit.page_audio import PageRecording, block_dbfs, follow, onsets, start_recording, take_recording
from tests.kit.server import LiveServer
from tests.kit.speech_corpus import RATE, espeak

FRAME = RATE // 50
REPLY_S = 10.0
MARK_EVERY_MS = 1000
# How far ahead of real time a streaming sender keeps: text-to-speech that
# streams at real time, a little ahead (the SDK's say sends what it gets, up to
# 5 s ahead).
STREAM_AHEAD = 0.5
REPLY_TEXT = (
    "Thank you for calling. I can certainly help you with your booking today. "
    "We have tables available at seven, at half past seven and at eight o'clock, "
    "and the terrace is open if the weather stays fine this evening. "
    "Would you like me to reserve one of those for you and your guests?"
)
HUMAN_TEXT = "Wait, stop please, I have a question about that"
# A safety net against a hung call, not a speed requirement.
STEP_TIMEOUT = 30.0
# The Firefox human's voice: the kit's test microphone (a tone, about -16 dBFS).
HUMAN_HZ = 700
HUMAN_AMPLITUDE = 0.2


def reply(seconds: float = REPLY_S) -> np.ndarray:
    """The bot's reply: espeak-ng speech over a quiet chirp (300 Hz to 3.3 kHz), float32 at 48 kHz.

    The chirp is never silent and never repeats, so any 20 ms of the reply can be
    found in what the page played, pauses between words included.
    """
    speech = espeak(REPLY_TEXT, "en-us", speed=160)
    count = int(seconds * RATE)
    while speech.size < count:
        speech = np.concatenate((speech, np.zeros(RATE // 5, np.float32), speech))
    speech = speech[:count]
    active = speech[np.abs(speech) > 1e-3]
    speech = speech * (10 ** (-22 / 20) / float(np.sqrt(np.mean(active * active))))
    t = np.arange(count) / RATE
    chirp = np.sin(2 * np.pi * (300 * t + 3000 / (2 * seconds) * t * t)) * 10 ** (-32 / 20) * np.sqrt(2)
    return np.clip(speech + chirp, -0.99, 0.99).astype(np.float32)


def mic_track(path: Path, *, lead_s: float = 4.0, tail_s: float = 4.5) -> float:
    """Write the human's microphone WAV: silence, a phrase, silence. Returns the phrase's start (s)."""
    speech = espeak(HUMAN_TEXT, "en-gb-x-rp+m3", speed=170)
    speech = speech * (10 ** (-24 / 20) / float(np.sqrt(np.mean(speech * speech))))
    lead = np.zeros(int(lead_s * RATE), np.float32)
    samples = np.concatenate((lead, speech, np.zeros(int(tail_s * RATE), np.float32)))
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    write_wav(path, pcm, sample_rate=RATE, channels=1)
    return lead_s


def opus_frames(samples: np.ndarray) -> list[bytes]:
    """The reply as 20 ms Opus frames (CELT at 64 kb/s: the page's audio keeps the waveform)."""
    encoder = OpusEncoder(bitrate=64000, application="audio", fec=False)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    return [encoder.encode(pcm[i : i + 2 * FRAME]) for i in range(0, len(pcm) - 2 * FRAME + 1, 2 * FRAME)]


class EventLog:
    """Every event a bot got, stamped with Unix time on arrival; waiters poll by condition."""

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._changed = trio.Event()

    async def collect(self, source: Any) -> None:
        async for event in source:  # the SDK's typed events, kept as the server's JSON
            self.events.append((time.time(), dict(event.raw)))
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], *, after: int = 0) -> tuple[int, float, dict[str, Any]]:
        """The first event from index ``after`` that ``predicate`` accepts: (index, arrival, event)."""
        with trio.fail_after(STEP_TIMEOUT):
            while True:
                for index in range(after, len(self.events)):
                    arrived, event = self.events[index]
                    if predicate(event):
                        return index, arrived, event
                await self._changed.wait()


@dataclass
class BargeIn:
    """One barge-in as measured (see the module docstring). Times in ms."""

    latency_ms: float
    heard_ms: int
    heard_truth_ms: float
    played_ms: int
    mark_errors_ms: list[float] = field(default_factory=list)
    interrupted: dict[str, Any] = field(default_factory=dict)

    @property
    def heard_error_ms(self) -> float:
        return self.heard_ms - self.heard_truth_ms


@dataclass
class Run:
    """What a run of barge-ins gives back."""

    human_id: str
    bot_id: str
    barge_ins: list[BargeIn]
    page_errors: list[str]
    relay_cpu_s: float | None = None
    cpu_window_s: float = 0.0


def measure(
    piece: PageRecording,
    reference: np.ndarray,
    interrupted: dict[str, Any],
    human_id: str,
    reply_start_ms: int,
    marks: list[tuple[float, dict[str, Any]]],
) -> BargeIn:
    """One barge-in's numbers from the page's recording and the bot's events."""
    assert piece.rate == RATE, f"the recording is at {piece.rate} Hz"
    dump = os.environ.get("BOTCALL_BARGE_IN_DUMP")
    if dump:
        np.savez(dump, local=piece.local, remote=piece.remote, reference=reference)
    followed = follow(piece.remote, reference, RATE)
    block = RATE * 10 // 1000
    starts = [index * block for index in onsets(block_dbfs(piece.local, RATE))]
    before = [index for index in starts if index < followed.end]
    assert before, "no speech onset on the page's microphone before the bot's voice ended"
    onset = before[-1]
    heard = {entry["participant_id"]: entry["heard_ms"] for entry in interrupted["heard"]}
    truth_ms = followed.end_position / (RATE / 1000)
    errors = []
    for arrived, event in marks:
        position = event["played_ms"] - reply_start_ms
        if 0 < position * 48 < followed.end_position:
            ear = piece.unix_time(followed.recording_index(position * 48))
            errors.append((arrived - ear) * 1000)
    return BargeIn(
        latency_ms=(followed.end - onset) / (RATE / 1000),
        heard_ms=heard[human_id] - reply_start_ms,
        heard_truth_ms=truth_ms,
        played_ms=interrupted["played_ms"] - reply_start_ms,
        mark_errors_ms=errors,
        interrupted=interrupted,
    )


async def run_barge_ins(
    srv: LiveServer,
    mic_wav: Path,
    *,
    repeats: int = 1,
    cpu_clock: Callable[[], float] | None = None,
    sender: str = "burst",
) -> Run:
    """The scenario of the module docstring, ``repeats`` times in one call.

    Args:
        srv: a running server (the room is created with the default interruption setting).
        mic_wav: the file of :func:`mic_track` (Chromium's fake microphone).
        repeats: barge-ins to measure.
        sender: how the bot sends each reply. ``"burst"``: all of it at once
            (nothing is in flight at the barge-in). ``"stream"``: as the SDK's
            ``say`` sends streamed text-to-speech, ``STREAM_AHEAD`` ahead of
            real time and then at real time, the first frame with the RTP marker bit, stopping when
            ``interrupted`` arrives (what it sent meanwhile is the tail the
            relay drops). ``"stream-unmarked"``: the same without the marker
            bit (the tail plays, as before the relay dropped it).
        cpu_clock: called (in the browser's worker thread) when the page is
            connected and when the last barge-in is recorded (the bench passes
            the relay thread's CPU clock); the difference is ``relay_cpu_s``.
    """
    samples = reply()
    frames = opus_frames(samples)
    reply_ms = len(frames) * 20
    created = (await srv.create_room(srv.token(agent="creator#1"))).json()
    invite = urlsplit(created["invite_url"])
    interrupted_at: list[tuple[int, dict[str, Any], int]] = []
    iteration_done = [trio.Event() for _ in range(repeats)]
    async with connect(srv.url, created["room_id"], srv.token(agent="talker#1")) as bot:
        log = EventLog()
        joined: dict[str, str] = {}

        async def speak() -> None:
            _, _, event = await log.wait_for(lambda e: e["type"] == "participant_joined" and e["participant"]["kind"] == "human")
            human = joined["human"] = event["participant"]["participant_id"]
            await log.wait_for(lambda e: e["type"] == "stream_started" and e["participant_id"] == human)
            # The first reply starts once the page records and the human has just
            # finished a phrase: the next onset then comes after the microphone's
            # tail and lead of silence, all of it on the recording. (Starting as
            # soon as audio flows lost the onset when a busy machine made the
            # page start recording late, mid-phrase.)
            await recording.wait()
            index, _, _ = await log.wait_for(
                lambda e: e["type"] == "speech_stopped" and e["participant_id"] == human, after=len(log.events)
            )
            for iteration in range(repeats):
                start = trio.current_time()
                first_ms = bot._frames_sent * 20  # the reply's start on the bot's stream clock
                for number, payload in enumerate(frames, start=1):
                    if sender != "burst":
                        if any(e["type"] == "interrupted" for _, e in log.events[index:]):
                            break  # a bot stops sending when it reads `interrupted`
                        await trio.sleep_until(start + (number - 1) * 0.02 - STREAM_AHEAD)
                    await bot.send_opus(payload, marker=sender == "stream" and number == 1)
                    if number % (MARK_EVERY_MS // 20) == 0:
                        await bot.mark(f"r{iteration}-{number * 20}")
                index, _, event = await log.wait_for(lambda e: e["type"] == "interrupted", after=index)
                # A burst queued the whole reply; a stream only what it sent.
                start_ms = event["played_ms"] + event["dropped_ms"] - reply_ms if sender == "burst" else first_ms
                interrupted_at.append((index, event, start_ms))
                iteration_done[iteration].set()
                index, _, _ = await log.wait_for(
                    lambda e: e["type"] == "speech_stopped" and e["participant_id"] == human, after=index
                )

        window = [0.0]
        recording = trio.Event()

        def human(context: BrowserContext) -> tuple[list[PageRecording], list[str], float | None]:
            page, errors = join_call(context, f"{srv.url}{invite.path}#{invite.fragment}")
            start_recording(page)
            trio.from_thread.run_sync(recording.set)
            cpu_start = cpu_clock() if cpu_clock is not None else None
            window_start = time.monotonic()
            pieces = []
            for done in iteration_done:
                trio.from_thread.run(done.wait)
                # The tail already sent plays out, then NetEq conceals and goes quiet.
                page.wait_for_function("() => botcall.remoteLevel() < -60")
                pieces.append(take_recording(page))
            cpu = cpu_clock() - cpu_start if cpu_clock is not None and cpu_start is not None else None
            window[0] = time.monotonic() - window_start
            joined["page_human"] = hooks(page)["participantId"]
            page.get_by_role("button", name="Hang up").click()
            wait_state(page, "ended")
            return pieces, errors.unexpected(), cpu

        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.collect, bot.events())
            nursery.start_soon(speak)
            pieces, page_errors, cpu = await in_browser(human, fake_mic_wav=str(mic_wav))
            nursery.cancel_scope.cancel()
    human_id = joined["human"]
    assert joined["page_human"] == human_id
    barge_ins = []
    for iteration, (piece, (index, event, start_ms)) in enumerate(zip(pieces, interrupted_at)):
        marks = [
            (arrived, e)
            for arrived, e in log.events
            if e["type"] == "mark" and e["name"].startswith(f"r{iteration}-")
        ]
        barge_ins.append(measure(piece, samples, event, human_id, start_ms, marks))
    return Run(human_id, bot.participant_id or "", barge_ins, page_errors, cpu, window[0])


async def run_firefox_barge_in(srv: LiveServer) -> Run:
    """One barge-in by a human in headless Firefox (``tests.kit.firefox``).

    Firefox's fake microphone is a steady sine from the first packet, which a
    speech detector takes for the noise floor; so the page gets the kit's test
    microphone (``firefox.install_test_microphone``): silent from Join, like
    the silence that leads Chromium's WAV. The bot sends its reply (a burst,
    marks every second); once the relay has played a second of it (the first
    mark) and it sounds at the page, the human starts talking (the test
    microphone's tone, ``HUMAN_HZ``). Everything else (the reply, the
    measures) is as in :func:`run_barge_ins`; the page's recorder gives the
    onset (the first loud block of its microphone) and where the reply stops
    at its ear.
    """
    from tests.kit import firefox

    samples = reply()
    frames = opus_frames(samples)
    reply_ms = len(frames) * 20
    created = (await srv.create_room(srv.token(agent="creator#1"))).json()
    invite = urlsplit(created["invite_url"])
    url = f"{srv.url}{invite.path}#{invite.fragment}"
    async with connect(srv.url, created["room_id"], srv.token(agent="talker#1")) as bot:
        log = EventLog()
        ready = trio.Event()  # the page records, muted
        interrupted = trio.Event()
        found: dict[str, Any] = {}

        async def speak() -> None:
            await ready.wait()
            index = len(log.events)
            for number, payload in enumerate(frames, start=1):
                await bot.send_opus(payload)
                if number % (MARK_EVERY_MS // 20) == 0:
                    await bot.mark(f"r0-{number * 20}")
            _, _, event = await log.wait_for(lambda e: e["type"] == "interrupted", after=index)
            found["interrupted"] = event
            found["start_ms"] = event["played_ms"] + event["dropped_ms"] - reply_ms
            interrupted.set()

        def human(client: Any) -> tuple[PageRecording, str]:
            client.navigate(url)
            firefox.wait_state(client, "lobby")
            firefox.install_test_microphone(client, HUMAN_HZ)
            firefox.click(client, "#join")
            firefox.wait_state(client, "connected")
            participant = str(firefox.page(client, "return botcall.participantId"))
            firefox.start_recording(client)
            trio.from_thread.run_sync(ready.set)
            # A second of the reply has played (the relay released its first mark).
            trio.from_thread.run(log.wait_for, lambda e: e["type"] == "mark" and e["name"] == f"r0-{MARK_EVERY_MS}")
            firefox.wait_for(client, "botcall.remoteLevel() > -50")
            firefox.speak(client, HUMAN_AMPLITUDE)  # the human talks over the bot
            trio.from_thread.run(interrupted.wait)
            # The tail already sent plays out, then the jitter buffer conceals and goes quiet.
            firefox.wait_for(client, "botcall.remoteLevel() < -60")
            piece = firefox.take_recording(client)
            firefox.click(client, "#hangup")
            firefox.wait_state(client, "ended")
            return piece, participant

        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.collect, bot.events())
            nursery.start_soon(speak)
            piece, human_id = await firefox.in_firefox(human)
            nursery.cancel_scope.cancel()
    marks = [(arrived, e) for arrived, e in log.events if e["type"] == "mark" and e["name"].startswith("r0-")]
    barge_in = measure(piece, samples, found["interrupted"], human_id, found["start_ms"], marks)
    return Run(human_id, bot.participant_id or "", [barge_in], [])
