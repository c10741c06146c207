"""Renegotiation mid-call in real headless Chromium against the real server.

The page is the PWA; its fake microphone plays 660 Hz and a UDP bot plays
440 Hz. Mid-call, from the page, the peer connection is offered again through
the PWA's own signaling: (a) the same offer (``botcall.renegotiate()``), (b) an
added audio and then video transceiver (``negotiationneeded``), (c)
``pc.restartIce()``. After each answer is applied, both directions must carry
audio again within 1 s: the page's receiver counts new packets and its analyser
reads the bot's 440 Hz, and the bot receives the human's packets. At the end
the bot's audio of the human is checked by frequency, and the relay shows one
DTLS association, no ``srtp_before_dtls`` drop, and the ICE restart.

Also: a raw video-first ``max-bundle`` peer connection in the page, signaled
by hand, is answered with the video as an inactive BUNDLE tag, connects, and
carries audio both ways (the bot hears its 660 Hz).
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import pytest
import trio
from playwright.sync_api import BrowserContext

from botcall.audio.wav import write_wav
from botcall_sdk import connect
from botcall.demo.signals import dominant_frequency, tone
from tests.e2e.test_browser_call import current_rx, frames_from, relay_peer
from tests.kit.chromium import hooks, in_browser, join_call, wait_state
from tests.kit.server import running_server
from tests.kit.speaking import saying

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

# Both directions must be back within this long after the answer is applied.
RESUME_S = 1.0
# Half a second of 20 ms packets: audio is flowing, not a straggler.
RESUMED_PACKETS = 25

STEPS = {
    "same offer": "() => botcall.renegotiate()",
    "add audio transceiver": "() => { botcall.pc.addTransceiver('audio'); }",
    "add video transceiver": "() => { botcall.pc.addTransceiver('video'); }",
    "restartIce": "() => { botcall.pc.restartIce(); }",
}

INBOUND_PACKETS = """async () => {
    const report = await botcall.pc.getStats();
    let packets = 0;
    report.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') packets += s.packetsReceived; });
    return packets;
}"""


async def test_renegotiations_mid_call_keep_the_tones_both_ways(tmp_path):
    mic = tmp_path / "mic-660.wav"
    write_wav(mic, tone(660, 10.0, amplitude=0.4), sample_rate=48000, channels=1)
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        invite = urlsplit(created["invite_url"])
        async with connect(srv.url, created["room_id"], srv.token(agent="orion#8f3a")) as bot:
            def human(context: BrowserContext) -> dict:
                page, errors = join_call(context, f"{srv.url}{invite.path}#{invite.fragment}")
                participant = hooks(page)["participantId"]
                page.wait_for_function("() => botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - 440) < 8")
                peer = trio.from_thread.run_sync(lambda: relay_peer(srv, created["room_id"], participant))
                resumed = {}
                ufrags = [re.search(r"a=ice-ufrag:(\S+)", page.evaluate("botcall.pc.remoteDescription.sdp")).group(1)]
                for name, step in STEPS.items():
                    before_sdp = page.evaluate("botcall.pc.remoteDescription.sdp")
                    page.evaluate(step)
                    # The PWA offered and applied the answer: a new remote description, stable again.
                    page.wait_for_function(
                        "before => botcall.pc.signalingState === 'stable' && botcall.pc.remoteDescription.sdp !== before",
                        arg=before_sdp,
                    )
                    applied = time.monotonic()
                    page_before = page.evaluate(INBOUND_PACKETS)
                    relay_before = trio.from_thread.run_sync(current_rx, srv, peer)
                    while True:
                        page_packets = page.evaluate(INBOUND_PACKETS) - page_before
                        relay_packets = trio.from_thread.run_sync(current_rx, srv, peer) - relay_before
                        tone_ok = page.evaluate("() => botcall.remoteLevel() > -50 && Math.abs(botcall.remoteFrequency() - 440) < 8")
                        elapsed = time.monotonic() - applied
                        if page_packets >= RESUMED_PACKETS and relay_packets >= RESUMED_PACKETS and tone_ok:
                            break
                        if elapsed > RESUME_S:
                            break
                        time.sleep(0.02)
                    resumed[name] = {"seconds": elapsed, "page_packets": page_packets, "relay_packets": relay_packets, "tone": tone_ok}
                    ufrags.append(re.search(r"a=ice-ufrag:(\S+)", page.evaluate("botcall.pc.remoteDescription.sdp")).group(1))
                # The human's 660 Hz reaches the bot after all of it.
                heard = trio.from_thread.run(frames_from, bot, participant, 40)
                transceivers = page.evaluate("botcall.pc.getTransceivers().map(t => [t.mid, t.currentDirection])")
                return {
                    "resumed": resumed,
                    "heard": heard,
                    "ufrags": ufrags,
                    "transceivers": transceivers,
                    "drops": dict(peer.drops),
                    "state": hooks(page)["state"],
                    "errors": errors.unexpected(),
                }

            async with saying(bot, tone(440, 5.0)):
                result = await in_browser(human, fake_mic_wav=str(mic))
        counters = srv.state.media.relay.counters
    for name, resumed in result["resumed"].items():
        print(f"{name}: both ways again after {resumed['seconds'] * 1000:.0f} ms")
        assert resumed["seconds"] <= RESUME_S and resumed["tone"], (name, resumed)
        assert resumed["page_packets"] >= RESUMED_PACKETS and resumed["relay_packets"] >= RESUMED_PACKETS, (name, resumed)
    assert abs(dominant_frequency(result["heard"], 48000) - 660) < 5
    # The same ufrag until restartIce(), then a new one.
    assert result["ufrags"][0] == result["ufrags"][1] == result["ufrags"][2] == result["ufrags"][3] != result["ufrags"][4]
    # The added transceivers were rejected; the call's audio stays sendrecv, and
    # the page's two receive tracks (group calls, docs/protocol.md) stay recvonly.
    assert result["transceivers"][:3] == [["0", "sendrecv"], ["1", "recvonly"], ["2", "recvonly"]]
    assert all(direction in (None, "stopped", "inactive") for _, direction in result["transceivers"][3:])
    assert result["drops"].get("srtp_before_dtls", 0) == 0
    # At least one answer per step (Chromium offers once more by itself after
    # a transceiver was rejected, to let the stopped one go).
    assert counters["dtls_connected"] == 1 and counters["renegotiated"] >= 4 and counters["ice_restart"] == 1
    assert result["state"] == "connected"
    assert result["errors"] == []


RAW_VIDEO_FIRST_CALL = """async ([roomId, invite]) => {
    // A raw max-bundle peer connection whose BUNDLE tag is a video m-section,
    // signaled by hand over /v1/signal (not the PWA's own peer connection).
    const ws = new WebSocket(`ws://${location.host}/v1/signal/${roomId}`);
    const inbox = [];
    let wake = null;
    ws.onmessage = (e) => { inbox.push(JSON.parse(e.data)); if (wake) wake(); };
    await new Promise((resolve) => { ws.onopen = resolve; });
    const next = async (type) => {
        for (;;) {
            const index = inbox.findIndex((m) => m.type === type || m.type === 'error');
            if (index >= 0) return inbox.splice(index, 1)[0];
            await new Promise((resolve) => { wake = resolve; });
        }
    };
    ws.send(JSON.stringify({type: 'hello', invite}));
    await next('lobby');
    ws.send(JSON.stringify({type: 'join', display_name: 'Raw'}));
    const joined = await next('joined');
    const pc = new RTCPeerConnection({bundlePolicy: 'max-bundle'});
    window.rawPc = pc;
    pc.addTransceiver('video');
    const mic = await navigator.mediaDevices.getUserMedia({audio: true});
    pc.addTrack(mic.getAudioTracks()[0], mic);
    pc.ontrack = (e) => { const el = new Audio(); el.srcObject = e.streams[0] || new MediaStream([e.track]); el.muted = true; el.play(); };
    await pc.setLocalDescription(await pc.createOffer());
    ws.send(JSON.stringify({type: 'offer', sdp: pc.localDescription.sdp}));
    const answer = await next('answer');
    if (answer.type === 'error') return {error: answer};
    await pc.setRemoteDescription({type: 'answer', sdp: answer.sdp});
    const started = Date.now();
    while (pc.connectionState !== 'connected' && Date.now() - started < 10000) await new Promise((r) => setTimeout(r, 20));
    const counts = async () => {
        const report = await pc.getStats();
        let received = 0, sent = 0;
        report.forEach((s) => {
            if (s.type === 'inbound-rtp' && s.kind === 'audio') received += s.packetsReceived;
            if (s.type === 'outbound-rtp' && s.kind === 'audio') sent += s.packetsSent;
        });
        return {received, sent};
    };
    while (Date.now() - started < 10000 && (await counts()).received < 25) await new Promise((r) => setTimeout(r, 50));
    return {
        participant: joined.participant_id,
        state: pc.connectionState,
        group: answer.sdp.match(/a=group:BUNDLE [^\\r\\n]*/)[0],
        transceivers: pc.getTransceivers().map((t) => [t.mid, t.currentDirection]),
        counts: await counts(),
    };
}"""


async def test_a_video_first_max_bundle_offer_gets_audio_both_ways(tmp_path):
    mic = tmp_path / "mic-660.wav"
    write_wav(mic, tone(660, 10.0, amplitude=0.4), sample_rate=48000, channels=1)
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        invite = urlsplit(created["invite_url"])
        secret = invite.fragment.removeprefix("invite=")
        async with connect(srv.url, created["room_id"], srv.token(agent="orion#8f3a")) as bot:
            def human(context: BrowserContext) -> dict:
                page = context.new_page()
                page.goto(f"{srv.url}{invite.path}#{invite.fragment}")
                wait_state(page, "lobby")
                result = page.evaluate(RAW_VIDEO_FIRST_CALL, [created["room_id"], secret])
                if "participant" in result:
                    result["heard"] = trio.from_thread.run(frames_from, bot, result["participant"], 40)
                return result

            async with saying(bot, tone(440, 5.0)):
                result = await in_browser(human, fake_mic_wav=str(mic))
    assert "error" not in result, result
    assert result["group"] == "a=group:BUNDLE 0 1"
    assert result["state"] == "connected"
    assert result["transceivers"] == [["0", "inactive"], ["1", "sendrecv"]]
    assert result["counts"]["received"] >= 25 and result["counts"]["sent"] >= 25
    assert abs(dominant_frequency(result["heard"], 48000) - 660) < 5
