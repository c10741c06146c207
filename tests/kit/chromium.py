"""What the PWA tests share: headless Chromium driven next to the real server.

The server is the real one (``tests.kit.server.running_server``), whose
``create_app`` registers the PWA routes and the human signaling WebSocket.
Playwright's async API needs asyncio, so the browser is driven with the sync
API in a worker thread (``trio.to_thread``) while the server keeps running in
the Trio loop; a browser action that must change the server (a bot joining,
the server stopping) calls back with ``trio.from_thread``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from playwright.sync_api import BrowserContext, Page, sync_playwright

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
)
PHONE = {"width": 360, "height": 640}
# A safety net against a hung page, not a speed requirement.
BROWSER_TIMEOUT_MS = 20_000


class PageErrors:
    """Uncaught exceptions and console errors of a page (CSP violations are console errors)."""

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        page.on("pageerror", lambda error: self.messages.append(f"pageerror: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.messages.append(f"console: {message.text}")

    def unexpected(self, *allowed: str) -> list[str]:
        """Errors whose text contains none of ``allowed``."""
        return [m for m in self.messages if not any(a in m for a in allowed)]


def run_browser(
    action: Callable[[BrowserContext], T],
    *,
    fake_mic_ui: bool = True,
    viewport: dict | None = None,
    fake_mic_wav: str | None = None,
    extra_args: Sequence[str] = (),
    preferences: dict[str, Any] | None = None,
    pulse_server: str | None = None,
) -> T:
    """Start headless Chromium with a fresh profile, run ``action(context)``, close it.

    Args:
        action: gets the persistent browser context.
        fake_mic_ui: auto-accept microphone prompts (``False``: they are refused).
        viewport: page size (default: a 360x640 phone).
        fake_mic_wav: a WAV file the fake microphone plays (looped); default: Chromium's beeps.
        extra_args: more command-line flags (``TestTls.chromium_args()``...).
        preferences: profile preferences written to ``Default/Preferences`` before
            start, nested as Chromium stores them
            (``{"webrtc": {"ip_handling_policy": "disable_non_proxied_udp"}}``).
        pulse_server: play and record through this PulseAudio daemon
            (``tests.kit.pulse.pulse_devices``): no fake microphone, and
            Playwright's ``--mute-audio`` dropped (``fake_mic_wav`` is then ignored).

    Returns:
        What ``action`` returns.
    """
    args = [a for a in CHROMIUM_ARGS if fake_mic_ui or a != "--use-fake-ui-for-media-stream"]
    if pulse_server is not None:
        args.remove("--use-fake-device-for-media-stream")
    elif fake_mic_wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_mic_wav}")
    args += extra_args
    with tempfile.TemporaryDirectory(prefix="botcall-chromium-") as profile, sync_playwright() as playwright:
        if preferences is not None:
            default = Path(profile) / "Default"
            default.mkdir()
            (default / "Preferences").write_text(json.dumps(preferences))
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=args,
            viewport=viewport or PHONE,
            env={**os.environ, "PULSE_SERVER": pulse_server} if pulse_server is not None else None,
            ignore_default_args=["--mute-audio"] if pulse_server is not None else None,
        )
        context.set_default_timeout(BROWSER_TIMEOUT_MS)
        try:
            return action(context)
        finally:
            context.close()


async def in_browser(action: Callable[[BrowserContext], T], **kwargs: Any) -> T:
    """Run :func:`run_browser` in a worker thread, the Trio loop serving meanwhile."""
    return await trio.to_thread.run_sync(partial(run_browser, action, **kwargs))


def join_call(context: BrowserContext, url: str) -> tuple[Page, "PageErrors"]:
    """Open the invite ``url`` in a new page, click Join and wait until the call is
    connected; returns the page and its error collector."""
    page = context.new_page()
    errors = PageErrors(page)
    page.goto(url)
    wait_state(page, "lobby")
    page.get_by_role("button", name=re.compile("Join")).click()
    wait_state(page, "connected")
    return page, errors


def wait_state(page: Page, *states: str) -> str:
    """Wait until ``window.botcall.state`` is one of ``states``; return it."""
    page.wait_for_function(
        "states => window.botcall !== undefined && states.includes(window.botcall.state)",
        arg=list(states),
    )
    return page.evaluate("window.botcall.state")


def hooks(page: Page) -> dict[str, Any]:
    """The plain values of ``window.botcall``."""
    return page.evaluate(
        "({state: botcall.state, problem: botcall.problem, participantId: botcall.participantId,"
        " participants: botcall.participants, muted: botcall.muted})"
    )
