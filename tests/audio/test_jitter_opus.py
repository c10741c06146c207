"""The jitter buffer with real libopus: the CONCEAL marker's payload really rebuilds lost frames.

Speech-like audio is encoded with in-band FEC, sent over a seeded lossy and
jittery simulated network, buffered, and decoded frame by frame as the buffer
says: AUDIO decoded, EXPAND concealed, CONCEAL either rebuilt from
``fec_payload`` or concealed by PLC. Against a loss-free decode of the same
packets, the FEC run must be clearly better on the lost frames, which it can
only be if ``fec_payload`` is the packet that follows the lost one.
"""

from __future__ import annotations

import numpy as np
import pytest

from botcall.audio.wav import frames
from botcall.demo.signals import correlation, speech_like
from botcall.audio.jitter import FrameKind, JitterBuffer
from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall.wire.rtp import RtpPacket
from botcall.demo.netsim import Jitter, NetworkProfile, merge_schedule, transmit

FRAME = 0.020
SPF = 960
SEQ0 = 65_500  # wraps during the call
TS0 = 2**32 - 50 * SPF


@pytest.fixture(scope="module")
def call():
    """Encoded speech and the loss-free decode of every frame (the reference)."""
    pcm = speech_like(8.0, seed=3)
    encoder = OpusEncoder(fec=True, expected_loss_percent=15)
    payloads = [encoder.encode(chunk) for chunk in frames(pcm)]
    decoder = OpusDecoder()
    reference = [decoder.decode_untrusted(p) for p in payloads]
    return payloads, reference


def play(payloads, *, mode: str, seed: int = 11):
    """Run the call through the network and buffer; return {frame index: pcm} and the CONCEAL indices.

    ``mode`` says how CONCEAL frames are decoded: ``"fec"`` from ``fec_payload``,
    ``"plc"`` by plain concealment, ``"wrong"`` from the packet after the one
    the marker carries (a control: what a marker off by one would give).
    """
    sent = [
        (1.0 + i * FRAME, RtpPacket(111, (SEQ0 + i) & 0xFFFF, (TS0 + i * SPF) & 0xFFFFFFFF, 0xABC, p))
        for i, p in enumerate(payloads)
    ]
    profile = NetworkProfile(jitter=Jitter.EXPONENTIAL, jitter_mean=0.020, loss=0.12)
    arrivals = transmit(sent, profile, seed)
    jb = JitterBuffer()
    decoder = OpusDecoder()
    out: dict[int, bytes] = {}
    concealed: list[int] = []
    with_fec = 0
    for t, item in merge_schedule(arrivals, FRAME, 1.003, 1.0 + len(payloads) * FRAME + 1.0):
        if item is not None:
            jb.push(item, t)
            continue
        frame = jb.pop(t)
        if frame is None:
            continue
        if frame.kind is FrameKind.EXPAND:
            decoder.conceal()
            continue
        index = ((frame.sequence & 0xFFFF) - SEQ0) & 0xFFFF
        if frame.kind is FrameKind.AUDIO:
            out[index] = decoder.decode_untrusted(frame.payload)
            continue
        concealed.append(index)
        if mode != "plc" and frame.fec_payload is not None:
            with_fec += 1
            source = frame.fec_payload if mode == "fec" else payloads[min(index + 2, len(payloads) - 1)]
            out[index] = decoder.recover_untrusted(source)
        else:
            out[index] = decoder.conceal()
    return out, concealed, with_fec, jb.stats


def snr_db(reference: list[bytes], out: dict[int, bytes], indices: list[int]) -> float:
    ref = np.concatenate([np.frombuffer(reference[i], "<i2") for i in indices]).astype(float)
    got = np.concatenate([np.frombuffer(out[i], "<i2") for i in indices]).astype(float)
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-9))


def test_fec_payload_rebuilds_lost_frames_better_than_plc(call):
    payloads, reference = call
    fec_out, concealed, with_fec, stats = play(payloads, mode="fec")
    plc_out, concealed_plc, _, _ = play(payloads, mode="plc")
    wrong_out, concealed_wrong, _, _ = play(payloads, mode="wrong")
    assert concealed == concealed_plc == concealed_wrong  # same network, same decisions
    assert len(concealed) >= 20 and with_fec >= 0.8 * len(concealed)
    fec_snr = snr_db(reference, fec_out, concealed)
    plc_snr = snr_db(reference, plc_out, concealed)
    wrong_snr = snr_db(reference, wrong_out, concealed)
    # Measured: FEC ~6 dB, PLC ~3 dB, the wrong packet ~PLC or worse.
    assert fec_snr > plc_snr + 2.0, (fec_snr, plc_snr)
    assert fec_snr > wrong_snr + 2.0, (fec_snr, wrong_snr)

    def corr(out):
        return correlation(
            b"".join(reference[i] for i in concealed), b"".join(out[i] for i in concealed), max_lag=0
        )

    assert corr(fec_out) > corr(plc_out) + 0.08
    # Frames that arrived decode as they would have without loss, once the
    # decoder has had a frame to settle after each gap.
    played = [i for i in fec_out if i not in concealed and i - 1 in fec_out and i - 1 not in concealed]
    assert snr_db(reference, fec_out, played) > 20.0
    assert stats.late <= 0.02 * stats.received
