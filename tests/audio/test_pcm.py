"""PCM utilities, checked by content: frequencies, levels, alignment, exact samples."""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import wave

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from botcall.audio.resample import StreamResampler, resample
from botcall.audio.wav import decode_wav, encode_wav, frames, read_wav, write_wav
from botcall.demo.signals import (
    align,
    align_segments,
    correlation,
    dominant_frequency,
    find_delay,
    rms_dbfs,
    segmental_correlation,
    snr_db,
    speech_like,
    tone,
)

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def ints(pcm: bytes, channels: int = 1) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").reshape(-1, channels)


def stereo(left: bytes, right: bytes) -> bytes:
    return np.column_stack([ints(left)[:, 0], ints(right)[:, 0]]).astype("<i2").tobytes()


def middle(pcm: bytes, sample_rate: int, channels: int = 1, margin: float = 0.05) -> bytes:
    """Leave out the edges, where an abruptly started tone is not band-limited."""
    cut = int(margin * sample_rate) * 2 * channels
    return pcm[cut:-cut]


def stdlib_wav(path, samples: np.ndarray, sample_width: int, sample_rate: int) -> None:
    """Write integer samples ``(frames, channels)`` with Python's own ``wave`` writer."""
    if sample_width == 1:
        raw = (samples + 128).astype(np.uint8).tobytes()
    elif sample_width == 3:
        little = samples.astype("<i4").reshape(-1, 1).view(np.uint8)
        raw = little[:, :3].tobytes()
    else:
        raw = samples.astype(f"<i{sample_width}").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[1])
        out.setsampwidth(sample_width)
        out.setframerate(sample_rate)
        out.writeframes(raw)


def float_wav(samples: np.ndarray, sample_rate: int, bits: int, *, extensible: bool) -> bytes:
    """Build a float WAV by hand (the stdlib cannot), plain or WAVE_FORMAT_EXTENSIBLE."""
    channels = samples.shape[1]
    block = channels * bits // 8
    tag = 0xFFFE if extensible else 3
    fmt = struct.pack("<HHIIHH", tag, channels, sample_rate, sample_rate * block, block, bits)
    if extensible:
        # cbSize, valid bits, channel mask, KSDATAFORMAT_SUBTYPE_IEEE_FLOAT.
        guid = struct.pack("<IHH8s", 3, 0x0000, 0x0010, bytes.fromhex("800000aa00389b71"))
        fmt += struct.pack("<HHI", 22, bits, 3 if channels == 2 else 4) + guid
    data = samples.astype(f"<f{bits // 8}").tobytes()
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


# --- WAV -----------------------------------------------------------------------------

TONE_440 = tone(440, 0.5)
TONE_660 = tone(660, 0.5)
STEREO = stereo(TONE_440, TONE_660)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sample_width", [1, 2, 3, 4])
def test_integer_wav_round_trip(tmp_path, sample_width, channels):
    pcm = TONE_440 if channels == 1 else STEREO
    samples = ints(pcm, channels).astype(np.int64)
    # Widen (or, for 8-bit, narrow) the int16 samples exactly.
    scaled = samples >> 8 if sample_width == 1 else samples << (8 * (sample_width - 2))
    stdlib_wav(tmp_path / "in.wav", scaled, sample_width, 48000)
    back = read_wav(tmp_path / "in.wav", channels=channels)
    expected = (scaled << 8) if sample_width == 1 else samples
    assert np.array_equal(ints(back, channels), expected)


@pytest.mark.parametrize("extensible", [False, True])
@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("channels", [1, 2])
def test_float_wav_round_trip(bits, extensible, channels):
    pcm = TONE_440 if channels == 1 else STEREO
    floats = ints(pcm, channels) / 32768.0
    back = decode_wav(float_wav(floats, 48000, bits, extensible=extensible), channels=channels)
    assert back == pcm


def test_float_wav_out_of_range_is_clipped():
    wild = np.array([[2.0], [-3.0], [np.nan], [np.inf], [0.5]])
    back = decode_wav(float_wav(wild, 48000, 32, extensible=False))
    assert ints(back)[:, 0].tolist() == [32767, -32768, 0, 32767, 16384]


def test_write_wav_is_read_by_the_stdlib(tmp_path):
    write_wav(tmp_path / "out.wav", STEREO, sample_rate=48000, channels=2)
    with wave.open(str(tmp_path / "out.wav")) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 48000)
        assert wav.readframes(wav.getnframes()) == STEREO
    assert read_wav(tmp_path / "out.wav", channels=2) == STEREO


def test_write_wav_rejects_partial_frames(tmp_path):
    with pytest.raises(ValueError):
        write_wav(tmp_path / "x.wav", b"\0\0\0", sample_rate=48000, channels=1)
    with pytest.raises(ValueError):
        encode_wav(b"\0\0", sample_rate=48000, channels=2)


def test_stereo_to_mono_averages_channels():
    mono = decode_wav(encode_wav(STEREO, sample_rate=48000, channels=2), channels=1)
    mixed = ints(mono)[:, 0].astype(int)
    expected = np.rint(ints(STEREO, 2).astype(int).sum(axis=1) / 2)
    assert np.array_equal(mixed, expected)
    # Both tones are in the mix at half amplitude (-6 dB each).
    spectrum = np.abs(np.fft.rfft(mixed))  # 0.5 s: 2 Hz per bin
    assert spectrum[220] == pytest.approx(spectrum[330], rel=0.01)


def test_mono_to_stereo_duplicates():
    both = decode_wav(encode_wav(TONE_440, sample_rate=48000, channels=1), channels=2)
    samples = ints(both, 2)
    assert np.array_equal(samples[:, 0], samples[:, 1])
    assert samples[:, 0].tobytes() == TONE_440


def test_more_channels_mix_to_mono_but_not_to_stereo():
    four = np.tile(ints(TONE_440), (1, 4)) / 32768.0
    data = float_wav(four, 48000, 32, extensible=True)
    assert decode_wav(data, channels=1) == TONE_440
    with pytest.raises(ValueError, match="4 channels"):
        decode_wav(data, channels=2)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
def test_wav_is_resampled_on_reading(tmp_path, rate):
    stdlib_wav(tmp_path / "in.wav", ints(tone(440, 0.5, sample_rate=rate)).astype(np.int64), 2, rate)
    pcm = read_wav(tmp_path / "in.wav")
    assert len(pcm) == 2 * 24000
    assert dominant_frequency(pcm, 48000) == pytest.approx(440, abs=0.5)


@needs_ffmpeg
@pytest.mark.parametrize(
    ("codec", "rate"),
    [
        ("pcm_u8", 8000),
        ("pcm_s16le", 22050),
        ("pcm_s24le", 44100),
        ("pcm_s32le", 16000),
        ("pcm_f32le", 44100),
        ("pcm_f64le", 24000),
    ],
)
def test_reads_wavs_written_by_ffmpeg(tmp_path, codec, rate):
    """An independent writer: extensible headers, LIST chunks, every sample format."""
    path = tmp_path / "ffmpeg.wav"
    graph = f"sine=f=440:r={rate}:d=0.5[l];sine=f=660:r={rate}:d=0.5[r];[l][r]amerge=inputs=2"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-filter_complex", graph, "-c:a", codec, str(path)],
        check=True,
    )
    pcm = read_wav(path, channels=2)
    assert len(pcm) == 4 * 24000
    left, right = ints(pcm, 2).T
    assert dominant_frequency(middle(left.tobytes(), 48000), 48000) == pytest.approx(440, abs=1)
    assert dominant_frequency(middle(right.tobytes(), 48000), 48000) == pytest.approx(660, abs=1)
    # ffmpeg's sine source has amplitude 1/8: -21.1 dBFS RMS.
    assert rms_dbfs(middle(left.tobytes(), 48000)) == pytest.approx(-21.1, abs=0.3)


def _minimal_wav(fmt: bytes, data: bytes = b"\0\0" * 4, *, extra: bytes = b"") -> bytes:
    body = b"WAVE" + extra + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


PCM16_MONO_FMT = struct.pack("<HHIIHH", 1, 1, 48000, 96000, 2, 16)

MALFORMED_WAVS = {
    "empty": b"",
    "too short": b"RIFF\0\0",
    "not RIFF": b"RIFX" + bytes(40),
    "not WAVE": b"RIFF\0\0\0\0AVI " + bytes(40),
    "no fmt": b"RIFF\x0c\0\0\0WAVEdata\x00\x00\x00\x00",
    "no data": b"RIFF\x18\0\0\0WAVEfmt \x10\0\0\0" + PCM16_MONO_FMT,
    "short fmt": _minimal_wav(PCM16_MONO_FMT[:14]),
    "ADPCM": _minimal_wav(struct.pack("<HHIIHH", 2, 1, 48000, 96000, 2, 16)),
    "12-bit": _minimal_wav(struct.pack("<HHIIHH", 1, 1, 48000, 96000, 2, 12)),
    "16-bit float": _minimal_wav(struct.pack("<HHIIHH", 3, 1, 48000, 96000, 2, 16)),
    "no channels": _minimal_wav(struct.pack("<HHIIHH", 1, 0, 48000, 96000, 0, 16)),
    "9 channels": _minimal_wav(struct.pack("<HHIIHH", 1, 9, 48000, 96000, 18, 16)),
    "rate 0": _minimal_wav(struct.pack("<HHIIHH", 1, 1, 0, 0, 2, 16)),
    "rate 10 MHz": _minimal_wav(struct.pack("<HHIIHH", 1, 1, 10_000_000, 0, 2, 16)),
    "block align": _minimal_wav(struct.pack("<HHIIHH", 1, 1, 48000, 96000, 4, 16)),
    "short extensible": _minimal_wav(struct.pack("<HHIIHH", 0xFFFE, 1, 48000, 96000, 2, 16) + b"\x16\0"),
    "extensible ADPCM": _minimal_wav(
        struct.pack("<HHIIHHHHI", 0xFFFE, 1, 48000, 96000, 2, 16, 22, 16, 4) + struct.pack("<I12s", 2, bytes(12))
    ),
}


@pytest.mark.parametrize("name", MALFORMED_WAVS)
def test_malformed_wav_raises_value_error(name):
    with pytest.raises(ValueError):
        decode_wav(MALFORMED_WAVS[name])


def test_not_a_wav_says_so(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"ID3\x04" + bytes(100))
    with pytest.raises(ValueError, match="not a WAV file"):
        read_wav(tmp_path / "x.wav")


def test_tolerated_oddities():
    samples = struct.pack("<4h", 1, -2, 3, -4)
    # An odd-sized chunk before fmt is padded to even length (RIFF).
    junk = b"junk" + struct.pack("<I", 3) + b"abc\0"
    assert decode_wav(_minimal_wav(PCM16_MONO_FMT, samples, extra=junk)) == samples
    # A streaming writer's data size of 0xFFFFFFFF: read what is there.
    streamed = _minimal_wav(PCM16_MONO_FMT, samples)
    streamed = streamed[: -len(samples) - 4] + b"\xff\xff\xff\xff" + samples
    assert decode_wav(streamed) == samples
    # A truncated last sample is dropped.
    assert decode_wav(_minimal_wav(PCM16_MONO_FMT, samples + b"\x05")) == samples
    # data before fmt.
    data_first = b"WAVE" + b"data" + struct.pack("<I", 8) + samples + b"fmt " + struct.pack("<I", 16) + PCM16_MONO_FMT
    assert decode_wav(b"RIFF" + struct.pack("<I", len(data_first)) + data_first) == samples


@given(data=st.binary(max_size=300))
@example(data=MALFORMED_WAVS["short extensible"])
def test_arbitrary_bytes_decode_or_raise_value_error(data):
    try:
        pcm = decode_wav(data)
    except ValueError:
        return
    assert len(pcm) % 2 == 0


@given(
    tag=st.sampled_from([1, 3, 0xFFFE, 2, 0]),
    channels=st.integers(0, 10),
    rate=st.sampled_from([0, 999, 1000, 8000, 44100, 48000, 768001, 0xFFFFFFFF]),
    block_align=st.integers(0, 40),
    bits=st.sampled_from([0, 8, 12, 16, 24, 32, 64]),
    tail=st.binary(max_size=64),
    data=st.binary(max_size=64),
)
def test_mutated_headers_decode_or_raise_value_error(tag, channels, rate, block_align, bits, tail, data):
    """Headers near the valid ones reach deeper than random bytes do."""
    fmt = struct.pack("<HHIIHH", tag, channels, rate, 0, block_align, bits) + tail
    try:
        pcm = decode_wav(_minimal_wav(fmt, data), channels=2)
    except ValueError:
        return
    assert len(pcm) % 4 == 0


# --- Framing -------------------------------------------------------------------------


def test_frames_pads_the_last_one():
    pcm = bytes(range(200)) * 20  # 4000 bytes = 2000 samples
    out = list(frames(pcm))
    assert [len(f) for f in out] == [1920, 1920, 1920]
    assert b"".join(out)[: len(pcm)] == pcm
    assert out[-1][len(pcm) - 3840 :] == bytes(3 * 1920 - len(pcm))


def test_frames_exact_and_stereo_and_other_rates():
    assert len(list(frames(bytes(1920 * 4)))) == 4
    assert [len(f) for f in frames(bytes(3840), channels=2)] == [3840]
    assert [len(f) for f in frames(bytes(700), sample_rate=16000, frame_duration=0.01)] == [320, 320, 320]
    assert list(frames(b"")) == []


def test_frames_rejects_partial_samples():
    with pytest.raises(ValueError):
        frames(b"\0\0\0")
    with pytest.raises(ValueError):
        frames(b"\0\0", channels=2)
    with pytest.raises(ValueError):
        frames(b"\0\0", frame_duration=0.0)


# --- Resampling ----------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 44100])
def test_resampling_preserves_a_tone_both_ways(rate):
    up = resample(tone(1000, 1.0, sample_rate=rate), rate, 48000)
    assert len(up) == 2 * 48000
    assert dominant_frequency(up, 48000) == pytest.approx(1000, abs=0.5)
    assert rms_dbfs(middle(up, 48000)) == pytest.approx(rms_dbfs(TONE_440), abs=0.05)
    # Sample for sample what a tone generated at 48 kHz would be: no delay, no distortion.
    assert align(tone(1000, 1.0), up, max_lag=5).delay == 0
    assert snr_db(middle(tone(1000, 1.0), 48000), middle(up, 48000), max_lag=0) > 50

    down = resample(tone(1000, 1.0), 48000, rate)
    assert len(down) == 2 * rate
    assert dominant_frequency(down, rate) == pytest.approx(1000, abs=0.5)
    assert snr_db(middle(tone(1000, 1.0, sample_rate=rate), rate), middle(down, rate), max_lag=0) > 50


def test_resampling_speech_round_trip_keeps_the_band_below_nyquist():
    speech = speech_like(1.0, seed=4)
    back = resample(resample(speech, 48000, 16000), 16000, 48000)
    # speech_like has harmonics only up to ~4 kHz: well inside 16 kHz's passband.
    assert snr_db(speech, back, max_lag=0) > 30


@pytest.mark.parametrize(("frequency", "rate"), [(7000, 8000), (12000, 16000), (23000, 44100)])
def test_downsampling_does_not_alias(frequency, rate):
    """A tone above the new Nyquist frequency is removed, not folded down (linear interpolation would fold it)."""
    down = resample(tone(frequency, 1.0), 48000, rate)
    assert rms_dbfs(middle(down, rate)) < rms_dbfs(TONE_440) - 70


def test_resample_stereo_keeps_channels():
    down = resample(STEREO, 48000, 16000, channels=2)
    left, right = ints(down, 2).T
    assert dominant_frequency(left.tobytes(), 16000) == pytest.approx(440, abs=1)
    assert dominant_frequency(right.tobytes(), 16000) == pytest.approx(660, abs=1)


def test_resample_length_rounds():
    assert len(resample(bytes(2 * 441), 44100, 48000)) == 2 * 480
    assert len(resample(bytes(2 * 7), 48000, 16000)) == 2 * 2
    assert len(resample(bytes(2 * 8), 48000, 16000)) == 2 * 3
    assert resample(b"", 48000, 16000) == b""
    assert resample(TONE_440, 48000, 48000) == TONE_440


def test_resample_rejects_bad_arguments():
    with pytest.raises(ValueError):
        resample(bytes(100), 0, 48000)
    with pytest.raises(ValueError):
        resample(bytes(3), 16000, 48000)


def test_resample_takes_any_rate_pair():
    odd = resample(tone(1000, 1.0), 48000, 44101)
    assert len(odd) == 2 * 44101
    assert dominant_frequency(odd, 44101) == pytest.approx(1000, abs=0.5)


@pytest.mark.parametrize(("from_rate", "to_rate"), [(8000, 48000), (48000, 16000), (24000, 16000), (16000, 24000)])
def test_streaming_in_chunks_equals_one_shot_without_clicks(from_rate, to_rate):
    """Chunks of odd sizes through one StreamResampler give the one-shot result, with
    no step at the chunk borders (a fresh one-shot filter per chunk would click)."""
    pcm = tone(440, 1.0, sample_rate=from_rate)
    stream = StreamResampler(from_rate, to_rate)
    pieces, start = [], 0
    sizes = [37, 160, 1, 999, 320, 2048]  # samples: never a frame multiple
    k = 0
    while start < len(pcm) // 2:
        size = sizes[k % len(sizes)]
        pieces.append(stream.process(pcm[2 * start : 2 * (start + size)]))
        start += size
        k += 1
    pieces.append(stream.flush())
    streamed = np.frombuffer(b"".join(pieces), "<i2").astype(np.float64)
    whole = np.frombuffer(resample(pcm, from_rate, to_rate), "<i2").astype(np.float64)
    assert abs(len(streamed) - len(whole)) <= 2
    n = min(len(streamed), len(whole))
    # Equal within tolerance away from the stream's two ends (where soxr's
    # streaming and one-shot edges differ by design).
    edge = to_rate // 50
    assert np.max(np.abs(streamed[edge : n - edge] - whole[edge : n - edge])) <= 0.002 * 32768
    # No discontinuity: the biggest sample-to-sample step is the tone's own.
    tone_step = 2 * np.pi * 440 / to_rate * 0.3 * 32768
    assert np.max(np.abs(np.diff(streamed[edge : n - edge]))) <= tone_step * 1.05
    assert dominant_frequency(streamed.astype("<i2").tobytes(), to_rate) == pytest.approx(440, abs=0.5)


def test_stream_resampler_same_rate_and_bad_input():
    stream = StreamResampler(16000, 16000)
    assert stream.process(b"\x01\x00\x02\x00") == b"\x01\x00\x02\x00" and stream.flush() == b""
    with pytest.raises(ValueError):
        StreamResampler(16000, 48000).process(b"\x00")
    with pytest.raises(ValueError):
        StreamResampler(0, 48000)


# --- Signals and measurements --------------------------------------------------------


@given(frequency=st.floats(60, 12000), seconds=st.sampled_from([0.05, 0.1, 0.25, 1.0]))
def test_dominant_frequency_is_accurate(frequency, seconds):
    measured = dominant_frequency(tone(frequency, seconds), 48000)
    # Far finer than the FFT's bins (up to 2.9 Hz for 50 ms, zero-padded): the
    # parabolic interpolation is doing its job. Measured error < 0.08 Hz (worst
    # for 3 periods of 60 Hz, where the mirror image at -60 Hz leaks in).
    assert measured == pytest.approx(frequency, abs=0.15)


def test_dominant_frequency_of_stereo_and_other_rates():
    assert dominant_frequency(tone(1234.5, 0.5, sample_rate=16000), 16000) == pytest.approx(1234.5, abs=0.2)
    assert dominant_frequency(stereo(TONE_440, TONE_440), 48000, channels=2) == pytest.approx(440, abs=0.2)
    loud_low = (ints(tone(10, 0.5, amplitude=0.6)) + ints(tone(700, 0.5, amplitude=0.2))).astype("<i2")
    assert dominant_frequency(loud_low.tobytes(), 48000) == pytest.approx(700, abs=0.5)
    assert dominant_frequency(bytes(960), 48000) == 0.0
    assert dominant_frequency(b"", 48000) == 0.0


def test_rms_dbfs():
    assert rms_dbfs(tone(100, 1.0, amplitude=1.0)) == pytest.approx(-3.01, abs=0.01)
    assert rms_dbfs(TONE_440) == pytest.approx(20 * math.log10(0.3) - 3.01, abs=0.01)
    assert rms_dbfs(struct.pack("<2h", -32768, -32768)) == 0.0
    assert rms_dbfs(bytes(100)) == -math.inf
    assert rms_dbfs(b"") == -math.inf


def test_speech_like_is_deterministic_voiced_and_bounded():
    first = speech_like(2.0, seed=7)
    assert first == speech_like(2.0, seed=7)
    assert first != speech_like(2.0, seed=8)
    samples = ints(first)[:, 0]
    assert len(samples) == 96000
    assert np.max(np.abs(samples)) == pytest.approx(0.3 * 32768, abs=1)
    # Voiced energy sits in the speech band (pitch and formants under 4 kHz) ...
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    hz = np.fft.rfftfreq(len(samples), 1 / 48000)
    assert spectrum[(hz > 80) & (hz < 4000)].sum() > 0.95 * spectrum.sum()
    # ... and it has pauses: 20 ms frames span a wide range of levels.
    levels = [rms_dbfs(f) for f in frames(first)]
    assert min(levels) < -50 and max(levels) > -20


@pytest.mark.parametrize("delay", [0, 1, 313, 4800, -77])
def test_align_finds_a_known_delay(delay):
    speech = speech_like(1.0, seed=2)
    if delay >= 0:
        shifted = bytes(2 * delay) + speech
    else:
        shifted = speech[-2 * delay :]
    found = align(speech, shifted)
    assert found.delay == delay
    assert found.correlation == pytest.approx(1.0)
    assert found.snr_db == math.inf
    assert found.overlap == len(speech) // 2 - max(0, -delay)


def test_snr_and_correlation_measure_added_noise():
    speech = speech_like(1.0, seed=2)
    clean = ints(speech)[:, 0].astype(float)
    noise = np.random.default_rng(0).standard_normal(len(clean))
    noise *= math.sqrt(np.mean(clean**2) / np.mean(noise**2)) / 10  # 20 dB below
    noisy = np.rint(clean + noise).astype("<i2").tobytes()
    delayed = bytes(2 * 100) + noisy
    assert find_delay(speech, delayed) == 100
    assert snr_db(speech, delayed) == pytest.approx(20, abs=0.3)
    assert correlation(speech, delayed) == pytest.approx(1 / math.sqrt(1.01), abs=0.002)
    inverted = (-clean).astype("<i2").tobytes()
    assert correlation(speech, inverted, max_lag=0) == pytest.approx(-1.0)


def test_align_limits_and_errors():
    # A tone aligns equally a whole period off; max_lag pins it.
    beep = tone(1000, 0.2)
    assert find_delay(beep, bytes(2 * 10) + beep, max_lag=20) == 10
    assert align(bytes(10), bytes(10)).snr_db == -math.inf
    with pytest.raises(ValueError):
        align(b"", beep)
    with pytest.raises(ValueError):
        align(beep, b"\0")


def test_segments_follow_a_delay_that_changes():
    """What a jitter buffer does: the second half arrives 30 ms later than the first."""
    speech = speech_like(2.0, seed=3)
    half = len(speech) // 2
    warped = bytes(2 * 100) + speech[:half] + bytes(2 * 1440) + speech[half:]
    parts = align_segments(speech, warped, segment=12000)
    delays = {part.delay for part in parts}
    assert delays <= {100, 1540} and {100, 1540} <= delays
    assert segmental_correlation(speech, warped, segment=12000) > 0.97
    # One global alignment fits only half of it.
    assert correlation(speech, warped) < 0.8


def test_segments_skip_pauses_and_short_tails():
    beep = tone(500, 1.0)
    signal = bytes(2 * 24000) + beep + bytes(2 * 1000)
    parts = align_segments(beep, signal, segment=24000)
    assert len(parts) == 2  # the silent first segment and the short tail are left out
    assert segmental_correlation(beep, bytes(48000)) == 0.0
    with pytest.raises(ValueError):
        align_segments(beep, signal, segment=0)
