"""Firefox through a whole call's life: mute, a signaling drop, hang up, rejoin, renegotiation.

The Firefox twins of the Chromium cases in ``test_browser_call.py``,
``tests/pwa/test_browser.py`` (mute, hang up, rejoin, a signaling drop) and
``test_renegotiation.py``. The server runs on its default media settings and
Firefox on its default ICE settings (see ``test_firefox_call.py``). The bot is
the Python SDK over UDP playing 440 Hz; Firefox's fake microphone is a sine at
``FAKE_MIC_HZ``. After every step the audio is checked by content both ways:
the page's analyser reads the bot's 440 Hz on the remote track and its inbound
packet count grows, and the bot decodes the human's tone from audio that
arrived *after* the step.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
import trio

from botcall_sdk import connect
from botcall.demo.signals import dominant_frequency, rms_dbfs, tone
from tests.e2e.test_browser_call import relay_peer
from tests.kit.firefox import FAKE_MIC_HZ, HOOKS, click, in_firefox, join_call, page, wait_for, wait_state
from tests.kit.server import running_server
from tests.kit.speaking import keep_saying

pytestmark = [pytest.mark.firefox, pytest.mark.e2e]

# Both directions must be back within this long after a step (a safety net on
# a busy machine: the Chromium twin's bound is 1 s).
RESUME_S = 5.0
# Half a second of 20 ms packets: audio is flowing, not a straggler.
RESUMED_PACKETS = 25
TONE_AT_PAGE = "botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - 440) < 8"


@dataclass
class BotEars:
    """Everything the bot heard and every event it got, stamped on arrival (monotonic)."""

    frames: list[tuple[float, str | None, bytes]] = field(default_factory=list)
    events: list[tuple[float, dict]] = field(default_factory=list)

    async def hear(self, bot) -> None:
        async for frame in bot.audio():
            if not frame.concealed:
                self.frames.append((time.monotonic(), frame.speaker, frame.pcm))

    async def listen(self, bot) -> None:
        async for event in bot.events():
            self.events.append((time.monotonic(), dict(event.raw)))  # the server's JSON

    def loud_since(self, since: float, participant_id: str) -> list[bytes]:
        return [pcm for at, who, pcm in self.frames if at >= since and who == participant_id and rms_dbfs(pcm) > -40]

    def event_since(self, since: float, kind: str) -> dict | None:
        return next((event for at, event in self.events if at >= since and event["type"] == kind), None)


async def wait_until(predicate, timeout: float = 10.0):
    """Poll the bot's or the server's state (a safety timeout, not a speed requirement)."""
    with trio.fail_after(timeout):
        while not (value := predicate()):
            await trio.sleep(0.02)
        return value


def inbound_packets(client) -> int:
    return client.execute_async_script(
        HOOKS
        + """
        const done = arguments[arguments.length - 1];
        botcall.pc.getStats().then((report) => {
          let packets = 0;
          report.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') packets += s.packetsReceived; });
          done(packets);
        }).catch(() => done(-1));
        """
    )


def both_ways(client, ears: BotEars, peer_of, participant: str, since: float) -> dict:
    """Wait until both directions carry audio again after ``since``; what was seen.

    ``peer_of()`` is the relay's peer of the human (it may be replaced on a
    rejoin). The bot's frames are those that arrived after ``since``.
    """
    page_before = inbound_packets(client)
    relay_before = trio.from_thread.run_sync(lambda: peer_of().rx_packets)
    while True:
        page_packets = inbound_packets(client) - page_before
        relay_packets = trio.from_thread.run_sync(lambda: peer_of().rx_packets) - relay_before
        tone_ok = bool(page(client, f"return {TONE_AT_PAGE};"))
        heard = trio.from_thread.run_sync(ears.loud_since, since, participant)
        elapsed = time.monotonic() - since
        if (page_packets >= RESUMED_PACKETS and relay_packets >= RESUMED_PACKETS and tone_ok and len(heard) >= 25) or elapsed > RESUME_S:
            break
        time.sleep(0.05)
    frequency = dominant_frequency(b"".join(heard), 48000) if heard else None
    return {"seconds": elapsed, "page_packets": page_packets, "relay_packets": relay_packets, "tone": tone_ok, "heard_hz": frequency}


def assert_flowing(name: str, seen: dict) -> None:
    assert seen["tone"], (name, seen)
    assert seen["page_packets"] >= RESUMED_PACKETS and seen["relay_packets"] >= RESUMED_PACKETS, (name, seen)
    assert seen["heard_hz"] is not None and abs(seen["heard_hz"] - FAKE_MIC_HZ) < 5, (name, seen)


async def test_firefox_mute_signaling_drop_hang_up_and_rejoin_keep_audio_both_ways(tmp_path):
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        room_id = created["room_id"]
        invite = urlsplit(created["invite_url"])
        async with connect(srv.url, room_id, srv.token(agent="orion#8f3a")) as bot:
            ears = BotEars()

            def session_of(participant_id: str):
                return next(s for s in srv.state.registry.sessions_in_room(room_id) if s.participant_id == participant_id)

            def human(client) -> dict:
                steps = {}
                first = join_call(client, f"{srv.url}{invite.path}#{invite.fragment}")

                def peer_of(participant=first):
                    return relay_peer(srv, room_id, participant)

                steps["joined"] = both_ways(client, ears, peer_of, first, time.monotonic())
                # Speech in bursts (Firefox's fake microphone is a steady tone, which
                # the relay's detector takes for the noise floor): the relay hears the
                # human start speaking from Firefox's audio-level header extension (id 1
                # in its offer), and the page's speaking light goes on.
                bursts_at = time.monotonic()
                page(client, SPEAK_IN_BURSTS)
                started = trio.from_thread.run(
                    wait_until,
                    lambda: next((e for at, e in ears.events if at >= bursts_at and e["type"] == "speech_started" and e["participant_id"] == first), None),
                )
                light = wait_for(client, f"document.querySelector('#call-people li[data-participant-id=\"{first}\"]')?.dataset.speaking === 'true'")
                page(client, "window.wrappedJSObject.__bursts.restore();")

                # Mute: the relay drops the human's audio, the bot hears none of it.
                muted_at = time.monotonic()
                click(client, "#mute")
                pressed = page(client, "return document.querySelector('#mute').getAttribute('aria-pressed')")
                tracks_off = page(client, "return botcall.localStream.getAudioTracks().every((t) => !t.enabled)")
                muted = trio.from_thread.run(wait_until, lambda: ears.event_since(muted_at, "muted"))
                trio.from_thread.run(wait_until, lambda: peer_of().drops["muted"] >= RESUMED_PACKETS)
                # Frames the bot's own jitter buffer still held may trail the mute by its depth.
                quiet_from = time.monotonic() + 0.5
                time.sleep(1.0)
                heard_while_muted = len(ears.loud_since(quiet_from, first))
                # Unmute: the human's tone is back at the bot, and the page still hears the bot.
                click(client, "#mute")
                steps["unmuted"] = both_ways(client, ears, peer_of, first, time.monotonic())

                # The signaling socket drops ("service restart"): the page takes its place
                # back, the media leg never broke.
                dropped_at = time.monotonic()
                trio.from_thread.run_sync(
                    lambda: srv.state.hub.connection(session_of(first).session_id).request_close(1012, "restarting")
                )
                wait_state(client, "reconnecting")
                wait_state(client, "connected")
                resumed_as = page(client, "return botcall.participantId")
                steps["signaling drop"] = both_ways(client, ears, peer_of, first, dropped_at)

                # Hang up: the bot is told at once.
                hung_up = time.monotonic()
                click(client, "#hangup")
                left = trio.from_thread.run(wait_until, lambda: ears.event_since(hung_up, "participant_left"))
                wait_state(client, "ended")
                left_after = time.monotonic() - hung_up

                # Rejoin from the "Call ended" screen: a new participant, audio both ways.
                click(client, "#rejoin")
                wait_state(client, "connected")
                second = page(client, "return botcall.participantId")
                steps["rejoined"] = both_ways(client, ears, lambda: peer_of(second), second, time.monotonic())
                humans = trio.from_thread.run_sync(
                    lambda: [s.participant_id for s in srv.state.registry.sessions_in_room(room_id) if s.kind == "human"]
                )
                return {
                    "first": first,
                    "second": second,
                    "speech_started": started,
                    "light": light,
                    "steps": steps,
                    "pressed": pressed,
                    "tracks_off": tracks_off,
                    "muted": muted,
                    "heard_while_muted": heard_while_muted,
                    "resumed_as": resumed_as,
                    "left": left,
                    "left_after": left_after,
                    "humans": humans,
                }

            async def bot_speaks():
                await keep_saying(bot, tone(440, 5.0))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(bot_speaks)
                nursery.start_soon(ears.hear, bot)
                nursery.start_soon(ears.listen, bot)
                result = await in_firefox(human)
                nursery.cancel_scope.cancel()
    for name, seen in result["steps"].items():
        print(f"{name}: both ways after {seen['seconds'] * 1000:.0f} ms, the bot heard {seen['heard_hz']:.0f} Hz")
        assert_flowing(name, seen)
    assert result["speech_started"]["stream_ms"] >= 0 and result["light"] is True
    assert result["pressed"] == "true" and result["tracks_off"] is True
    # The bot's events are numbered (docs/protocol.md "Resuming").
    assert result["muted"] == {"type": "muted", "participant_id": result["first"], "muted": True, "seq": result["muted"]["seq"]}
    assert result["heard_while_muted"] == 0
    assert result["resumed_as"] == result["first"]  # the same place in the call after the drop
    assert result["left"]["participant_id"] == result["first"] and result["left"]["reason"] == "left"
    assert result["left_after"] < 3.0  # told by the page's leave message, not a timeout
    assert result["second"] not in (None, result["first"])
    assert result["humans"] == [result["second"]]  # no ghost of the first visit


# Replaces the page's microphone with 300 ms bursts of 1 kHz every 800 ms (an
# AudioContext's oscillator through a MediaStreamDestination); restore() puts
# the microphone back.
SPEAK_IN_BURSTS = """
const w = window.wrappedJSObject;
const ctx = new w.AudioContext();
const oscillator = ctx.createOscillator();
oscillator.frequency.value = 1000;
const gain = ctx.createGain();
gain.gain.value = 0;
oscillator.connect(gain);
const out = ctx.createMediaStreamDestination();
gain.connect(out);
oscillator.start();
const now = ctx.currentTime + 0.1;
for (let k = 0; k < 40; k++) {
  gain.gain.setValueAtTime(0.3, now + k * 0.8);
  gain.gain.setValueAtTime(0, now + k * 0.8 + 0.3);
}
const sender = botcall.pc.getSenders().find((s) => s.track && s.track.kind === 'audio');
const mic = sender.track;
sender.replaceTrack(out.stream.getAudioTracks()[0]);
w.__bursts = {restore: () => { sender.replaceTrack(mic); ctx.close(); }};
"""

RENEGOTIATIONS = {
    "same offer": "botcall.renegotiate();",
    "add audio transceiver": "botcall.pc.addTransceiver('audio');",
    "add video transceiver": "botcall.pc.addTransceiver('video');",
    "restartIce": "botcall.pc.restartIce();",
}


async def test_firefox_renegotiations_mid_call_keep_the_tones_both_ways(tmp_path):
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        room_id = created["room_id"]
        invite = urlsplit(created["invite_url"])
        async with connect(srv.url, room_id, srv.token(agent="orion#8f3a")) as bot:
            ears = BotEars()

            def human(client) -> dict:
                participant = join_call(client, f"{srv.url}{invite.path}#{invite.fragment}")
                peer = trio.from_thread.run_sync(lambda: relay_peer(srv, room_id, participant))
                steps = {"joined": both_ways(client, ears, lambda: peer, participant, time.monotonic())}
                ufrags = [re.search(r"a=ice-ufrag:(\S+)", page(client, "return botcall.pc.remoteDescription.sdp")).group(1)]
                for name, step in RENEGOTIATIONS.items():
                    before = page(client, "return botcall.pc.remoteDescription.sdp")
                    page(client, step)
                    # The PWA offered and applied the answer: a new remote description, stable again.
                    wait_for(
                        client,
                        f"botcall.pc.signalingState === 'stable' && botcall.pc.remoteDescription.sdp !== {json.dumps(before)}",
                    )
                    steps[name] = both_ways(client, ears, lambda: peer, participant, time.monotonic())
                    ufrags.append(re.search(r"a=ice-ufrag:(\S+)", page(client, "return botcall.pc.remoteDescription.sdp")).group(1))
                transceivers = page(client, "return botcall.pc.getTransceivers().map((t) => [t.mid, t.currentDirection]);")
                return {
                    "steps": steps,
                    "ufrags": ufrags,
                    "transceivers": transceivers,
                    "drops": dict(peer.drops),
                    "state": page(client, "return botcall.state"),
                    "pc": page(client, "return botcall.pc.connectionState"),
                }

            async def bot_speaks():
                await keep_saying(bot, tone(440, 5.0))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(bot_speaks)
                nursery.start_soon(ears.hear, bot)
                nursery.start_soon(ears.listen, bot)
                result = await in_firefox(human)
                nursery.cancel_scope.cancel()
        counters = srv.state.media.relay.counters
    for name, seen in result["steps"].items():
        print(f"{name}: both ways after {seen['seconds'] * 1000:.0f} ms, the bot heard {seen['heard_hz']:.0f} Hz")
        assert_flowing(name, seen)
    # The same ufrag until restartIce(), then a new one.
    assert result["ufrags"][0] == result["ufrags"][1] == result["ufrags"][2] == result["ufrags"][3] != result["ufrags"][4]
    # The call's audio stays sendrecv and the group-call receive tracks recvonly;
    # the added transceivers were refused.
    assert result["transceivers"][:3] == [["0", "sendrecv"], ["1", "recvonly"], ["2", "recvonly"]], result["transceivers"]
    assert all(direction in (None, "stopped", "inactive") for _, direction in result["transceivers"][3:])
    # Firefox kept its DTLS session and the relay kept its side: one association,
    # no SRTP dropped for want of one.
    assert result["drops"].get("srtp_before_dtls", 0) == 0
    assert counters["dtls_connected"] == 1 and counters["renegotiated"] >= 4 and counters["ice_restart"] == 1
    assert result["state"] == "connected" and result["pc"] == "connected"
