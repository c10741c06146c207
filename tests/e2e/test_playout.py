"""A bot's speech sent ahead, played out by the real server at real time (docs/protocol.md,
"Bot speech: playout, marks, clear, the stream clock").

Real UDP and WebSockets on 127.0.0.1; the server runs in this process, so the
times the listener's packets and the speaker's events arrive are read from one
clock (``trio.current_time``). Audio is checked by content.

Timing tolerances. The relay releases each frame at its due time (up to LEAD,
20 ms, early), and a ``mark`` event leaves when the frame before the mark is
released. The event then crosses the outbox task, Hypercorn's WebSocket and
trio-websocket's reader, the frame one UDP socket; each hop is one pass of the
same trio scheduler, so on a quiet machine they arrive within a millisecond or
two of each other. ``MARK_SLACK`` (20 ms, the contract's figure) covers a
scheduler pass delayed by other processes on a busy machine.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import pytest
import trio
from trio_websocket import open_websocket_url

from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall_sdk import MarkReached, connect
from botcall.demo.signals import correlation, speech_like, tone
from botcall.wire.rtp import parse_rtp_untrusted
from tests.kit.server import running_server

pytestmark = pytest.mark.e2e

RATE = 48000
FRAME_BYTES = 1920  # 20 ms of 48 kHz int16
CHUNK_BYTES = 104 * 48 * 2  # 104 ms: a text-to-speech chunk that is not whole 20 ms frames
# A mark reaches the bot when its frame reaches the listener: never more than
# MARK_SLACK before it (a mark fired when queued would be seconds early), and
# on a quiet machine within MARK_SLACK after; under load the WebSocket's event
# can trail the UDP packet (0.26 s seen beside stress-ng), so the late side
# allows MARK_LATE, still far less than the next mark's 2 s.
MARK_SLACK = 0.020
MARK_LATE = 0.5
WAIT = 20.0  # a safety net against a hung server, not a speed requirement


async def open_room(srv):
    created = await srv.create_room(srv.token(agent="creator#1"))
    assert created.status == 201, created.body
    return created.json()["room_id"]


class Ear:
    """Records what a UDP bot (the SDK) receives from one speaker: (arrival time, RTP packet)."""

    def __init__(self, call) -> None:
        self.call = call
        self.ssrc: int | None = None
        self.packets: list[tuple[float, object]] = []
        self._waiters: list[tuple[object, trio.Event]] = []
        original = call._on_media

        def on_media(data: bytes, now: float) -> None:
            packet = parse_rtp_untrusted(data)
            if packet.ssrc == self.ssrc:
                self.packets.append((now, packet))
                for condition, event in self._waiters:
                    if condition():
                        event.set()
            original(data, now)

        call._on_media = on_media

    async def until(self, condition) -> None:
        """Wait until ``condition()`` holds after a packet arrives (or now)."""
        if condition():
            return
        event = trio.Event()
        self._waiters.append((condition, event))
        with trio.fail_after(WAIT):
            await event.wait()

    def pcm(self) -> bytes:
        decoder = OpusDecoder()
        packets = sorted((p for _, p in self.packets), key=lambda p: p.sequence_number)
        return b"".join(decoder.decode_untrusted(p.payload) for p in packets)


class Channel:
    """A bot's WebSocket by hand: sends JSON and binary, records every JSON event with its arrival time."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[tuple[float, dict]] = []
        self.binary: list[tuple[float, bytes]] = []
        self._changed = trio.Event()

    async def read(self) -> None:
        while True:
            message = await self.ws.get_message()
            now = trio.current_time()
            if isinstance(message, bytes):
                self.binary.append((now, message))
            else:
                self.events.append((now, json.loads(message)))
            self._changed.set()
            self._changed = trio.Event()

    async def send(self, message: dict) -> float:
        await self.ws.send_message(json.dumps(message))
        return trio.current_time()

    def of_type(self, kind: str) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in self.events if e["type"] == kind]

    async def until(self, condition) -> None:
        with trio.fail_after(WAIT):
            while not condition():
                await self._changed.wait()

    async def ping(self, nonce: str) -> None:
        """A round trip: everything sent before it has been handled once the pong is back."""
        await self.send({"type": "ping", "nonce": nonce})
        await self.until(lambda: any(e.get("nonce") == nonce for _, e in self.of_type("pong")))


async def join_websocket(srv, room_id, agent, **media):
    joined = await srv.join(srv.token(agent=agent), room_id, agent_id=agent, media={"transport": "websocket", **media})
    assert joined.status == 200, joined.body
    return joined.json()


@asynccontextmanager
async def rtp_listener(srv):
    """A fresh room with a WebSocket bot ("ear#2") receiving each speaker's RTP in binary frames: yields (room_id, channel)."""
    room_id = await open_room(srv)
    session = await join_websocket(srv, room_id, "ear#2", encoding="opus")
    async with open_websocket_url(session["websocket_url"] + "?audio=binary") as ws, trio.open_nursery() as nursery:
        channel = Channel(ws)
        nursery.start_soon(channel.read)
        await channel.until(lambda: channel.of_type("welcome"))
        yield room_id, channel
        nursery.cancel_scope.cancel()


async def send_pcm(ws, pcm: bytes, chunk: int = CHUNK_BYTES) -> None:
    """pcm16 as text-to-speech delivers it: ``chunk`` bytes a message, as fast as the socket takes them."""
    for start in range(0, len(pcm), chunk):
        await ws.send_message(pcm[start : start + chunk])


def assert_paced(arrivals: list[float], frame: float = 0.02) -> None:
    """Packets arrived at real time: never more than a frame (LEAD) and a slack ahead
    of the audio's own clock, and the whole span as long as the audio (less LEAD)."""
    first = arrivals[0]
    for index, t in enumerate(arrivals):
        assert index * frame <= (t - first) + frame + 0.030, f"frame {index} arrived {t - first:.3f} s in: a burst"
    span = arrivals[-1] - first
    assert abs(span - ((len(arrivals) - 1) * frame - frame)) < 0.060, span


def sequence_order(ear: Ear) -> list[tuple[float, object]]:
    return sorted(ear.packets, key=lambda item: item[1].timestamp)


async def test_a_websocket_pcm16_burst_is_played_at_real_time_with_marks(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = await open_room(srv)
        async with connect(srv.url, room_id, srv.token(agent="ear#2")) as listener:
            ear = Ear(listener)
            session = await join_websocket(srv, room_id, "tts#1", encoding="pcm16", sample_rate=RATE)
            ear.ssrc = session["media"]["ssrc"]
            pcm = speech_like(6.0, seed=1)
            async with open_websocket_url(session["websocket_url"]) as ws, trio.open_nursery() as nursery:
                channel = Channel(ws)
                nursery.start_soon(channel.read)
                await channel.until(lambda: channel.of_type("welcome"))
                # 6 s in one burst: three 2 s parts of 104 ms chunks, a mark after each.
                for part in range(3):
                    await send_pcm(ws, pcm[part * 2 * RATE * 2 : (part + 1) * 2 * RATE * 2])
                    await channel.send({"type": "mark", "name": f"after-{2 * (part + 1)}s"})
                await channel.until(lambda: len(channel.of_type("mark")) == 3)
                await ear.until(lambda: len(ear.packets) >= 300)
                nursery.cancel_scope.cancel()

        heard = ear.pcm()
        assert abs(len(heard) / 2 / RATE - 6.0) <= 0.040
        assert correlation(pcm, heard) >= 0.9
        ordered = sequence_order(ear)
        assert_paced([t for t, _ in ordered])
        marks = channel.of_type("mark")
        assert [e["name"] for _, e in marks] == ["after-2s", "after-4s", "after-6s"]
        origin = ordered[0][1].timestamp
        for (t, event), expected in zip(marks, (2000, 4000, 6000)):
            assert abs(event["played_ms"] - expected) <= 20
            # The frame that ends at the mark: its arrival at the listener.
            arrived = next(at for at, p in ordered if (p.timestamp - origin) // 960 == expected // 20 - 1)
            assert -MARK_SLACK <= t - arrived <= MARK_LATE, (event, t - arrived)


async def test_udp_rtp_sent_ahead_is_heard_paced(tmp_path):
    async with running_server(tmp_path) as srv:
        async with rtp_listener(srv) as (room_id, channel):
            async with connect(srv.url, room_id, srv.token(agent="ahead#1")) as speaker:
                pcm = speech_like(6.0, seed=2)
                encoder = OpusEncoder()
                payloads = [encoder.encode(pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]) for i in range(300)]
                origin = speaker._timestamp
                for payload in payloads:  # 6 s of RTP, timestamps 20 ms apart, sent at once
                    await speaker.send_opus(payload)
                # A mark by RTP timestamp needs the relay to know the stream's first packet.
                peer = srv.state.media.relay.peer(speaker.session_id)
                await channel.until(lambda: peer.stream_origin is not None)
                await speaker._send_json({"type": "mark", "name": "3s", "rtp_timestamp": (origin + 150 * 960) & 0xFFFFFFFF})
                events = speaker.events()
                with trio.fail_after(WAIT):
                    async for event in events:
                        if isinstance(event, MarkReached):
                            mark_at, mark = trio.current_time(), dict(event.raw)
                            break
                await channel.until(lambda: len(channel.binary) >= 300)

    packets = sorted(((t, parse_rtp_untrusted(data)) for t, data in channel.binary), key=lambda item: item[1].sequence_number)
    assert [p.payload for _, p in packets] == payloads
    assert_paced([t for t, _ in packets])
    assert abs(mark["played_ms"] - 3000) <= 20
    assert -MARK_SLACK <= mark_at - packets[149][0] <= MARK_LATE
    decoder = OpusDecoder()
    assert correlation(pcm, b"".join(decoder.decode_untrusted(p.payload) for _, p in packets)) >= 0.9


async def test_each_say_starts_a_talk_spurt(tmp_path):
    """The SDK marks the first packet of every ``say`` (the RTP marker bit): after
    a barge-in the relay drops the interrupted speech's tail until it
    (tests/relay/test_relay_playout.py). Two says queued back to back keep
    contiguous timestamps, so the relay's own re-basing marks nothing here."""
    async with running_server(tmp_path) as srv:
        async with rtp_listener(srv) as (room_id, channel):
            async with connect(srv.url, room_id, srv.token(agent="talker#1")) as speaker:
                first = await speaker.say(tone(440, 0.2))
                second = await speaker.say(tone(660, 0.2))
                with trio.fail_after(WAIT):
                    await first.done()
                    await second.done()
                await channel.until(lambda: len(channel.binary) >= 20)
                peer = srv.state.media.relay.peer(speaker.session_id)
                assert peer.marks_spurts

    packets = sorted((parse_rtp_untrusted(data) for _, data in channel.binary), key=lambda p: p.sequence_number)
    assert len(packets) == 20
    assert [index for index, p in enumerate(packets) if p.marker] == [0, 10]
    assert all((b.timestamp - a.timestamp) & 0xFFFFFFFF == 960 for a, b in zip(packets, packets[1:]))


async def test_clear_stops_the_audio_at_once(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = await open_room(srv)
        async with connect(srv.url, room_id, srv.token(agent="ear#2")) as listener:
            ear = Ear(listener)
            session = await join_websocket(srv, room_id, "tts#1", encoding="pcm16", sample_rate=RATE)
            ear.ssrc = session["media"]["ssrc"]
            async with open_websocket_url(session["websocket_url"]) as ws, trio.open_nursery() as nursery:
                channel = Channel(ws)
                nursery.start_soon(channel.read)
                await channel.until(lambda: channel.of_type("welcome"))
                await send_pcm(ws, speech_like(6.0, seed=3))
                await channel.send({"type": "mark", "name": "end"})
                await ear.until(lambda: len(ear.packets) >= 100)  # 2 s have played
                cleared_at = await channel.send({"type": "clear"})
                await channel.until(lambda: channel.of_type("cleared"))
                # New speech after the clear plays at once; once the listener hears
                # it, whatever the old speech sent before it has arrived too.
                await send_pcm(ws, tone(440, 0.2))
                # The relay re-bases the new speech's timestamps to the clock and
                # marks its first packet as a new talk spurt (RFC 3551 §4.1).
                await ear.until(lambda: any(p.marker for _, p in ear.packets[1:]))
                nursery.cancel_scope.cancel()

    restart = next(index for index, (_, p) in enumerate(ear.packets) if index and p.marker)
    old, new = ear.packets[:restart], ear.packets[restart:]
    # Re-based: the new speech's timestamp follows the time since the old one stopped.
    elapsed = new[0][0] - old[-1][0]
    gap = (new[0][1].timestamp - old[-1][1].timestamp) & 0xFFFFFFFF
    assert abs(gap / 48000 - elapsed) <= 0.1
    assert max(t for t, _ in old) <= cleared_at + 0.060
    (_, cleared), = channel.of_type("cleared")
    assert cleared["marks_dropped"] == ["end"] and not channel.of_type("mark")
    assert abs(cleared["played_ms"] - 20 * len(old)) <= 20
    assert abs(cleared["played_ms"] + cleared["dropped_ms"] - 6000) <= 20
    assert [e for e in cleared["heard"] if e["participant_id"] == listener.participant_id]
    # The new speech started at once, right after the clear.
    assert new[0][0] - cleared_at < 0.5


async def test_pcm16_in_104ms_chunks_is_not_padded(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = await open_room(srv)
        async with connect(srv.url, room_id, srv.token(agent="ear#2")) as listener:
            ear = Ear(listener)
            session = await join_websocket(srv, room_id, "tts#1", encoding="pcm16", sample_rate=16000)
            ear.ssrc = session["media"]["ssrc"]
            async with open_websocket_url(session["websocket_url"]) as ws, trio.open_nursery() as nursery:
                channel = Channel(ws)
                nursery.start_soon(channel.read)
                await channel.until(lambda: channel.of_type("welcome"))
                pcm = tone(300, 5.0, sample_rate=16000)
                await send_pcm(ws, pcm, chunk=104 * 16 * 2)  # 48 chunks of 104 ms, one of 8 ms
                await channel.send({"type": "mark", "name": "end"})
                await channel.until(lambda: channel.of_type("mark"))
                playout = srv.state.media.relay.peer(session["session_id"]).playout
                assert playout.queued_ms == playout.played_ms == 5000
                await ear.until(lambda: len(ear.packets) >= 250)
                nursery.cancel_scope.cancel()
    (_, mark), = channel.of_type("mark")
    assert mark["played_ms"] == 5000
    assert len(ear.packets) == 250


async def test_playout_full_is_refused_and_the_channel_stays_open(tmp_path):
    async with running_server(tmp_path, playout_max_ahead_s=1.0) as srv:
        room_id = await open_room(srv)
        session = await join_websocket(srv, room_id, "tts#1", encoding="pcm16", sample_rate=RATE)
        async with open_websocket_url(session["websocket_url"]) as ws, trio.open_nursery() as nursery:
            channel = Channel(ws)
            nursery.start_soon(channel.read)
            await channel.until(lambda: channel.of_type("welcome"))
            await send_pcm(ws, speech_like(3.0, seed=4))
            await channel.ping("after-audio")
            errors = [e for _, e in channel.of_type("error")]
            assert errors and {e["code"] for e in errors} == {"playout_full"}
            playout = srv.state.media.relay.peer(session["session_id"]).playout
            assert playout.ahead_ms() <= 1000
            # Refused whole, never cut: what was accepted is whole chunks.
            assert playout.queued_ms % 104 == 0
            nursery.cancel_scope.cancel()


MALFORMED = [
    {"type": "mark"},
    {"type": "mark", "name": 7},
    {"type": "mark", "name": "x" * 257},
    {"type": "mark", "name": "m", "rtp_timestamp": -1},
    {"type": "mark", "name": "m", "rtp_timestamp": 2**32},
    {"type": "mark", "name": "m", "rtp_timestamp": "12"},
    {"type": "mark", "name": "m", "rtp_timestamp": True},
    {"type": "mark", "name": "m", "rtp_timestamp": 1.5},
    {"type": "playout_delay"},
    {"type": "playout_delay", "ms": -1},
    {"type": "playout_delay", "ms": 10001},
    {"type": "playout_delay", "ms": "100"},
    {"type": "playout_delay", "ms": True},
    {"type": "playout_delay", "ms": float("nan")},
]


@pytest.mark.parametrize("transport", ["websocket", "udp"])
async def test_malformed_mark_clear_and_playout_delay_get_bad_message(tmp_path, transport):
    async with running_server(tmp_path) as srv:
        room_id = await open_room(srv)
        if transport == "websocket":
            session = await join_websocket(srv, room_id, "bot#1", encoding="opus")
        else:
            joined = await srv.join(srv.token(agent="bot#1"), room_id, agent_id="bot#1")
            session = joined.json()
        async with open_websocket_url(session["websocket_url"]) as ws, trio.open_nursery() as nursery:
            channel = Channel(ws)
            nursery.start_soon(channel.read)
            await channel.until(lambda: channel.of_type("welcome"))
            for index, message in enumerate(MALFORMED):
                await ws.send_message(json.dumps(message))
                await channel.until(lambda: len(channel.of_type("error")) > index)
                (_, error) = channel.of_type("error")[index]
                assert error["code"] == "bad_message", (message, error)
            # "clear" with something that is not an object around it.
            await ws.send_message('{"type": "clear"')
            await channel.until(lambda: len(channel.of_type("error")) > len(MALFORMED))
            assert channel.of_type("error")[-1][1]["code"] == "bad_message"
            # Still open, and the well-formed ones work.
            await channel.send({"type": "playout_delay", "ms": 120})
            await channel.send({"type": "clear"})
            await channel.until(lambda: channel.of_type("cleared"))
            await channel.send({"type": "mark", "name": "m"})
            await channel.until(lambda: channel.of_type("mark"))
            mark = channel.of_type("mark")[0][1]
            assert mark == {"type": "mark", "name": "m", "played_ms": 0, "seq": mark["seq"]}
            await channel.ping("still-open")
            assert len(channel.of_type("error")) == len(MALFORMED) + 1
            nursery.cancel_scope.cancel()
