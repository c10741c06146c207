"""bench/mouth_to_ear.py's analysis on synthetic audio with known answers, and
bench/impaired_link.py's link model and proxy."""

import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from bench import mouth_to_ear as bench
from bench.impaired_link import profile
from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall.demo.netsim import SimLink

RATE = 48000


def burst_train(onsets_s, seconds, rate=RATE, frequency=1000.0, noise=0.002, seed=1):
    rng = np.random.default_rng(seed)
    samples = rng.normal(0, noise, int(seconds * rate)).astype(np.float32)
    for onset in onsets_s:
        start = int(onset * rate)
        samples[start : start + int(0.1 * rate)] += bench.tone_burst(frequency, rate=rate)
    return samples


def test_onsets_found_within_a_millisecond_in_quiet_noise():
    truth = [0.5, 1.0, 1.5, 2.2, 3.0]
    found = bench.find_onsets(burst_train(truth, 4.0), RATE)
    assert len(found) == len(truth)
    assert max(abs(f / RATE - t) for f, t in zip(found, truth)) < 0.001


def test_onsets_found_within_a_millisecond_after_opus():
    # The bot's ear hears the page's bursts through Opus: its pre-echo and
    # smearing must not move an onset by a millisecond.
    truth = [0.51, 1.013, 1.5, 2.007]
    samples = burst_train(truth, 2.6)
    encoder, decoder = OpusEncoder(bitrate=32000), OpusDecoder()
    frame = RATE // 50
    decoded = []
    for start in range(0, samples.size - frame + 1, frame):
        decoded.append(bench.from_pcm16(decoder.decode_untrusted(encoder.encode(bench.to_pcm16(samples[start : start + frame])))))
    found = bench.find_onsets(np.concatenate(decoded), RATE)
    assert len(found) == len(truth)
    # libopus delays its output by 6.5 ms (its look-ahead at 48 kHz): constant, as on every path.
    delays = [f / RATE - t for f, t in zip(found, truth)]
    assert max(delays) - min(delays) < 0.001
    assert 0.004 < np.mean(delays) < 0.008


def test_no_onset_inside_a_burst_or_at_a_loud_start():
    samples = burst_train([0.3], 1.0)
    samples[int(0.35 * RATE) : int(0.36 * RATE)] = 0  # a dip inside the burst is not a new onset
    loud_start = np.concatenate((bench.tone_burst(440), np.zeros(RATE, np.float32)))
    assert bench.find_onsets(samples, RATE) == [int(0.3 * RATE) + int(np.argmax(np.abs(samples[int(0.3 * RATE) :]) > bench.ONSET_THRESHOLD))]
    assert bench.find_onsets(loud_start, RATE) == []


def test_latencies_match_each_effect_to_the_cause_before_it():
    causes = [10.0, 10.5, 11.0, 11.5]
    effects = [10.08, 10.59, 10.60, 11.9, 9.0, 12.7]
    # 10.60 is the same cause's second effect; 9.0 has no cause; 12.7 is a period late.
    assert bench.match_latencies(causes, effects, 0.5) == pytest.approx([0.08, 0.09, 0.4])


def test_context_time_maps_to_unix_by_the_smallest_local_offset():
    origin_ms = 1.8e12
    # Chunks every 100 ms of context time; arrivals 3-40 ms late on the page's
    # clock, which starts 250 ms after the context's and drifts 2 ms over the run.
    context = np.arange(1, 30) * 100.0
    late = np.array([3, 40, 10, 25, 3, 3, 17] * 5)[: context.size]
    drift = context / 2900 * 2
    arrivals = np.column_stack((context, context + 250 + drift + late))
    unix = bench.context_to_unix(arrivals, origin_ms, 1.45)
    expected = (origin_ms + 1450 + 250 + 1450 / 2900 * 2 + 3) / 1000
    assert abs(unix - expected) < 0.001


def test_sample_times_follow_the_chunks_across_a_gap():
    times = bench.sample_times([(128, 4), (4992, 3)], 1000)
    assert times.tolist() == [0.128, 0.129, 0.13, 0.131, 4.992, 4.993, 4.994]


def test_frame_arrivals_name_the_frame_holding_each_onset():
    samples = burst_train([0.3, 0.8], 1.2)
    frame = RATE // 50
    frames = [(100.0 + i * 0.02 + 0.001, samples[i * frame : (i + 1) * frame]) for i in range(samples.size // frame)]
    # The onset at 0.3 s is the first sample of frame 15; at 0.8 s of frame 40.
    assert bench.frame_onset_arrivals(frames, RATE) == pytest.approx([100.0 + 15 * 0.02 + 0.001, 100.0 + 40 * 0.02 + 0.001])
    assert bench.frame_onset_arrivals([], RATE) == []


def test_jitter_buffer_delay_per_emitted_sample():
    before = {"delay": 10.0, "emitted": 48000}
    after = {"delay": 10.0 + 0.06 * 96000, "emitted": 48000 + 96000}
    assert bench.jitter_buffer_ms(before, after) == pytest.approx(60.0)
    assert bench.jitter_buffer_ms(before, before) is None


def test_summary_percentiles_by_nearest_rank():
    summary = bench.Summary.of([i / 1000 for i in range(1, 101)])
    assert (summary.count, summary.p50, summary.p95, summary.max) == (100, 50.0, 95.0, 100.0)
    assert bench.Summary.of([]).count == 0


def test_impaired_link_delays_within_the_band_and_drops_about_one_percent():
    link = SimLink(profile(20.0, 5.0, 0.01, fifo=True), seed=3)
    arrivals = []
    for index in range(20000):
        link.send(index, index * 0.02)
        arrivals.extend(link.deliver(index * 0.02 + 1.0))
    arrivals.extend(link.deliver(1e9))
    delays = np.array([arrival - item * 0.02 for arrival, item in arrivals])
    assert delays.min() >= 0.015 and delays.max() <= 0.025 + 0.02  # FIFO may hold one behind a slower one
    assert abs(np.median(delays) - 0.020) < 0.001
    assert 0.007 < link.lost / link.sent < 0.013
    assert [item for _, item in arrivals] == sorted(item for _, item in arrivals)


def test_impaired_link_proxy_forwards_both_ways_with_the_delay():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            front = probe.getsockname()
        proxy = subprocess.Popen(
            [sys.executable, "-m", "bench.impaired_link", "--listen", f"127.0.0.1:{front[1]}",
             "--to", f"127.0.0.1:{server.getsockname()[1]}", "--loss", "0"],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert proxy.stdout.readline().strip() == "ready"
            server.settimeout(10)
            client.settimeout(10)
            sent = time.monotonic()
            client.sendto(b"ping", front)
            data, upstream = server.recvfrom(100)
            there = time.monotonic() - sent
            server.sendto(b"pong", upstream)
            answer, source = client.recvfrom(100)
            back = time.monotonic() - sent
        finally:
            proxy.terminate()
            proxy.wait(10)
    assert (data, answer, source) == (b"ping", b"pong", front)
    # One way is 20 ± 5 ms; a busy machine only adds.
    assert there >= 0.015 and back >= 0.030


@pytest.mark.browser
@pytest.mark.e2e
async def test_one_chromium_call_measures_both_directions(tmp_path):
    """The whole benchmark, small: a UDP bot and the PWA in headless Chromium."""
    async with bench.server_for("loopback", "chromium", tmp_path) as srv:
        result = await bench.one_call(srv, "udp", "loopback", "default", events=6, period=0.6, browser="chromium")
    # Every burst found both ways (the bot's train runs on until the page is done).
    assert result.mouth_to_bot.count >= 5 and result.bot_to_ear.count >= 5, result
    # The page's recording of its own bursts puts each within a millisecond of
    # when it was scheduled: the recorder's clock is the one the analysis uses.
    assert result.mouth_check_ms is not None and result.mouth_check_ms < 1.0
    assert 0 < result.mouth_to_bot.p50 < 600 and 0 < result.bot_to_ear.p50 < 600
    assert result.jitter_buffer_ms is not None and result.output_latency_ms >= 0


def test_device_times_take_the_earliest_reads_and_follow_a_drifting_clock():
    from tests.kit.pulse import device_times

    # A device that started at Unix 1000.0 and runs 100 ppm fast against our clock;
    # reads of 10 ms blocks come 1-15 ms late, and 2 ms late at best in every second.
    rng = np.random.default_rng(3)
    ends = np.arange(480, 10 * RATE + 1, 480)
    true = 1000.0 + ends / RATE * (1 - 1e-4)
    late = rng.uniform(0.003, 0.015, ends.size)
    late[::50] = 0.002
    reads = np.column_stack([true + late, ends]).astype(np.float64)
    times = device_times(reads, 10 * RATE)
    truth = 1000.0 + np.arange(10 * RATE) / RATE * (1 - 1e-4)
    error = times - truth
    # Late by the best read's 2 ms (a reader cannot know it), never early, no drift left.
    assert np.all(error > 0.0015) and np.all(error < 0.0025)


def test_device_mouth_signal_steps_its_bursts_through_a_packet():
    signal = bench.device_mouth_signal(12, 0.5, lead_s=1.0)
    onsets = bench.find_onsets(signal, RATE)
    expected = [int((1.0 + k * 0.5 + (k % 10) * 0.002) * RATE) for k in range(12)]
    assert len(onsets) == len(expected)
    assert all(0 <= found - want <= 2 for found, want in zip(onsets, expected))  # a sine starts at 0
