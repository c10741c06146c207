"""Headless Firefox ESR (Debian's ``firefox-esr``) driven over Marionette.

The Firefox counterpart of ``tests.kit.chromium``. Playwright cannot drive
Debian's Firefox (it needs its own patched build), so the browser is started
here by hand, with a fresh profile whose ``user.js`` carries the preferences
that FACTS.md lists, and driven with PyPI's ``marionette-driver`` (no
geckodriver). The client is synchronous: like the Chromium kit, the browser is
driven in a worker thread (``trio.to_thread``) while the server keeps running
in the Trio loop.

Nothing here changes how Firefox does WebRTC: ICE runs with its default
settings (no loopback candidates, host candidates only on the default-route
interface, as mDNS names), which is what a person's Firefox does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from marionette_driver.by import By
from marionette_driver.marionette import Marionette

from tests.kit.page_audio import PageRecording, recording_from
from tests.kit.pulse import pulse_daemon
from tests.kit.system import HarnessError, wait_readable

T = TypeVar("T")

FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"
# Firefox's fake microphone (media.navigator.streams.fake) plays a sine at this
# pitch (FACTS.md: 1 kHz at about -23 dBFS); set explicitly so tests do not
# depend on the default.
FAKE_MIC_HZ = 1000
# Safety nets against a hung browser, not speed requirements.
STARTUP_TIMEOUT_S = 60.0
SCRIPT_TIMEOUT_MS = 20_000

PREFS: dict[str, Any] = {
    # A fake microphone, granted without a prompt.
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.navigator.audio.fake_frequency": FAKE_MIC_HZ,
    # Audio may start without a user gesture.
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    # With no sound device, headless Firefox runs no audio processing at all
    # (analysers read silence) unless cubeb uses its mock back-end (FACTS.md).
    "media.cubeb.force_mock_context": True,
    # No first-run pages, updates, telemetry or other traffic to the internet.
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "extensions.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.region.network.url": "",
    "browser.search.geoip.url": "",
    "services.settings.server": "http://127.0.0.1:9/",
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
}


def free_tcp_port() -> int:
    """A TCP port free on 127.0.0.1 right now (Firefox binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_profile(directory: Path, port: int, prefs: dict[str, Any] | None = None) -> None:
    """A ``user.js`` with :data:`PREFS`, ``prefs`` and the Marionette port."""
    lines = [f"user_pref({json.dumps(name)}, {json.dumps(value)});" for name, value in {**PREFS, **(prefs or {}), "marionette.port": port}.items()]
    (directory / "user.js").write_text("\n".join(lines) + "\n")


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:``port``.

    Raises:
        RuntimeError: the process exited first, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"firefox-esr exited with {process.returncode} before Marionette listened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Marionette did not listen on port {port} within {timeout:g} s") from None
            time.sleep(0.05)


# A real-time audio clock for headless Firefox. The mock back-end's fake audio
# thread renders 10 ms and then sleeps 10 ms (Firefox's MockCubeb.cpp), so every
# pass costs 10 ms plus the work plus the sleep's overshoot: on this busy machine
# the page consumed its received audio at 0.90-0.96 of real time, and the surplus
# piled up in the jitter buffer (docs/bench-results.md §16c). A PulseAudio null
# sink is timer-driven against absolute deadlines: it plays at 0.99-1.00.
PULSE_START_S = 30.0  # a last resort: the wait ends on the socket listening or the daemon exiting


@contextmanager
def pulse_null_sink() -> Iterator[str]:
    """A private PulseAudio daemon whose only sink is a null sink at 48 kHz; yields
    its server string (``unix:…``) for ``firefox(pulse_server=...)``; stops it.

    Raises:
        RuntimeError: ``pulseaudio`` is not installed, or did not answer in time.
    """
    with pulse_daemon(("module-null-sink sink_name=botcall_null rate=48000",)) as server:
        yield server


@contextmanager
def pulse_events(server: str) -> Iterator[subprocess.Popen[bytes]]:
    """``pactl subscribe`` on the PulseAudio daemon at ``server``: a line per event
    (``Event 'new' on sink-input #3``) as it happens, on the process's stdout; stopped at the end.

    Start it before whatever makes the events (the browser), so none is missed.
    """
    process = subprocess.Popen(
        ["pactl", "subscribe"], env={**os.environ, "PULSE_SERVER": server}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait()


def pactl(server: str, *args: str) -> str:
    """``pactl ARGS`` against the daemon at ``server``; its output."""
    return subprocess.run(
        ["pactl", *args], env={**os.environ, "PULSE_SERVER": server}, capture_output=True, text=True, timeout=PULSE_START_S, check=True
    ).stdout


def wait_for_sink_input(server: str, events: subprocess.Popen[bytes], name: str, timeout: float = PULSE_START_S) -> str:
    """``pactl list sink-inputs`` of the daemon at ``server`` once it shows ``name``
    (or, after ``timeout`` seconds, as it is: the caller asserts on it).

    Listed now, and again at each sink-input event of ``events`` (``pulse_events``):
    no polling. Other events (our own ``pactl`` clients come and go) are skipped.

    Raises:
        HarnessError: ``pactl subscribe`` ended.
    """
    deadline = time.monotonic() + timeout
    pending = b""
    while True:
        inputs = pactl(server, "list", "sink-inputs")
        if name in inputs:
            return inputs
        while b"on sink-input" not in pending:
            left = deadline - time.monotonic()
            assert events.stdout is not None
            if left <= 0 or not wait_readable(events.stdout, left):
                return inputs
            chunk = os.read(events.stdout.fileno(), 4096)
            if not chunk:
                raise HarnessError(f"pactl subscribe ended with {events.wait()}")
            pending += chunk
        pending = b""


def join_call(client: Marionette, url: str) -> str:
    """Open the invite ``url``, join from the lobby, wait until connected; the page's participant id."""
    client.navigate(url)
    wait_state(client, "lobby")
    click(client, "#join")
    wait_state(client, "connected")
    return str(page(client, "return botcall.participantId"))


@contextmanager
def firefox(prefs: dict[str, Any] | None = None, args: tuple[str, ...] = (), pulse_server: str | None = None) -> Iterator[Marionette]:
    """Start headless Firefox with a fresh profile; yield a Marionette session; kill it.

    Args:
        prefs: more preferences for ``user.js``.
        args: more command-line arguments (``-remote-allow-system-access`` lets a
            test run scripts in the browser's chrome context).
        pulse_server: play through this PulseAudio server (``pulse_null_sink``)
            instead of the mock audio back-end, whose clock runs slow.
    """
    if pulse_server is not None:
        prefs = {**(prefs or {}), "media.cubeb.force_mock_context": False}
    with tempfile.TemporaryDirectory(prefix="botcall-firefox-") as profile:
        port = free_tcp_port()
        write_profile(Path(profile), port, prefs)
        env = {**os.environ, "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1"}
        if pulse_server is not None:
            env["PULSE_SERVER"] = pulse_server
        # Its own process group: content processes go with the parent at the end.
        process = subprocess.Popen(
            [FIREFOX, "--headless", "--marionette", "--profile", profile, "-no-remote", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client: Marionette | None = None
        try:
            wait_for_port(port, process)
            client = Marionette(host="127.0.0.1", port=port, startup_timeout=int(STARTUP_TIMEOUT_S))
            client.start_session()
            client.timeout.script = SCRIPT_TIMEOUT_MS / 1000
            client.timeout.page_load = SCRIPT_TIMEOUT_MS / 1000
            yield client
        finally:
            if client is not None:
                # The browser is killed below whatever happens here; nothing to clean up on failure.
                client.cleanup_ran = True
                client.session = None
            # Already gone (a crash) is fine: wait() below reaps it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_firefox(action: Callable[[Marionette], T], **kwargs: Any) -> T:
    """Run ``action(marionette)`` in a fresh headless Firefox (see :func:`firefox`)."""
    with firefox(**kwargs) as client:
        return action(client)


async def in_firefox(action: Callable[[Marionette], T], **kwargs: Any) -> T:
    """Run :func:`run_firefox` in a worker thread, the Trio loop serving meanwhile."""
    return await trio.to_thread.run_sync(partial(run_firefox, action, **kwargs))


# Marionette's sandbox sees the page through Xray wrappers, which hide what the
# page's scripts added to ``window``; ``wrappedJSObject`` is the page's own view.
# (The page's CSP forbids eval, so scripts are joined here, not in the page.)
HOOKS = "const botcall = window.wrappedJSObject.botcall;"


def page(client: Marionette, script: str, *args: Any) -> Any:
    """Run ``script`` (a function body; ``botcall`` is the page's hooks,
    ``arguments`` the ``args``) and return its value."""
    return client.execute_script(f"{HOOKS}\n{script}", script_args=args)


def wait_for(client: Marionette, condition: str, timeout_ms: int = SCRIPT_TIMEOUT_MS) -> Any:
    """Wait until the JavaScript expression ``condition`` is truthy in the page; return its value.

    ``botcall`` in ``condition`` is the page's hooks (undefined while it loads).
    The page re-evaluates it on each animation frame, as Playwright's
    ``wait_for_function`` does; ``timeout_ms`` is a safety net.

    Raises:
        marionette_driver.errors.ScriptTimeoutException: it never became truthy.
    """
    return client.execute_async_script(
        f"""
        const done = arguments[arguments.length - 1];
        const check = () => {{
          {HOOKS}
          return ({condition});
        }};
        const poll = () => {{
          let value;
          try {{ value = check(); }} catch (err) {{ value = undefined; }}
          if (value) done(value); else window.requestAnimationFrame(poll);
        }};
        poll();
        """,
        script_timeout=timeout_ms,
    )


def wait_state(client: Marionette, *states: str) -> str:
    """Wait until ``window.botcall.state`` is one of ``states``; return it."""
    wanted = json.dumps(list(states))
    return str(wait_for(client, f"botcall !== undefined && {wanted}.includes(botcall.state) && botcall.state"))


def click(client: Marionette, selector: str) -> None:
    """Click an element as a person would (Marionette sends real pointer events,
    so the page gets a user activation, as autoplay and audio unlock need)."""
    client.find_element(By.CSS_SELECTOR, selector).click()


def start_recording(client: Marionette) -> None:
    """Start the PWA's recorder (``botcall.startRecording``, after the call connected)
    and wait until it runs."""
    page(client, "botcall.startRecording();")
    wait_for(client, "botcall.recording() !== null")


def take_recording(client: Marionette, rate: int = 48000) -> PageRecording:
    """What the page recorded since the last take (see ``tests.kit.page_audio``).

    The page's object crosses Marionette's sandbox as JSON (its Xray view hides
    the page's own properties).

    Raises:
        AssertionError: nothing was recorded yet.
    """
    raw = page(client, "const piece = botcall.recording(); return piece === null ? null : JSON.stringify(piece);")
    return recording_from(None if raw is None else json.loads(raw), rate)


# A microphone the test switches on and off. Firefox's fake one is a steady
# sine from the first packet, so a relay's speech detector takes it for the
# noise floor and never hears it start (Chromium's fake microphone plays a WAV
# file with pauses instead). This one is an oscillator in the page's own
# AudioContext behind a gain the test sets, handed to the PWA by its
# getUserMedia: a page-side function made by binding the page's own
# Promise.resolve (the page's CSP forbids eval; Marionette's sandbox functions
# cannot be called by the page). Installed before Join, which opens the microphone.
TEST_MIC_JS = """
const w = window.wrappedJSObject;
const context = new w.AudioContext();
const oscillator = context.createOscillator();
oscillator.frequency.value = arguments[0];
const gain = context.createGain();
gain.gain.value = 0;
const destination = context.createMediaStreamDestination();
oscillator.connect(gain);
gain.connect(destination);
oscillator.start();
context.resume();
w.botcallTestMic = gain;
w.navigator.mediaDevices.getUserMedia = w.Promise.resolve.bind(w.Promise, destination.stream);
return context.state;
"""


def install_test_microphone(client: Marionette, frequency: float) -> None:
    """Give the page a silent microphone that :func:`speak` turns into a ``frequency`` Hz tone."""
    client.execute_script(TEST_MIC_JS, script_args=[frequency])


def speak(client: Marionette, amplitude: float) -> None:
    """Set the test microphone's tone to ``amplitude`` (0: silence)."""
    client.execute_script("window.wrappedJSObject.botcallTestMic.gain.value = arguments[0];", script_args=[amplitude])
