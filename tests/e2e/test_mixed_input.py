"""The mixed stream and separate pcm16 rates, against the real server over real sockets.

A speech-to-text bot asks for ``"receive": "mixed"`` at ``receive_sample_rate``
16000 and hears two other bots (one on the WebSocket, one on UDP) in one stream
named ``"mix"``; a bot sending pcm16 at 8 kHz is heard at its pitch by a 48 kHz
listener.
"""

import base64
import json

import pytest
import trio
from trio_websocket import open_websocket_url

from botcall_sdk import connect
from botcall.demo.signals import dominant_frequency, energy_fraction, tone
from tests.kit.server import running_server

pytestmark = pytest.mark.e2e


async def test_a_mixed_pcm16_listener_hears_two_bots_in_one_stream(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = (await srv.create_room(srv.token(agent="creator#1"))).json()["room_id"]
        media = {"transport": "websocket", "encoding": "pcm16", "send_sample_rate": 24000, "receive_sample_rate": 16000, "receive": "mixed"}
        joined = await srv.join(srv.token(agent="stt#1"), room_id, agent_id="stt#1", media=media)
        assert joined.status == 200
        session = joined.json()
        assert session["media"]["receive"] == "mixed" and session["media"]["receive_sample_rate"] == 16000
        async with (
            open_websocket_url(session["websocket_url"]) as ws,
            connect(srv.url, room_id, srv.token(agent="ws#2"), transport="websocket") as ws_bot,
            connect(srv.url, room_id, srv.token(agent="udp#3")) as udp_bot,
        ):
            events = []
            async with trio.open_nursery() as nursery:
                await ws_bot.say(tone(440, 2.0))
                await udp_bot.say(tone(1000, 2.0))
                with trio.fail_after(15):
                    while len(events) < 75:
                        event = json.loads(await ws.get_message())
                        if event["type"] == "audio":
                            events.append(event)
                nursery.cancel_scope.cancel()
        assert {e["participant_id"] for e in events} == {"mix"}
        assert {(e["encoding"], e["sample_rate"]) for e in events} == {("pcm16", 16000)}
        assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + len(events)))
        assert all(e["stream_ms"] % 20 == 0 and e["timestamp"] == e["stream_ms"] * 16 for e in events)
        assert all(b["stream_ms"] > a["stream_ms"] for a, b in zip(events, events[1:]))
        pcm = b"".join(base64.b64decode(e["data"]) for e in events[25:])  # both talking by then
        assert len(pcm) == 50 * 640
        assert energy_fraction(pcm, 16000, 440) > 0.2, energy_fraction(pcm, 16000, 440)
        assert energy_fraction(pcm, 16000, 1000) > 0.2, energy_fraction(pcm, 16000, 1000)


async def test_a_udp_bot_receiving_the_mix_gets_one_stream(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = (await srv.create_room(srv.token(agent="creator#1"))).json()["room_id"]
        async with (
            connect(srv.url, room_id, srv.token(agent="stt#1"), receive="mixed") as listener,
            connect(srv.url, room_id, srv.token(agent="ws#2"), transport="websocket") as ws_bot,
            connect(srv.url, room_id, srv.token(agent="udp#3")) as udp_bot,
        ):
            mix_ssrc = listener.media["mix_ssrc"]
            heard = []
            async with trio.open_nursery() as nursery:
                await ws_bot.say(tone(440, 2.0))
                await udp_bot.say(tone(1000, 2.0))
                with trio.fail_after(15):
                    async for frame in listener.audio(mixed=True):
                        heard.append(frame)
                        if len(heard) >= 75:
                            break
                nursery.cancel_scope.cancel()
        assert {(f.speaker, f.ssrc) for f in heard} == {("mix", mix_ssrc)}
        pcm = b"".join(f.pcm for f in heard[25:])
        assert energy_fraction(pcm, 48000, 440) > 0.2 and energy_fraction(pcm, 48000, 1000) > 0.2


async def test_pcm16_sent_at_8_khz_is_heard_at_its_pitch_at_48_khz(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = (await srv.create_room(srv.token(agent="creator#1"))).json()["room_id"]
        async with (
            connect(srv.url, room_id, srv.token(agent="listener#1")) as listener,
            connect(
                srv.url, room_id, srv.token(agent="tts#2"), transport="websocket", encoding="pcm16",
                sample_rate=48000, send_sample_rate=8000,
            ) as speaker,
        ):
            assert speaker.media["send_sample_rate"] == 8000 and speaker.media["receive_sample_rate"] == 48000
            heard = []
            async with trio.open_nursery() as nursery:
                await speaker.say(tone(440, 1.5, sample_rate=8000), sample_rate=8000)
                with trio.fail_after(15):
                    async for frame in listener.audio():
                        if frame.speaker == speaker.participant_id and not frame.concealed:
                            heard.append(frame.pcm)
                        if len(heard) >= 50:
                            break
                nursery.cancel_scope.cancel()
        assert dominant_frequency(b"".join(heard[10:]), 48000) == pytest.approx(440, abs=3)
