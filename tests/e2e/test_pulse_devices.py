"""Headless Chromium plays and records through PulseAudio devices (``tests.kit.pulse``).

The sound device is where a person's ear and mouth are, so
``bench.mouth_to_ear --audio-device pulse`` measures there; this checks that
the devices carry the call: the bot's 440 Hz reaches the ear sink (the PWA's
``<audio>`` element, not a WebAudio tap), and a 660 Hz tone played into the
microphone's sink reaches the bot (the PWA's own ``getUserMedia`` track, no
fake device). Audio is checked by content (dominant frequency) at both ends.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import numpy as np
import pytest
import trio
from playwright.sync_api import BrowserContext

from botcall.demo.signals import dominant_frequency, tone
from botcall_sdk import connect
from tests.kit import pulse
from tests.kit.chromium import hooks, in_browser, join_call
from tests.kit.server import running_server
from tests.kit.speaking import frames_from, saying

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(pulse.PULSEAUDIO is None, reason="pulseaudio is not installed (scripts/setup.sh installs it)"),
]


async def test_chromium_hears_at_the_sink_and_speaks_from_the_source(tmp_path):
    mouth = np.frombuffer(tone(660, 30.0, amplitude=0.4), "<i2").astype(np.float32) / 32768.0
    with pulse.pulse_devices() as devices:
        async with running_server(tmp_path) as srv:
            created = (await srv.create_room(srv.token(agent="creator#1"))).json()
            invite = urlsplit(created["invite_url"])
            async with connect(srv.url, created["room_id"], srv.token(agent="orion#8f3a")) as bot:

                def human(context: BrowserContext) -> dict:
                    ear = pulse.DeviceRecorder(devices, f"{devices.ear_sink}.monitor")
                    writer = pulse.DeviceWriter(devices, devices.mouth_sink, mouth)
                    try:
                        page, errors = join_call(context, f"{srv.url}{invite.path}#{invite.fragment}")
                        participant = hooks(page)["participantId"]
                        heard_at_sink = ear.wait_loud(1.0)
                        heard_by_bot = trio.from_thread.run(frames_from, bot, participant, 50)
                        chromium = [block for block in pulse.pactl(devices.server, "list", "sink-inputs").split("\n\n") if "Chromium" in block]
                        return {"sink": heard_at_sink, "bot": heard_by_bot, "errors": errors.unexpected(), "streams": chromium}
                    finally:
                        writer.stop()
                        ear.stop()

                async with saying(bot, tone(440, 5.0, amplitude=0.4)):
                    result = await in_browser(human, pulse_server=devices.server)
    # 1 s of the sink from the first loud sample: the <audio> element's output.
    assert abs(dominant_frequency(result["sink"][: 2 * 48000], 48000) - 440) < 5
    assert abs(dominant_frequency(result["bot"], 48000) - 660) < 5
    assert result["errors"] == []
    # Chromium opens its stream at the daemon's rate: 48 kHz, no resampler (§16h).
    assert result["streams"] and all("48000Hz" in block and "Resample method: copy" in block for block in result["streams"])


def test_the_daemon_runs_at_48_khz_and_the_writer_waits_in_silence():
    # The daemon read /etc's 44.1 kHz before it got its own file through PULSE_CONFIG.
    with pulse.pulse_devices() as devices:
        assert pulse.server_sample_rate(devices.server) == pulse.RATE
        monitor = pulse.DeviceRecorder(devices, f"{devices.mouth_sink}.monitor")
        writer = pulse.DeviceWriter(devices, devices.mouth_sink)  # connected, silent
        try:
            with pytest.raises(TimeoutError):
                monitor.wait_loud(0.1, timeout=1.0)  # a safety net: silence is what is being checked
            writer.play(np.frombuffer(tone(660, 2.0, amplitude=0.4), "<i2").astype(np.float32) / 32768.0)
            heard = monitor.wait_loud(1.0)
        finally:
            writer.stop()
            monitor.stop()
    assert abs(dominant_frequency(heard[: 48000], 48000) - 660) < 5
