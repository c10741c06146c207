"""Opus through real libopus, checked by what the audio sounds like, not its bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from botcall.audio.resample import resample
from botcall.audio.wav import frames
from botcall.demo.signals import (
    align,
    correlation,
    dominant_frequency,
    find_delay,
    rms_dbfs,
    speech_like,
    tone,
)
from botcall.errors import OpusDecodeError
from botcall.audio.opus import (
    DECODER_RATES,
    FRAME_SAMPLES,
    PAYLOAD_TYPE,
    OpusDecoder,
    OpusEncoder,
    frame_samples,
)

# Opus's algorithmic delay at 48 kHz is a little over 300 samples; search well past it.
MAX_CODEC_DELAY = 1000


def encode_all(pcm: bytes, encoder: OpusEncoder) -> list[bytes]:
    return [
        encoder.encode(frame) for frame in frames(pcm, sample_rate=encoder.sample_rate, channels=encoder.channels)
    ]


def decode_all(packets: list[bytes], decoder: OpusDecoder) -> bytes:
    return b"".join(decoder.decode_untrusted(packet) for packet in packets)


def skip_start(pcm: bytes, sample_rate: int, channels: int = 1, seconds: float = 0.1) -> bytes:
    """Drop the codec's warm-up (and its delay) before measuring a steady tone."""
    return pcm[int(sample_rate * seconds) * 2 * channels :]


def test_constants():
    assert (FRAME_SAMPLES, PAYLOAD_TYPE) == (960, 111)
    assert [frame_samples(rate) for rate in DECODER_RATES] == [160, 240, 320, 480, 960]


def test_tone_survives_round_trip():
    sent = tone(440, 1.0)
    packets = encode_all(sent, OpusEncoder())
    assert len(packets) == 50
    # 32 kbit/s is 80 bytes per 20 ms on average; a broken bitrate CTL would show here.
    assert 40 <= np.mean([len(p) for p in packets]) <= 120
    received = decode_all(packets, OpusDecoder())
    assert len(received) == len(sent)
    steady = skip_start(received, 48000)
    assert dominant_frequency(steady, 48000) == pytest.approx(440, abs=2)
    assert rms_dbfs(steady) == pytest.approx(rms_dbfs(sent), abs=1.5)
    alignment = align(sent, received, max_lag=MAX_CODEC_DELAY)
    assert 250 <= alignment.delay <= 350
    assert alignment.correlation > 0.95


@pytest.mark.parametrize("rate", DECODER_RATES)
def test_decoder_outputs_tone_at_its_own_rate(rate):
    packets = encode_all(tone(440, 1.0), OpusEncoder())
    decoder = OpusDecoder(sample_rate=rate)
    pcm = [decoder.decode_untrusted(p) for p in packets]
    assert {len(frame) for frame in pcm} == {rate // 50 * 2}
    received = b"".join(pcm)
    steady = skip_start(received, rate)
    assert dominant_frequency(steady, rate) == pytest.approx(440, abs=2)
    assert rms_dbfs(steady) == pytest.approx(rms_dbfs(tone(440, 1.0)), abs=1.5)
    # The same audio as the 48 kHz original brought down to this rate.
    expected = resample(tone(440, 1.0), 48000, rate)
    assert correlation(expected, received, max_lag=MAX_CODEC_DELAY * rate // 48000) > 0.95


@pytest.mark.parametrize("rate", [16000, 24000])
def test_speech_decoded_straight_to_pcm16_rates(rate):
    """What the relay does for pcm16 bots: decode at 16/24 kHz without a resampler."""
    sent = speech_like(2.0, seed=3)
    packets = encode_all(sent, OpusEncoder())
    received = decode_all(packets, OpusDecoder(sample_rate=rate))
    expected = resample(sent, 48000, rate)
    assert correlation(expected, received, max_lag=MAX_CODEC_DELAY) > 0.85


def test_encoder_at_16k_input():
    sent = tone(440, 1.0, sample_rate=16000)
    encoder = OpusEncoder(sample_rate=16000)
    assert encoder.frame_bytes == 640
    received = decode_all(encode_all(sent, encoder), OpusDecoder())
    assert dominant_frequency(skip_start(received, 48000), 48000) == pytest.approx(440, abs=2)


def test_stereo_keeps_channels_apart():
    left = np.frombuffer(tone(440, 1.0), "<i2")
    right = np.frombuffer(tone(660, 1.0), "<i2")
    sent = np.column_stack([left, right]).astype("<i2").tobytes()
    encoder = OpusEncoder(channels=2, bitrate=64000, application="audio")
    assert encoder.frame_bytes == 3840
    received = decode_all(encode_all(sent, encoder), OpusDecoder(channels=2))
    samples = np.frombuffer(skip_start(received, 48000, channels=2), "<i2").reshape(-1, 2)
    assert dominant_frequency(samples[:, 0].tobytes(), 48000) == pytest.approx(440, abs=2)
    assert dominant_frequency(samples[:, 1].tobytes(), 48000) == pytest.approx(660, abs=2)


def test_mono_decoder_mixes_stereo_packets():
    left = np.frombuffer(tone(440, 1.0), "<i2")
    sent = np.column_stack([left, np.zeros_like(left)]).astype("<i2").tobytes()
    packets = encode_all(sent, OpusEncoder(channels=2, bitrate=64000))
    received = decode_all(packets, OpusDecoder(channels=1))
    assert len(received) == len(sent) // 2
    assert dominant_frequency(skip_start(received, 48000), 48000) == pytest.approx(440, abs=2)


def test_wrong_frame_size_is_a_programmer_error():
    encoder = OpusEncoder()
    for size in (0, 1918, 1921, 3840):
        with pytest.raises(ValueError, match="20 ms"):
            encoder.encode(bytes(size))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 44100},
        {"channels": 3},
        {"bitrate": 100},
        {"application": "music"},
        {"expected_loss_percent": 101},
        {"complexity": 11},
    ],
)
def test_encoder_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        OpusEncoder(**kwargs)


@pytest.mark.parametrize("kwargs", [{"sample_rate": 22050}, {"channels": 0}])
def test_decoder_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        OpusDecoder(**kwargs)


def test_multi_frame_packet_decodes_to_its_full_length():
    """A code 1 packet (RFC 6716 §3.2.2) of two 20 ms frames gives 40 ms."""
    packet = OpusEncoder(bitrate=32000).encode(tone(440, 0.02))
    frame = packet[1:]
    double = bytes([packet[0] | 0x01]) + frame + frame
    assert len(OpusDecoder().decode_untrusted(double)) == 2 * 960 * 2
    assert len(OpusDecoder(sample_rate=16000).decode_untrusted(double)) == 2 * 320 * 2


def test_conceal_continues_the_tone():
    decoder = OpusDecoder()
    assert decoder.conceal() == bytes(1920)  # nothing to continue yet: silence
    for packet in encode_all(tone(440, 0.5), OpusEncoder()):
        decoder.decode_untrusted(packet)
    concealed = decoder.conceal()
    assert len(concealed) == 1920
    assert rms_dbfs(concealed) > -30
    assert dominant_frequency(concealed, 48000) == pytest.approx(440, abs=15)
    assert len(OpusDecoder(sample_rate=16000).conceal()) == 640


def test_reset_forgets_history():
    packets = encode_all(speech_like(0.6, seed=2), OpusEncoder())
    used = OpusDecoder()
    decode_all(packets, used)
    used.reset()
    assert decode_all(packets[:10], used) == decode_all(packets[:10], OpusDecoder())


def _lost_frame_errors(packets: list[bytes], sent: np.ndarray, lost: int, delay: int) -> tuple[float, float]:
    """Squared error over the lost frame when concealed by PLC and when recovered by FEC."""
    errors = []
    for use_fec in (False, True):
        decoder = OpusDecoder()
        out = []
        for index, packet in enumerate(packets):
            if index != lost:
                out.append(decoder.decode_untrusted(packet))
            elif use_fec:
                out.append(decoder.recover_untrusted(packets[index + 1]))
            else:
                out.append(decoder.conceal())
        received = np.frombuffer(b"".join(out), "<i2").astype(float)
        start = lost * FRAME_SAMPLES
        window = received[start + delay : start + delay + FRAME_SAMPLES]
        errors.append(float(np.sum((window - sent[start : start + FRAME_SAMPLES]) ** 2)))
    return errors[0], errors[1]


def _fec_versus_plc(encoder: OpusEncoder, seed: int) -> tuple[int, int, float]:
    """Lose one voiced frame at a time; count FEC wins and the overall error ratio in dB."""
    sent_pcm = speech_like(3.0, seed=seed)
    sent = np.frombuffer(sent_pcm, "<i2").astype(float)
    packets = encode_all(sent_pcm, encoder)
    delay = find_delay(sent_pcm, decode_all(packets, OpusDecoder()), max_lag=MAX_CODEC_DELAY)
    plc_total = fec_total = 0.0
    trials = fec_wins = 0
    for lost in range(5, len(packets) - 2, 5):
        frame = sent[lost * FRAME_SAMPLES : (lost + 1) * FRAME_SAMPLES]
        if rms_dbfs(frame.astype("<i2").tobytes()) < -40:
            continue  # a pause: nothing to recover
        plc, fec = _lost_frame_errors(packets, sent, lost, delay)
        trials += 1
        fec_wins += fec < plc
        plc_total += plc
        fec_total += fec
    return trials, fec_wins, 10 * float(np.log10(plc_total / fec_total))


@pytest.mark.parametrize("seed", [1, 5])
def test_fec_recovers_a_lost_frame_better_than_concealment(seed):
    trials, fec_wins, gain_db = _fec_versus_plc(OpusEncoder(bitrate=32000, expected_loss_percent=10), seed)
    assert trials >= 15
    assert fec_wins >= 0.7 * trials
    # Measured about 5 dB less error over all trials.
    assert gain_db > 2.5


def test_without_fec_data_recovery_is_no_better_than_concealment():
    """Control for the test above: the gain comes from FEC bits in the stream, not from luck."""
    trials, fec_wins, gain_db = _fec_versus_plc(OpusEncoder(fec=False), 1)
    assert trials >= 15
    # In SILK mode recovery without LBRR data is exactly PLC; hybrid differs by a hair.
    assert fec_wins <= 0.3 * trials
    assert abs(gain_db) < 0.5


@pytest.mark.parametrize("method", ["decode_untrusted", "recover_untrusted"])
def test_empty_payload_is_malformed(method):
    with pytest.raises(OpusDecodeError, match="empty") as info:
        getattr(OpusDecoder(), method)(b"")
    assert info.value.counter == "opus_decode_failed"


@given(payload=st.binary(max_size=400), rate=st.sampled_from(DECODER_RATES), channels=st.sampled_from([1, 2]))
@example(payload=b"\xff\xff\xff", rate=48000, channels=1)  # code 3 with a frame count of 63
@example(payload=b"\x03", rate=48000, channels=1)  # code 3 without its frame-count byte
@example(payload=b"\x01\x00", rate=48000, channels=1)  # code 1 with an odd frame-data length
@example(payload=b"\x02\xfb", rate=16000, channels=2)  # code 2 whose first frame overruns
@example(payload=b"\x0b\x30", rate=48000, channels=1)  # 48 x 20 ms = 960 ms > 120 ms
def test_decode_returns_pcm_or_raises_opus_decode_error(payload, rate, channels):
    decoder = OpusDecoder(sample_rate=rate, channels=channels)
    for method in (decoder.decode_untrusted, decoder.recover_untrusted):
        try:
            pcm = method(payload)
        except OpusDecodeError:
            continue
        assert len(pcm) % (2 * channels) == 0
        assert len(pcm) <= int(rate * 0.120) * 2 * channels


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x03", b"\x01\x00", b"\x02\xfb", b"\x0b\x30"])
def test_malformed_regressions_raise(payload):
    with pytest.raises(OpusDecodeError):
        OpusDecoder().decode_untrusted(payload)
