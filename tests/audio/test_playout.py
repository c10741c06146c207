"""Per-speaker play-out: separate streams, ordered frames, FEC on loss, bounded speakers;
and decoding in arrival order (no buffer, only real gaps concealed)."""

from botcall.demo.signals import dominant_frequency, tone
from botcall.audio.jitter import FrameKind
from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall.wire.rtp import RtpPacket
from botcall.audio.playout import ArrivalPlayout, Playout


def encode_tone(freq, seconds, ssrc):
    enc = OpusEncoder()
    pcm = tone(freq, seconds)
    frame = 1920
    packets = []
    for i in range(len(pcm) // frame):
        payload = enc.encode(pcm[i * frame:(i + 1) * frame])
        packets.append(RtpPacket(payload_type=111, sequence_number=(65500 + i) & 0xFFFF, timestamp=(i * 960) & 0xFFFFFFFF, ssrc=ssrc, payload=payload))
    return packets


def run(playout, streams, *, lose=()):
    """Push each stream's packet i at 20 ms * i (and pop every 20 ms); collect per-SSRC PCM."""
    heard: dict[int, list] = {}
    n = max(len(s) for s in streams)
    for i in range(n + 20):
        now = i * 0.02
        for stream in streams:
            if i < len(stream) and i not in lose:
                playout.push(stream[i], now + 0.001)
        for frame in playout.pop(now + 0.01):
            heard.setdefault(frame.ssrc, []).append(frame)
    return heard


def test_two_speakers_come_out_as_two_streams_with_their_own_tones():
    playout = Playout()
    heard = run(playout, [encode_tone(440, 1.0, 1), encode_tone(880, 1.0, 2)])
    assert set(heard) == {1, 2}
    for ssrc, freq in ((1, 440), (2, 880)):
        pcm = b"".join(f.pcm for f in heard[ssrc] if f.kind is FrameKind.AUDIO)
        assert abs(dominant_frequency(pcm[9600:], 48000) - freq) < 3
        seqs = [f.sequence for f in heard[ssrc] if f.kind is not FrameKind.EXPAND]
        assert seqs == sorted(set(seqs))  # in order across the 16-bit wrap, no repeats


def test_a_lost_packet_is_rebuilt_from_fec():
    playout = Playout()
    heard = run(playout, [encode_tone(440, 1.0, 7)], lose={20})
    concealed = [f for f in heard[7] if f.kind is FrameKind.CONCEAL]
    assert len(concealed) == 1 and concealed[0].recovered


def test_pcm16_rates_decode_straight_to_the_rate():
    playout = Playout(sample_rate=16000)
    heard = run(playout, [encode_tone(440, 0.6, 3)])
    frames = [f for f in heard[3] if f.kind is FrameKind.AUDIO]
    assert all(len(f.pcm) == 640 for f in frames)  # 20 ms at 16 kHz
    assert abs(dominant_frequency(b"".join(f.pcm for f in frames)[3200:], 16000) - 440) < 3


def test_speakers_are_bounded_and_forgotten_when_silent():
    playout = Playout(max_speakers=2, forget_after=1.0)
    for ssrc in (1, 2, 3):
        playout.push(RtpPacket(payload_type=111, sequence_number=1, timestamp=0, ssrc=ssrc, payload=b"\xf8\xff\xfe"), 0.0)
    assert playout.speakers == (1, 2) and playout.counters["too_many_speakers"] == 1
    playout.push(RtpPacket(payload_type=111, sequence_number=1, timestamp=0, ssrc=3, payload=b"\xf8\xff\xfe"), 5.0)
    assert playout.speakers == (3,)


def test_garbage_payload_is_concealed_and_counted():
    playout = Playout()
    good = encode_tone(440, 0.4, 9)
    bad = [RtpPacket(payload_type=111, sequence_number=p.sequence_number, timestamp=p.timestamp, ssrc=9, payload=b"\xff" * 3 if i == 10 else p.payload) for i, p in enumerate(good)]
    heard = run(playout, [bad])
    assert playout.counters["opus_decode_failed"] == 1
    assert all(len(f.pcm) == 1920 for f in heard[9])


# --- ArrivalPlayout: decoded the moment a packet arrives -------------------------------------


def test_arrival_playout_gives_each_packet_its_frame_at_once_bit_exact():
    # No buffer: packet i's frame comes out of push(i), and it is exactly what a
    # decoder fed the same packets in order makes (nothing held, nothing added).
    packets = encode_tone(440, 0.6, 5)
    playout = ArrivalPlayout(sample_rate=16000)
    reference = OpusDecoder(16000)
    for i, packet in enumerate(packets):
        frames = playout.push(packet, i * 0.02)
        assert [(f.kind, f.pcm) for f in frames] == [(FrameKind.AUDIO, reference.decode_untrusted(packet.payload))]
        assert frames[0].timestamp == packet.timestamp and frames[0].sequence == 65500 + i  # extended past the wrap
    assert playout.counters == {}


def test_arrival_playout_fills_a_real_gap_with_fec_then_plc_and_drops_the_late_packet():
    packets = encode_tone(440, 0.6, 5)
    playout = ArrivalPlayout()
    for i in range(10):
        playout.push(packets[i], i * 0.02)
    # 10, 11 and 12 lost (12's audio rebuilt from 13's FEC), then 13 arrives.
    frames = playout.push(packets[13], 0.26)
    assert [f.kind for f in frames] == [FrameKind.CONCEAL] * 3 + [FrameKind.AUDIO]
    assert [f.recovered for f in frames] == [False, False, True, False]
    assert [f.timestamp for f in frames] == [p.timestamp for p in packets[10:14]]
    assert all(len(f.pcm) == 1920 for f in frames)
    # 11 shows up after all: its place is filled, so it is dropped, not played twice.
    assert playout.push(packets[11], 0.27) == [] and playout.counters["late_dropped"] == 1
    assert [f.kind for f in playout.push(packets[14], 0.28)] == [FrameKind.AUDIO]
    assert playout.counters["concealed"] == 3


def test_arrival_playout_starts_a_new_segment_after_a_long_jump():
    packets = encode_tone(440, 1.0, 5)
    playout = ArrivalPlayout()
    playout.push(packets[0], 0.0)
    frames = playout.push(packets[40], 0.8)  # 39 missing: a restart, not 780 ms of concealment
    assert [f.kind for f in frames] == [FrameKind.AUDIO] and playout.counters["segments_restarted"] == 1


def test_arrival_playout_speakers_are_bounded_and_forgotten():
    playout = ArrivalPlayout(max_speakers=2, forget_after=1.0)
    silence = b"\xf8\xff\xfe"
    for ssrc in (1, 2, 3):
        playout.push(RtpPacket(payload_type=111, sequence_number=1, timestamp=0, ssrc=ssrc, payload=silence), 0.0)
    assert playout.speakers == (1, 2) and playout.counters["too_many_speakers"] == 1
    assert playout.push(RtpPacket(payload_type=111, sequence_number=1, timestamp=0, ssrc=3, payload=silence), 5.0)
    assert playout.speakers == (3,)


def test_arrival_playout_conceals_and_counts_a_garbage_payload():
    playout = ArrivalPlayout()
    frames = playout.push(RtpPacket(payload_type=111, sequence_number=1, timestamp=0, ssrc=4, payload=b"\xff" * 3), 0.0)
    assert [f.kind for f in frames] == [FrameKind.CONCEAL] and len(frames[0].pcm) == 1920
    assert playout.counters["opus_decode_failed"] == 1


def encode_tone_10ms(freq, seconds, ssrc):
    """10 ms packets, as a browser sends them when the answer says ``a=ptime:10``."""
    import opuslib

    enc = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
    pcm = tone(freq, seconds)
    return [
        RtpPacket(payload_type=111, sequence_number=(65500 + i) & 0xFFFF, timestamp=(i * 480) & 0xFFFFFFFF, ssrc=ssrc,
                  payload=enc.encode(pcm[i * 960:(i + 1) * 960], 480))
        for i in range(len(pcm) // 960)
    ]


def test_10ms_packets_play_as_20ms_frames_every_tick_nothing_dropped():
    # Before: one 10 ms packet per 20 ms tick, half of them discarded.
    packets = encode_tone_10ms(440, 2.0, 4)
    playout = Playout()
    frames = []
    for i in range(len(packets) + 20):
        if i < len(packets) and i != 101:  # one lost
            playout.push(packets[i], i * 0.01 + 0.001)
        if i % 2:
            frames += playout.pop(i * 0.01)
    stats = playout.stats(4)
    assert all(len(f.pcm) == 1920 for f in frames)
    assert stats.discarded <= 3 and stats.played >= len(packets) - 5  # the start's trim at most
    assert stats.lost == 1
    audio = b"".join(f.pcm for f in frames)
    assert abs(dominant_frequency(audio[9600:], 48000) - 440) < 3
    assert len(audio) // 2 >= (len(packets) - 6) * 480


def test_a_mix_of_a_10ms_speaker_and_a_20ms_one_sums_them():
    # Before: the two speakers' frames differed in length and the sum raised.
    from botcall.relay.mixer import Mixer

    short, long = encode_tone_10ms(440, 1.0, 1), encode_tone(1000, 1.0, 2)
    mixer = Mixer()
    out = []
    for i in range(len(short)):
        mixer.push(bytes(short[i]), i * 0.01)
        if i % 2:
            mixer.push(bytes(long[i // 2]), i * 0.01)
            frame = mixer.pop(i * 0.01)
            if frame is not None:
                out.append(frame)
    assert {len(f.pcm) for f in out} == {1920} and max(f.speakers for f in out) == 2
    mixed = b"".join(f.pcm for f in out)[9600:]
    from botcall.demo.signals import energy_fraction

    assert energy_fraction(mixed, 48000, 440) > 0.3 and energy_fraction(mixed, 48000, 1000) > 0.3


def test_arrival_playout_conceals_a_lost_10ms_packet_for_10ms():
    packets = encode_tone_10ms(440, 0.3, 5)
    playout = ArrivalPlayout()
    for i in range(10):
        assert [len(f.pcm) for f in playout.push(packets[i], i * 0.01)] == [960]
    frames = playout.push(packets[12], 0.12)  # 10 and 11 lost
    assert [f.kind for f in frames] == [FrameKind.CONCEAL] * 2 + [FrameKind.AUDIO]
    assert [len(f.pcm) for f in frames] == [960] * 3  # not 20 ms for each lost 10 ms
    assert [f.timestamp for f in frames] == [p.timestamp for p in packets[10:13]]


def test_a_speaker_that_changes_its_packet_duration_starts_afresh_on_the_new_clock():
    playout = Playout()
    long, short = encode_tone(440, 0.4, 6), encode_tone_10ms(440, 0.4, 6)
    frames = []
    for i, packet in enumerate(long):
        playout.push(packet, i * 0.02)
        frames += playout.pop(i * 0.02)
    for i, packet in enumerate(short):
        playout.push(RtpPacket(111, (long[-1].sequence_number + 1 + i) & 0xFFFF, (long[-1].timestamp + 960 + 480 * i) & 0xFFFFFFFF, 6, packet.payload), 0.4 + i * 0.01)
        if i % 2:
            frames += playout.pop(0.4 + i * 0.01)
    assert playout.counters["packet_duration_changed"] == 1
    assert {len(f.pcm) for f in frames} == {1920}
