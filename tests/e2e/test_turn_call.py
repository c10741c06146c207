"""Strict networks: a browser that may not use UDP reaches a bot only through TURN.

Chromium's profile preference ``webrtc.ip_handling_policy =
disable_non_proxied_udp`` leaves it no UDP of its own: only TURN over TCP
(FACTS.md). With a real coturn (tests/kit/coturn.py) configured on the server
(``--turn-uri``, ``--turn-secret``), the PWA, served over HTTPS from a test CA
(tests/kit/tls.py) at ``https://botcall.test`` (mapped to 127.0.0.1, so the
page is a secure context because of TLS, not because it is loopback), talks
with a UDP bot both ways, checked by tone frequency, over TURN/TCP and, with
only a ``turns:`` URI, over TURN/TLS; the relay sees the browser at coturn's
relayed address, and its ``/metrics`` count the leg as ``botcall_browser_legs{path="turn"}``.
Without TURN the same browser gets the
"network blocks calls" message within 10 s instead of "Connecting…" for ever.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import pytest
import trio
from playwright.sync_api import BrowserContext
from prometheus_client.parser import text_string_to_metric_families

from botcall.audio.wav import write_wav
from botcall_sdk import connect
from botcall.demo.signals import dominant_frequency, tone
from tests.e2e.test_browser_call import current_rx, frames_from, relay_peer
from tests.kit.chromium import PageErrors, hooks, in_browser, wait_state
from tests.kit.coturn import running_coturn
from tests.kit.server import running_server
from tests.kit.tls import TEST_HOST, TestTls
from tests.kit.speaking import keep_saying

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

NO_UDP = {"webrtc": {"ip_handling_policy": "disable_non_proxied_udp"}}

# The selected pair's local candidate, from the page's getStats().
SELECTED_LOCAL_CANDIDATE = """async () => {
    const stats = Array.from((await botcall.pc.getStats()).values());
    const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
    const pair = transport && stats.find((s) => s.id === transport.selectedCandidatePairId);
    const local = pair && stats.find((s) => s.id === pair.localCandidateId);
    return local ? {type: local.candidateType, relayProtocol: local.relayProtocol || null, protocol: local.protocol} : null;
}"""

MEDIAN_REMOTE_FREQUENCY = """async () => {
    const readings = [];
    for (let i = 0; i < 7; i++) {
        readings.push(botcall.remoteFrequency());
        await new Promise((resolve) => setTimeout(resolve, 150));
    }
    readings.sort((a, b) => a - b);
    return readings[3];
}"""


@pytest.mark.parametrize(
    ("transports", "path"),
    [
        # UDP and TCP offered: only TCP is possible without UDP, and it is taken.
        (("udp", "tcp"), "tcp"),
        # Only TURN over TLS (turns:, coturn with the test CA's certificate).
        (("tls",), "tls"),
    ],
)
async def test_udp_less_browser_over_https_talks_with_a_bot_through_coturn(tmp_path, transports, path):
    mic = tmp_path / "mic-660.wav"
    write_wav(mic, tone(660, 10.0, amplitude=0.4), sample_rate=48000, channels=1)
    tls = TestTls.make(tmp_path / "tls")
    async with running_coturn(tmp_path / "coturn", tls_files=(tls.cert, tls.key) if "tls" in transports else None) as turn:
        uris = tuple(turn.uri(transport) for transport in transports)
        async with running_server(
            tmp_path / "server",
            tls_cert=tls.cert,
            tls_key=tls.key,
            client_ssl=tls.client,
            turn_uris=uris,
            turn_secret=turn.secret,
        ) as srv:
            assert srv.url.startswith("https://")
            created = (await srv.create_room(srv.token(agent="creator#1"))).json()
            invite = urlsplit(created["invite_url"])
            assert invite.scheme == "https"
            page_url = f"https://{TEST_HOST}:{invite.port}{invite.path}#{invite.fragment}"
            # The bot joins over HTTPS and holds its WebSocket over WSS (the test CA).
            async with connect(srv.url, created["room_id"], srv.token(agent="orion#8f3a"), ssl_context=tls.client) as bot:
                speaking = trio.Event()

                async def bot_speaks():
                    speaking.set()
                    await keep_saying(bot, tone(440, 5.0))

                def human(context: BrowserContext) -> dict:
                    page = context.new_page()
                    errors = PageErrors(page)
                    page.goto(page_url)
                    wait_state(page, "lobby")
                    secure = page.evaluate("({secure: window.isSecureContext, protocol: location.protocol})")
                    page.get_by_role("button", name=re.compile("Join")).click()
                    wait_state(page, "connected")
                    participant = hooks(page)["participantId"]
                    configured = page.evaluate("botcall.pc.getConfiguration().iceServers.map((s) => s.urls)")
                    selected = page.evaluate(SELECTED_LOCAL_CANDIDATE)
                    page.wait_for_function("() => botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - 440) < 8")
                    remote = page.evaluate(MEDIAN_REMOTE_FREQUENCY)
                    heard = trio.from_thread.run(frames_from, bot, participant, 40)
                    peer = trio.from_thread.run_sync(lambda: relay_peer(srv, created["room_id"], participant))
                    # What an operator sees: the server's own /metrics, over HTTPS.
                    scraped = trio.from_thread.run(srv.get, "/metrics")
                    return {
                        "secure": secure,
                        "participant": participant,
                        "configured": configured,
                        "selected": selected,
                        "remote": remote,
                        "heard": heard,
                        "browser_at": peer.addr,
                        "rx_packets": trio.from_thread.run_sync(current_rx, srv, peer),
                        "browser_legs": browser_legs(scraped.body.decode()),
                        "errors": errors.unexpected(),
                    }

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(bot_speaks)
                    await speaking.wait()
                    result = await in_browser(
                        human, fake_mic_wav=str(mic), extra_args=tls.chromium_args(), preferences=NO_UDP, viewport=None
                    )
                    nursery.cancel_scope.cancel()
    assert result["secure"] == {"secure": True, "protocol": "https:"}
    assert result["configured"] == [list(uris)]
    # No UDP of its own: the call took the TURN path offered (TCP or TLS to coturn).
    assert result["selected"] == {"type": "relay", "relayProtocol": path, "protocol": "udp"}
    assert turn.relays(result["browser_at"]), result["browser_at"]
    # The relay's metrics say so too: one browser leg, latched at the TURN server's address.
    assert result["browser_legs"] == {"turn": 1, "direct": 0}
    assert result["rx_packets"] > 40
    assert abs(result["remote"] - 440) < 8
    assert abs(dominant_frequency(result["heard"], 48000) - 660) < 5
    assert result["errors"] == []


def browser_legs(exposition: str) -> dict[str, float]:
    """``botcall_browser_legs{path}`` of a ``/metrics`` text, by path."""
    [family] = [f for f in text_string_to_metric_families(exposition) if f.name == "botcall_browser_legs"]
    return {sample.labels["path"]: sample.value for sample in family.samples}


def blocked_human(page_url: str):
    """Join from ``page_url`` and wait for the problem screen; what it said, and when."""

    def human(context: BrowserContext) -> dict:
        page = context.new_page()
        errors = PageErrors(page)
        page.goto(page_url)
        wait_state(page, "lobby")
        page.get_by_role("button", name=re.compile("Join")).click()
        clicked = time.monotonic()
        # Longer than the page's own timeout: the assertion below says how long it took.
        page.wait_for_function("() => botcall.state === 'error'", timeout=30_000)
        shown = time.monotonic() - clicked
        return {
            "problem": hooks(page)["problem"],
            "after_s": shown,
            "title": page.locator("#problem-title").text_content(),
            "steps": page.locator("#problem-steps").text_content(),
            "retry_visible": page.locator("#retry").is_visible(),
            "errors": errors.unexpected(),
        }

    return human


async def no_human_left(srv, room_id):
    """The page left the call: the server no longer holds a human session."""
    with trio.fail_after(10):
        while any(s.kind == "human" for s in srv.state.registry.sessions_in_room(room_id)):
            await trio.sleep(0.05)


def assert_network_blocked(result, *, within_s):
    assert result["problem"] == "network_blocked"
    assert result["after_s"] < within_s, result["after_s"]
    assert result["title"] == "Your network blocks calls"
    assert "another network" in result["steps"] and "TURN" in result["steps"]
    assert result["retry_visible"]
    assert result["errors"] == []


async def test_a_browser_without_udp_or_turn_hears_at_once_that_the_network_blocks_calls(tmp_path):
    # No UDP and no TURN: Chromium gathers no candidate, and the page says so at once.
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        invite = urlsplit(created["invite_url"])
        result = await in_browser(blocked_human(f"{srv.url}{invite.path}#{invite.fragment}"), preferences=NO_UDP)
        await no_human_left(srv, created["room_id"])
    assert_network_blocked(result, within_s=5.0)


async def test_a_turn_path_that_never_connects_ends_in_the_message_within_10_s(tmp_path):
    # TURN over TCP gives Chromium a relay candidate, but this coturn relays nothing
    # to loopback (its default): ICE checks go unanswered and the page's timeout speaks.
    async with running_coturn(tmp_path / "coturn", allow_loopback_peers=False) as turn:
        async with running_server(tmp_path / "server", turn_uris=(turn.uri("tcp"),), turn_secret=turn.secret) as srv:
            created = (await srv.create_room(srv.token(agent="creator#1"))).json()
            invite = urlsplit(created["invite_url"])
            result = await in_browser(blocked_human(f"{srv.url}{invite.path}#{invite.fragment}"), preferences=NO_UDP)
            await no_human_left(srv, created["room_id"])
    assert_network_blocked(result, within_s=10.0)
    assert result["after_s"] > 5.0  # the timeout, not the no-candidate path
