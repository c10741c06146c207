"""The mixed stream, sans-IO: two tones in, both out; never the listener's own voice; bounded sums."""

from __future__ import annotations

import numpy as np
import pytest

from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall.demo.signals import energy_fraction, tone
from botcall.relay.core import MediaPeer, MediaRelay
from botcall.relay.mixer import IDLE_TICKS, KNEE, MIX_PARTICIPANT_ID, Mixer, MixFrame, MixSink, OpusMix, soft_limit
from botcall.relay.service import WsSink
from botcall.relay.ws_audio import WsAudio
from botcall.wire.rtp import RTP_HEADER, parse_rtp_untrusted
from tests.kit.held_up import held_up_ticks

FRAME = 0.02
MIX_SSRC = 0xABCDEF01


def rtp_tone(ssrc: int, frequency: float, frames: int, *, amplitude: float = 0.3) -> list[bytes]:
    """``frames`` 20 ms Opus RTP packets of a tone."""
    encoder = OpusEncoder()
    pcm = tone(frequency, frames * FRAME, amplitude=amplitude)
    return [
        RTP_HEADER.pack(0x80, 111, k, k * 960, ssrc) + encoder.encode(pcm[k * 1920 : (k + 1) * 1920])
        for k in range(frames)
    ]


def steady(pcm: bytes, rate: int) -> bytes:
    """Leave out the first 100 ms (codec start-up, jitter-buffer fill)."""
    return pcm[rate // 10 * 2 :]


def test_two_tones_in_both_out():
    mixer = Mixer(sample_rate=16000)
    low, high = rtp_tone(1, 440, 50), rtp_tone(2, 1000, 50)
    out = []
    for k in range(60):
        if k < 50:
            mixer.push(low[k], k * FRAME)
            mixer.push(high[k], k * FRAME)
        frame = mixer.pop(k * FRAME)
        if frame is not None:
            out.append(frame)
    assert len(out) >= 40 and {len(f.pcm) for f in out} == {640}
    assert max(f.speakers for f in out) == 2
    mixed = steady(b"".join(f.pcm for f in out), 16000)
    assert energy_fraction(mixed, 16000, 440) > 0.35
    assert energy_fraction(mixed, 16000, 1000) > 0.35
    # Positions follow the 20 ms ticks from the first frame on.
    positions = [f.position for f in out]
    assert positions == list(range(len(out))) and out[0].resumed and not out[1].resumed
    assert out[3].stream_ms == 60


def test_the_mix_clock_runs_through_a_silence():
    mixer = Mixer(sample_rate=48000)
    packets = rtp_tone(1, 440, 10)
    for k in range(10):
        mixer.push(packets[k], k * FRAME)
    first = [f for k in range(20) if (f := mixer.pop(k * FRAME)) is not None]
    # The same speaker again 2 s later (a new talkspurt: timestamps jump too).
    encoder = OpusEncoder()
    pcm = tone(440, 0.2)
    start = 2.0
    for k in range(10):
        payload = encoder.encode(pcm[k * 1920 : (k + 1) * 1920])
        mixer.push(RTP_HEADER.pack(0x80, 111, 10 + k, 96000 + k * 960, 1) + payload, start + k * FRAME)
    second = [f for k in range(20) if (f := mixer.pop(start + k * FRAME)) is not None]
    assert first and second
    assert second[0].resumed and second[0].position >= 100  # 2 s later on the mix's clock
    assert second[0].stream_ms == second[0].position * 20
    assert [f.position for f in second] == list(range(second[0].position, second[0].position + len(second)))


def test_soft_limit_is_identity_below_the_knee_and_bounded_above():
    quiet = np.arange(-KNEE, KNEE + 1, 7, dtype=np.int32)
    assert soft_limit(quiet) == quiet.astype("<i2").tobytes()
    # Three loud tones at once: a sum far past full scale.
    loud = sum(np.frombuffer(tone(f, 0.1, amplitude=0.9), "<i2").astype(np.int32) for f in (300, 500, 700))
    assert np.max(np.abs(loud)) > 60000
    limited = np.frombuffer(soft_limit(loud), "<i2").astype(np.int32)
    assert np.max(np.abs(limited)) <= 32767
    assert np.all(np.sign(limited) == np.sign(loud))  # never wrapped around
    order = np.argsort(loud, kind="stable")
    assert np.all(np.diff(limited[order]) >= 0)  # monotonic: no fold-over
    extreme = np.array([-(1 << 20), -40000, 40000, 1 << 20], dtype=np.int32)
    assert list(np.sign(np.frombuffer(soft_limit(extreme), "<i2"))) == [-1, -1, 1, 1]


def _room(encoding: str, rate: int = 16000):
    """A listener WebSocket bot receiving the mix, two other speakers, all in one room."""
    relay = MediaRelay(lambda data, addr: None)
    sink = WsSink()
    listener = MediaPeer(session_id="s-me", participant_id="p-me", room_id="r", ssrc=1111, payload_type=111, sink=sink, speaks_udp=False)
    others = [
        MediaPeer(session_id=f"s-{n}", participant_id=f"p-{n}", room_id="r", ssrc=ssrc, payload_type=111, sink=WsSink(), speaks_udp=False)
        for n, ssrc in (("a", 2222), ("b", 3333))
    ]
    for peer in (listener, *others):
        relay.add_peer(peer)
    audio = WsAudio(relay, listener, encoding=encoding, sample_rate=48000, receive_sample_rate=rate, mix_ssrc=MIX_SSRC)
    return relay, sink, listener, others, audio


@pytest.mark.parametrize("encoding", ["pcm16", "opus"])
def test_mix_minus_over_the_websocket(encoding):
    """Everyone else is in the listener's mix; its own voice (700 Hz) never is."""
    relay, sink, listener, (a, b), audio = _room(encoding)
    own = rtp_tone(listener.ssrc, 700, 50, amplitude=0.6)
    low, high = rtp_tone(a.ssrc, 440, 50), rtp_tone(b.ssrc, 1000, 50)
    out = []
    for k in range(60):
        now = k * FRAME
        if k < 50:
            for peer, packets in ((listener, own), (a, low), (b, high)):
                relay.handle_rtp(peer, packets[k], now)
        while True:
            try:
                speaker, data, _arrived = sink.queue.get_nowait()
            except Exception:
                break
            audio.pcm_push(speaker, data, now)
        out.extend(audio.pcm_pop(now))
    assert len(out) >= 40
    assert {(f.participant_id, f.ssrc, f.encoding) for f in out} == {(MIX_PARTICIPANT_ID, MIX_SSRC, encoding)}
    if encoding == "pcm16":
        assert [f.seq for f in out] == list(range(len(out)))
        assert all(f.sample_rate == 16000 and f.timestamp == f.stream_ms * 16 for f in out)
        pcm, rate = b"".join(f.payload for f in out), 16000
        assert parse_rtp_untrusted(out[0].binary()).ssrc == MIX_SSRC
    else:
        packets = [parse_rtp_untrusted(f.binary()) for f in out]
        assert all(p.ssrc == MIX_SSRC and p.payload_type == 111 for p in packets)
        assert [(p.sequence_number - packets[0].sequence_number) & 0xFFFF for p in packets] == list(range(len(out)))
        assert all((f.timestamp - out[0].timestamp) & 0xFFFFFFFF == f.stream_ms * 48 for f in out)
        decoder = OpusDecoder(16000)
        pcm, rate = b"".join(decoder.decode_untrusted(f.payload) for f in out), 16000
    mixed = steady(pcm, rate)
    assert energy_fraction(mixed, rate, 440) > 0.3
    assert energy_fraction(mixed, rate, 1000) > 0.3
    assert energy_fraction(mixed, rate, 700) < 0.01


def test_udp_mix_sink_is_ticked_by_the_relay_and_stops_when_quiet():
    sent: list[tuple[bytes, tuple[str, int]]] = []
    relay = MediaRelay(lambda data, addr: sent.append((data, addr)))
    sink = MixSink(relay, relay.transmit, MIX_SSRC)
    listener = MediaPeer(session_id="s-me", participant_id="p-me", room_id="r", ssrc=1111, payload_type=111, sink=sink)
    a = MediaPeer(session_id="s-a", participant_id="p-a", room_id="r", ssrc=2222, payload_type=111, sink=WsSink(), speaks_udp=False)
    b = MediaPeer(session_id="s-b", participant_id="p-b", room_id="r", ssrc=3333, payload_type=111, sink=WsSink(), speaks_udp=False)
    for peer in (listener, a, b):
        relay.add_peer(peer)
    listener.addr = ("127.0.0.1", 5000)  # as if latched
    assert sink.next_deadline() is None  # nobody talks: no tick
    low, high = rtp_tone(a.ssrc, 440, 50), rtp_tone(b.ssrc, 1000, 50)
    now = 0.0
    for k in range(50):
        now = k * FRAME
        relay.handle_rtp(a, low[k], now)
        relay.handle_rtp(b, high[k], now)
        while relay.next_deadline() <= now:
            relay.handle_timeout(now)
    # Keep the relay's timer going until the mix goes quiet and the ticker stops.
    while sink.next_deadline() is not None and now < 5.0:
        now = min(relay.next_deadline(), now + FRAME)
        relay.handle_timeout(now)
    assert sink.next_deadline() is None and now < 50 * FRAME + (IDLE_TICKS + 20) * FRAME
    packets = [parse_rtp_untrusted(data) for data, addr in sent if addr == listener.addr]
    assert len(packets) >= 40
    assert all(p.ssrc == MIX_SSRC and p.payload_type == 111 for p in packets)
    assert packets[0].marker and not any(p.marker for p in packets[1:])
    decoder = OpusDecoder(48000)
    mixed = steady(b"".join(decoder.decode_untrusted(p.payload) for p in packets), 48000)
    assert energy_fraction(mixed, 48000, 440) > 0.3 and energy_fraction(mixed, 48000, 1000) > 0.3
    # A peer that leaves takes its ticker with it.
    relay.handle_rtp(a, rtp_tone(a.ssrc, 440, 1)[0], now)
    assert sink.next_deadline() is not None
    relay.remove_peer("s-me")
    relay.handle_timeout(now)  # the consent sweep, due since a while
    assert relay.next_deadline() > now + 0.05  # the speaking sweep, not a 20 ms tick


def test_opus_mix_numbers_its_own_packets():
    mix = OpusMix(MIX_SSRC)
    packets = rtp_tone(7, 440, 5)
    out = []
    for k in range(5):
        mix.push(packets[k], k * FRAME)
    for k in range(10):
        popped = mix.pop(k * FRAME)
        if popped is not None:
            out.append(parse_rtp_untrusted(popped[1]))
    assert out and all(p.ssrc == MIX_SSRC for p in out)
    assert {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(out, out[1:])} == {960}


def _stalled_consumer(mixer: Mixer, packets: list[bytes], stall_at: int, stall: float) -> list[MixFrame]:
    """Packets arrive every 20 ms; the consumer's pops do too, except one that comes
    ``stall`` late (its process descheduled), after which it catches up at once
    (``_pcm_out``'s loop: pops back to back until its schedule is current)."""
    out: list[MixFrame] = []
    for now, arrived in held_up_ticks(len(packets), len(packets) + 40, stall_at, stall):
        for k in arrived:
            mixer.push(packets[k], k * FRAME)
        frame = mixer.pop(now)
        if frame is not None:
            out.append(frame)
    return out


@pytest.mark.parametrize("stall", [0.06, 0.1, 0.15])
def test_a_stalled_mix_consumer_loses_none_of_the_speech(stall):
    """A late tick (the relay's loop held up on a busy machine) finds several frames
    buffered; the mix plays them all, late, rather than discarding what arrived to
    catch up (a bot's speech-to-text would lose a syllable: the Pipecat echo's flake)."""
    mixer = Mixer(sample_rate=16000)
    packets = rtp_tone(7, 440, 75)
    out = _stalled_consumer(mixer, packets, 40, stall)
    stats = mixer.stats(7)
    assert stats is not None
    assert stats.discarded == 0 and stats.played == len(packets), stats
    assert sum(1 for f in out if not f.concealed) == len(packets)


def test_a_mix_behind_after_a_stall_sheds_the_delay_slowly():
    """The delay a stall added is not kept for the call: one frame a shrink interval."""
    mixer = Mixer(sample_rate=16000)
    packets = rtp_tone(7, 440, 400)
    _stalled_consumer(mixer, packets, 40, 0.15)
    stats = mixer.stats(7)
    assert stats is not None
    assert 1 <= stats.discarded <= 8, stats
