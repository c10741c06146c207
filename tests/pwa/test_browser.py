"""The join page in real headless Chromium against the real server.

Every test starts the server in-process (``running_server``) and drives
Chromium from a worker thread (``tests.kit.chromium``). Waits are on page
conditions (``wait_for_function``), never fixed sleeps.
"""

from __future__ import annotations

import json
import re
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
import trio
from playwright.sync_api import BrowserContext, Page, expect
from trio_websocket import open_websocket_url

from botcall.demo.signals import tone
from botcall_sdk import connect
from tests.kit.chromium import PageErrors, hooks, in_browser, wait_state
from tests.kit.server import running_server
from tests.kit.speech_corpus import spoken_pcm
from tests.kit.speaking import keep_saying

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

WRONG_SECRET = "A" * 24
HOSTILE_NAME = '<img src=x onerror="window.pwned=1">'


SPEECH = spoken_pcm()


async def open_room(srv, **body) -> tuple[str, str]:
    """Create a room; return its id and the invite path (``/join/<room>#invite=<secret>``)."""
    created = await srv.create_room(srv.token(agent="creator#1"), **body)
    assert created.status == 201, created.body
    payload = created.json()
    url = urlsplit(payload["invite_url"])
    return payload["room_id"], f"{url.path}#{url.fragment}"


async def join_bot(srv, room_id: str, agent: str) -> dict:
    response = await srv.join(srv.token(agent=agent, controller="gopi"), room_id, agent_id=agent)
    assert response.status == 200, response.body
    return response.json()


@asynccontextmanager
async def human_in_room(srv, invite_path: str, name: str):
    """A person joined over the signaling WebSocket (no media), present until exit."""
    room_id = invite_path.split("/")[2].split("#")[0]
    secret = invite_path.split("#invite=")[1]
    url = srv.url.replace("http://", "ws://") + f"/v1/signal/{room_id}"
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps({"type": "hello", "invite": secret}))
        assert json.loads(await ws.get_message())["type"] == "lobby"
        await ws.send_message(json.dumps({"type": "join", "display_name": name}))
        with trio.fail_after(5):
            while True:
                event = json.loads(await ws.get_message())
                if event["type"] in ("joined", "welcome"):
                    break
        yield event


class RegistryWatch:
    """Records the registry's events; a test waits for one matching a predicate."""

    def __init__(self, registry) -> None:
        self.events: list = []
        self._changed = trio.Event()
        registry.add_listener(self._on_event)

    def _on_event(self, event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate, timeout: float = 10.0):
        with trio.fail_after(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                await self._changed.wait()


def human_event(kind: str, name: str, **fields):
    def predicate(event) -> bool:
        session = getattr(event, "session", None)
        return (
            type(event).__name__ == kind
            and session is not None
            and session.kind == "human"
            and session.identity.display_name == name
            and all(getattr(session, k, getattr(event, k, None)) == v for k, v in fields.items())
        )

    return predicate


def open_page(context: BrowserContext, url: str) -> tuple[Page, PageErrors]:
    page = context.pages[0] if context.pages else context.new_page()
    errors = PageErrors(page)
    page.goto(url)
    return page, errors


def assert_problem_screen(page: Page, problem: str, title: str, *, retry: bool) -> None:
    state = wait_state(page, "error", "offline")
    assert hooks(page)["problem"] == problem
    expect(page.locator("#problem-title")).to_have_text(title)
    expect(page.locator("#problem-title")).to_be_visible()
    expect(page.locator("#problem-title")).to_be_focused()
    expect(page.locator("#screen-loading")).to_be_hidden()  # no spinner left behind
    if retry:
        expect(page.get_by_role("button", name="Try again")).to_be_visible()
    else:
        expect(page.get_by_role("button", name="Try again")).to_be_hidden()
    assert state == ("offline" if problem in ("offline", "unreachable") else "error")


def seconds(clock_text: str) -> int:
    """``"01:05"`` or ``"1:01:05"`` as seconds."""
    total = 0
    for part in clock_text.split(":"):
        total = total * 60 + int(part)
    return total


def assert_no_horizontal_scroll(page: Page) -> None:
    widths = page.evaluate("({doc: document.documentElement.scrollWidth, body: document.body.scrollWidth, view: innerWidth})")
    assert widths["doc"] <= widths["view"] and widths["body"] <= widths["view"], widths


async def test_wrong_invite_secret_says_the_link_is_not_valid(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        room_id, _ = await open_room(srv)

        def drive(context: BrowserContext) -> list[str]:
            page, errors = open_page(context, f"{srv.url}/join/{room_id}#invite={WRONG_SECRET}")
            assert_problem_screen(page, "invite_invalid", "This invite link is not valid", retry=False)
            expect(page.locator("#problem-detail")).to_contain_text("ask the person who invited you")
            assert_no_horizontal_scroll(page)
            return errors.unexpected("/v1/signal")

        assert await in_browser(drive) == []
        # The refused browser left nothing behind in the room.
        assert len(srv.state.registry.sessions_in_room(room_id)) == 0


async def test_each_refusal_has_its_own_message(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        _, invite = await open_room(srv)
        closed_id, closed_invite = await open_room(srv)
        deleted = await srv.delete(f"/v1/rooms/{closed_id}", bearer=srv.token(agent="creator#1", room=closed_id))
        assert deleted.status == 200, deleted.body
        room_path = invite.split("#")[0]

        def drive(context: BrowserContext) -> None:
            page, _ = open_page(context, f"{srv.url}{room_path}")
            assert_problem_screen(page, "invite_missing", "This invite link is not valid", retry=False)
            expect(page.locator("#problem-detail")).to_contain_text("#invite=")

            page.goto(f"{srv.url}/join/no-such-room#invite={WRONG_SECRET}")
            assert_problem_screen(page, "room_not_found", "We can't find this call", retry=False)

            page.goto(f"{srv.url}{closed_invite}")
            assert_problem_screen(page, "room_closed", "This call has ended", retry=False)

        await in_browser(drive)


async def test_lobby_shows_verified_bots_as_text_on_a_phone(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        room_id, invite = await open_room(srv, max_human_participants=3)
        await join_bot(srv, room_id, "orion#8f3a")
        async with human_in_room(srv, invite, HOSTILE_NAME):

            def drive(context: BrowserContext) -> list[str]:
                page, errors = open_page(context, f"{srv.url}{invite}")
                wait_state(page, "lobby")
                bot = page.locator('#lobby-people li[data-kind="bot"]')
                expect(bot).to_have_count(1)
                expect(bot).to_contain_text("Verified bot")
                expect(bot.locator(".summary")).to_have_text(
                    f"Orion, an AI agent, vouched for by gopi, verified by {srv.state.dev_issuer.issuer}."
                )
                expect(bot.locator("details dd.agent")).to_have_text("orion#8f3a")
                expect(bot.locator("details")).to_contain_text(srv.state.dev_issuer.issuer)
                expect(bot.locator("details")).to_contain_text("call:voice")
                person = page.locator('#lobby-people li[data-kind="human"]')
                expect(person.locator(".name")).to_have_text(HOSTILE_NAME)  # shown as text
                assert page.locator("#lobby-people img").count() == 0
                assert page.evaluate("window.pwned") is None
                expect(page.locator("#lobby-summary")).to_have_text("1 bot and 1 person on the call. Room for 3 people.")

                join = page.get_by_role("button", name=re.compile("Join"))
                expect(join).to_be_visible()
                box = join.bounding_box()
                assert box["height"] >= 48 and box["x"] >= 0 and box["x"] + box["width"] <= 360, box
                expect(page.get_by_label("Your name")).to_be_editable()
                assert_no_horizontal_scroll(page)

                # Events after the lobby update the list live.
                trio.from_thread.run(join_bot, srv, room_id, "vega#12ab")
                expect(page.locator('#lobby-people li[data-kind="bot"]')).to_have_count(2)
                expect(page.locator("#announce")).to_have_text(re.compile("vega#12ab joined|joined"))
                assert_no_horizontal_scroll(page)
                return errors.messages

            assert await in_browser(drive) == []


async def test_a_full_room_says_so_after_join(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        _, invite = await open_room(srv, max_human_participants=1)
        async with human_in_room(srv, invite, "first"):

            def drive(context: BrowserContext) -> dict:
                page, _ = open_page(context, f"{srv.url}{invite}")
                wait_state(page, "lobby")
                page.get_by_label("Your name").fill("second")
                page.get_by_role("button", name=re.compile("Join")).click()
                assert_problem_screen(page, "room_full", "This call is full", retry=True)
                # The microphone is released when the join is refused.
                assert page.evaluate("botcall.localStream") is None
                page.get_by_role("button", name="Try again").click()
                wait_state(page, "lobby")
                return hooks(page)

            after = await in_browser(drive)
        assert after["participantId"] is None


async def test_a_refused_microphone_explains_how_to_allow_it(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        room_id, invite = await open_room(srv)
        watch = RegistryWatch(srv.state.registry)

        def drive(context: BrowserContext) -> dict:
            page, _ = open_page(context, f"{srv.url}{invite}")
            wait_state(page, "lobby")
            page.get_by_label("Your name").fill("Ada")
            page.get_by_role("button", name=re.compile("Join")).click()
            assert_problem_screen(page, "mic_denied", "Microphone blocked", retry=True)
            expect(page.locator("#problem-steps")).to_contain_text("Set Microphone to Allow")
            assert_no_horizontal_scroll(page)
            # A first visit (the permission reads "prompt"): the join waits for the
            # microphone, so a refused one never joins (pwa/session.js, awaitingMic).
            permission = page.evaluate("async () => (await navigator.permissions.query({name: 'microphone'})).state")
            return {**hooks(page), "permission": permission, "marks": page.evaluate("botcall.marks")}

        after = await in_browser(drive, fake_mic_ui=False)
        assert after["permission"] == "denied"  # refused at the click; it read "prompt" in the lobby
        assert after["participantId"] is None
        assert "joined" not in after["marks"]
        assert not any(human_event("SessionAdded", "Ada")(event) for event in watch.events)
        assert not any(s.kind == "human" for s in srv.state.registry.sessions_in_room(room_id))


async def test_service_worker_serves_the_shell_offline_and_recovers(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        _, invite = await open_room(srv)

        def drive(context: BrowserContext) -> list[str]:
            page, errors = open_page(context, f"{srv.url}{invite}")
            wait_state(page, "lobby")
            scope = page.evaluate("navigator.serviceWorker.ready.then(r => r.scope)")
            assert scope == f"{srv.url}/"
            page.wait_for_function("() => navigator.serviceWorker.controller !== null")

            context.set_offline(True)
            page.reload()
            assert_problem_screen(page, "offline", "You're offline", retry=True)
            expect(page.locator("#problem-detail")).to_contain_text("The network is gone")
            expect(page.locator("#net")).to_be_visible()
            expect(page.locator(".brand")).to_have_text("BotCall")  # styled shell from the cache
            assert page.evaluate("getComputedStyle(document.querySelector('#retry')).minHeight") == "56px"

            context.set_offline(False)
            wait_state(page, "lobby")
            expect(page.locator("#net")).to_be_hidden()
            return errors.unexpected("ERR_INTERNET_DISCONNECTED", "/v1/signal")

        assert await in_browser(drive) == []


async def test_server_down_says_so_and_offers_retry(tmp_path):
    async with trio.open_nursery() as nursery:
        stop = trio.Event()

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            async with running_server(tmp_path, media_port=0) as srv:
                task_status.started(srv)
                await stop.wait()

        srv = await nursery.start(serve)
        _, invite = await open_room(srv)

        def drive(context: BrowserContext) -> None:
            page, _ = open_page(context, f"{srv.url}{invite}")
            wait_state(page, "lobby")
            page.wait_for_function("() => navigator.serviceWorker.controller !== null")
            trio.from_thread.run_sync(stop.set)
            # The open lobby socket drops: the page retries, then gives up with a message.
            page.reload()  # the shell comes from the service worker; the server is gone
            assert_problem_screen(page, "unreachable", "Can't reach BotCall", retry=True)
            page.get_by_role("button", name="Try again").click()
            assert_problem_screen(page, "unreachable", "Can't reach BotCall", retry=True)

        await in_browser(drive)


async def test_audio_helpers_measure_a_tone_over_webrtc(tmp_path):
    """The page's analyser code (pwa/audio.js) on a real remote WebRTC track:
    a 440 Hz oscillator sent through a loopback RTCPeerConnection pair."""
    async with running_server(tmp_path, media_port=0) as srv:

        def drive(context: BrowserContext) -> dict:
            page, _ = open_page(context, f"{srv.url}/")
            wait_state(page, "home")
            pure = page.evaluate(
                """async () => {
                    const audio = await import('/pwa/audio.js');
                    const bins = new Float32Array(64).fill(-120);
                    bins[10] = -20; bins[9] = -30; bins[11] = -30;
                    const symmetric = audio.peakFrequency(bins, 48000, 128);
                    bins[11] = -25;
                    const skewed = audio.peakFrequency(bins, 48000, 128);
                    const sine = new Float32Array(4800).map((_, i) => Math.sin(2 * Math.PI * 1000 * i / 48000));
                    return {
                        symmetric, skewed,
                        silentPeak: audio.peakFrequency(new Float32Array(64).fill(-Infinity), 48000, 128),
                        sineDb: audio.rmsDbfs(sine),
                        silenceDb: audio.rmsDbfs(new Float32Array(16)),
                        fractions: [audio.meterFraction(-90), audio.meterFraction(-30), audio.meterFraction(0), audio.meterFraction(-Infinity)],
                    };
                }"""
            )
            page.evaluate(
                """async () => {
                    const { Meter } = await import('/pwa/audio.js');
                    const ctx = new AudioContext();
                    await ctx.resume();
                    const osc = ctx.createOscillator();
                    osc.frequency.value = 440;
                    const out = ctx.createMediaStreamDestination();
                    osc.connect(out);
                    osc.start();
                    const a = new RTCPeerConnection(), b = new RTCPeerConnection();
                    a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
                    b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
                    a.addTrack(out.stream.getAudioTracks()[0], out.stream);
                    const track = new Promise((resolve) => { b.ontrack = (e) => resolve(e.streams[0]); });
                    await a.setLocalDescription(await a.createOffer());
                    await b.setRemoteDescription(a.localDescription);
                    await b.setLocalDescription(await b.createAnswer());
                    await a.setRemoteDescription(b.localDescription);
                    const stream = await track;
                    const element = new Audio();
                    element.srcObject = stream;
                    element.muted = true;
                    await element.play();
                    window.testMeter = new Meter(ctx, stream, 8192);
                }"""
            )
            # Wait for the steady tone: on a busy machine the 8192-sample window
            # still holds the silence before the track started when the peak
            # first shows (measured -29.8 dBFS once under stress-ng); a meter
            # that never reads the tone's level times this out.
            page.wait_for_function(
                "() => { const f = window.testMeter.frequency(); return f !== null && Math.abs(f - 440) < 5 && window.testMeter.level() > -20; }"
            )
            return {**pure, "frequency": page.evaluate("testMeter.frequency()"), "level": page.evaluate("testMeter.level()")}

        result = await in_browser(drive)
    assert result["symmetric"] == pytest.approx(10 * 48000 / 128)
    # A louder right neighbour pulls the estimate right, by less than half a bin.
    assert 10 * 375 < result["skewed"] < 10.5 * 375
    assert result["silentPeak"] is None
    assert result["sineDb"] == pytest.approx(-3.01, abs=0.02)
    assert result["silenceDb"] == float("-inf")
    assert result["fractions"] == [0, 0.5, 1, 0]
    assert abs(result["frequency"] - 440) < 5
    assert -20 < result["level"] < 0


async def test_join_mute_hang_up_and_rejoin(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        room_id, invite = await open_room(srv)
        watch = RegistryWatch(srv.state.registry)

        def wait_server(predicate):
            return trio.from_thread.run(watch.wait_for, predicate)

        def drive(context: BrowserContext) -> dict:
            page, errors = open_page(context, f"{srv.url}{invite}")
            wait_state(page, "lobby")
            page.get_by_label("Your name").fill("Ada")
            page.get_by_role("button", name=re.compile("Join")).click()
            wait_state(page, "connected")
            expect(page.locator("#conn")).to_have_text("Connected")
            added = wait_server(human_event("SessionAdded", "Ada"))
            state = hooks(page)
            assert state["participantId"] == added.session.participant_id
            assert page.evaluate("botcall.pc.connectionState") == "connected"
            me = page.locator(f'#call-people li[data-participant-id="{added.session.participant_id}"]')
            expect(me).to_contain_text("You")
            expect(page.locator("#duration")).to_have_text(re.compile(r"^\d\d:\d\d$"))
            assert_no_horizontal_scroll(page)

            mute = page.get_by_role("button", name="Mute")
            mute.click()
            expect(mute).to_have_attribute("aria-pressed", "true")
            assert page.evaluate("botcall.localStream.getAudioTracks().every(t => !t.enabled)")
            wait_server(human_event("SessionUpdated", "Ada", muted=True))
            expect(me).to_have_attribute("data-muted", "true")
            mute.click()
            expect(mute).to_have_attribute("aria-pressed", "false")
            assert page.evaluate("botcall.localStream.getAudioTracks().every(t => t.enabled)")
            wait_server(human_event("SessionUpdated", "Ada", muted=False))

            page.get_by_role("button", name="Hang up").click()
            wait_state(page, "ended")
            expect(page.locator("#ended-title")).to_have_text("Call ended")
            expect(page.locator("#ended-duration")).to_have_text(re.compile(r"^\d\d:\d\d$"))
            assert page.evaluate("botcall.pc === null && botcall.localStream === null")
            wait_server(human_event("SessionRemoved", "Ada", reason="left"))

            page.get_by_role("button", name="Rejoin").click()
            wait_state(page, "connected")
            rejoined = hooks(page)["participantId"]
            assert rejoined not in (None, added.session.participant_id)
            marks = page.evaluate("botcall.marks")
            return {"errors": errors.messages, "marks": marks}

        result = await in_browser(drive)
    marks = result["marks"]
    assert marks["click"] < marks["joined"] < marks["answer"] < marks["connected"]
    print(
        "join click -> joined {:.0f} ms, -> answer {:.0f} ms, -> connected {:.0f} ms".format(
            marks["joined"] - marks["click"], marks["answer"] - marks["click"], marks["connected"] - marks["click"]
        )
    )
    assert result["errors"] == []


async def test_time_from_join_click_to_a_bots_voice(tmp_path):
    """A bot speaks 440 Hz; the page's hooks hear it after Join. Then it talks
    (espeak-ng speech: a tone is not speech to the relay's detector), its
    speaking light comes on, and its chat shows up as text.

    Prints the time from the click to the first audible remote audio (the
    target is under 300 ms); asserts only the order of events and the tone.
    """
    async with running_server(tmp_path, media_port=0) as srv:
        room_id, invite = await open_room(srv)
        async with connect(srv.url, room_id, srv.token(agent="orion#8f3a")) as bot, trio.open_nursery() as nursery:

            talking = False

            async def speak() -> None:
                while True:
                    await (await bot.say(SPEECH if talking else tone(440, 0.5))).done()

            nursery.start_soon(speak)

            def drive(context: BrowserContext) -> dict:
                page = context.pages[0] if context.pages else context.new_page()
                sockets = []
                page.on("websocket", lambda ws: sockets.append(ws))
                errors = PageErrors(page)
                page.goto(f"{srv.url}{invite}")
                wait_state(page, "lobby")
                expect(page.locator('#lobby-people li[data-kind="bot"]')).to_contain_text("orion#8f3a")
                page.get_by_role("button", name=re.compile("Join")).click()
                page.wait_for_function("() => botcall.marks.audio !== undefined")
                # Let the 8192-point analyser window (170 ms) fill with the tone before reading it.
                page.wait_for_function("() => performance.now() - botcall.marks.audio > 500")
                # Read the tone now, in steady state: later the window would hold the
                # mute/unmute gap below, which smears the spectrum's peak.
                heard = {"frequency": page.evaluate("botcall.remoteFrequency()"), "level": page.evaluate("botcall.remoteLevel()")}
                # Speaking and muted lights follow the server's events about the bot.
                bot_item = page.locator('#call-people li[data-kind="bot"]')
                nonlocal talking
                talking = True
                expect(bot_item).to_have_attribute("data-speaking", "true")

                def bot_silent(payload: str) -> bool:
                    event = json.loads(payload)
                    return event["type"] == "speaking" and event["participant_id"] == bot.participant_id and not event["speaking"]

                # The relay's hangover ends "speaking" after silence: unmute only once it has said the bot stopped.
                with sockets[0].expect_event("framereceived", predicate=bot_silent):
                    trio.from_thread.run(bot.mute)
                expect(bot_item).to_have_attribute("data-muted", "true")
                expect(bot_item.locator(".status")).to_have_text("Muted")
                expect(bot_item).to_have_attribute("data-speaking", "false")
                trio.from_thread.run(bot.unmute)
                expect(bot_item).to_have_attribute("data-speaking", "true")
                expect(bot_item.locator(".status")).to_have_text("Speaking")

                trio.from_thread.run(bot.chat, "hi <b>there</b>")
                expect(page.locator("#chat-unread")).to_have_text("1")
                page.locator("#chat summary").click()
                expect(page.locator("#chat-log")).to_contain_text("hi <b>there</b>")
                assert page.locator("#chat-log b").count() == 0
                expect(page.locator("#chat-unread")).to_be_hidden()
                me = srv.state.registry.session_by_id(
                    next(s.session_id for s in srv.state.registry.sessions_in_room(room_id) if s.kind == "human")
                )
                expect(page.locator("#chat-form")).to_be_visible(visible=me.capabilities.text_chat)
                return {
                    "marks": page.evaluate("botcall.marks"),
                    **heard,
                    "errors": errors.messages,
                }

            result = await in_browser(drive)
            nursery.cancel_scope.cancel()
    marks = result["marks"]
    assert marks["click"] < marks["joined"] < marks["answer"] < marks["connected"] <= marks["audio"]
    print({name: round(at - marks["click"]) for name, at in marks.items()})
    assert abs(result["frequency"] - 440) < 5
    assert result["level"] > -40
    assert result["errors"] == []


async def test_keepalive_ping_and_call_duration_follow_the_page_clock(tmp_path):
    """Playwright's fake page clock drives the page's timers: no real waiting."""
    async with running_server(tmp_path, media_port=0) as srv:
        _, invite = await open_room(srv)

        def drive(context: BrowserContext) -> dict:
            page = context.pages[0] if context.pages else context.new_page()
            errors = PageErrors(page)
            sent: list[str] = []
            sockets = []

            def on_websocket(ws) -> None:
                sockets.append(ws)
                ws.on("framesent", lambda payload: sent.append(payload))

            page.on("websocket", on_websocket)
            page.clock.install()
            page.goto(f"{srv.url}{invite}")
            wait_state(page, "lobby")
            pings = lambda: sum(1 for frame in sent if json.loads(frame)["type"] == "ping")  # noqa: E731
            assert json.loads(sent[0]) == {"type": "hello", "invite": invite.split("#invite=")[1]}

            page.clock.run_for(14_000)
            assert pings() == 0
            with sockets[0].expect_event("framereceived", predicate=lambda payload: json.loads(payload)["type"] == "pong"):
                page.clock.run_for(2_000)
            assert pings() == 1

            page.get_by_role("button", name=re.compile("Join")).click()
            wait_state(page, "connected")
            # From here the page's time moves only when the test moves it.
            page.clock.pause_at(page.evaluate("Date.now()") / 1000 + 0.5)
            start = seconds(page.locator("#duration").inner_text())
            page.clock.run_for(65_000)
            after_minute = page.locator("#duration").inner_text()
            page.clock.fast_forward(3600_000)  # due timers fire once: no hour of animation frames
            after_hour = page.locator("#duration").inner_text()
            page.get_by_role("button", name="Hang up").click()
            ended = page.locator("#ended-duration").inner_text()
            assert re.fullmatch(r"\d\d:\d\d", after_minute) and re.fullmatch(r"1:\d\d:\d\d", after_hour)
            assert start <= 1 and 64 <= seconds(after_minute) - start <= 66
            assert 3600 <= seconds(after_hour) - seconds(after_minute) <= 3601
            assert ended == after_hour
            return {"pings": pings(), "errors": errors.messages, "sent": [json.loads(f)["type"] for f in sent]}

        result = await in_browser(drive)
    assert result["pings"] >= 1 + 65 // 15
    assert result["sent"][:2] == ["hello", "ping"] and result["sent"][-1] == "control"
    assert result["errors"] == []


CONTRAST_JS = """
(cases) => {
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const parse = (colour) => colour.match(/[\\d.]+/g).map(Number);
  const background = (node) => {
    for (; node; node = node.parentElement) {
      const c = parse(getComputedStyle(node).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  // Sample participants, to style the tags and status lights like the real ones.
  const list = document.getElementById('lobby-people');
  for (const [speaking, muted] of [['true', 'false'], ['false', 'true']]) {
    const li = document.createElement('li');
    li.className = 'person';
    li.dataset.speaking = speaking;
    li.dataset.muted = muted;
    li.innerHTML = '<div class="person-head"><span class="name">x</span><span class="tag verified">Verified bot</span><span class="status">s</span></div>';
    list.append(li);
  }
  return cases.map(([selector, attribute, value]) => {
    const node = document.querySelectorAll(selector)[selector.endsWith('.status') && attribute === 'muted' ? 1 : 0];
    if (attribute && attribute !== 'muted') node.setAttribute(attribute, value);
    const [a, b] = [luminance(parse(getComputedStyle(node).color).slice(0, 3)), luminance(background(node))].sort((x, y) => y - x);
    return [selector + (attribute ? `[${attribute}=${value}]` : ''), (a + 0.05) / (b + 0.05)];
  });
}
"""
CONTRAST_CASES = [
    ["body", None, None],
    [".brand", None, None],
    ["#home-form label", None, None],
    ["#home-link", None, None],
    ["#home-error", None, None],
    ["#lobby-summary", None, None],
    ["#join", None, None],
    ["#hangup", None, None],
    ["#mute", None, None],
    ["#mute", "aria-pressed", "true"],
    ["#conn", "data-state", "connecting"],
    ["#conn", "data-state", "connected"],
    ["#conn", "data-state", "reconnecting"],
    ["#net", None, None],
    ["#chat summary", None, None],
    [".tag.verified", None, None],
    ["#lobby-people .status", None, None],
    ["#lobby-people .status", "muted", "true"],
]


async def test_text_contrast_in_light_and_dark(tmp_path):
    """WCAG 2.x contrast of every kind of text, computed from the real styles (AA: 4.5)."""
    async with running_server(tmp_path, media_port=0) as srv:

        def drive(context: BrowserContext) -> dict:
            page, _ = open_page(context, f"{srv.url}/")
            results = {}
            for scheme in ("light", "dark"):
                page.emulate_media(color_scheme=scheme)
                page.reload()
                wait_state(page, "home")
                results[scheme] = dict(page.evaluate(CONTRAST_JS, CONTRAST_CASES))
            return results

        results = await in_browser(drive)
    print({scheme: {name: round(r, 1) for name, r in ratios.items()} for scheme, ratios in results.items()})
    for scheme, ratios in results.items():
        assert len(ratios) == len(CONTRAST_CASES)
        low = {name: round(ratio, 2) for name, ratio in ratios.items() if ratio < 4.5}
        assert low == {}, (scheme, low)
    # The dark scheme really applied: the page background is dark, the text light.
    assert results["dark"]["body"] > 10 and results["light"]["body"] > 10


async def test_network_blip_and_signaling_drop_during_a_call(tmp_path):
    async with running_server(tmp_path, media_port=0) as srv:
        room_id, invite = await open_room(srv)  # room for one person

        def session_of(participant_id: str):
            return next(s for s in srv.state.registry.sessions_in_room(room_id) if s.participant_id == participant_id)

        def drop_signaling(participant_id: str) -> None:
            # 1012 "service restart" (RFC 6455 §7.4.1 registry): the socket goes, the session stays.
            srv.state.hub.connection(session_of(participant_id).session_id).request_close(1012, "restarting")

        def expire(participant_id: str) -> None:
            # What housekeeping does once the server has noticed the lost socket.
            srv.state.registry.leave(session_of(participant_id).session_id, "expired", now=srv.clock())

        def drive(context: BrowserContext) -> dict:
            page = context.pages[0] if context.pages else context.new_page()
            errors = PageErrors(page)
            sockets = []
            page.on("websocket", lambda ws: sockets.append(ws))
            page.clock.install()
            page.goto(f"{srv.url}{invite}")
            wait_state(page, "lobby")
            page.get_by_role("button", name=re.compile("Join")).click()
            wait_state(page, "connected")
            first = hooks(page)["participantId"]

            context.set_offline(True)
            wait_state(page, "reconnecting")
            expect(page.locator("#net")).to_be_visible()
            expect(page.locator("#conn")).to_have_text("Reconnecting…")
            context.set_offline(False)
            wait_state(page, "connected")  # the media path never broke
            expect(page.locator("#net")).to_be_hidden()
            assert hooks(page)["participantId"] == first

            trio.from_thread.run_sync(drop_signaling, first)
            wait_state(page, "reconnecting")
            page.clock.run_for(1_000)  # the first retry resumes our own place in the call
            wait_state(page, "connected")
            assert hooks(page)["participantId"] == first
            expect(page.locator(f'#call-people li[data-participant-id="{first}"]')).to_contain_text("You")
            humans = trio.from_thread.run_sync(
                lambda: [s.participant_id for s in srv.state.registry.sessions_in_room(room_id) if s.kind == "human"]
            )
            offers = trio.from_thread.run_sync(lambda: srv.state.media.relay.counters["dtls_connected"])
            return {"errors": errors.unexpected("ERR_INTERNET_DISCONNECTED"), "first": first, "humans": humans, "dtls": offers}

        result = await in_browser(drive)
    assert result["humans"] == [result["first"]]  # one person, one place: no ghost left behind
    assert result["dtls"] == 1  # the media leg survived the signaling drop; nothing was renegotiated
    assert result["errors"] == []


async def test_playout_delay_reports_and_speech_events(tmp_path):
    """Once in a call with a bot that talks, the page reports its jitter buffer's
    delay every second (the server sets its relay peer's ``playout_delay_ms``),
    and a bot's speaking light follows ``speech_started`` / ``speech_stopped``."""
    async with running_server(tmp_path, media_port=0) as srv:
        room_id, invite = await open_room(srv)
        async with connect(srv.url, room_id, srv.token(agent="orion#8f3a")) as talker, connect(
            srv.url, room_id, srv.token(agent="quiet#1")
        ) as quiet, trio.open_nursery() as nursery:

            async def speak() -> None:
                await keep_saying(talker, tone(440, 10.0))

            nursery.start_soon(speak)

            def human_peer():
                [human] = [s for s in srv.state.registry.sessions_in_room(room_id) if s.kind == "human"]
                return srv.state.started_media().relay.peer(human.session_id)

            async def reported_delay(timeout: float = 10.0) -> int:
                """The human's relay peer's playout_delay_ms once a report set it above 0."""
                with trio.fail_after(timeout):
                    while (peer := human_peer()) is None or peer.playout_delay_ms <= 0:
                        await trio.sleep(0.05)
                return peer.playout_delay_ms

            def broadcast(event: dict) -> None:
                trio.from_thread.run_sync(lambda: srv.state.hub.broadcast(room_id, event))

            def drive(context: BrowserContext) -> dict:
                page = context.pages[0] if context.pages else context.new_page()
                sockets = []
                page.on("websocket", lambda ws: sockets.append(ws))
                errors = PageErrors(page)
                page.goto(f"{srv.url}{invite}")
                wait_state(page, "lobby")
                page.get_by_role("button", name=re.compile("Join")).click()
                wait_state(page, "connected")
                page.wait_for_function("() => botcall.marks.audio !== undefined")

                def report(payload: str) -> bool:
                    return json.loads(payload)["type"] == "playout_delay"

                with sockets[0].expect_event("framesent", predicate=report, timeout=10_000) as sent:
                    pass
                first = json.loads(sent.value)
                delay = trio.from_thread.run(reported_delay)

                quiet_item = page.locator(f'#call-people li[data-participant-id="{quiet.participant_id}"]')
                expect(quiet_item).to_have_attribute("data-speaking", "false")
                broadcast({"type": "speech_started", "participant_id": quiet.participant_id, "stream_ms": 0})
                expect(quiet_item).to_have_attribute("data-speaking", "true")
                expect(quiet_item.locator(".status")).to_have_text("Speaking")
                # Events the page does not use change nothing.
                for event in (
                    {"type": "interrupted", "participant_id": quiet.participant_id, "played_ms": 10},
                    {"type": "mark", "name": "x", "played_ms": 10},
                    {"type": "stream_started", "participant_id": quiet.participant_id, "ssrc": 1, "rtp_timestamp": 0},
                ):
                    broadcast(event)
                broadcast({"type": "speech_stopped", "participant_id": quiet.participant_id, "stream_ms": 1200, "duration_ms": 1200})
                expect(quiet_item).to_have_attribute("data-speaking", "false")
                expect(quiet_item.locator(".status")).to_have_text("")
                assert hooks(page)["state"] == "connected"
                return {"first": first, "delay": delay, "errors": errors.messages}

            result = await in_browser(drive)
            nursery.cancel_scope.cancel()
    print(f"first report {result['first']}, the relay peer's playout_delay_ms {result['delay']}")
    assert set(result["first"]) == {"type", "ms"} and isinstance(result["first"]["ms"], int)
    assert 0 < result["delay"] <= 10_000
    assert result["errors"] == []
