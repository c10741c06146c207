"""Mouth-to-ear latency between bots and a human in a headless browser, both ways.

    python -m bench.mouth_to_ear [--events 45] [--period 0.5] [--browsers chromium,firefox]
                                 [--paths udp,ws-opus,ws-pcm16,ws-pcm16-paced]
                                 [--legs loopback,impaired] [--receiver default,target0,hint0]
                                 [--playout new,old] [--bot-stall 0.3] [--firefox-audio mock,pulse]
                                 [--ptime 20,10] [--audio-device page,pulse,pulse-graph] [--mic dsp,raw,ec,lobby,prompt] [--trace] [--timeline]
                                 [--settle 0] [--repeats 1] [--json out.json] [--dump DIR] [--plot docs/bench-mouth-to-ear.png]

Starts the real server in-process (``tests.kit.server``), and for each browser,
leg and path (a bot of one transport) one call: a fresh room with barge-in
off (both directions run at once), the bot (raw protocol code below, not the
SDK), and the PWA in headless Chromium (``tests.kit.chromium``) or Firefox ESR
(``tests.kit.firefox``, over Marionette; the server then announces media on
the machine's own address, the only one Firefox's ICE pairs with). A burst
latency must stay under ``--period`` to be matched to its own burst: raise it
on a slow machine (``docs/bench-results.md`` §14 used 1.2 s).

**Method.** Burst trains both ways, one clock on one machine:

* *mouth → bot*: the page replaces its microphone with a WebAudio graph
  (oscillator → gain → ``MediaStreamDestination``, sent with
  ``RTCRtpSender.replaceTrack``) and schedules a 100 ms 1 kHz burst every
  ``--period`` seconds at known AudioContext times, each shifted by 0, 2, …
  18 ms in turn so the bursts of one call fall at every phase of the browser's
  20 ms packets (the packetization wait, 0-20 ms, is then in every call's
  distribution, not a constant that differs from call to call). The bot
  decodes what it receives and stamps, with ``time.time()``, the arrival of
  the packet in which each burst's onset appears.
* *bot → ear*: the bot sends a 100 ms 440 Hz burst every period (half a
  period out of phase with the page's) inside a continuous 20 ms stream of
  silence, stamping the send of each burst's first frame. The page records the
  remote audio in an AudioWorklet (``pwa/recorder-worklet.js``) in the same
  AudioContext; an onset there is the ear, plus the context's reported
  ``baseLatency + outputLatency`` to the speaker.
* The AudioContext's clock is mapped to ``performance.now()`` by the
  recorder's chunks (the smallest offset of a chunk's arrival over its
  context time: a busy main thread only adds), then to Unix time with
  ``performance.timeOrigin`` — the bots' clock.

**The split** printed per path: what the relay's playout of the bot held
(``hold``, sampled every 100 ms: our buffer on the bot -> ear path), the
browser's jitter buffer (``getStats``:
the change of ``jitterBufferDelay`` over ``jitterBufferEmittedCount`` during
the run), the reported output latency, and what is left (the relay, our
buffers, encode/decode and the network). The relay's own forwarding time is
``bench/relay_latency.py``'s subject; here our buffers show up as the
difference between the paths, measured in the same run.

**Legs.** ``loopback``: straight to the relay. ``impaired``: the server
advertises 127.0.0.2 to browsers while the relay listens on 127.0.0.1, and
``bench/impaired_link.py`` on 127.0.0.2 forwards with 20 ± 5 ms one-way delay
and 1 % loss each way (bots keep talking to 127.0.0.1 directly).

**Receiver settings** (``--receiver``): ``default``; ``target0``: Chromium's
``RTCRtpReceiver.jitterBufferTarget = 0``; ``hint0``: the older
``playoutDelayHint = 0``. Applied to the page's audio receiver after connect.

**The relay's bot playout** (``--playout``): ``new`` is ``bot_playout.py`` as it
is; ``old`` sets ``bot_playout.STALL_LIMIT = 0``, which turns off the stall
recovery and gives back its behaviour before it (a real-time bot stalled by
more than 250 ms stayed that late for the rest of the call). With both, every
path is measured with each in turn, one call after the other.
``--bot-stall S``: the bot holds its frames for S seconds once, ``STALL_AFTER_S``
into its bursts, then sends them at once and carries on at real time (a
descheduled sender, or a stuck path), so both playouts meet the same stall.

**Firefox's audio clock** (``--firefox-audio``): ``mock`` is the mock audio
back-end that headless Firefox needs on a machine without a sound device
(``media.cubeb.force_mock_context``); its fake audio thread sleeps 10 ms after
each 10 ms it renders, so it plays slower than real time (0.90-0.96 on a busy
machine) and the surplus piles up in Firefox's jitter buffer. ``pulse`` plays
through a private PulseAudio null sink (``tests.kit.firefox.pulse_null_sink``),
a real-time clock. With both, every Firefox path is measured with each in turn.
``rate`` in the output is the page's playback rate against the wall clock
(``getStats`` ``totalSamplesReceived`` over the call, 1.00 = real time).

**The browser's packets** (``--ptime``): the packet duration the server's
answer asks the browser for (``MediaService.ptime_ms``, ``Config.browser_ptime_ms``):
``20`` (no ``a=ptime``, what browsers send unasked) or ``10`` (``a=ptime:10``).
With both, every path is measured with each in turn, one call after the
other. ``pkt/s`` in the output is the page's ``outbound-rtp`` packets a second.

**At the sound device** (``--audio-device``, Chromium): ``page`` is the method
above (the page's WebAudio graph is the mouth and the ear). ``pulse`` runs
Chromium on a private PulseAudio daemon (``tests.kit.pulse``), no fake
microphone, Playwright's ``--mute-audio`` dropped, and measures where a
person's ear and mouth are:

* *ear at the sink*: the PWA plays the bot through its ``<audio>`` element
  into the default sink, a null sink; ``parec`` reads its monitor (20 ms
  latency asked), each read stamped with ``time.time()``, and the device's
  clock is tied to ours by the most prompt reads (``tests.kit.pulse.device_times``).
  The null sink renders in blocks ahead of its clock and its monitor gets a
  block at once: what the daemon reports as the sink's latency is printed
  (``the sink rendered ahead``), not added — a real device plays that much later.
* *mouth at the source*: the PWA's own ``getUserMedia`` track (its
  constraints, Chromium's audio processing) records the default source, a
  remap of a second null sink's monitor; ``pacat`` plays the 1 kHz bursts
  into that sink, and a second ``parec`` on the same source finds the onsets
  when the microphone had them.
* the rig's streams (both ``parec`` and ``pacat``, silent until the bursts)
  connect to the daemon before the browser starts, so no stream of the
  rig starts inside the measured call (a stream connecting to a Pulse daemon
  can stall the others; §16h of docs/bench-results.md). When the Join click
  comes before the lobby's microphone is open, Chromium's output starts
  0-300 ms after the first packets and NetEq keeps that backlog for seconds
  (§16i, ``--mic lobby``, ``--timeline``).
* the sink's bot → ear is split into the relay's hold, NetEq (``getStats``)
  and the rest. ``pulse-graph`` also runs the page graph in the same call
  (its bot → ear, graph + reported output latency, printed beside the
  sink's); ``pulse`` runs without it, as a person's page has only the
  PWA's own meters. The page graph's own mouth is not sent at the
  device (the microphone is): its mouth → bot is in the ``page`` rows.

``--settle S`` (Chromium) starts the bursts S seconds after the call connected
instead of at once: Chromium's Pulse streams lose ~0.5-1 s in the call's first
seconds (§16h), so ``0`` measures from the first second (issue 18's goal) and
``3`` past the start.

``--mic raw`` (an experiment) makes the PWA's ``getUserMedia`` ask for no echo
cancellation, noise suppression or gain control (an init script); ``dsp`` is the PWA as it is.
``ec`` asks for echo cancellation only. The test browser reports the
microphone allowed, so the PWA's lobby opens it (``pwa/app.js``, a returning
person); ``dsp``, ``raw`` and ``ec`` click Join the instant the lobby shows,
before that stream is ready, and ``--mic lobby`` half a second after it is (a
person reading the lobby, §16i). ``--mic prompt`` is a first visit:
the permission reads ``prompt`` (so the PWA joins once the microphone is
open) and every ``getUserMedia`` takes 1.5 s, as a person answering the
browser's prompt would (headless Chromium shows none).

``--timeline`` (Chromium) prints, for the call's first 12 s from the Join
click, every 100 ms: the page's playout rate (``totalSamplesReceived``),
packets sent and received per second, NetEq's mean hold in the interval and
the samples it concealed — where a start-of-call backlog forms (§16i).

**Where the human's packets spend their time** (``--trace``): the server runs
in this process on the bots' clock, so ``Trace`` wraps its methods and stamps
every packet of the human's stream at the relay, the bot's WebSocket audio
task, the decode, the JSON send and the bot's read, and each burst's onset
when the relay had it (``mouth->relay``: the browser's share). Printed under
each row as medians.

Prints; never asserts. The analysis functions are tested on synthetic audio
in ``bench/tests/test_mouth_to_ear.py``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import math
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import trio
import trio_websocket

from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall.wire.rtp import RtpPacket, parse_rtp_untrusted
from botcall.wire.stun import answer_check_untrusted, binding_request
from botcall.relay import bot_playout
from botcall.webrtc.sdp import PTIMES_MS
from botcall.relay.addresses import local_addresses
from tests.kit import firefox as kit
from tests.kit import pulse as devices_kit
from tests.kit.chromium import in_browser, join_call
from tests.kit.server import LiveServer, running_server

RATE = 48000
FRAME = RATE // 50
BURST_S = 0.1
MOUTH_HZ = 1000.0
BOT_HZ = 440.0
AMPLITUDE = 0.4
# An onset: the first sample above this after at least MIN_QUIET_S below it.
ONSET_THRESHOLD = 0.05
MIN_QUIET_S = 0.15
IMPAIRED_HOST = "127.0.0.2"
# Set by --dump: every call's raw data is written there (for checking the analysis).
DUMP: Path | None = None
# --timeline: print the page's playout and capture every 100 ms of the call's first seconds.
TIMELINE = False

TIMELINE_SCRIPT = """(() => {
    // From the Join click: every 100 ms, what the page played (totalSamplesReceived),
    // sent (packetsSent), held (jitterBufferDelay / emitted) and concealed.
    window.__timeline = [];
    window.__marks = {};
    document.addEventListener('click', (event) => {
        if (!event.target.closest || !event.target.closest('#join') || window.__marks.join) return;
        window.__marks.join = performance.now();
        const tick = async () => {
            const pc = window.botcall && window.botcall.pc;
            if (pc) {
                if (!window.__marks.pc) window.__marks.pc = performance.now();
                const row = {t: performance.now(), played: 0, sent: 0, delay: 0, emitted: 0, concealed: 0, received: 0, ice: pc.iceConnectionState};
                (await pc.getStats()).forEach((s) => {
                    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
                        row.played += s.totalSamplesReceived || 0; row.delay += s.jitterBufferDelay || 0;
                        row.emitted += s.jitterBufferEmittedCount || 0; row.concealed += s.concealedSamples || 0;
                        row.received += s.packetsReceived || 0;
                    }
                    if (s.type === 'outbound-rtp' && s.kind === 'audio') row.sent += s.packetsSent || 0;
                });
                window.__timeline.push(row);
            }
            if (window.__timeline.length < 120) setTimeout(tick, 100);
        };
        tick();
    }, true);
})();"""
# Safety nets against a hung call, not speed requirements.
STEP_TIMEOUT = 30.0

PATHS: dict[str, dict[str, Any]] = {
    "udp": {"transport": "udp"},
    "ws-opus": {"transport": "websocket", "encoding": "opus"},
    "ws-pcm16": {"transport": "websocket", "encoding": "pcm16", "sample_rate": 48000, "delivery": "arrival"},
    "ws-pcm16-paced": {"transport": "websocket", "encoding": "pcm16", "sample_rate": 48000, "delivery": "paced"},
}
RECEIVER_SETTINGS = ("default", "target0", "hint0")
PLAYOUTS = {"new": bot_playout.STALL_LIMIT, "old": 0.0}  # bot_playout.STALL_LIMIT for each
STALL_AFTER_S = 3.0
FIREFOX_AUDIO = ("mock", "pulse")
AUDIO_DEVICES = ("page", "pulse", "pulse-graph")
# At the device, the page's own WebAudio graph (an AudioContext tapping the remote stream)
# slows Chromium's WebRTC playout through Pulse to 0.96-0.98 of real time (§16h): it runs
# only with "pulse-graph", for comparison.
DEVICE_AUDIO = ("pulse", "pulse-graph")
MICS = ("dsp", "raw", "ec", "lobby", "prompt")
# --mic raw: the PWA's getUserMedia without Chromium's audio processing (an experiment;
# the PWA asks for echoCancellation, noiseSuppression and autoGainControl).
RAW_MIC_SCRIPT = """(() => {
    const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    navigator.mediaDevices.getUserMedia = (constraints) => original(
        {...constraints, audio: {echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
})();"""


EC_MIC_SCRIPT = RAW_MIC_SCRIPT.replace("echoCancellation: false", "echoCancellation: true")

# --mic prompt: a first visit. The permission reads "prompt" and the microphone comes
# 1.5 s after it is asked for, as when a person answers the browser's prompt
# (headless Chromium shows none).
PROMPT_MIC_SCRIPT = """(() => {
    const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    navigator.mediaDevices.getUserMedia = (constraints) =>
        new Promise((resolve) => setTimeout(resolve, 1500)).then(() => original(constraints));
    const query = navigator.permissions.query.bind(navigator.permissions);
    navigator.permissions.query = (descriptor) => descriptor && descriptor.name === 'microphone'
        ? Promise.resolve({state: 'prompt', name: 'microphone'}) : query(descriptor);
})();"""

# The --mic variants that change the page's getUserMedia (init scripts).
MIC_SCRIPTS = {"raw": RAW_MIC_SCRIPT, "ec": EC_MIC_SCRIPT, "prompt": PROMPT_MIC_SCRIPT}


def device_mouth_signal(events: int, period: float, lead_s: float = 1.0) -> np.ndarray:
    """What the writer plays into the microphone's sink (--audio-device pulse): silence,
    then ``events`` 1 kHz bursts every ``period``, shifted by 0, 2, … 18 ms in turn
    as the page's (every phase of the browser's packets), and a period of silence."""
    signal = np.zeros(int((lead_s + (events + 1) * period) * RATE), np.float32)
    burst = tone_burst(MOUTH_HZ)
    for k in range(events):
        start = int((lead_s + k * period + (k % 10) * 0.002) * RATE)
        signal[start : start + burst.size] = burst
    return signal


# --- analysis (pure: tested on synthetic audio) -------------------------------------------


def find_onsets(samples: np.ndarray, rate: int, *, threshold: float = ONSET_THRESHOLD, min_quiet_s: float = MIN_QUIET_S) -> list[int]:
    """Indexes of the samples where a burst starts: the first sample whose magnitude
    exceeds ``threshold`` after at least ``min_quiet_s`` of samples below it.

    The very start of ``samples`` counts as quiet only if ``min_quiet_s`` of it is.
    """
    loud = np.flatnonzero(np.abs(samples) > threshold)
    quiet = int(min_quiet_s * rate)
    onsets = []
    previous = -quiet - 1
    for index in loud.tolist():
        if index - previous > quiet and index >= quiet:
            onsets.append(index)
        previous = index
    return onsets


def match_latencies(causes: Sequence[float], effects: Sequence[float], period: float) -> list[float]:
    """For each effect, its delay after the latest cause before it (seconds).

    An effect with no cause within ``period`` before it is left out, and each
    cause is matched at most once (its first effect).
    """
    ordered = sorted(causes)
    used: set[int] = set()
    delays = []
    for effect in sorted(effects):
        index = int(np.searchsorted(ordered, effect, side="right")) - 1
        if index < 0 or index in used or effect - ordered[index] >= period:
            continue
        used.add(index)
        delays.append(effect - ordered[index])
    return delays


def context_to_unix(arrivals: np.ndarray, time_origin_ms: float, context_s: float) -> float:
    """Unix time (s) at which the AudioContext processed context time ``context_s``.

    ``arrivals`` rows are ``(context ms at a recorder chunk's end, performance.now()
    at its arrival)``. The two clocks drift apart in headless browsers (a fake
    output renders in bursts), so they are related locally, over the chunks
    within a second, by the smallest offset (a busy main thread only adds delay).
    """
    context_ms = context_s * 1000
    near = np.abs(arrivals[:, 0] - context_ms) <= 1000
    chunks = arrivals[near] if near.any() else arrivals
    offset_ms = float(np.min(chunks[:, 1] - chunks[:, 0]))
    return (time_origin_ms + offset_ms + context_ms) / 1000


def sample_times(chunks: Sequence[Sequence[int]], rate: int) -> np.ndarray:
    """The context time (s) of every recorded sample, from the recorder's chunks
    ``(first context frame, length)``: the chunks' samples are concatenated, but
    the context may have skipped frames between two chunks."""
    if not chunks:
        return np.zeros(0)
    return np.concatenate([np.arange(frame, frame + length) for frame, length in chunks]) / rate


def frame_onset_indexes(frames: Sequence[tuple[float, np.ndarray]], rate: int) -> list[int]:
    """The index of each frame in which an onset appears (frames in arrival order)."""
    if not frames:
        return []
    samples = np.concatenate([pcm for _, pcm in frames])
    ends = np.cumsum([pcm.size for _, pcm in frames])
    return [int(np.searchsorted(ends, onset, side="right")) for onset in find_onsets(samples, rate)]


def frame_onset_arrivals(frames: Sequence[tuple[float, np.ndarray]], rate: int) -> list[float]:
    """The arrival time of each frame in which an onset appears (frames in arrival order)."""
    return [frames[index][0] for index in frame_onset_indexes(frames, rate)]


def jitter_buffer_ms(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Mean time a sample spent in the browser's jitter buffer between two getStats
    snapshots: Δ jitterBufferDelay / Δ jitterBufferEmittedCount, in ms."""
    emitted = after.get("emitted", 0.0) - before.get("emitted", 0.0)
    if emitted <= 0:
        return None
    return (after["delay"] - before["delay"]) / emitted * 1000


@dataclass(frozen=True)
class Summary:
    count: int
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values_s: Sequence[float]) -> Summary:
        """Summary in ms (NaN when empty); percentiles by nearest rank."""
        if not values_s:
            return cls(0, math.nan, math.nan, math.nan)
        ordered = sorted(v * 1000 for v in values_s)

        def rank(fraction: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]

        return cls(len(ordered), rank(0.5), rank(0.95), ordered[-1])


def tone_burst(frequency: float, seconds: float = BURST_S, rate: int = RATE, amplitude: float = AMPLITUDE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def from_pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


# --- the split of mouth -> bot on the server (--trace) --------------------------------------

TRACE_STAGES = ("relay", "picked", "decoded", "ws_send", "ws_sent", "bot")


class Trace:
    """Where the human's packets spend their time between the relay and the bot (``--trace``).

    The server runs in this process, on the bots' clock (``time.time()``), so
    its methods are wrapped to stamp each packet of the human's stream, keyed
    by its position in the stream (ms since its first packet):

    * ``relay``: ``MediaRelay.forward`` got it (decrypted, before any sink);
    * ``picked``: the bot's WebSocket audio task took it from its queue
      (``WsAudio.pcm_arrived`` / ``WsAudio.opus_out`` entered);
    * ``decoded``: that returned (pcm16: the Opus decoded; Opus: the header parsed);
    * ``ws_send``: the JSON event is built, ``Channel.send`` entered;
    * ``ws_sent``: ``Channel.send`` returned (the frame is with Hypercorn's stream);
    * ``bot``: the bot read the message (WebSocket) or the datagram (UDP).
    """

    def __init__(self) -> None:
        self.stamps: dict[str, dict[int, float]] = {stage: {} for stage in TRACE_STAGES}
        self.by_timestamp: dict[int, int] = {}  # RTP timestamp -> stream ms (UDP bots see only the former)
        self.mouth_to_relay: list[float] = []  # each burst: the page's mouth -> the relay has its onset packet
        self._current: int | None = None

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def stamp(self, stage: str, key: int, when: float | None = None) -> None:
        self.stamps[stage].setdefault(key, time.time() if when is None else when)

    def bot_udp(self, timestamp: int, when: float) -> None:
        key = self.by_timestamp.get(timestamp)
        if key is not None:
            self.stamp("bot", key, when)

    def split(self) -> dict[str, float]:
        """Median ms between consecutive stages present for the same packets, and in all."""
        out: dict[str, float] = {}
        if self.mouth_to_relay:
            mouth = Summary.of(self.mouth_to_relay)
            out["mouth->relay"], out["mouth->relay_p95"] = mouth.p50, mouth.p95
        present = [stage for stage in TRACE_STAGES if self.stamps[stage]]
        for first, second in zip(present, present[1:]):
            keys = self.stamps[first].keys() & self.stamps[second].keys()
            if keys:
                out[f"{first}->{second}"] = float(np.median([self.stamps[second][k] - self.stamps[first][k] for k in keys])) * 1000
        if len(present) >= 2:
            keys = self.stamps[present[0]].keys() & self.stamps[present[-1]].keys()
            if keys:
                delays = sorted(self.stamps[present[-1]][k] - self.stamps[present[0]][k] for k in keys)
                out["total"] = float(np.median(delays)) * 1000
                out["total_p95"] = delays[min(len(delays) - 1, math.ceil(0.95 * len(delays)) - 1)] * 1000
        return out

    def install(self) -> None:
        """Wrap the server's methods (once per process)."""
        from botcall.audio.opus import stream_ms
        from botcall.relay.core import MediaRelay
        from botcall.relay.ws_audio import WsAudio
        from botcall.signaling.ws import BotChannel, Channel

        trace = self
        forward = MediaRelay.forward

        def traced_forward(relay: MediaRelay, peer: Any, data: bytes, now: float) -> None:
            if peer.human and len(data) >= 12:
                timestamp = int.from_bytes(data[4:8], "big")
                key = stream_ms(peer.stream_origin, timestamp)
                trace.by_timestamp[timestamp] = key
                trace.stamp("relay", key)
            forward(relay, peer, data, now)

        pcm_arrived, opus_out = WsAudio.pcm_arrived, WsAudio.opus_out

        def traced_pcm_arrived(audio: WsAudio, speaker: Any, data: bytes, now: float) -> Any:
            picked = time.time()
            frames = pcm_arrived(audio, speaker, data, now)
            for frame in frames:
                trace.stamp("picked", frame.stream_ms, picked)
                trace.stamp("decoded", frame.stream_ms)
            return frames

        def traced_opus_out(audio: WsAudio, speaker: Any, data: bytes) -> Any:
            picked = time.time()
            frame = opus_out(audio, speaker, data)
            if frame is not None:
                trace.stamp("picked", frame.stream_ms, picked)
                trace.stamp("decoded", frame.stream_ms)
            return frame

        send_audio, send = BotChannel._send_audio, Channel.send

        async def traced_send_audio(channel: BotChannel, frame: Any) -> None:
            trace._current = frame.stream_ms
            try:
                await send_audio(channel, frame)
            finally:
                trace._current = None

        async def traced_send(channel: Channel, data: str | bytes) -> None:
            key = trace._current
            if key is not None:
                trace.stamp("ws_send", key)
            await send(channel, data)
            if key is not None:
                trace.stamp("ws_sent", key)

        MediaRelay.forward = traced_forward  # type: ignore[method-assign]
        WsAudio.pcm_arrived = traced_pcm_arrived  # type: ignore[method-assign]
        WsAudio.opus_out = traced_opus_out  # type: ignore[method-assign]
        BotChannel._send_audio = traced_send_audio  # type: ignore[method-assign]
        Channel.send = traced_send  # type: ignore[method-assign]


# Set by --trace.
TRACE: Trace | None = None


# --- the page --------------------------------------------------------------------------------

START_PAGE = """async ([period, burst, count, lead, frequency, amplitude, receiverSetting, device, graph]) => {
    if (device && !graph) {
        // At the device without the page graph: the PWA as a person has it, plus the receiver setting.
        const transceiver = botcall.pc.getTransceivers().find((t) => t.receiver.track && t.receiver.track.kind === 'audio');
        const receiver = transceiver.receiver;
        if (receiverSetting === 'target0') receiver.jitterBufferTarget = 0;
        if (receiverSetting === 'hint0') receiver.playoutDelayHint = 0;
        return {onsets: [], sampleRate: null, receiver: {
            jitterBufferTarget: receiver.jitterBufferTarget === undefined ? null : receiver.jitterBufferTarget,
            playoutDelayHint: receiver.playoutDelayHint === undefined ? null : receiver.playoutDelayHint,
        }};
    }
    const ctx = new AudioContext({latencyHint: 'interactive'});
    await ctx.resume();
    await ctx.audioWorklet.addModule('/pwa/recorder-worklet.js');
    const node = new AudioWorkletNode(ctx, 'botcall-recorder', {numberOfInputs: 2, numberOfOutputs: 1});
    const oscillator = ctx.createOscillator();
    oscillator.frequency.value = frequency;
    const gain = ctx.createGain();
    gain.gain.value = 0;
    oscillator.connect(gain);
    const mouth = ctx.createMediaStreamDestination();
    gain.connect(mouth);
    gain.connect(node, 0, 0);
    ctx.createMediaStreamSource(botcall.remoteStream).connect(node, 0, 1);
    node.connect(ctx.destination);
    // The call's audio transceiver (its sender's track may be null for a moment).
    const transceiver = botcall.pc.getTransceivers().find((t) => t.receiver.track && t.receiver.track.kind === 'audio');
    // At the device (--audio-device pulse) the PWA's own microphone track is sent.
    if (!device) await transceiver.sender.replaceTrack(mouth.stream.getAudioTracks()[0]);
    const receiver = transceiver.receiver;
    if (receiverSetting === 'target0') receiver.jitterBufferTarget = 0;
    if (receiverSetting === 'hint0') receiver.playoutDelayHint = 0;
    const rec = {firstFrame: null, local: [], remote: [], arrivals: [], chunks: []};
    node.port.onmessage = (event) => {
        const end = ((event.data.frame + event.data.remote.length) / ctx.sampleRate) * 1000;
        rec.arrivals.push([end, performance.now()]);
        if (rec.firstFrame === null) rec.firstFrame = event.data.frame;
        rec.chunks.push([event.data.frame, event.data.remote.length]);
        rec.local.push(event.data.local);
        rec.remote.push(event.data.remote);
    };
    oscillator.start();
    const first = ctx.currentTime + lead;
    const onsets = [];
    for (let k = 0; k < count; k++) {
        // Spread over one 20 ms packet (0, 2, ... 18 ms): a period that is a
        // whole number of packets would give every burst of a call the same
        // packetization wait (0-20 ms, fixed per call), and calls would differ by it.
        const t = first + k * period + (k % 10) * 0.002;
        gain.gain.setValueAtTime(amplitude, t);
        gain.gain.setValueAtTime(0, t + burst);
        onsets.push(t);
    }
    (window.wrappedJSObject || window).__m2e = {ctx, rec, receiver};
    return {onsets, sampleRate: ctx.sampleRate, receiver: {
        jitterBufferTarget: receiver.jitterBufferTarget === undefined ? null : receiver.jitterBufferTarget,
        playoutDelayHint: receiver.playoutDelayHint === undefined ? null : receiver.playoutDelayHint,
    }};
}"""

TAKE_PAGE = """() => {
    const m2e = (window.wrappedJSObject || window).__m2e;
    if (m2e === undefined) return null;  // at the device without the page graph
    const {ctx, rec} = (window.wrappedJSObject || window).__m2e;
    const b64 = (chunks) => {
        let total = 0;
        for (const c of chunks) total += c.length;
        const pcm = new Int16Array(total);
        let offset = 0;
        for (const c of chunks) {
            for (let i = 0; i < c.length; i++) pcm[offset + i] = Math.max(-32768, Math.min(32767, Math.round(c[i] * 32768)));
            offset += c.length;
        }
        const bytes = new Uint8Array(pcm.buffer);
        let binary = '';
        for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
        return btoa(binary);
    };
    return {
        sampleRate: ctx.sampleRate, firstFrame: rec.firstFrame, local: b64(rec.local), remote: b64(rec.remote),
        arrivals: rec.arrivals, chunks: rec.chunks, timeOrigin: performance.timeOrigin,
        outputLatency: (ctx.baseLatency || 0) + (ctx.outputLatency || 0),
    };
}"""

STATS_PAGE = """async () => {
    const report = await botcall.pc.getStats();
    const out = {delay: 0, emitted: 0, target: 0, minimum: 0, lost: 0, received: 0, concealed: 0, jitter: 0,
                 played: 0, removed: 0, sent: 0, now: performance.now()};
    report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') {
            out.delay += s.jitterBufferDelay || 0;
            out.emitted += s.jitterBufferEmittedCount || 0;
            out.target += s.jitterBufferTargetDelay || 0;
            out.minimum += s.jitterBufferMinimumDelay || 0;
            out.lost += s.packetsLost || 0;
            out.received += s.packetsReceived || 0;
            out.concealed += s.concealedSamples || 0;
            out.played += s.totalSamplesReceived || 0;
            out.removed += s.removedSamplesForAcceleration || 0;
            out.jitter = s.jitter || 0;
        }
        if (s.type === 'outbound-rtp' && s.kind === 'audio') out.sent += s.packetsSent || 0;
    });
    return out;
}"""


# --- the bots (raw protocol) ------------------------------------------------------------------


@dataclass
class BotLog:
    """What a bot saw: received frames ``(arrival, pcm)`` and its bursts' send times."""

    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)
    # Each frame's position in the human's stream (ms), where known (--trace).
    keys: list[int | None] = field(default_factory=list)
    burst_sends: list[float] = field(default_factory=list)
    human_ssrc: int | None = None


class Bot:
    """One bot of one path: joins, sends 20 ms frames (silence with bursts), decodes what it hears."""

    def __init__(self, srv: LiveServer, room_id: str, media: dict[str, Any]) -> None:
        self.srv = srv
        self.room_id = room_id
        self.request = media
        self.log = BotLog()
        self.encoder = OpusEncoder(bitrate=64000, application="audio", fec=True)
        self.decoder = OpusDecoder()
        self.bursting = trio.Event()
        self.join: dict[str, Any] = {}
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.sock: trio.socket.SocketType | None = None
        self.latched = trio.Event()
        self._ufrag = secrets.token_hex(4)
        self.stall_s = 0.0

    @property
    def media(self) -> dict[str, Any]:
        return self.join["media"]

    @property
    def relay_address(self) -> tuple[str, int]:
        """Where the relay really listens: every leg here has it on 127.0.0.1. Not
        ``media.host``, which is an announced address (on the impaired leg, the
        proxy's): the impairment is the browser's leg only."""
        return ("127.0.0.1", int(self.media["port"]))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        agent = f"m2e#{secrets.token_hex(3)}"
        response = await self.srv.join(self.srv.token(agent=agent), self.room_id, agent_id=agent, media=self.request)
        assert response.status == 200, response.body
        self.join = response.json()
        async with trio_websocket.open_websocket_url(self.join["websocket_url"]) as ws, trio.open_nursery() as nursery:
            self.ws = ws
            nursery.start_soon(self._read_ws)
            if self.media["transport"] == "udp":
                self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
                await self.sock.bind(("127.0.0.1", 0))
                nursery.start_soon(self._read_udp)
                with trio.fail_after(STEP_TIMEOUT):
                    while not self.latched.is_set():
                        await self._bind()
                        with trio.move_on_after(0.2):
                            await self.latched.wait()
                nursery.start_soon(self._keepalive)
            nursery.start_soon(self._send)
            task_status.started()

    async def _bind(self) -> None:
        assert self.sock is not None
        request = binding_request(f"{self.media['ice_ufrag']}:{self._ufrag}", self.media["ice_pwd"])
        await self.sock.sendto(request, self.relay_address)

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(5.0)
            await self._bind()

    async def _read_udp(self) -> None:
        assert self.sock is not None
        while True:
            data, source = await self.sock.recvfrom(2048)
            now = time.time()
            if data[:2] == b"\x00\x01":  # the relay's check: answer it
                answer = answer_check_untrusted(
                    data, source, username=f"{self._ufrag}:{self.media['ice_ufrag']}", password=self.media["ice_pwd"]
                )
                await self.sock.sendto(answer, source)
            elif data[:2] == b"\x01\x01":  # our Binding success
                self.latched.set()
            elif len(data) > 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
                packet = parse_rtp_untrusted(data)
                key = None
                if TRACE is not None:
                    TRACE.bot_udp(packet.timestamp, now)
                    key = TRACE.by_timestamp.get(packet.timestamp)
                self._on_opus(now, packet.payload, key)

    def _on_opus(self, now: float, payload: bytes, key: int | None = None) -> None:
        self.log.frames.append((now, from_pcm16(self.decoder.decode_untrusted(payload))))
        self.log.keys.append(key)

    async def _read_ws(self) -> None:
        assert self.ws is not None
        while True:
            message = await self.ws.get_message()
            now = time.time()
            if isinstance(message, bytes):
                continue
            event = json.loads(message)
            if event["type"] != "audio":
                continue
            if TRACE is not None:
                TRACE.stamp("bot", int(event.get("stream_ms", 0)), now)
            data = base64.b64decode(event["data"])
            key = int(event.get("stream_ms", 0))
            if event.get("encoding") == "pcm16":
                self.log.frames.append((now, from_pcm16(data)))
                self.log.keys.append(key)
            else:
                self._on_opus(now, data, key)

    async def _send(self) -> None:
        """A 20 ms stream: silence, and a burst every ``period`` once ``bursting`` is set."""
        silence = np.zeros(FRAME, np.float32)
        burst = tone_burst(BOT_HZ)
        burst_frames = [burst[i : i + FRAME] for i in range(0, burst.size, FRAME)]
        period_frames = self.period_frames
        sequence = secrets.randbelow(1 << 16)
        timestamp = secrets.randbelow(1 << 32)
        start = trio.current_time()
        index = 0
        burst_start: int | None = None
        held: list[tuple[np.ndarray, int, int]] = []  # frames a --bot-stall holds back
        while True:
            if burst_start is None and self.bursting.is_set():
                # Half a period out of phase with the page's bursts.
                burst_start = index + period_frames // 2
            position = None if burst_start is None or index < burst_start else (index - burst_start) % period_frames
            samples = burst_frames[position] if position is not None and position < len(burst_frames) else silence
            if position == 0:
                self.log.burst_sends.append(time.time())
            stall_from = None if burst_start is None else burst_start + round(STALL_AFTER_S / 0.02)
            if stall_from is not None and stall_from <= index < stall_from + round(self.stall_s / 0.02):
                held.append((samples, sequence, timestamp))
            else:
                for frame in held:  # the stall is over: what it held goes at once
                    await self._send_frame(*frame, marker=False)
                held.clear()
                await self._send_frame(samples, sequence, timestamp, marker=index == 0)
            sequence = (sequence + 1) & 0xFFFF
            timestamp = (timestamp + FRAME) & 0xFFFFFFFF
            index += 1
            await trio.sleep_until(start + index * 0.02)

    period_frames = 25

    async def _send_frame(self, samples: np.ndarray, sequence: int, timestamp: int, *, marker: bool) -> None:
        media = self.media
        if media["transport"] == "udp":
            assert self.sock is not None
            packet = RtpPacket(111, sequence, timestamp, media["ssrc"], self.encoder.encode(to_pcm16(samples)), marker=marker)
            await self.sock.sendto(bytes(packet), self.relay_address)
            return
        assert self.ws is not None
        if media["encoding"] == "pcm16":
            await self.ws.send_message(to_pcm16(samples))
        else:
            data = base64.b64encode(self.encoder.encode(to_pcm16(samples))).decode()
            await self.ws.send_message(json.dumps({"type": "audio", "data": data, "timestamp": 0}))


# --- one call -------------------------------------------------------------------------------


@dataclass
class PathResult:
    browser: str
    path: str
    leg: str
    receiver: str
    playout: str
    mouth_to_bot: Summary
    bot_to_ear: Summary
    bot_to_graph: Summary
    jitter_buffer_ms: float | None
    jitter_target_ms: float | None
    output_latency_ms: float
    mouth_check_ms: float | None
    page_stats: dict[str, float]
    events: int
    playout_hold_ms: Summary
    audio: str = "mock"
    playback_rate: float | None = None
    load_average: float | None = None
    ptime_ms: int = 20
    sent_per_s: float | None = None
    split_ms: dict[str, float] | None = None
    # --audio-device pulse: measured at the sound devices (then mouth_to_bot and
    # bot_to_ear are these; the page-graph values stay in the *_page fields).
    device: str = "page"
    mouth_to_bot_page: Summary | None = None
    bot_to_ear_page: Summary | None = None
    # --audio-device pulse: medians of what the daemon reported for the page's stream
    # into the ear sink: written, not yet rendered (inside bot_to_ear), and rendered
    # ahead of the sink's clock (outside it: a real device would play that much later).
    ear_buffer_ms: float | None = None
    ear_sink_ms: float | None = None
    mic: str = "dsp"


def analyse(
    page: dict[str, Any], take: dict[str, Any], log: BotLog, period: float
) -> tuple[list[float], list[float], float, float | None]:
    """Latencies (s) of mouth → bot and bot → the page's audio graph, the output
    latency (s), and the largest error of the mouth onsets found in the page's
    own recording of what it sent against their scheduled times (ms)."""
    rate = int(take["sampleRate"])
    arrivals = np.asarray(take["arrivals"], dtype=np.float64).reshape(-1, 2)
    origin = float(take["timeOrigin"])
    times = sample_times(take["chunks"], rate)

    def unix(context_s: float) -> float:
        return context_to_unix(arrivals, origin, context_s)

    local = from_pcm16(base64.b64decode(take["local"]))
    remote = from_pcm16(base64.b64decode(take["remote"]))
    scheduled = list(page["onsets"])
    found = [float(times[index]) for index in find_onsets(local, rate)]
    errors = [min(abs(f - s) for s in scheduled) * 1000 for f in found]
    mouths = [unix(t) for t in scheduled]
    mouth_to_bot = match_latencies(mouths, frame_onset_arrivals(log.frames, RATE), period)
    if TRACE is not None and len(log.keys) == len(log.frames):
        # The same onsets when the relay had their packets: the browser's and the network's share.
        relay = TRACE.stamps["relay"]
        keys = [log.keys[index] for index in frame_onset_indexes(log.frames, RATE)]
        TRACE.mouth_to_relay = match_latencies(mouths, [relay[k] for k in keys if k is not None and k in relay], period)
    ears = [unix(float(times[index])) for index in find_onsets(remote, rate)]
    bot_to_graph = match_latencies(log.burst_sends, ears, period)
    return mouth_to_bot, bot_to_graph, float(take["outputLatency"]), max(errors) if errors else None


def analyse_devices(
    ear: tuple[np.ndarray, np.ndarray], mouth: tuple[np.ndarray, np.ndarray], log: BotLog, period: float
) -> tuple[list[float], list[float]]:
    """Latencies (s) of mouth → bot and bot → ear at the sound devices: ``ear`` and
    ``mouth`` are the samples and Unix times read from the ear sink's monitor and the
    microphone's (the mouth sink's monitor, which the browser records)."""
    samples, times = mouth
    mouths = [float(times[index]) for index in find_onsets(samples, RATE)]
    if TRACE is not None and len(log.keys) == len(log.frames):
        # The same onsets when the relay had their packets: the browser's capture and encoding.
        relay = TRACE.stamps["relay"]
        keys = [log.keys[index] for index in frame_onset_indexes(log.frames, RATE)]
        TRACE.mouth_to_relay = match_latencies(mouths, [relay[k] for k in keys if k is not None and k in relay], period)
    samples, times = ear
    ears = [float(times[index]) for index in find_onsets(samples, RATE)]
    return match_latencies(mouths, frame_onset_arrivals(log.frames, RATE), period), match_latencies(log.burst_sends, ears, period)


def firefox_script(function: str) -> str:
    """A page function (``async (args) => …``) as a Marionette async script: it runs
    in Marionette's sandbox, so the page's hooks and constructors are taken
    from the page's own window (``wrappedJSObject``)."""
    return f"""
        const done = arguments[arguments.length - 1];
        const page = window.wrappedJSObject;
        const botcall = page.botcall;
        const AudioContext = page.AudioContext;
        const AudioWorkletNode = page.AudioWorkletNode;
        Promise.resolve(({function})(arguments[0])).then(
            (value) => done(JSON.parse(JSON.stringify(value === undefined ? null : value))),
            (err) => done({{error: String(err)}}));
    """


async def one_call(
    srv: LiveServer,
    path: str,
    leg: str,
    receiver: str,
    events: int,
    period: float,
    browser: str,
    playout: str = "new",
    stall_s: float = 0.0,
    pulse_server: str | None = None,
    ptime_ms: int = 20,
    devices: devices_kit.PulseDevices | None = None,
    mic: str = "dsp",
    page_graph: bool = True,
    settle_s: float = 0.0,
) -> PathResult:
    bot_playout.STALL_LIMIT = PLAYOUTS[playout]  # read at each re-anchor: this call's bots get it
    srv.state.media.ptime_ms = ptime_ms  # read at each answer: this call's browser gets it
    if TRACE is not None:
        TRACE.reset()
    created = (await srv.create_room(srv.token(agent="creator#1"), interruption={"mode": "off"})).json()
    invite = urlsplit(created["invite_url"])
    url = f"{srv.url}{invite.path}#{invite.fragment}"
    bot = Bot(srv, created["room_id"], PATHS[path])
    bot.period_frames = round(period / 0.02)
    bot.stall_s = stall_s
    arguments = [period, BURST_S, events, 1.0, MOUTH_HZ, AMPLITUDE, receiver, devices is not None, page_graph]
    # The page's last burst, a period for the bot's last one, and a second of slack.
    run_s = 1.0 + (events + 1) * period + 1.0
    Four = tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]
    holds: list[int] = []
    recorders: list[devices_kit.DeviceRecorder] = []  # --audio-device pulse: the ear's sink, the mouth's sink
    writers: list[devices_kit.DeviceWriter] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(bot.run)

        async def sample_hold() -> None:
            # Our buffer on the bot -> ear path: what the bot's playout in the
            # relay holds (accepted, not yet released), sampled while bursting.
            await bot.bursting.wait()
            while True:
                peer = srv.state.media.relay.peer(bot.join["session_id"])
                if peer is not None and peer.playout is not None:
                    holds.append(peer.playout.ahead_ms())
                await trio.sleep(0.1)

        nursery.start_soon(sample_hold)
        sink_latencies: list[tuple[float, float]] = []

        async def sample_sink() -> None:
            assert devices is not None
            await bot.bursting.wait()
            while True:
                sink_latencies.extend(await trio.to_thread.run_sync(devices_kit.sink_input_latencies_ms, devices.server, devices.ear_sink))
                await trio.sleep(0.5)

        if devices is not None:
            nursery.start_soon(sample_sink)
            # The rig's streams connect before the browser starts: none starts inside the
            # measured call (a stream connecting to the daemon can stall the others, §16h).
            recorders.extend(
                [devices_kit.DeviceRecorder(devices, f"{devices.ear_sink}.monitor"), devices_kit.DeviceRecorder(devices, devices.mic_source)]
            )
            writers.append(devices_kit.DeviceWriter(devices, devices.mouth_sink))

        def chromium(context: Any) -> Four:
            if mic in MIC_SCRIPTS:
                context.add_init_script(MIC_SCRIPTS[mic])
            if TIMELINE:
                context.add_init_script(TIMELINE_SCRIPT)
            if mic == "lobby":
                # The test browser reports the microphone allowed (a returning person), so
                # the lobby opens it (pwa/app.js, warmMicrophone); the person clicks Join
                # half a second after it is ready, not the instant the lobby shows.
                page = context.new_page()
                page.goto(url)
                page.wait_for_function("() => document.getElementById('lobby-mic').textContent.includes('ready')")
                page.wait_for_timeout(500)
                page.get_by_role("button", name=re.compile("Join")).click()
                page.wait_for_function("() => window.botcall.state === 'connected'")
            else:
                page, _ = join_call(context, url)
            page.wait_for_function("() => botcall.remoteStream !== null")
            if settle_s > 0:  # --settle: past the start of the call
                page.wait_for_timeout(int(settle_s * 1000))
            started = page.evaluate(START_PAGE, arguments)
            for writer in writers:  # connected (silent) before the browser started
                writer.play(device_mouth_signal(events, period))
            before = page.evaluate(STATS_PAGE)
            trio.from_thread.run_sync(bot.bursting.set)
            page.wait_for_timeout(int(run_s * 1000))
            after = page.evaluate(STATS_PAGE)
            take = page.evaluate(TAKE_PAGE)
            if TIMELINE:
                print_timeline(page.evaluate("({rows: window.__timeline, marks: window.__marks})"))
            page.get_by_role("button", name="Hang up").click()
            return started, before, after, take

        def firefox(client: Any) -> Four:
            client.navigate(url)
            kit.wait_state(client, "lobby")
            kit.click(client, "#join")
            kit.wait_state(client, "connected")
            kit.wait_for(client, "botcall.remoteStream !== null")

            def run(function: str, args: Any = None) -> dict[str, Any]:
                value = client.execute_async_script(firefox_script(function), script_args=[args], script_timeout=60_000)
                if isinstance(value, dict) and "error" in value:
                    raise RuntimeError(f"page script failed: {value['error']}")
                return dict(value)

            started = run(START_PAGE, arguments)
            before = run(STATS_PAGE)
            trio.from_thread.run_sync(bot.bursting.set)
            time.sleep(run_s)
            after = run(STATS_PAGE)
            take = run(TAKE_PAGE)
            kit.click(client, "#hangup")
            return started, before, after, take

        if browser == "firefox":
            started, before, after, take = await kit.in_firefox(firefox, pulse_server=pulse_server)
        else:
            try:
                started, before, after, take = await in_browser(chromium, pulse_server=devices.server if devices is not None else None)
            finally:
                for writer in writers:
                    writer.stop()
        nursery.cancel_scope.cancel()
    if take is not None:
        mouth_to_bot, bot_to_graph, output_latency, mouth_check = analyse(started, take, bot.log, period)
    else:  # at the device without the page graph
        mouth_to_bot, bot_to_graph, output_latency, mouth_check = [], [], 0.0, None
    mouth_to_bot_page: list[float] | None = None
    bot_to_ear_page: list[float] | None = None
    if devices is not None:
        ear, mouth = (recorder.stop() for recorder in recorders)
        # The page's own mouth graph is not sent at the device (the PWA's microphone is):
        # its mouth -> bot is measured in the page rows only.
        bot_to_ear_page = [d + output_latency for d in bot_to_graph] if take is not None else None
        mouth_to_bot, bot_to_device = analyse_devices(ear, mouth, bot.log, period)
    if DUMP is not None:
        audio = "pulse" if pulse_server is not None else "mock"
        with open(DUMP / f"{browser}-{audio}-{leg}-{receiver}-{path}-{playout}.json", "w") as handle:
            frames = [(t, base64.b64encode(to_pcm16(pcm)).decode()) for t, pcm in bot.log.frames]
            json.dump({"started": started, "take": take, "frames": frames, "burst_sends": bot.log.burst_sends}, handle)
    jitter = jitter_buffer_ms(before, after)
    emitted = after["emitted"] - before["emitted"]
    target = (after["target"] - before["target"]) / emitted * 1000 if emitted > 0 else None
    elapsed_s = (after["now"] - before["now"]) / 1000
    rate = (after["played"] - before["played"]) / (elapsed_s * RATE) if elapsed_s > 0 and after["played"] > 0 else None
    return PathResult(
        browser=browser,
        path=path,
        leg=leg,
        receiver=receiver,
        playout=playout,
        mouth_to_bot=Summary.of(mouth_to_bot),
        bot_to_ear=Summary.of([d + output_latency for d in bot_to_graph] if devices is None else bot_to_device),
        bot_to_graph=Summary.of(bot_to_graph),
        jitter_buffer_ms=jitter,
        jitter_target_ms=target,
        output_latency_ms=output_latency * 1000,
        mouth_check_ms=mouth_check,
        page_stats={**{key: after[key] - before[key] for key in ("lost", "received", "concealed")}, "jitter_ms": after["jitter"] * 1000},
        events=events,
        playout_hold_ms=Summary.of([h / 1000 for h in holds]),
        audio=("pulse" if pulse_server is not None else "mock") if browser == "firefox" else (("pulse-graph" if page_graph else "pulse") if devices is not None else "page"),
        playback_rate=rate,
        load_average=load_average(),
        ptime_ms=ptime_ms,
        sent_per_s=(after["sent"] - before["sent"]) / elapsed_s if elapsed_s > 0 else None,
        split_ms=TRACE.split() if TRACE is not None else None,
        device="pulse" if devices is not None else "page",
        mouth_to_bot_page=Summary.of(mouth_to_bot_page) if mouth_to_bot_page is not None else None,
        bot_to_ear_page=Summary.of(bot_to_ear_page) if bot_to_ear_page is not None else None,
        ear_buffer_ms=float(np.median([b for b, _ in sink_latencies])) if sink_latencies else None,
        ear_sink_ms=float(np.median([k for _, k in sink_latencies])) if sink_latencies else None,
        mic=mic,
    )


def print_timeline(data: dict[str, Any]) -> None:
    """--timeline: one line per 100 ms from the Join click: playout rate, packets sent per
    second, NetEq's mean hold in the interval, concealed samples (the first seconds' stalls)."""
    join = data["marks"].get("join", 0.0)
    rows = data["rows"]
    cells = []
    for a, b in zip(rows, rows[1:]):
        dt = (b["t"] - a["t"]) / 1000
        if dt <= 0:
            continue
        emitted = b["emitted"] - a["emitted"]
        hold = (b["delay"] - a["delay"]) / emitted * 1000 if emitted > 0 else float("nan")
        cells.append(
            f"{(b['t'] - join) / 1000:5.1f}s play {(b['played'] - a['played']) / (dt * RATE):4.2f}"
            f" sent {(b['sent'] - a['sent']) / dt:4.0f}/s recv {(b['received'] - a['received']) / dt:4.0f}/s"
            f" hold {hold:5.0f} conc {b['concealed'] - a['concealed']:5d} {b['ice']}"
        )
    print("    timeline from Join (100 ms steps):", flush=True)
    for cell in cells:
        print("      " + cell, flush=True)


@contextlib.asynccontextmanager
async def server_for(leg: str, browser: str, data_dir: Path) -> AsyncIterator[LiveServer]:
    """The server for a leg and a browser.

    Chromium pairs with loopback: media on 127.0.0.1. Firefox pairs only with
    the default-route interface's address (FACTS.md): media on every interface,
    as by default. ``impaired``: the relay listens on 127.0.0.1 and announces
    the proxy's address (127.0.0.2 for Chromium, the machine's own non-loopback
    address for Firefox), where ``bench/impaired_link.py`` forwards to it.
    """
    generous = {"max_live_rooms_per_controller": 10_000}
    if leg == "loopback":
        media_host = "127.0.0.1" if browser == "chromium" else "0.0.0.0"
        async with running_server(data_dir, media_host=media_host, **generous) as srv:
            yield srv
        return
    port = free_udp_port()
    front = IMPAIRED_HOST if browser == "chromium" else machine_address()
    async with running_server(data_dir, media_host="127.0.0.1", media_port=port, media_advertised_host=front, **generous) as srv:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "bench.impaired_link", "--listen", f"{front}:{port}", "--to", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proxy.stdout is not None
            ready = await trio.to_thread.run_sync(proxy.stdout.readline)
            assert ready.strip() == "ready", ready
            yield srv
        finally:
            proxy.terminate()
            _, err = proxy.communicate(timeout=10)
            print(f"  [{leg} {browser}] {err.strip()}", file=sys.stderr)


def load_average() -> float | None:
    """The machine's 1-minute load average (shared machines: printed beside every row)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def machine_address() -> str:
    """The machine's first non-loopback IPv4 address (where Firefox's ICE looks)."""
    for address in local_addresses():
        if "." in address and not address.startswith("127."):
            return address
    raise RuntimeError("no non-loopback IPv4 address on this machine for Firefox")


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure(
    browsers: list[str],
    paths: list[str],
    legs: list[str],
    receivers: list[str],
    events: int,
    period: float,
    repeats: int,
    playouts: Sequence[str] = ("new",),
    stall_s: float = 0.0,
    firefox_audio: Sequence[str] = ("mock",),
    ptimes: Sequence[int] = (20,),
    audio_devices: Sequence[str] = ("page",),
    mics: Sequence[str] = ("dsp",),
    settle_s: float = 0.0,
) -> list[PathResult]:
    with contextlib.ExitStack() as stack:
        pulse = stack.enter_context(kit.pulse_null_sink()) if "firefox" in browsers and "pulse" in firefox_audio else None
        devices = stack.enter_context(devices_kit.pulse_devices()) if "chromium" in browsers and set(DEVICE_AUDIO) & set(audio_devices) else None
        return await _measure(
            browsers, paths, legs, receivers, events, period, repeats, playouts, stall_s, firefox_audio, pulse, ptimes, audio_devices, devices, mics, settle_s
        )


async def _measure(
    browsers: list[str],
    paths: list[str],
    legs: list[str],
    receivers: list[str],
    events: int,
    period: float,
    repeats: int,
    playouts: Sequence[str],
    stall_s: float,
    firefox_audio: Sequence[str],
    pulse: str | None,
    ptimes: Sequence[int] = (20,),
    audio_devices: Sequence[str] = ("page",),
    devices: devices_kit.PulseDevices | None = None,
    mics: Sequence[str] = ("dsp",),
    settle_s: float = 0.0,
) -> list[PathResult]:
    results = []
    for browser in browsers:
        for leg in legs:
            with tempfile.TemporaryDirectory() as data_dir:
                async with server_for(leg, browser, Path(data_dir)) as srv:
                    for _ in range(repeats):
                        for receiver in receivers:
                            if browser == "firefox" and receiver != "default":
                                continue  # Chromium's receiver settings
                            for path in paths:
                                variants = [
                                    (p, a, t, m)
                                    for p in playouts
                                    for a in (firefox_audio if browser == "firefox" else audio_devices)
                                    for t in ptimes
                                    for m in (mics if browser == "chromium" and a in DEVICE_AUDIO else ("dsp",))
                                ]
                                for playout, audio, ptime, mic in variants:
                                    server = pulse if audio == "pulse" and browser == "firefox" else None
                                    chromium_devices = devices if audio in DEVICE_AUDIO and browser == "chromium" else None
                                    try:
                                        result = await one_call(
                                            srv, path, leg, receiver, events, period, browser, playout, stall_s, server, ptime, chromium_devices, mic,
                                            page_graph=audio != "pulse",
                                            settle_s=settle_s,
                                        )
                                    except Exception as exc:  # one failed call is reported, the run goes on
                                        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                                            exc = exc.exceptions[0]
                                        print(
                                            f"{browser:8} {audio:5} {leg:9} {receiver:8} {path:15} {playout:3} {ptime:2d} | failed: {type(exc).__name__}: {str(exc)[:200]}",
                                            flush=True,
                                        )
                                        continue
                                    print(row(result) + ("" if result.mic == "dsp" else f" mic={result.mic}"), flush=True)
                                    if result.device == "pulse":
                                        print("    " + device_split(result), flush=True)
                                    if result.split_ms:
                                        print("    split (median ms): " + ", ".join(f"{k} {v:.2f}" for k, v in result.split_ms.items()), flush=True)
                                    results.append(result)
    bot_playout.STALL_LIMIT = PLAYOUTS["new"]
    return results


HEADER = (
    f"{'browser':8} {'audio':5} {'leg':9} {'receiver':8} {'path':15} {'play':3} {'pt':>2} | {'mouth->bot p50/p95/max ms':>26} | {'bot->ear p50/p95/max ms':>24} |"
    f" {'n':>5} | {'hold':>4} {'NetEq':>5} {'target':>6} {'out':>4} {'lost':>4} {'rate':>5} {'pkt/s':>5} {'load':>5}"
)


def device_split(r: PathResult) -> str:
    """The page-graph method beside the device one, and bot -> ear at the device split
    into the relay's hold, NetEq and the rest (p50s)."""
    neteq = r.jitter_buffer_ms or 0.0
    rest = r.bot_to_ear.p50 - r.playout_hold_ms.p50 - neteq
    graph = (
        f"same call, page graph: bot->ear (graph + out) {r.bot_to_ear_page.p50:.1f}/{r.bot_to_ear_page.p95:.1f}"
        if r.bot_to_ear_page is not None
        else "no page graph"
    )
    return (
        f"{graph} | bot->ear at the sink p50 {r.bot_to_ear.p50:.1f} ="
        f" hold {r.playout_hold_ms.p50:.1f} + NetEq {neteq:.1f} + rest {rest:.1f}"
        f" (of which the page's Pulse stream buffer {fmt_ms(r.ear_buffer_ms)}); the sink rendered ahead {fmt_ms(r.ear_sink_ms)}"
        " (outside: a real device plays it that much later)"
    )


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row(r: PathResult) -> str:
    def fmt(s: Summary) -> str:
        return f"{s.p50:6.1f} {s.p95:6.1f} {s.max:6.1f}"

    jb = f"{r.jitter_buffer_ms:5.1f}" if r.jitter_buffer_ms is not None else "    -"
    target = f"{r.jitter_target_ms:6.1f}" if r.jitter_target_ms is not None else "     -"
    rate = f"{r.playback_rate:5.3f}" if r.playback_rate is not None else "    -"
    load = f"{r.load_average:5.1f}" if r.load_average is not None else "    -"
    sent = f"{r.sent_per_s:5.1f}" if r.sent_per_s is not None else "    -"
    return (
        f"{r.browser:8} {r.audio:5} {r.leg:9} {r.receiver:8} {r.path:15} {r.playout:3} {r.ptime_ms:2d} | {fmt(r.mouth_to_bot):>26} | {fmt(r.bot_to_ear):>24} |"
        f" {r.mouth_to_bot.count:2d}/{r.bot_to_ear.count:2d} | {r.playout_hold_ms.p50:4.0f} {jb} {target} {r.output_latency_ms:4.0f} {r.page_stats['lost']:4.0f}"
        f" {rate} {sent} {load}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=45, help="bursts each way per call (≥ 40)")
    parser.add_argument("--period", type=float, default=0.5, help="seconds between bursts")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--legs", default="loopback,impaired")
    parser.add_argument("--browsers", default="chromium,firefox")
    parser.add_argument("--receiver", default="default", help=f"comma-separated: {', '.join(RECEIVER_SETTINGS)}")
    parser.add_argument("--playout", default="new", help="comma-separated: new (bot_playout.py as it is), old (no stall recovery)")
    parser.add_argument("--bot-stall", type=float, default=0.0, help="seconds the bot holds its frames once, then sends them at once")
    parser.add_argument("--firefox-audio", default="mock", help="comma-separated: mock (Firefox's mock audio back-end), pulse (a PulseAudio null sink)")
    parser.add_argument(
        "--audio-device", default="page", help="comma-separated, Chromium: page (the page's WebAudio graph), pulse (at PulseAudio null sinks, no page graph), pulse-graph (at the sinks with the page graph running beside, as before §16h)"
    )
    parser.add_argument("--mic", default="dsp", help="comma-separated, Chromium: dsp (the PWA's constraints), raw (no echo cancellation, noise suppression or gain control), ec (echo cancellation only), prompt (the microphone 1.5 s after it is asked for), lobby (Join clicked 0.5 s after the lobby opened the microphone; the others click at once)")
    parser.add_argument("--trace", action="store_true", help="print where the human's packets spend their time between relay and bot")
    parser.add_argument("--ptime", default="20", help="comma-separated packet durations asked of the browser (ms): 20, 10")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeline", action="store_true", help="Chromium: print the page's playout, capture and NetEq every 100 ms from Join")
    parser.add_argument(
        "--settle", type=float, default=0.0, help="Chromium: seconds between the call connecting and the bursts (0: from the first second)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="draw a PNG (bench/plot.py, in the bench virtualenv)")
    parser.add_argument("--dump", type=Path, default=None, help="write each call's raw recordings into this directory")
    args = parser.parse_args()
    global DUMP, TRACE, TIMELINE
    DUMP = args.dump
    TIMELINE = args.timeline
    if args.trace:
        TRACE = Trace()
        TRACE.install()
    paths = args.paths.split(",")
    legs = args.legs.split(",")
    receivers = args.receiver.split(",")
    browsers = args.browsers.split(",")
    playouts = args.playout.split(",")
    firefox_audio = args.firefox_audio.split(",")
    audio_devices = args.audio_device.split(",")
    mics = args.mic.split(",")
    try:
        ptimes = [int(value) for value in args.ptime.split(",")]
    except ValueError:
        parser.error(f"--ptime takes comma-separated integers, not {args.ptime!r}")
    if any(value not in PTIMES_MS for value in ptimes):
        parser.error(f"--ptime values must be among {PTIMES_MS}")
    for name, known in (
        ("path", PATHS), ("leg", ("loopback", "impaired")), ("receiver", RECEIVER_SETTINGS), ("browser", ("chromium", "firefox")), ("playout", PLAYOUTS),
        ("firefox-audio", FIREFOX_AUDIO), ("audio-device", AUDIO_DEVICES), ("mic", MICS),
    ):
        chosen = {
            "path": paths, "leg": legs, "receiver": receivers, "browser": browsers, "playout": playouts, "firefox-audio": firefox_audio,
            "audio-device": audio_devices, "mic": mics,
        }[name]
        unknown = [c for c in chosen if c not in known]
        if unknown:
            parser.error(f"unknown {name}: {', '.join(unknown)}")
    stall = f"; the bot stalls {args.bot_stall:g} s once, {STALL_AFTER_S:g} s into its bursts" if args.bot_stall else ""
    print(f"mouth_to_ear: {args.events} bursts each way per call, every {args.period:g} s; one browser call per row{stall}")
    print(
        "hold = p50 of what the relay's playout of the bot held (ms), NetEq = the browser's mean jitter-buffer delay (getStats),"
        " target = its target, out = the AudioContext's reported output latency (included in bot->ear),"
        " rate = the page's playback rate against the wall clock, load = the 1-minute load average"
    )
    print(HEADER)
    results = trio.run(
        measure, browsers, paths, legs, receivers, args.events, args.period, args.repeats, playouts, args.bot_stall, firefox_audio, ptimes,
        audio_devices, mics, args.settle,
    )
    data = [asdict(r) for r in results]
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=1, default=float))
    if args.plot is not None:
        from bench.peers.aiortc import ensure_bench_venv

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(data, handle, default=float)
        python = ensure_bench_venv()
        subprocess.run([str(python), str(Path(__file__).with_name("plot.py")), "--mouth-to-ear", handle.name, str(args.plot)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
