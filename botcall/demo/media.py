"""``botcall media-demo``: the media core end to end over a simulated network.

It sends a phrase (or a WAV) the way a bot would and plays it out the way the
relay does for a ``pcm16`` listener:

    PCM -> OpusEncoder -> RtpPacket -> bytes -> seeded lossy, jittery network
        -> parse_rtp_untrusted -> JitterBuffer -> OpusDecoder (PLC / FEC) -> WAV

and prints what happened on the way (packets lost, late, concealed, recovered
by FEC, the jitter buffer's delay) and how close the result is to the original.

Everything runs on a simulated clock: the sender stamps packets every 20 ms,
the network assigns each an arrival time, and the receiver calls the jitter
buffer every 20 ms of simulated time. Nothing sleeps, so a 3 s phrase takes a
fraction of a second, and the same seed always gives the same run.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from botcall.audio.jitter import FrameKind, JitterBuffer
from botcall.audio.opus import FRAME_DURATION, FRAME_SAMPLES, PAYLOAD_TYPE, SAMPLE_RATE, OpusDecoder, OpusEncoder
from botcall.audio.playout import Rendering, render
from botcall.audio.wav import frames, read_wav, write_wav
from botcall.demo.netsim import Arrival, NetworkConditions, NetworkTally, simulate_network
from botcall.demo.signals import align, segmental_correlation, speech_like, tone
from botcall.errors import RtpParseError
from botcall.wire.rtp import RtpPacket, parse_rtp_untrusted

DEFAULT_OUT = Path(tempfile.gettempdir()) / "botcall-demo.wav"
_MAX_CODEC_DELAY = 1000
"""Samples: Opus's algorithmic delay at 48 kHz is about 310; search well past it."""


# --- Sender and receiver -------------------------------------------------------------


def packetize(
    pcm: bytes, encoder: OpusEncoder, *, ssrc: int, first_sequence: int, first_timestamp: int
) -> list[tuple[float, bytes]]:
    """Encode mono 48 kHz PCM into serialised Opus RTP packets, one per 20 ms.

    Args:
        pcm: int16 PCM at the encoder's rate and channel count.
        encoder: the Opus encoder.
        ssrc: the stream's SSRC.
        first_sequence: the first 16-bit sequence number (RFC 3550 §5.1: random).
        first_timestamp: the first 32-bit RTP timestamp (likewise random).

    Returns:
        ``(send_time, datagram)`` pairs, send times starting at 0.
    """
    sends = []
    for index, frame in enumerate(frames(pcm, sample_rate=encoder.sample_rate, channels=encoder.channels)):
        packet = RtpPacket(
            payload_type=PAYLOAD_TYPE,
            sequence_number=(first_sequence + index) & 0xFFFF,
            timestamp=(first_timestamp + index * FRAME_SAMPLES) & 0xFFFFFFFF,
            ssrc=ssrc,
            payload=encoder.encode(frame),
            # RFC 3551 §4.1: the marker flags the first packet of a talkspurt.
            marker=index == 0,
        )
        sends.append((index * FRAME_DURATION, bytes(packet)))
    return sends


@dataclass(frozen=True, slots=True)
class PlayoutReport:
    """What the receiver produced.

    Attributes:
        pcm: the audio as played: 20 ms per ``pop`` from the first frame on
            (silence while the buffer had nothing), as a listener hears it.
        by_timestamp: the decoded frames put back at their RTP timestamps on the
            sender's timeline, without the expansions and skips the buffer made
            to adapt its delay; frames never played are silence. Compared with
            the input it measures loss and concealment, not timing.
        rendered: distinct frames of the sender's stream that were played,
            concealed or recovered (each at most once).
        played: frames decoded from a packet.
        concealed: lost frames synthesised by packet loss concealment.
        recovered_by_fec: lost frames rebuilt from the next packet's in-band FEC.
        expanded: frames of concealment inserted to grow the play-out delay.
        malformed: datagrams or payloads refused (RTP parse or Opus decode errors).
        start_time: when the first frame was played (simulated seconds; the
            sender sent its first packet at 0).
        mean_latency: mean of (play-out time - send time) over the frames
            played from a packet: network plus jitter buffer, seconds.
    """

    pcm: bytes
    by_timestamp: bytes
    rendered: int
    played: int
    concealed: int
    recovered_by_fec: int
    expanded: int
    malformed: int
    start_time: float
    mean_latency: float


def play_out(
    arrivals: list[Arrival],
    decoder: OpusDecoder,
    buffer: JitterBuffer,
    *,
    first_timestamp: int,
    frames_sent: int,
    use_fec: bool = True,
) -> PlayoutReport:
    """Feed arrivals to the jitter buffer and decode what it plays, every 20 ms.

    Play-out ticks start at the first arrival and stop once every datagram has
    been pushed and the buffer has gone idle (bounded by ``frames_sent``).

    Args:
        arrivals: datagrams sorted by arrival time.
        decoder: decodes the played frames (48 kHz).
        buffer: the jitter buffer (its ``stats`` hold the delay figures afterwards).
        first_timestamp: the sender's first RTP timestamp (places frames on its timeline).
        frames_sent: how many frames the sender sent.
        use_fec: rebuild a lost frame from the next packet's FEC when the buffer
            offers it (otherwise always conceal).

    Returns:
        The ``PlayoutReport``.
    """
    frame_bytes = 2 * decoder.frame_samples * decoder.channels
    silence = bytes(frame_bytes)
    timeline = bytearray(frames_sent * frame_bytes)
    out: list[bytes] = []
    counts = dict.fromkeys(("played", "concealed", "recovered_by_fec", "expanded", "malformed"), 0)
    if not arrivals:
        return PlayoutReport(b"", bytes(timeline), 0, start_time=math.inf, mean_latency=math.inf, **counts)
    now = arrivals[0].time
    start_time = math.inf
    latency_sum = 0.0
    rendered: set[int] = set()
    next_arrival = 0
    started = False
    # However the buffer adapts, it cannot need more ticks than this after the last arrival.
    deadline = arrivals[-1].time + (frames_sent + 1) * FRAME_DURATION
    while now <= deadline:
        while next_arrival < len(arrivals) and arrivals[next_arrival].time <= now:
            arrival = arrivals[next_arrival]
            next_arrival += 1
            try:
                packet = parse_rtp_untrusted(arrival.data)
            except RtpParseError:
                counts["malformed"] += 1
                continue
            buffer.push(packet, arrival.time)
        frame = buffer.pop(now)
        tick = now
        now += FRAME_DURATION
        if frame is None:
            if started and next_arrival == len(arrivals) and not len(buffer):
                break  # everything delivered and played: the stream has ended
            if started:
                out.append(silence)
            continue
        if not started:
            started = True
            start_time = tick
        pcm, how = render(frame, decoder, use_fec=use_fec)
        _count(how, frame.kind, counts)
        out.append(pcm)
        if frame.kind is not FrameKind.EXPAND:
            index = ((frame.timestamp - first_timestamp) & 0xFFFFFFFF) // FRAME_SAMPLES
            if index < frames_sent and len(pcm) == frame_bytes:
                timeline[index * frame_bytes : (index + 1) * frame_bytes] = pcm
                rendered.add(index)
            if how is Rendering.DECODED:
                latency_sum += tick - index * FRAME_DURATION
    mean_latency = latency_sum / counts["played"] if counts["played"] else math.inf
    return PlayoutReport(
        b"".join(out), bytes(timeline), len(rendered), start_time=start_time, mean_latency=mean_latency, **counts
    )


def _count(how: Rendering, kind: FrameKind, counts: dict[str, int]) -> None:
    """Tally one rendered frame; a payload libopus refused is malformed and concealed."""
    if how is Rendering.DECODED:
        counts["played"] += 1
    elif how is Rendering.RECOVERED:
        counts["recovered_by_fec"] += 1
    else:
        if how is Rendering.REFUSED:
            counts["malformed"] += 1
        counts["expanded" if kind is FrameKind.EXPAND else "concealed"] += 1


# --- The demo ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoReport:
    """The outcome of one demo run.

    Attributes:
        network: what the simulated network did.
        playout: what the receiver produced (see ``PlayoutReport``).
        late: packets that arrived after their play-out slot.
        discarded: buffered frames the jitter buffer dropped to cut its delay.
        skipped: frames never rendered, neither played nor concealed nor
            discarded: missing frames the buffer passed over (or lost before
            play-out started).
        mean_buffer_delay: mean delay of played frames above the fastest transit, seconds.
        target_delay: the jitter buffer's final target delay, seconds.
        rfc3550_jitter: interarrival jitter (RFC 3550 §6.4.1), seconds.
        end_to_end_delay: mean time from sending a frame to playing it, plus
            the codec's algorithmic delay, seconds.
        correlation: correlation of the played audio with the input, half a
            second at a time, each aligned on its own (the buffer's delay moves).
        snr_db: SNR of the decoded frames on the sender's timeline against the
            input, dB (loss and concealment, without the buffer's timing changes).
        codec_snr_db: the same for every packet decoded without loss: what Opus
            alone costs (a perceptual codec's waveform SNR is modest).
    """

    network: NetworkTally
    playout: PlayoutReport
    late: int
    discarded: int
    skipped: int
    mean_buffer_delay: float
    target_delay: float
    rfc3550_jitter: float
    end_to_end_delay: float
    correlation: float
    snr_db: float
    codec_snr_db: float

    def lines(self) -> list[str]:
        """The report as printable lines."""
        net, out = self.network, self.playout
        rows = [
            ("packets sent", f"{net.sent}"),
            ("lost in the network", f"{net.lost} ({100 * net.lost / max(1, net.sent):.1f} %)"),
            ("reordered", f"{net.reordered}"),
            ("duplicated", f"{net.duplicated}"),
            ("arrived too late", f"{self.late}"),
            ("malformed", f"{out.malformed}"),
            ("frames played", f"{out.played}"),
            ("concealed (PLC)", f"{out.concealed}"),
            ("recovered by FEC", f"{out.recovered_by_fec}"),
            ("skipped", f"{self.skipped}"),
            ("expanded (delay grew)", f"{out.expanded}"),
            ("discarded (shrank)", f"{self.discarded}"),
            (
                "jitter buffer delay",
                f"{1000 * self.mean_buffer_delay:.1f} ms mean, target {1000 * self.target_delay:.1f} ms "
                f"(RFC 3550 jitter {1000 * self.rfc3550_jitter:.1f} ms)",
            ),
            ("end-to-end delay", f"{1000 * self.end_to_end_delay:.1f} ms"),
            ("played vs input", f"correlation {self.correlation:.3f}"),
            ("decoded vs input", f"SNR {self.snr_db:.1f} dB (Opus alone, no loss: {self.codec_snr_db:.1f} dB)"),
        ]
        return [f"{label:<23}{value}" for label, value in rows]


def run_demo(
    pcm: bytes,
    conditions: NetworkConditions,
    *,
    bitrate: int = 32000,
    fec: bool = True,
) -> DemoReport:
    """Send mono 48 kHz PCM through the whole media path and measure the result.

    Args:
        pcm: int16 mono PCM at 48 kHz.
        conditions: the simulated network (its seed also picks SSRC and initial numbers).
        bitrate: Opus bitrate.
        fec: whether the encoder carries in-band FEC (and the receiver uses it).

    Returns:
        The ``DemoReport``; ``report.playout.pcm`` is the audio as played.

    Raises:
        ValueError: ``pcm`` is empty or not whole samples.
    """
    if not pcm:
        raise ValueError("nothing to send: the input audio is empty")
    rng = random.Random(conditions.seed)
    ssrc = rng.getrandbits(32)
    first_sequence = rng.getrandbits(16)
    first_timestamp = rng.getrandbits(32)
    # A real sender learns the loss rate from RTCP receiver reports; here we know it.
    expected_loss = min(100, max(1, round(100 * conditions.loss))) if fec else 0
    encoder = OpusEncoder(bitrate=bitrate, fec=fec, expected_loss_percent=expected_loss)
    sends = packetize(pcm, encoder, ssrc=ssrc, first_sequence=first_sequence, first_timestamp=first_timestamp)
    arrivals, tally = simulate_network(sends, conditions)
    buffer = JitterBuffer()
    playout = play_out(
        arrivals, OpusDecoder(), buffer, first_timestamp=first_timestamp, frames_sent=len(sends), use_fec=fec
    )
    stats = buffer.stats
    clean_decoder = OpusDecoder()
    clean = b"".join(clean_decoder.decode_untrusted(parse_rtp_untrusted(data).payload) for _, data in sends)
    codec = align(pcm, clean, max_lag=_MAX_CODEC_DELAY)
    decoded = align(pcm, playout.by_timestamp, max_lag=_MAX_CODEC_DELAY)
    played_correlation = segmental_correlation(pcm, playout.pcm, segment=SAMPLE_RATE // 2)
    end_to_end = playout.mean_latency + encoder.lookahead / encoder.sample_rate
    return DemoReport(
        network=tally,
        playout=playout,
        late=stats.late,
        discarded=stats.discarded,
        skipped=max(0, len(sends) - playout.rendered - stats.discarded),
        mean_buffer_delay=stats.mean_delay,
        target_delay=stats.target_delay,
        rfc3550_jitter=stats.jitter,
        end_to_end_delay=end_to_end,
        correlation=played_correlation,
        snr_db=decoded.snr_db,
        codec_snr_db=codec.snr_db,
    )


# --- Command line --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``botcall media-demo`` options to ``parser``."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wav", type=Path, help="WAV file to send (default: a generated spoken-like phrase)")
    source.add_argument("--tone", type=float, metavar="HZ", help="send a sine tone of this frequency instead")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the generated signal (default 4)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where to write what was played (default {DEFAULT_OUT})"
    )
    parser.add_argument("--loss", type=float, default=0.05, help="packet loss probability (default 0.05)")
    parser.add_argument(
        "--jitter", type=float, default=0.030, help="mean extra delay in seconds, exponential (default 0.030)"
    )
    parser.add_argument("--delay", type=float, default=0.040, help="fixed one-way delay in seconds (default 0.040)")
    parser.add_argument("--duplicate", type=float, default=0.0, help="packet duplication probability (default 0)")
    parser.add_argument("--seed", type=int, default=1, help="network and stream seed (default 1)")
    parser.add_argument("--bitrate", type=int, default=32000, help="Opus bitrate in bit/s (default 32000)")
    parser.add_argument("--no-fec", action="store_true", help="send without Opus in-band FEC")


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed ``args``; print the report.

    Returns:
        0 on success, 2 when the input or a setting is unusable.
    """
    try:
        conditions = NetworkConditions(
            loss=args.loss, jitter=args.jitter, delay=args.delay, duplicate=args.duplicate, seed=args.seed
        )
        if args.wav is not None:
            pcm = read_wav(args.wav)
            source = str(args.wav)
        elif args.tone is not None:
            pcm = tone(args.tone, args.seconds)
            source = f"{args.tone:g} Hz tone, {args.seconds:g} s"
        else:
            pcm = speech_like(args.seconds, seed=args.seed)
            source = f"generated phrase, {args.seconds:g} s"
        report = run_demo(pcm, conditions, bitrate=args.bitrate, fec=not args.no_fec)
    except (ValueError, OSError) as error:
        print(f"botcall media-demo: {error}", file=sys.stderr)
        return 2
    write_wav(args.out, report.playout.pcm, sample_rate=SAMPLE_RATE, channels=1)
    print(
        f"BotCall media demo: {source} -> Opus/RTP -> simulated network "
        f"(loss {100 * conditions.loss:g} %, jitter {1000 * conditions.jitter:g} ms mean, "
        f"delay {1000 * conditions.delay:g} ms, seed {conditions.seed}) -> jitter buffer -> decoder"
    )
    for line in report.lines():
        print(f"  {line}")
    print(f"wrote {args.out}")
    return 0
