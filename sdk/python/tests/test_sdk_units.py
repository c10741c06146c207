"""The SDK's sans-IO parts, checked against the server's own codecs where there is one."""

from __future__ import annotations

import io

import numpy as np
import pytest

from botcall.wire import stun as server_stun
from botcall.wire.rtp import parse_rtp_untrusted as server_parse_rtp
from botcall.audio.vad import BOT_AUDIO_LEVEL_ID, parse_audio_level_untrusted
from botcall_sdk import _audio, _wire
from botcall_sdk._errors import BadPacket, InvalidServerUrl, RoomFull, http_error
from botcall_sdk._events import Interrupted, ParticipantJoined, SpeechStarted, Unknown, parse_event_untrusted
from botcall_sdk._http import base_url


def test_framer_carries_partial_frames_and_pads_only_the_end() -> None:
    framer = _audio.Framer(48000, 48000)
    ramp = np.arange(48000 // 10 * 3, dtype=np.int16)  # 300 ms, in 7 uneven chunks
    frames: list[bytes] = []
    for chunk in np.array_split(ramp, 7):
        frames += framer.push(chunk)
    frames += framer.finish(pad=True)
    joined = np.frombuffer(b"".join(frames), "<i2")
    assert len(frames) == 15
    assert np.array_equal(joined, ramp)  # no sample inserted between chunks


def test_framer_resamples_a_stream_to_whole_frames() -> None:
    framer = _audio.Framer(24000, 48000)
    chunk = 104 * 24  # 104 ms at 24 kHz
    tone = (np.sin(2 * np.pi * 440 * np.arange(5 * 24000) / 24000) * 10000).astype(np.int16)
    frames: list[bytes] = []
    for start in range(0, tone.size, chunk):
        frames += framer.push(tone[start : start + chunk])
    frames += framer.finish(pad=True)
    assert len(frames) == 250
    out = np.frombuffer(b"".join(frames), "<i2").astype(np.float64)
    # Steady level across every chunk boundary: no silence slipped in.
    rms = [np.sqrt(np.mean(out[i * 960 : (i + 1) * 960] ** 2)) for i in range(2, 248)]
    assert min(rms) > 0.9 * max(rms)


def test_pcm_sources() -> None:
    assert _audio.to_int16(b"\x01\x00\xff\xff").tolist() == [1, -1]
    assert _audio.to_int16(np.array([0.5, -1.0])).tolist() == [16384, -32767]
    with pytest.raises(ValueError):
        _audio.to_int16(b"\x00")
    pcm = np.arange(480, dtype=np.int16).tobytes()
    samples, rate = _audio.read_wav(io.BytesIO(_audio.wav_bytes(pcm, 24000)))
    assert rate == 24000 and samples.tobytes() == pcm


def test_rtp_level_extension_reads_in_the_server() -> None:
    meter = _audio.LevelMeter()
    loud = (np.sin(np.arange(960) / 5) * 20000).astype("<i2").tobytes()
    octet = meter.octet(loud)
    packet = server_parse_rtp(_wire.build_rtp(111, 7, 960, 1234, b"opus", level=octet))
    assert packet.payload == b"opus" and packet.sequence_number == 7 and packet.ssrc == 1234
    assert packet.extension is not None
    level = dict(packet.extension.elements_untrusted())[BOT_AUDIO_LEVEL_ID]
    assert parse_audio_level_untrusted(level) == parse_audio_level_untrusted(bytes([octet]))
    assert _wire.parse_rtp_untrusted(_wire.build_rtp(111, 7, 960, 1234, b"opus", level=octet)).payload == b"opus"
    with pytest.raises(BadPacket):
        _wire.parse_rtp_untrusted(b"\x80\x6f\x00")


def test_the_marker_bit_marks_a_talk_spurt_in_the_servers_parse() -> None:
    for level in (None, 30):
        marked = server_parse_rtp(_wire.build_rtp(111, 7, 960, 1234, b"opus", level=level, marker=True))
        plain = server_parse_rtp(_wire.build_rtp(111, 7, 960, 1234, b"opus", level=level))
        assert marked.marker and not plain.marker
        assert marked.payload_type == plain.payload_type == 111 and marked.payload == b"opus"


def test_stun_request_verifies_in_the_server_and_answers_its_check() -> None:
    request, transaction = _wire.binding_request("relayufr:botufrag", "p" * 24)
    assert len(request) >= 76
    message = server_stun.parse_stun_untrusted(request)
    assert message.attributes["USERNAME"] == "relayufr:botufrag"
    assert message.check_message_integrity(b"p" * 24)
    # The relay's success to our request, parsed by us.
    success = server_stun.binding_success(message, ("127.0.0.1", 5000), "p" * 24)
    assert _wire.parse_binding_response_untrusted(success, "p" * 24, transaction) == ("127.0.0.1", 5000)
    with pytest.raises(BadPacket):
        _wire.parse_binding_response_untrusted(success, "q" * 24, transaction)
    # The relay's check of our address, answered by us and accepted by the server's parser.
    check = server_stun.binding_check("botufrag:relayufr", "p" * 24, transaction_id=bytes(range(12)))
    answer = _wire.answer_check_untrusted(check, ("127.0.0.1", 40000), username="botufrag:relayufr", password="p" * 24)
    assert server_stun.parse_binding_response_untrusted(answer, "p" * 24, check[8:20]) == ("127.0.0.1", 40000)
    with pytest.raises(BadPacket):
        _wire.answer_check_untrusted(check, ("127.0.0.1", 40000), username="other:relayufr", password="p" * 24)


@pytest.mark.parametrize("data", [b"", b"\x00\x01", b"\x00\x01\x00\x04" + b"\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\x00\x09"])
def test_stun_garbage_raises_bad_packet(data: bytes) -> None:
    with pytest.raises(BadPacket):
        _wire.answer_check_untrusted(data, ("127.0.0.1", 1), username="a:b", password="p")


def test_events_are_typed_and_forward_compatible() -> None:
    assert parse_event_untrusted({"type": "speech_started", "participant_id": "p-1", "stream_ms": 40}) == SpeechStarted("p-1", 40)
    joined = parse_event_untrusted({"type": "participant_joined", "participant": {"participant_id": "p-2", "kind": "human", "new": 1}})
    assert isinstance(joined, ParticipantJoined) and joined.participant.kind == "human"
    cut = parse_event_untrusted(
        {"type": "interrupted", "by": "p-2", "played_ms": 900, "dropped_ms": 100, "marks_dropped": ["m"], "heard": [{"participant_id": "p-2", "heard_ms": 850}]}
    )
    assert isinstance(cut, Interrupted) and cut.heard == {"p-2": 850} and cut.marks_dropped == ("m",)
    future = parse_event_untrusted({"type": "hologram", "x": 1})
    assert isinstance(future, Unknown) and future.type == "hologram" and future.raw["x"] == 1
    broken = parse_event_untrusted({"type": "speech_started", "participant_id": 5})
    assert isinstance(broken, Unknown)


def test_server_urls_and_errors() -> None:
    assert base_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    for bad in ("127.0.0.1:8080", "ws://host", "http://", "localhost"):
        with pytest.raises(InvalidServerUrl, match="http:// or https://"):
            base_url(bad)
    error = http_error(409, "room_full", "full")
    assert isinstance(error, RoomFull) and error.code == "room_full" and error.status == 409


def _opus_packets(count: int, ssrc: int = 9) -> list[_wire.RtpPacket]:
    encoder = _audio.OpusEncoder()
    tone = (np.sin(2 * np.pi * 440 * np.arange(960 * count) / 48000) * 8000).astype("<i2")
    return [
        _wire.RtpPacket(111, (65530 + i) & 0xFFFF, (1000 + 960 * i) & 0xFFFFFFFF, ssrc, encoder.encode(tone[i * 960 : (i + 1) * 960].tobytes()))
        for i in range(count)
    ]


def test_jitter_buffer_plays_in_order_conceals_gaps_and_adds_nothing_at_the_end() -> None:
    buffers = _audio.JitterBuffers(48000)
    packets = _opus_packets(12)  # sequence numbers wrap past 65535
    arrival = packets[:4] + packets[5:] + [packets[2]]  # #4 lost, #2 duplicated
    arrival[1], arrival[2] = arrival[2], arrival[1]  # reordered
    for packet in arrival:
        buffers.push(packet, 0.0)
    played = []
    now = 0.040  # past the prefetch
    for _ in range(20):
        played += buffers.pop(now)
        now += 0.02
    assert [p.timestamp for p in played] == [1000 + 960 * i for i in range(12)]
    assert [p.concealed for p in played] == [False] * 4 + [True] + [False] * 7  # only the real gap
    assert all(len(p.pcm) == 1920 for p in played)


def test_a_speaker_who_left_is_heard_to_the_end_then_forgotten() -> None:
    """Someone who leaves right after speaking (a bot whose speech just played
    out) still has packets in the jitter buffer: they play, then the SSRC goes."""
    buffers = _audio.JitterBuffers(48000)
    packets = _opus_packets(7)
    for packet in packets[:6]:
        buffers.push(packet, 0.0)
    buffers.retire(packets[0].ssrc)
    buffers.push(packets[6], 0.0)  # after the leave: not taken
    played = []
    now = 0.040
    for _ in range(10):
        played += buffers.pop(now)
        now += 0.02
    assert [p.timestamp for p in played] == [1000 + 960 * i for i in range(6)]
    assert buffers.take_drained() == [packets[0].ssrc] and buffers.take_drained() == []


def test_participant_left_keeps_the_speaker_until_their_audio_has_played() -> None:
    import anyio
    import httpx

    from botcall_sdk._call import Call

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            join = {"session_id": "s", "media": {"transport": "websocket", "ssrc": 1}, "websocket_url": "ws://h/v1/stream/s"}
            call = Call(join, room_id="r", sample_rate=48000, http=http)
            ssrc = _opus_packets(1)[0].ssrc
            bot = {"participant_id": "p-2", "kind": "bot", "ssrc": ssrc}
            call._on_json({"type": "welcome", "participant_id": "p-1", "participants": [bot], "last_seq": 1})
            for packet in _opus_packets(3):
                call._jitter.push(packet, 0.0)
            call._on_json({"type": "participant_left", "participant_id": "p-2", "reason": "left", "seq": 2})
            assert "p-2" not in call.participants and call._ssrc_to_participant[ssrc] == "p-2"  # still theirs
            played = call._jitter.pop(0.04) + call._jitter.pop(0.06) + call._jitter.pop(0.08) + call._jitter.pop(0.10)
            assert len(played) == 3 and call._jitter.take_drained() == [ssrc]
            # Nothing of theirs held when they leave: forgotten at once.
            call._on_json({"type": "participant_joined", "participant": bot, "seq": 3})
            call._on_json({"type": "participant_left", "participant_id": "p-2", "reason": "left", "seq": 4})
            assert ssrc not in call._ssrc_to_participant
            # Back with the same SSRC while their old audio still plays: not retired.
            call._on_json({"type": "participant_joined", "participant": bot, "seq": 5})
            for packet in _opus_packets(2):
                call._jitter.push(packet, 1.0)
            call._on_json({"type": "participant_left", "participant_id": "p-2", "reason": "left", "seq": 6})
            call._on_json({"type": "participant_joined", "participant": bot, "seq": 7})
            assert len(call._jitter.pop(1.04) + call._jitter.pop(1.06) + call._jitter.pop(1.08)) == 2
            assert call._jitter.take_drained() == [] and call._ssrc_to_participant[ssrc] == "p-2"

    anyio.run(scenario)


def _opus_10ms_packets(count: int, frequency: float = 440.0, ssrc: int = 9) -> list[_wire.RtpPacket]:
    """10 ms packets, as a browser sends them when the server's answer says ``a=ptime:10``."""
    import opuslib

    encoder = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
    tone = (np.sin(2 * np.pi * frequency * np.arange(480 * count) / 48000) * 8000).astype("<i2")
    return [
        _wire.RtpPacket(111, (65530 + i) & 0xFFFF, (1000 + 480 * i) & 0xFFFFFFFF, ssrc, encoder.encode(tone[i * 480 : (i + 1) * 480].tobytes(), 480))
        for i in range(count)
    ]


def test_opus_samples_reads_the_packet_duration_from_its_toc() -> None:
    assert _audio.opus_samples(_opus_packets(1)[0].payload) == 960
    assert _audio.opus_samples(_opus_10ms_packets(1)[0].payload) == 480
    assert _audio.opus_samples(b"") == 960  # unreadable: 20 ms


def test_jitter_buffer_joins_10ms_packets_into_20ms_ticks_and_conceals_a_lost_one_for_10ms() -> None:
    # Before, each 20 ms tick played one 10 ms packet: half the audio, the rest piling up.
    buffers = _audio.JitterBuffers(48000)
    packets = _opus_10ms_packets(200)
    played = []
    now = 0.0
    for index, packet in enumerate(packets):
        if index != 101:  # one lost
            buffers.push(packet, now)
        if index % 2 == 1:
            played += buffers.pop(now)
        now += 0.01
    for _ in range(5):
        played += buffers.pop(now)
        now += 0.02
    assert all(len(p.pcm) == 1920 for p in played)  # every tick 20 ms
    assert sum(len(p.pcm) for p in played) == 200 * 960  # all of it, the lost 10 ms concealed as 10 ms
    assert sum(p.concealed for p in played) == 1
    pcm = np.frombuffer(b"".join(p.pcm for p in played[10:90]), "<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    assert abs(np.argmax(spectrum) * 48000 / len(pcm) - 440) < 5


def test_numbered_events_are_deduplicated_and_gaps_reported() -> None:
    import anyio
    import httpx

    from botcall_sdk._call import Call
    from botcall_sdk._events import Chat, EventsLost

    async def scenario() -> list[object]:
        async with httpx.AsyncClient() as http:
            join = {"session_id": "s", "media": {"transport": "websocket", "ssrc": 1}, "websocket_url": "ws://h/v1/stream/s"}
            call = Call(join, room_id="r", sample_rate=48000, http=http)

            def chat(seq: int) -> dict[str, object]:
                return {"type": "chat", "participant_id": "p-2", "text": str(seq), "seq": seq}

            call._on_json({"type": "welcome", "participant_id": "p-1", "participants": [], "last_seq": 2})
            for seq in (3, 4):
                call._on_json(chat(seq))
            # A resume from 4: the server replays from 5, one already seen is dropped.
            call._on_json({"type": "welcome", "participant_id": "p-1", "participants": [], "last_seq": 7})
            for seq in (4, 5, 6, 7, 7):
                call._on_json(chat(seq))
            call._on_json(chat(10))  # 8 and 9 skipped on a live socket
            call._on_json({"type": "events_lost", "first_seq": 11, "last_seq": 12, "count": 2})
            call._on_json(chat(13))
            call._events.close()
            assert call.counters["duplicates"] == 2 and call.counters["replayed"] == 3
            assert call.counters["events_lost"] == 4 and call._last_seq == 13
            return [event async for event in call.events()]

    events = anyio.run(scenario)
    described = [(e.text if isinstance(e, Chat) else (e.first_seq, e.last_seq, e.count)) for e in events]  # type: ignore[union-attr]
    assert described == ["3", "4", "5", "6", "7", (8, 9, 2), "10", (11, 12, 2), "13"]
    assert all(isinstance(e, (Chat, EventsLost)) for e in events)


def test_jitter_buffer_keeps_20ms_ticks_when_10ms_packets_arrive_late_and_flushes_the_end() -> None:
    buffers = _audio.JitterBuffers(48000)
    packets = _opus_10ms_packets(21)  # an odd count: the talkspurt ends mid-tick
    played = []
    now = 0.0
    for index, packet in enumerate(packets):
        # Each tick comes when only the first half of its 20 ms has arrived.
        buffers.push(packet, now)
        if index % 2 == 0:
            played += buffers.pop(now)
        now += 0.01
    for _ in range(10):
        now += 0.02
        played += buffers.pop(now)
    assert all(len(p.pcm) == 1920 for p in played)
    assert sum(len(p.pcm) for p in played) == 22 * 960  # 21 packets, the last padded to a whole tick
    assert [p.timestamp for p in played] == [(1000 + 960 * i) & 0xFFFFFFFF for i in range(11)]
