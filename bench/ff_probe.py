"""Probe (an experiment, not a benchmark): Firefox's jitter buffer against what the relay sends it.

    python -m bench.ff_probe --variants ws-pcm16:voip32,ws-opus:audio64 [--seconds 20]
                             [--audio mock|pulse] [--dump DIR]

How docs/bench-results.md §16c found why Firefox buffered the pcm16 path 0.5 s.
One Firefox, one server (loopback); each variant is one call of one bot path
(bench.mouth_to_ear's bots and page) with an encoder setting (``ENCODERS``) for
both the server's pcm16 encoder and the bench bot's own, so one thing changes
at a time. Every second the page's ``getStats`` is sampled (jitter-buffer delay
and target, samples played, removed by acceleration); every RTP packet the
relay hands to the browser's sink is logged (time, seq, timestamp, marker,
size, TOC; ``--dump`` writes both). ``--audio pulse`` plays through a
PulseAudio null sink instead of Firefox's mock audio back-end.

Monkeypatches the server in its own process (the pcm16 encoder, the sink's
delivery): never import it from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

import botcall.relay.ws_audio as ws_audio
from bench import mouth_to_ear as m2e
from botcall.audio.opus import OpusEncoder
from botcall.webrtc.leg import WebRtcSink
from tests.kit import firefox as kit

ENCODERS: dict[str, dict[str, Any]] = {
    "voip32": {"application": "voip", "bitrate": 32000, "fec": True},
    "voip32nofec": {"application": "voip", "bitrate": 32000, "fec": False},
    "voip64": {"application": "voip", "bitrate": 64000, "fec": True},
    "audio32": {"application": "audio", "bitrate": 32000, "fec": True},
    "audio64": {"application": "audio", "bitrate": 64000, "fec": True},
}

STATS = """async () => {
    const report = await botcall.pc.getStats();
    let out = null;
    report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') out = Object.assign({}, s);
    });
    return out;
}"""

AUDIO = "mock"
SUMMARY: list[Any] = []
LOG: list[tuple[float, int, int, int, int, int]] = []
_original = WebRtcSink.deliver_rtp


def _logging_deliver(self: WebRtcSink[Any], data: bytes, speaker: Any, now: float) -> None:
    LOG.append((now, int.from_bytes(data[2:4], "big"), int.from_bytes(data[4:8], "big"), data[1] >> 7, len(data), data[12]))
    _original(self, data, speaker, now)




async def probe(variants: list[str], seconds: float, dump: Path | None) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        async with m2e.server_for("loopback", "firefox", Path(data_dir)) as srv, trio.open_nursery() as outer:

            async def setup(path: str, encoder: str) -> tuple[str, m2e.Bot, trio.CancelScope]:
                settings = ENCODERS[encoder]
                ws_audio.OpusEncoder = partial(OpusEncoder, **settings)  # type: ignore[misc]
                created = (await srv.create_room(srv.token(agent="creator#1"), interruption={"mode": "off"})).json()
                invite = urlsplit(created["invite_url"])
                bot = m2e.Bot(srv, created["room_id"], m2e.PATHS[path])
                bot.encoder = OpusEncoder(**settings)
                bot.period_frames = round(1.2 / 0.02)
                scope = trio.CancelScope()

                async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                    with scope:
                        await bot.run(task_status=task_status)

                await outer.start(run)
                return f"{srv.url}{invite.path}#{invite.fragment}", bot, scope

            def drive(client: Any) -> None:
                for variant in variants:
                    path, encoder = variant.split(":")
                    url, bot, scope = trio.from_thread.run(setup, path, encoder)
                    client.navigate(url)
                    kit.wait_state(client, "lobby")
                    LOG.clear()
                    kit.click(client, "#join")
                    kit.wait_state(client, "connected")
                    kit.wait_for(client, "botcall.remoteStream !== null")

                    def run(function: str, args: Any = None) -> Any:
                        return client.execute_async_script(m2e.firefox_script(function), script_args=[args], script_timeout=60_000)

                    run(m2e.START_PAGE, [1.2, m2e.BURST_S, 100, 1.0, m2e.MOUTH_HZ, m2e.AMPLITUDE, "default"])
                    trio.from_thread.run_sync(bot.bursting.set)
                    samples = []
                    start = time.monotonic()
                    while time.monotonic() - start < seconds:
                        stats = run(STATS)
                        stats["_t"] = time.monotonic() - start
                        samples.append(stats)
                        time.sleep(1.0)
                    kit.click(client, "#hangup")
                    trio.from_thread.run_sync(scope.cancel)
                    report(variant, samples)
                    if dump is not None:
                        dump.mkdir(parents=True, exist_ok=True)
                        (dump / f"{variant.replace(':', '-')}.json").write_text(json.dumps({"stats": samples, "packets": LOG}))

            if AUDIO == "pulse":
                with kit.pulse_null_sink() as pulse:
                    await kit.in_firefox(drive, pulse_server=pulse)
            else:
                await kit.in_firefox(drive)
            outer.cancel_scope.cancel()


def report(variant: str, samples: list[dict[str, Any]]) -> None:
    print(f"== {variant}  (load {open('/proc/loadavg').read().split()[0]})")
    previous = None
    for s in samples:
        if previous is not None:
            emitted = s.get("jitterBufferEmittedCount", 0) - previous.get("jitterBufferEmittedCount", 0)
            delay = (s.get("jitterBufferDelay", 0) - previous.get("jitterBufferDelay", 0)) / emitted * 1000 if emitted else float("nan")
            target = (s.get("jitterBufferTargetDelay", 0) - previous.get("jitterBufferTargetDelay", 0)) / emitted * 1000 if emitted else float("nan")
            minimum = (s.get("jitterBufferMinimumDelay", 0) - previous.get("jitterBufferMinimumDelay", 0)) / emitted * 1000 if emitted else float("nan")
            accel = s.get("removedSamplesForAcceleration", 0) - previous.get("removedSamplesForAcceleration", 0)
            decel = s.get("insertedSamplesForDeceleration", 0) - previous.get("insertedSamplesForDeceleration", 0)
            concealed = s.get("concealedSamples", 0) - previous.get("concealedSamples", 0)
            received = s.get("packetsReceived", 0) - previous.get("packetsReceived", 0)
            print(
                f"  t={s['_t']:5.1f} delay={delay:6.1f} target={target:6.1f} min={minimum:6.1f} emitted={emitted:6.0f}"
                f" accel={accel:6.0f} decel={decel:5.0f} concealed={concealed:6.0f} pkts={received:3.0f} jitter={s.get('jitter', 0) * 1000:5.1f}"
            )
        previous = s
    first, last = samples[0], samples[-1]
    def mean(a, b):
        e = b["jitterBufferEmittedCount"] - a["jitterBufferEmittedCount"]
        return (b["jitterBufferDelay"] - a["jitterBufferDelay"]) / e * 1000 if e else float("nan")
    tail = samples[-6] if len(samples) >= 6 else first
    span = last["_t"] - first["_t"]
    played = (last["totalSamplesReceived"] - first["totalSamplesReceived"]) / span / 48000
    arrived = (last["packetsReceived"] - first["packetsReceived"]) * 960 / span / 48000
    accel = (last["removedSamplesForAcceleration"] - first["removedSamplesForAcceleration"]) / span
    SUMMARY.append((variant, mean(first, last), mean(tail, last), played, arrived, accel))
    print(f"  SUMMARY {variant}: mean delay {mean(first, last):.0f} ms, last 5 s {mean(tail, last):.0f} ms,"
          f" played/s {played:.4f}, arrived/s {arrived:.4f}, accel {accel:.0f} samples/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--audio", default="mock")
    parser.add_argument("--dump", type=Path, default=None)
    args = parser.parse_args()
    WebRtcSink.deliver_rtp = _logging_deliver  # type: ignore[method-assign]  # this process's server only
    global AUDIO
    AUDIO = args.audio
    trio.run(probe, args.variants.split(","), args.seconds, args.dump)
    for line in SUMMARY:
        print("%-22s mean %5.0f  last5 %5.0f  played %.4f arrived %.4f accel %5.0f" % line)


if __name__ == "__main__":
    main()
