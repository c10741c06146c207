"""What the PWA tests share: the real server with the page's routes, and headless Chromium.

The server is the real one (``tests.serverutil.running_server``). Until
``create_app`` registers the PWA routes and the human signaling WebSocket
itself, :func:`create_app_with_pwa` adds whichever of the two is missing, with
the production functions (``register_pwa_routes``, ``register_human_signaling``
and a ``Hub`` listening to the registry); once ``create_app`` has them it adds
nothing.

Playwright's async API needs asyncio, so the browser is driven with the sync
API in a worker thread (``trio.to_thread``) while the server keeps running in
the Trio loop; a browser action that must change the server (a bot joining,
the server stopping) calls back with ``trio.from_thread``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import trio
from playwright.sync_api import BrowserContext, Page, sync_playwright

from botcall.signaling.static import register_pwa_routes
from botcall.signaling.ws import Hub, register_human_signaling

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
SIGNAL_RULE = "/v1/signal/<room_id>"


def create_app_with_pwa(create_app: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap ``create_app`` so the app also has the PWA routes and ``/v1/signal``.

    Args:
        create_app: the real ``botcall.signaling.http_api.create_app``.

    Returns:
        A drop-in replacement for it.
    """

    def create(state: Any) -> Any:
        app = create_app(state)
        rules = {rule.rule for rule in app.url_map.iter_rules()}
        if "/sw.js" not in rules:
            register_pwa_routes(app, state)
        if SIGNAL_RULE not in rules:
            hub = Hub(state.clock)
            state.registry.add_listener(hub.on_registry_event)
            state.hub = hub
            register_human_signaling(app, state)
        return app

    return create


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


def run_browser(action: Callable[[BrowserContext], T], *, fake_mic_ui: bool = True, viewport: dict | None = None) -> T:
    """Start headless Chromium with a fresh profile, run ``action(context)``, close it.

    Args:
        action: gets the persistent browser context.
        fake_mic_ui: auto-accept microphone prompts (``False``: they are refused).
        viewport: page size (default: a 360x640 phone).

    Returns:
        What ``action`` returns.
    """
    args = [a for a in CHROMIUM_ARGS if fake_mic_ui or a != "--use-fake-ui-for-media-stream"]
    with tempfile.TemporaryDirectory(prefix="botcall-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=args,
            viewport=viewport or PHONE,
        )
        context.set_default_timeout(BROWSER_TIMEOUT_MS)
        try:
            return action(context)
        finally:
            context.close()


async def in_browser(action: Callable[[BrowserContext], T], **kwargs: Any) -> T:
    """Run :func:`run_browser` in a worker thread, the Trio loop serving meanwhile."""
    return await trio.to_thread.run_sync(partial(run_browser, action, **kwargs))


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


def visible_text(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text()


def js_string(value: str) -> str:
    return json.dumps(value)
