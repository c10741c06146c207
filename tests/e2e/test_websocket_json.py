"""The seed's JSON audio contract on the bot WebSocket, spoken by hand (no SDK on that side).

A bot with ``media.transport = "websocket"`` sends ``{"type":"audio","data":<base64
Opus>,"timestamp":ms}`` and receives ``{"type":"audio","participant_id","seq",
"timestamp","data"}``; a UDP bot (the SDK) is on the other end.
"""

import base64
import json

import pytest
import trio
from trio_websocket import open_websocket_url

from botcall.demo.signals import dominant_frequency, tone
from botcall_sdk import connect
from botcall.audio.opus import OpusDecoder, OpusEncoder
from tests.kit.server import running_server

pytestmark = pytest.mark.e2e


async def test_json_audio_both_ways_between_a_websocket_bot_and_a_udp_bot(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = (await srv.create_room(srv.token(agent="creator#1"))).json()["room_id"]
        joined = await srv.join(srv.token(agent="json#1"), room_id, agent_id="json#1", media={"transport": "websocket", "encoding": "opus"})
        assert joined.status == 200
        session = joined.json()
        assert session["media"]["transport"] == "websocket"
        async with open_websocket_url(session["websocket_url"]) as ws, connect(srv.url, room_id, srv.token(agent="udp#2")) as udp_bot:
            with trio.fail_after(5):
                welcome = json.loads(await ws.get_message())
            assert welcome["type"] == "welcome"

            # WebSocket bot -> UDP bot: 50 JSON frames of 523 Hz, paced at 20 ms.
            async def speak():
                encoder = OpusEncoder()
                pcm = tone(523, 1.2)
                start = trio.current_time()
                for i in range(60):
                    payload = encoder.encode(pcm[i * 1920 : (i + 1) * 1920])
                    await ws.send_message(json.dumps({"type": "audio", "data": base64.b64encode(payload).decode(), "timestamp": 1708000000000 + 20 * i}))
                    await trio.sleep_until(start + (i + 1) * 0.02)

            heard = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(speak)
                with trio.fail_after(10):
                    async for frame in udp_bot.audio():
                        if frame.speaker == welcome["participant_id"] and not frame.concealed:
                            heard.append(frame.pcm)
                        if len(heard) >= 40:
                            break
            assert abs(dominant_frequency(b"".join(heard[10:]), 48000) - 523) < 5

            # UDP bot -> WebSocket bot: JSON audio events naming the speaker, in sequence.
            events = []
            async with trio.open_nursery() as nursery:
                await udp_bot.say(tone(784, 1.0))
                with trio.fail_after(10):
                    while len(events) < 40:
                        event = json.loads(await ws.get_message())
                        if event["type"] == "audio":
                            events.append(event)
            assert {e["participant_id"] for e in events} == {udp_bot.participant_id}
            seqs = [e["seq"] for e in events]
            assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
            decoder = OpusDecoder()
            pcm = b"".join(decoder.decode_untrusted(base64.b64decode(e["data"])) for e in events)
            assert abs(dominant_frequency(pcm[len(pcm) // 4 :], 48000) - 784) < 5


async def test_audio_on_the_control_channel_of_a_udp_bot_is_refused(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = (await srv.create_room(srv.token(agent="creator#1"))).json()["room_id"]
        session = (await srv.join(srv.token(agent="udp#1"), room_id, agent_id="udp#1")).json()
        async with open_websocket_url(session["websocket_url"]) as ws:
            await ws.get_message()  # welcome
            await ws.send_message(json.dumps({"type": "audio", "data": "AAAA"}))
            with trio.fail_after(5):
                error = json.loads(await ws.get_message())
            assert error["type"] == "error" and error["code"] == "wrong_transport"
            await ws.send_message(json.dumps({"type": "ping", "nonce": "still-open"}))
            with trio.fail_after(5):
                pong = json.loads(await ws.get_message())
                assert pong == {"type": "pong", "nonce": "still-open", "seq": pong["seq"]} and pong["seq"] > 1
