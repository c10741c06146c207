"""``botcall media-demo``: the whole media path on a simulated network, checked by its audio."""

from __future__ import annotations

import numpy as np
import pytest

from botcall import cli
from botcall.audio.wav import read_wav, write_wav
from botcall.demo.signals import (
    dominant_frequency,
    find_delay,
    rms_dbfs,
    segmental_correlation,
    speech_like,
    tone,
)
from botcall.demo.media import packetize, play_out, run_demo
from botcall.demo.netsim import Arrival, NetworkConditions, simulate_network
from botcall.audio.jitter import JitterBuffer
from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall.wire.rtp import RtpPacket, parse_rtp_untrusted


def test_cli_demo_plays_the_tone_it_sent(tmp_path, capsys):
    out = tmp_path / "played.wav"
    code = cli.main(["media-demo", "--tone", "440", "--seconds", "2", "--out", str(out), "--seed", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    for label in (
        "packets sent",
        "lost in the network",
        "arrived too late",
        "concealed (PLC)",
        "recovered by FEC",
        "jitter buffer delay",
        "correlation",
        "SNR",
    ):
        assert label in printed
    played = read_wav(out)
    # About the 2 s sent, plus silence while the stream started and ended.
    assert 1.8 <= len(played) / 2 / 48000 <= 2.5
    assert dominant_frequency(played, 48000) == pytest.approx(440, abs=2)
    assert rms_dbfs(played) > -20


def test_cli_default_phrase_arrives(tmp_path, capsys):
    out = tmp_path / "played.wav"
    assert cli.main(["media-demo", "--seconds", "3", "--out", str(out)]) == 0
    assert "generated phrase" in capsys.readouterr().out
    sent = speech_like(3.0, seed=1)
    assert segmental_correlation(sent, read_wav(out), segment=24000) > 0.7


def test_cli_sends_a_wav_file(tmp_path, capsys):
    source = tmp_path / "in.wav"
    write_wav(source, tone(300, 1.0, sample_rate=16000), sample_rate=16000, channels=1)
    out = tmp_path / "out.wav"
    assert cli.main(["media-demo", "--wav", str(source), "--out", str(out), "--loss", "0"]) == 0
    assert dominant_frequency(read_wav(out), 48000) == pytest.approx(300, abs=2)


def test_cli_refuses_a_non_wav(tmp_path, capsys):
    source = tmp_path / "in.wav"
    source.write_bytes(b"not audio at all")
    assert cli.main(["media-demo", "--wav", str(source), "--out", str(tmp_path / "o.wav")]) == 2
    assert "not a WAV file" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_lossy_network_is_concealed_and_recovered():
    sent = speech_like(4.0, seed=2)
    report = run_demo(sent, NetworkConditions(loss=0.08, jitter=0.03, seed=5))
    net, out = report.network, report.playout
    assert net.sent == 200
    assert net.lost > 5 and net.reordered > 0
    # Every packet that arrived was played, dropped to cut the delay, or came too late.
    assert out.played + report.discarded + report.late == net.sent - net.lost
    # No frame was rendered twice, and only missing frames were made up or skipped.
    assert out.played + out.concealed + out.recovered_by_fec == out.rendered
    assert out.concealed + out.recovered_by_fec + report.skipped <= net.lost + report.late
    assert out.rendered + report.discarded + report.skipped == net.sent
    assert out.recovered_by_fec > 0
    # Loss costs little against what Opus costs anyway.
    assert report.snr_db > report.codec_snr_db - 3
    assert report.correlation > 0.75
    assert segmental_correlation(sent, out.pcm, segment=24000) == pytest.approx(report.correlation)
    # The delay is network (40 ms + jitter) plus the buffer's, not more.
    assert 0.04 < report.end_to_end_delay < 0.04 + 0.03 + report.mean_buffer_delay + 0.05
    assert 0.0 < report.mean_buffer_delay < 0.3


def test_one_lost_packet_is_rebuilt_from_the_next_one():
    """A steady stream with packet 40 missing: the buffer offers packet 41, the receiver uses its FEC."""
    sent = speech_like(1.2, seed=4)
    sends = packetize(sent, OpusEncoder(expected_loss_percent=10), ssrc=1, first_sequence=0, first_timestamp=0)
    arrivals = [Arrival(time + 0.03, data) for index, (time, data) in enumerate(sends) if index != 40]
    runs = {}
    for use_fec in (True, False):
        buffer = JitterBuffer()
        runs[use_fec] = play_out(
            arrivals, OpusDecoder(), buffer, first_timestamp=0, frames_sent=len(sends), use_fec=use_fec
        )
        # Every frame was rendered except any the buffer dropped to shorten its start-up delay.
        assert runs[use_fec].rendered + buffer.stats.discarded == len(sends)
    assert (runs[True].recovered_by_fec, runs[True].concealed) == (1, 0)
    assert (runs[False].recovered_by_fec, runs[False].concealed) == (0, 1)
    # Only frame 40 was rendered differently, and FEC's is closer to what was sent.
    delay = find_delay(sent, runs[True].by_timestamp, max_lag=1000)
    original = np.frombuffer(sent, "<i2").astype(float)

    def error_in_frame_40(playout):
        decoded = np.frombuffer(playout.by_timestamp, "<i2").astype(float)
        window = slice(40 * 960, 41 * 960)
        return np.sum((decoded[window.start + delay : window.stop + delay] - original[window]) ** 2)

    assert error_in_frame_40(runs[True]) < 0.7 * error_in_frame_40(runs[False])


def test_fec_beats_concealment_on_the_same_trace():
    sent = speech_like(4.0, seed=6)
    conditions = NetworkConditions(loss=0.10, jitter=0.02, seed=2)
    with_fec = run_demo(sent, conditions)
    without = run_demo(sent, conditions, fec=False)
    assert with_fec.network == without.network
    assert without.playout.recovered_by_fec == 0
    assert with_fec.playout.recovered_by_fec >= 3
    assert with_fec.snr_db > without.snr_db + 0.5


def test_clean_network_plays_everything():
    sent = speech_like(2.0, seed=1)
    report = run_demo(sent, NetworkConditions(loss=0.0, jitter=0.0, delay=0.03, seed=1))
    out = report.playout
    assert (report.network.lost, report.network.reordered, report.late) == (0, 0, 0)
    assert out.concealed == out.recovered_by_fec == out.malformed == 0
    assert out.played + report.discarded == 100
    assert report.skipped == 0
    # The buffer's start-up expansions and later discards move the timing a little.
    assert report.correlation > 0.8


def test_same_seed_same_run():
    sent = speech_like(1.0, seed=1)
    first = run_demo(sent, NetworkConditions(seed=9))
    assert run_demo(sent, NetworkConditions(seed=9)) == first
    assert run_demo(sent, NetworkConditions(seed=10)).network != first.network


def test_packetize_builds_parseable_opus_rtp():
    sends = packetize(
        tone(440, 0.1), OpusEncoder(), ssrc=0xDEADBEEF, first_sequence=65534, first_timestamp=2**32 - 960
    )
    assert [time for time, _ in sends] == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    packets = [parse_rtp_untrusted(data) for _, data in sends]
    assert [p.sequence_number for p in packets] == [65534, 65535, 0, 1, 2]
    assert [p.timestamp for p in packets] == [2**32 - 960, 0, 960, 1920, 2880]
    assert {(p.payload_type, p.ssrc) for p in packets} == {(111, 0xDEADBEEF)}
    assert [p.marker for p in packets] == [True, False, False, False, False]
    decoder = OpusDecoder()
    assert all(len(decoder.decode_untrusted(p.payload)) == 1920 for p in packets)


def test_simulated_network_without_impairments_is_a_delay_line():
    sends = [(i * 0.02, bytes([i])) for i in range(50)]
    arrivals, tally = simulate_network(sends, NetworkConditions(loss=0, jitter=0, delay=0.05))
    assert [a.data for a in arrivals] == [d for _, d in sends]
    assert [a.time for a in arrivals] == pytest.approx([t + 0.05 for t, _ in sends])
    assert (tally.sent, tally.lost, tally.duplicated, tally.reordered) == (50, 0, 0, 0)


def test_simulated_network_impairments():
    sends = [(i * 0.02, i.to_bytes(2, "big")) for i in range(5000)]
    arrivals, tally = simulate_network(sends, NetworkConditions(loss=0.1, jitter=0.05, duplicate=0.05, seed=4))
    assert tally.lost == pytest.approx(500, rel=0.15)
    assert tally.duplicated == pytest.approx(225, rel=0.2)
    assert len(arrivals) == tally.sent - tally.lost + tally.duplicated
    assert [a.time for a in arrivals] == sorted(a.time for a in arrivals)
    # Recount reordering independently: arrivals whose index is below one seen earlier.
    seen_max, reordered = -1, 0
    for a in arrivals:
        index = int.from_bytes(a.data, "big")
        reordered += index < seen_max
        seen_max = max(seen_max, index)
    assert tally.reordered == reordered > 500
    delays = [a.time - int.from_bytes(a.data, "big") * 0.02 for a in arrivals]
    assert min(delays) >= 0.04 and max(delays) <= 0.04 + 10 * 0.05 + 1e-9


@pytest.mark.parametrize("kwargs", [{"loss": 1.0}, {"loss": -0.1}, {"jitter": -1.0}, {"duplicate": 2.0}])
def test_network_conditions_are_checked(kwargs):
    with pytest.raises(ValueError):
        NetworkConditions(**kwargs)


def test_receiver_counts_malformed_datagrams_and_payloads():
    encoder = OpusEncoder()
    sends = packetize(tone(440, 0.4), encoder, ssrc=7, first_sequence=100, first_timestamp=0)
    arrivals = [Arrival(time + 0.03, data) for time, data in sends]
    # Not RTP at all, and an RTP packet (frame 5) whose Opus payload libopus rejects.
    arrivals.insert(3, Arrival(arrivals[2].time, b"\x00garbage"))
    broken = RtpPacket(payload_type=111, sequence_number=105, timestamp=5 * 960, ssrc=7, payload=b"\xff\xff\xff")
    arrivals[6] = Arrival(arrivals[6].time, bytes(broken))
    out = play_out(arrivals, OpusDecoder(), JitterBuffer(), first_timestamp=0, frames_sent=len(sends))
    assert out.malformed == 2
    assert out.played == 19
    assert out.concealed == 1
    assert dominant_frequency(out.pcm, 48000) == pytest.approx(440, abs=2)


def test_receiver_with_nothing_arriving():
    out = play_out([], OpusDecoder(), JitterBuffer(), first_timestamp=0, frames_sent=10)
    assert out.pcm == b"" and out.played == 0
    assert out.by_timestamp == bytes(10 * 1920)
