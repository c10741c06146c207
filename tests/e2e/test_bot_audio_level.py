"""The SDK sends RFC 6464 audio levels, and the relay detects a bot's speech
from them without decoding (docs/protocol.md, "Speech detection").

Real UDP and WebSockets on 127.0.0.1. The relay forwards a bot's packets with
their header extension as they are (it only re-bases timestamps), so a
listening bot sees exactly what the speaking bot's SDK sent.
"""

from __future__ import annotations

import pytest
import trio

from botcall.audio.vad import BOT_AUDIO_LEVEL_ID, parse_audio_level_untrusted
from botcall_sdk import connect
from botcall.demo.signals import tone
from botcall.wire.rtp import parse_rtp_untrusted
from tests.e2e.test_playout import Ear, open_room
from tests.kit.server import running_server
from tests.kit.speech_corpus import have_espeak, spoken_pcm

pytestmark = pytest.mark.e2e

WAIT = 20.0  # a safety net against a hung server, not a speed requirement


def levels(ear: Ear) -> list[tuple[bool, int]]:
    """The (V flag, dBov) of every packet the ear heard, in sequence order."""
    out = []
    for _, packet in sorted(ear.packets, key=lambda item: item[1].sequence_number):
        assert packet.extension is not None and packet.extension.is_one_byte
        (element_id, value), = packet.extension.elements_untrusted()
        assert element_id == BOT_AUDIO_LEVEL_ID
        out.append(tuple(parse_audio_level_untrusted(value)))
    return out


async def test_said_packets_carry_the_level_of_a_tone_and_of_silence(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = await open_room(srv)
        async with connect(srv.url, room_id, srv.token(agent="ear#2")) as listener, connect(
            srv.url, room_id, srv.token(agent="speaker#1")
        ) as speaker:
            ear = Ear(listener)
            ear.ssrc = speaker.ssrc
            # 0.3 s of a 0.3 full-scale sine (RMS 0.3/sqrt 2: -13.5 dBov), then 0.3 s of digital silence.
            await (await speaker.say(tone(440, 0.3) + bytes(2 * 48000 * 3 // 10))).done()
            await ear.until(lambda: len(ear.packets) == 30)
    heard = levels(ear)
    # -13.5 rounded: a 20 ms frame holds 8.8 periods, so -13 or -14 by the frame.
    assert {level for _, level in heard[:15]} <= {-13, -14}
    # The V flag is webrtcvad's behind an energy gate: digital silence is never voice.
    assert heard[15:] == [(False, -127)] * 15
    # The payload is still plain Opus after the extension.
    assert all(parse_rtp_untrusted(bytes(p)).payload == p.payload for _, p in ear.packets)


async def test_raw_send_opus_carries_no_extension(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = await open_room(srv)
        async with connect(srv.url, room_id, srv.token(agent="ear#2")) as listener, connect(
            srv.url, room_id, srv.token(agent="raw#1")
        ) as speaker:
            ear = Ear(listener)
            ear.ssrc = speaker.ssrc
            await speaker.send_opus(b"\xf8\xff\xfe")  # an Opus frame of silence (RFC 6716 §3.1)
            await ear.until(lambda: len(ear.packets) == 1)
    assert ear.packets[0][1].extension is None


@pytest.mark.skipif(not have_espeak(), reason="needs espeak-ng (scripts/setup.sh)")
async def test_a_bots_speech_is_detected_from_its_levels_without_a_decoder(tmp_path):
    speech = spoken_pcm()
    silence = bytes(2 * 48000 // 2)
    async with running_server(tmp_path) as srv:
        room_id = await open_room(srv)
        async with connect(srv.url, room_id, srv.token(agent="ear#2")) as listener, connect(
            srv.url, room_id, srv.token(agent="speaker#1")
        ) as speaker:
            events = listener.events()
            await (await speaker.say(silence + speech + silence)).done()
            seen: list[dict] = []
            with trio.fail_after(WAIT):
                async for typed in events:
                    event = dict(typed.raw)
                    if event.get("participant_id") == speaker.participant_id and event["type"].startswith("speech_"):
                        seen.append(event)
                        if event["type"] == "speech_stopped":
                            break
            relay = srv.state.media.relay
            peer = relay.peer(speaker.session_id)
            assert peer.speech is not None and not peer.speech.decoding
            assert relay.speech_budget.decoding == 0 and relay.speech_budget.refused == 0
    assert [e["type"] for e in seen] == ["speech_started", "speech_stopped"]
    started, stopped = seen
    speech_ms = len(speech) // 96
    # On the speaker's stream clock: the speech starts after 500 ms of silence.
    assert 500 - 20 <= started["stream_ms"] <= 500 + 100
    assert abs(stopped["stream_ms"] - (500 + speech_ms)) <= 100
