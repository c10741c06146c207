"""The lobby opens the microphone for a person who allowed it before (pwa/app.js).

A returning person's browser reports the microphone permission as granted, so
the lobby opens the microphone before Join, as a call app's device check does,
and the call uses that stream: the capture is running before the first packets
arrive, and Chromium's audio output starts with them instead of 0-300 ms
later (docs/bench-results.md §16i). A first visit asks at the Join click and
joins once the microphone is allowed. Checked in real headless Chromium, with the bot hearing the page's
microphone by content.
"""

from __future__ import annotations

import re

import pytest
import trio
from playwright.sync_api import BrowserContext, expect

from botcall.demo.signals import dominant_frequency
from tests.kit.chromium import PageErrors, hooks, in_browser, wait_state
from tests.kit.invite_call import bot_room
from tests.kit.speaking import frames_from

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

# Counts the page's getUserMedia calls and keeps what they gave.
COUNT_MIC_SCRIPT = """(() => {
    const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    window.__mics = [];
    navigator.mediaDevices.getUserMedia = async (constraints) => {
        const entry = {clicked: window.__clicked === true, stream: null};
        window.__mics.push(entry);
        entry.stream = await original(constraints);
        return entry.stream;
    };
    document.addEventListener('click', () => { window.__clicked = true; }, true);
})();"""

MICS = """() => window.__mics.map((m) => ({
    clicked: m.clicked,
    tracks: m.stream ? m.stream.getTracks().map((t) => ({id: t.id, state: t.readyState})) : [],
}))"""


async def run_call(tmp_path, *, returning: bool) -> dict:
    async with bot_room(tmp_path) as call:
        bot = call.bot

        def human(context: BrowserContext) -> dict:
            context.add_init_script(COUNT_MIC_SCRIPT)
            page = context.new_page()
            errors = PageErrors(page)
            page.goto(call.page_url)
            wait_state(page, "lobby")
            note = page.locator("#lobby-mic")
            # The page asked the permission state itself; this answer comes after its own.
            permission = page.evaluate("async () => (await navigator.permissions.query({name: 'microphone'})).state")
            if returning:
                expect(note).to_have_text("Your microphone is on and ready.")
            else:
                # The person allows the microphone at the Join click's prompt
                # (granted here ahead of it: headless Chromium shows no prompt).
                context.grant_permissions(["microphone"])
            lobby = page.evaluate(MICS)
            lobby_note = note.text_content()
            page.get_by_role("button", name=re.compile("Join")).click()
            wait_state(page, "connected")
            participant = hooks(page)["participantId"]
            heard = trio.from_thread.run(frames_from, bot, participant, 40)
            in_call = page.evaluate(MICS)
            sending = page.evaluate("() => botcall.localStream.getAudioTracks()[0].id")
            marks = page.evaluate("botcall.marks")
            page.get_by_role("button", name="Hang up").click()
            wait_state(page, "ended")
            page.wait_for_function("() => window.__mics.every((m) => !m.stream || m.stream.getTracks().every((t) => t.readyState === 'ended'))")
            return {
                "permission": permission,
                "lobby": lobby,
                "lobby_note": lobby_note,
                "in_call": in_call,
                "sending": sending,
                "marks": marks,
                "heard": heard,
                "errors": errors.unexpected(),
            }

        # A returning person: the browser reports the permission granted (the
        # test browser's auto-accepting prompt does). A first visit: no grant yet.
        return await in_browser(human, fake_mic_wav=str(call.mic), fake_mic_ui=returning)


async def test_a_returning_person_s_microphone_opens_in_the_lobby_and_carries_the_call(tmp_path):
    result = await run_call(tmp_path, returning=True)
    assert result["permission"] == "granted"
    # One request, made by the lobby before the click, and its track is the one sent.
    assert len(result["lobby"]) == 1 and not result["lobby"][0]["clicked"]
    assert result["lobby"][0]["tracks"][0]["state"] == "live"
    assert result["in_call"] == result["lobby"]  # Join asked for no second stream
    assert result["sending"] == result["lobby"][0]["tracks"][0]["id"]
    # The bot hears that microphone (the fake device plays 660 Hz).
    assert abs(dominant_frequency(result["heard"], 48000) - 660) < 5
    assert result["errors"] == []


async def test_a_first_visit_asks_at_the_join_click(tmp_path):
    result = await run_call(tmp_path, returning=False)
    assert result["permission"] == "prompt"
    assert result["lobby"] == []  # nothing opened before the click
    assert result["lobby_note"] == "Joining asks to use your microphone."
    assert len(result["in_call"]) == 1 and result["in_call"][0]["clicked"]
    # The join waited for the microphone (pwa/session.js, awaitingMic).
    assert result["marks"]["click"] < result["marks"]["mic"] < result["marks"]["joined"]
    assert result["sending"] == result["in_call"][0]["tracks"][0]["id"]
    assert abs(dominant_frequency(result["heard"], 48000) - 660) < 5
    assert result["errors"] == []


# Holds the page's microphone permission query until the test releases it.
HELD_QUERY_SCRIPT = """(() => {
    const query = navigator.permissions.query.bind(navigator.permissions);
    let release;
    const held = new Promise((resolve) => { release = resolve; });
    navigator.permissions.query = (descriptor) => descriptor && descriptor.name === 'microphone'
        ? held.then(() => query(descriptor)) : query(descriptor);
    // Resolves after the page's own continuation of the query (a macrotask later).
    window.__releaseQuery = () => { release(); return new Promise((resolve) => setTimeout(resolve, 50)); };
})();"""


async def test_a_join_before_the_lobby_knows_the_permission_opens_one_microphone(tmp_path):
    async with bot_room(tmp_path) as call:

        def human(context: BrowserContext) -> dict:
            context.add_init_script(COUNT_MIC_SCRIPT)
            context.add_init_script(HELD_QUERY_SCRIPT)
            page = context.new_page()
            errors = PageErrors(page)
            page.goto(call.page_url)
            wait_state(page, "lobby")
            page.get_by_role("button", name=re.compile("Join")).click()
            wait_state(page, "connected")
            participant = hooks(page)["participantId"]
            # The lobby learns "granted" only now, after the join took its microphone.
            page.evaluate("window.__releaseQuery()")
            heard = trio.from_thread.run(frames_from, call.bot, participant, 20)
            mics = page.evaluate(MICS)
            page.get_by_role("button", name="Hang up").click()
            wait_state(page, "ended")
            return {"mics": mics, "heard": heard, "errors": errors.unexpected()}

        result = await in_browser(human, fake_mic_wav=str(call.mic))
    # One microphone, asked for by the click; the late answer opened no second one.
    assert len(result["mics"]) == 1 and result["mics"][0]["clicked"]
    assert abs(dominant_frequency(result["heard"], 48000) - 660) < 5
    assert result["errors"] == []
