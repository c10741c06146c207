"""The join page's people features in headless Firefox ESR (Marionette), against
the real server on its default media settings: the same page must work without
Chromium-only APIs (the bot card, the Mute label, a secure context, no script
errors from Join to Hang up, the bot's tone played).

Script errors are read from the browser's console service in its chrome
context (Marionette with ``-remote-allow-system-access``), so nothing is
injected into the page.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import trio

from botcall.demo.signals import tone
from tests.kit.firefox import click, in_firefox, page, wait_for, wait_state
from tests.kit.server import running_server
from tests.pwa.test_people import connect, say

pytestmark = [pytest.mark.firefox, pytest.mark.e2e]

CONTROLLER = "gopi@example.com"

# Errors and warnings raised in the page's own scripts (uncaught exceptions,
# unhandled rejections, CSP reports): the script errors whose source is on the
# server. Firefox keeps a page's console.warn/error calls in the content
# process's console storage, which the chrome context cannot read; the
# Chromium test (test_people.py) checks those.
CONSOLE_JS = """
const origin = arguments[0];
return Services.console.getMessageArray()
  .filter((m) => m instanceof Ci.nsIScriptError && String(m.sourceName || '').startsWith(origin))
  .map((m) => `${m.flags & Ci.nsIScriptError.warningFlag ? 'warning' : 'error'}: ${m.errorMessage}`);
"""


def console_messages(client, origin: str) -> list[str]:
    with client.using_context(client.CONTEXT_CHROME):
        return list(client.execute_script(CONSOLE_JS, script_args=[origin]))


async def test_firefox_bot_card_mute_label_and_a_quiet_console(tmp_path):
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1", controller=CONTROLLER))).json()
        invite = urlsplit(created["invite_url"])
        async with connect(srv.url, created["room_id"], srv.token(agent="orion#8f3a", controller=CONTROLLER)) as bot:

            def human(client) -> dict:
                client.navigate(f"{srv.url}{invite.path}#{invite.fragment}")
                wait_state(client, "lobby")
                wait_for(client, "document.querySelector('#lobby-people li[data-kind=\"bot\"] .summary') !== null")
                card = page(
                    client,
                    "const li = document.querySelector('#lobby-people li[data-kind=\"bot\"]');"
                    "return {summary: li.querySelector('.summary').textContent,"
                    " agentIds: li.textContent.split('orion#8f3a').length - 1,"
                    " detailsOpen: li.querySelector('details').open};",
                )
                click(client, "#join")
                wait_state(client, "connected")
                wait_for(client, "botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - 440) < 8")
                label = lambda: page(client, "const b = document.querySelector('#mute'); return [b.textContent, b.getAttribute('aria-pressed')];")  # noqa: E731
                labels = [label()]
                click(client, "#mute")
                labels.append(label())
                click(client, "#mute")
                labels.append(label())
                click(client, "#hangup")
                wait_state(client, "ended")
                return {
                    "card": card,
                    "labels": labels,
                    "secure": page(client, "return window.isSecureContext;"),
                    "console": console_messages(client, srv.url),
                }

            async with trio.open_nursery() as nursery:

                # One long tone, queued once (the relay holds up to 120 s ahead).
                nursery.start_soon(say, bot, tone(440, 60.0))
                result = await in_firefox(human, args=("-remote-allow-system-access",))
                nursery.cancel_scope.cancel()
    assert result["card"] == {
        "summary": f"Orion, an AI agent, vouched for by {CONTROLLER}, verified by botcall-dev.",
        "agentIds": 1,
        "detailsOpen": False,
    }
    assert result["labels"] == [["Mute", "false"], ["Unmute", "true"], ["Mute", "false"]]
    assert result["secure"] is True
    assert result["console"] == []
