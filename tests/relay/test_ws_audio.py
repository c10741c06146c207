"""WebSocket audio, sans-IO: the relay sees what the bot sent, the bot gets what speakers said."""

from __future__ import annotations

import pytest

from botcall.audio.opus import OpusEncoder
from botcall.demo.signals import tone
from botcall.errors import SignalingError
from botcall.relay.core import MediaPeer, MediaRelay
from botcall.relay.service import WsSink
from botcall.relay.ws_audio import WsAudio
from botcall.wire.rtp import RtpPacket, parse_rtp_untrusted


class Recorder:
    """A sink that keeps what the relay forwards to it."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def deliver_rtp(self, data, speaker, now):
        self.packets.append(data)

    def deliver_rtcp(self, data, speaker, now):
        pass


def room(encoding: str, sample_rate: int = 16000):
    relay = MediaRelay(lambda data, addr: None)
    bot = MediaPeer(session_id="s-bot", participant_id="p-bot", room_id="r", ssrc=1111, payload_type=111, sink=WsSink(), speaks_udp=False)
    listener = Recorder()
    other = MediaPeer(session_id="s-l", participant_id="p-l", room_id="r", ssrc=2222, payload_type=111, sink=listener, speaks_udp=False)
    relay.add_peer(bot)
    relay.add_peer(other)
    return relay, bot, listener, WsAudio(relay, bot, encoding=encoding, sample_rate=sample_rate)


def test_opus_frames_are_numbered_and_forwarded():
    relay, bot, listener, audio = room("opus")
    for k in range(3):
        audio.audio_message(b"\xfc" + bytes([k]) * 30, now=k * 0.02)
    packets = [parse_rtp_untrusted(p) for p in listener.packets]
    assert [(p.ssrc, p.payload_type, p.sequence_number, p.timestamp) for p in packets] == [
        (1111, 111, 0, 0), (1111, 111, 1, 960), (1111, 111, 2, 1920)
    ]
    with pytest.raises(SignalingError) as empty:
        audio.audio_message(b"", now=1.0)
    with pytest.raises(SignalingError) as big:
        audio.binary_message(b"\x80" * 1501, now=1.0)
    assert empty.value.code == big.value.code == "bad_audio"


def test_pcm_in_odd_chunks_gives_whole_frames_a_bounded_batch_at_a_time():
    relay, bot, listener, audio = room("pcm16", 16000)
    pcm = tone(440, 1.0, sample_rate=16000)
    for start in range(0, len(pcm), 1234):  # 617 samples: never a frame boundary
        audio.push_pcm(pcm[start : start + 1234])
    assert audio.pending_frames == 50
    assert audio.encode_pending(now=0.0, max_frames=5) == 5
    assert audio.pending_frames == 45 and len(listener.packets) == 5
    while audio.encode_pending(now=0.0, max_frames=5):
        pass
    assert len(listener.packets) == 50  # 1 s exactly: nothing padded, nothing lost
    with pytest.raises(SignalingError) as odd:
        audio.push_pcm(b"\0")
    with pytest.raises(SignalingError) as full:
        audio.push_pcm(b"\0\0" * 16000 * 3)  # 3 s > the 2 s backlog
    assert (odd.value.code, full.value.code) == ("bad_audio", "audio_backlog_full")
    assert audio.pending_frames == 0  # a refused message is refused whole


def test_pcm_downlink_decodes_per_speaker_and_frames_binary_and_json_fields():
    relay, bot, listener, audio = room("pcm16", 16000)
    encoder = OpusEncoder()
    speaker = relay.peer("s-l")
    pcm = tone(660, 0.2)
    frames = []
    for k in range(10):
        payload = encoder.encode(pcm[k * 1920 : (k + 1) * 1920])
        audio.pcm_push(speaker, bytes(RtpPacket(111, 100 + k, 960 * k, 2222, payload)), now=k * 0.02)
        frames += audio.pcm_pop(now=k * 0.02 + 0.2)
    assert frames and all(f.participant_id == "p-l" and f.encoding == "pcm16" and len(f.payload) == 640 for f in frames)
    first = parse_rtp_untrusted(frames[0].binary())
    assert (first.payload_type, first.ssrc, first.sequence_number) == (96, 2222, 0)
    assert [f.seq for f in frames] == list(range(len(frames)))


def test_pcm_downlink_on_arrival_sends_each_packet_at_once_with_stream_positions():
    relay, bot, listener, audio = room("pcm16", 16000)
    assert audio.delivery == "arrival" and not audio.ticked
    speaker = relay.peer("s-l")
    speaker.stream_origin = 5000
    encoder = OpusEncoder()
    pcm = tone(660, 0.2)
    delivered = []
    for k in range(10):
        if k == 6:
            continue  # lost: comes back concealed just before packet 7
        payload = encoder.encode(pcm[k * 1920 : (k + 1) * 1920])
        frames = audio.pcm_arrived(speaker, bytes(RtpPacket(111, 100 + k, 5000 + 960 * k, 2222, payload)), now=k * 0.02)
        assert len(frames) == (2 if k == 7 else 1)
        delivered += frames
    assert [f.concealed for f in delivered] == [False] * 6 + [True] + [False] * 3
    assert [f.timestamp for f in delivered] == [320 * k for k in range(10)]  # 20 ms at 16 kHz each, no gap
    assert [f.stream_ms for f in delivered] == [20 * k for k in range(10)]
    assert [f.seq for f in delivered] == list(range(10))
    assert all(f.participant_id == "p-l" and len(f.payload) == 640 for f in delivered)


def test_paced_delivery_is_ticked_and_unknown_delivery_refused():
    relay = MediaRelay(lambda data, addr: None)
    bot = MediaPeer(session_id="s-bot", participant_id="p-bot", room_id="r", ssrc=1111, payload_type=111, sink=WsSink(), speaks_udp=False)
    assert WsAudio(relay, bot, encoding="pcm16", sample_rate=16000, delivery="paced").ticked
    assert not WsAudio(relay, bot, encoding="opus", sample_rate=48000).ticked
    with pytest.raises(ValueError):
        WsAudio(relay, bot, encoding="pcm16", sample_rate=16000, delivery="soon")


class TimedRecorder(Recorder):
    """A listener that keeps when each packet reached it, too."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def deliver_rtp(self, data, speaker, now):
        self.packets.append(data)
        self.times.append(now)


@pytest.mark.parametrize("encoding", ["pcm16", "opus"])
def test_a_real_time_bot_reaches_listeners_as_a_clean_real_time_rtp_stream(encoding):
    """What a browser's jitter buffer gets from a WebSocket bot that sends 20 ms of
    speech and silence every 20 ms (docs/bench-results.md §16c): one packet per
    frame, forwarded the moment it arrives (the bot's playout holds nothing), with
    sequence +1 and timestamp +960 exactly as the clock advances, no marker, and
    one 20 ms Opus frame per packet, whether the relay encodes (pcm16) or the bot
    does (opus). Firefox's large buffer on the pcm16 path was its own slow audio
    clock, not this stream: the test pins the stream it was shown to be."""
    from botcall.audio.opus import packet_samples_untrusted
    from botcall.relay.bot_playout import BotPlayout

    relay, bot, _, audio = room(encoding, 48000)
    bot.playout = BotPlayout()
    listener = TimedRecorder()
    relay.remove_peer("s-l")
    relay.add_peer(MediaPeer(session_id="s-l", participant_id="p-l", room_id="r", ssrc=2222, payload_type=111, sink=listener, speaks_udp=False))
    encoder = OpusEncoder(48000, bitrate=64000, application="audio")
    speech, silence = tone(440, 0.1, sample_rate=48000), bytes(1920)
    frames = [speech[i : i + 1920] for i in range(0, len(speech), 1920)] + [silence] * 20
    for k in range(250):  # 5 s: bursts of 100 ms inside silence
        now = 10.0 + k * 0.020
        pcm = frames[k % len(frames)]
        if encoding == "pcm16":
            audio.binary_message(pcm, now)
            assert audio.encode_pending(now, 50) == 1
        else:
            audio.audio_message(encoder.encode(pcm), now)
        relay.handle_timeout(now)
        assert len(listener.packets) == k + 1 and listener.times[-1] == now  # forwarded at once, none held
    packets = [parse_rtp_untrusted(p) for p in listener.packets]
    assert {(b.sequence_number - a.sequence_number) & 0xFFFF for a, b in zip(packets, packets[1:])} == {1}
    assert {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(packets, packets[1:])} == {960}
    assert not any(p.marker for p in packets)
    assert {packet_samples_untrusted(p.payload) for p in packets} == {960}
    assert {p.payload[0] & 0x03 for p in packets} == {0}  # one frame per packet (RFC 6716 §3.2.2)
