"""Bots talking through the real server over real UDP and WebSockets on 127.0.0.1.

Audio is checked by content: the frequency a listener hears is the one the
speaker played.
"""

import random
import socket

import pytest
import trio

from botcall.demo.signals import dominant_frequency, tone
from botcall_sdk import Chat, HttpError, Muted, ParticipantJoined, ParticipantLeft, connect
from botcall.wire.rtp import RtpPacket
from botcall.wire.stun import binding_request
from tests.kit.server import running_server

pytestmark = pytest.mark.e2e


async def open_room(srv, controller="gopi"):
    token = srv.token(agent="creator#1", controller=controller)
    created = await srv.create_room(token)
    assert created.status == 201, created.body
    return created.json()["room_id"]


async def hear(call, seconds, *, from_participant=None):
    """Collect the PCM a call hears for ``seconds`` of audio (non-concealed frames)."""
    pcm = []
    need = int(seconds / 0.02)
    async for frame in call.audio():
        if from_participant is None or frame.speaker == from_participant:
            if not frame.concealed:
                pcm.append(frame.pcm)
        if len(pcm) >= need:
            break
    return b"".join(pcm)


async def talk_and_listen(speaker, listener, freq, *, rate=48000):
    await speaker.say(tone(freq, 2.0))
    with trio.fail_after(15):
        heard = await hear(listener, 1.0, from_participant=speaker.participant_id)
    return dominant_frequency(heard[len(heard) // 4 :], rate)


async def test_two_udp_bots_hear_each_others_tones(tmp_path):
    async with running_server(tmp_path) as srv:
        room = await open_room(srv)
        async with connect(srv.url, room, srv.token(agent="alice#1")) as a, connect(srv.url, room, srv.token(agent="bob#2")) as b:
            assert abs(await talk_and_listen(a, b, 440) - 440) < 5
            assert abs(await talk_and_listen(b, a, 880) - 880) < 5
            relay = srv.state.media.relay
            assert relay.peer(a.session_id).addr is not None and relay.peer(b.session_id).addr is not None


async def test_websocket_bot_and_udp_bot_hear_each_other(tmp_path):
    async with running_server(tmp_path) as srv:
        room = await open_room(srv)
        async with connect(srv.url, room, srv.token(agent="udp#1")) as u, connect(srv.url, room, srv.token(agent="ws#2"), transport="websocket") as w:
            assert w.transport == "websocket"
            assert abs(await talk_and_listen(u, w, 440) - 440) < 5
            assert abs(await talk_and_listen(w, u, 660) - 660) < 5


async def test_pcm16_bot_gets_every_20ms_slot_under_loss(tmp_path):
    """A lossy UDP speaker; the pcm16 listener gets one frame per 20 ms slot, concealed where lost."""
    async with running_server(tmp_path) as srv:
        room = await open_room(srv)
        async with connect(srv.url, room, srv.token(agent="lossy#1")) as speaker, connect(
            srv.url, room, srv.token(agent="stt#2"), transport="websocket", encoding="pcm16", sample_rate=16000
        ) as listener:
            from botcall.audio.opus import OpusEncoder

            encoder = OpusEncoder()
            pcm = tone(440, 2.0)
            rng = random.Random(3)
            lost = 0
            frames = []

            async def send():
                nonlocal lost
                due = trio.current_time()
                for i in range(100):
                    payload = encoder.encode(pcm[i * 1920 : (i + 1) * 1920])
                    await trio.sleep_until(due)  # a real-time sender
                    due += 0.020
                    if 10 < i < 90 and rng.random() < 0.1:
                        lost += 1
                        speaker._seq = (speaker._seq + 1) & 0xFFFF  # a hole in the numbering
                        speaker._timestamp = (speaker._timestamp + 960) & 0xFFFFFFFF
                        continue
                    await speaker.send_opus(payload)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                with trio.fail_after(15):
                    async for frame in listener.audio():
                        frames.append(frame)
                        if len(frames) >= 95:  # more than the packets that arrived
                            break
            assert lost > 3
            assert all(len(f.pcm) == 640 for f in frames)  # 20 ms at 16 kHz, every time
            # 95 frames came out of fewer packets: the holes were filled with
            # concealment (marked as such), not left as gaps in the stream.
            arrived = 100 - lost
            assert len(frames) > arrived - 5
            assert sum(not f.concealed for f in frames) <= arrived
            assert sum(f.concealed for f in frames) >= lost // 2
            assert abs(dominant_frequency(b"".join(f.pcm for f in frames[20:80]), 16000) - 440) < 5


async def test_events_mute_chat_and_leave(tmp_path):
    async with running_server(tmp_path) as srv:
        room = await open_room(srv)
        async with connect(srv.url, room, srv.token(agent="alice#1")) as a:
            async with connect(srv.url, room, srv.token(agent="bob#2")) as b:
                events = a.events()
                with trio.fail_after(5):
                    joined = await events.__anext__()
                assert isinstance(joined, ParticipantJoined)
                assert joined.participant.agent_id == "bob#2" and joined.participant.ssrc == b.ssrc
                await b.chat("hello alice")
                with trio.fail_after(5):
                    chat = await events.__anext__()
                assert chat == Chat(b.participant_id, "hello alice")
                await b.mute()
                with trio.fail_after(5):
                    muted = await events.__anext__()
                assert muted == Muted(b.participant_id, True)
                # Muted audio is dropped at the relay and counted.
                await (await b.say(tone(440, 0.4))).done()
                assert srv.state.media.relay.peer(b.session_id).drops["muted"] > 0
            with trio.fail_after(5):
                left = await events.__anext__()
            assert isinstance(left, ParticipantLeft) and left.participant_id == b.participant_id


async def test_join_refused_with_the_servers_code(tmp_path):
    async with running_server(tmp_path) as srv:
        room = await open_room(srv, controller="gopi")
        with pytest.raises(HttpError) as info:
            async with connect(srv.url, room, srv.token(agent="intruder#9", controller="mallory")):
                pass
        assert info.value.status == 403 and info.value.code == "controller_mismatch"


def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def test_attacks_from_the_network_do_not_touch_a_call(tmp_path):
    """Spoofed RTP, a random spray, bad STUN passwords and a malformed flood,
    while two bots talk: their audio stays intact and nothing is latched."""
    async with running_server(tmp_path) as srv:
        room = await open_room(srv)
        relay = srv.state.media.relay
        media_addr = ("127.0.0.1", srv.state.media_port)
        async with connect(srv.url, room, srv.token(agent="alice#1")) as a, connect(srv.url, room, srv.token(agent="bob#2")) as b:
            raw = udp_socket()
            evil = trio.socket.from_stdlib_socket(raw)
            a_peer = relay.peer(a.session_id)
            latched = a_peer.addr
            rng = random.Random(11)

            async def attack():
                # Alice's SSRC from another port: dropped, counted, no re-latch.
                for seq in range(50):
                    await evil.sendto(bytes(RtpPacket(111, seq, seq * 960, a.ssrc, payload=b"spoof")), media_addr)
                # Alice's ufrag with a wrong password: 401 at most, no state.
                for _ in range(20):
                    await evil.sendto(binding_request(f"{a.media['ice_ufrag']}:x", "wrong-password-0123456789"), media_addr)
                # Random bytes and malformed packets of every kind.
                for _ in range(2000):
                    junk = bytes([rng.choice([0, 1, 20, 22, 128, 129, 200, 255])]) + rng.randbytes(rng.randint(0, 300))
                    await evil.sendto(junk, media_addr)
                    if _ % 100 == 0:
                        await trio.sleep(0)

            counters_before = relay.counters["unknown_source"]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attack)
                freq = await talk_and_listen(a, b, 440)
            assert abs(freq - 440) < 5
            assert relay.peer(a.session_id).addr == latched
            assert relay.counters["unknown_source"] - counters_before >= 50
            assert relay.counters["stun_unauthorized"] >= 1
            # What the attacker got back: only small STUN errors, never media.
            replies = []
            while True:
                try:
                    data, _ = raw.recvfrom(4096)
                except BlockingIOError:
                    break
                replies.append(data)
            assert all(reply[0] < 4 and len(reply) <= 100 for reply in replies)
