"""The UDP shell's cost per forwarded packet, batched system calls or not, in one process.

``python -m bench.transport_hot_path [--pairs 250] [--bursts 400] [--repeat 3] [--variants ...] [--profile VARIANT]``

One process, one core, no load generator on another core: the real
``UdpTransport.run`` (its read loop, collected sends, timers) under Trio, a
``MediaRelay`` with ``pairs`` rooms of two latched UDP bots, and a producer
task in the same Trio run that sends one RTP packet from every speaker's
socket (a burst of ``pairs`` packets), moves a virtual clock on by one 20 ms
frame (``MockClock`` with autojump: no real sleeps; bot play-out releases
each packet at its due time), and drains the listeners' sockets. The figure is CPU time of the whole process
per forwarded packet: it includes the producer's sends and the listeners'
reads, the same for both variants, so the difference between them is what
the transport saves. Speech detection is off (``max_speech_decoders=0``):
this measures forwarding. The variants alternate (A, B, A, B...) in one run:
``recvfrom`` (recvfrom/sendto), ``mmsg`` (recvmmsg/sendmmsg through ctypes),
``fast`` (the compiled fast path inline, issue 17: the relay still tracks
speech on every packet it forwards; its thread mode forwards in real time
beside Trio and cannot run on this virtual clock), and ``recvfrom-nospeech`` / ``fast-nospeech``
with no speech tracker at all (``speech_detection=False``: forwarding only).

``--profile VARIANT`` prints the top of a cProfile of one run of that variant
instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import socket
import statistics
import time

import trio
import trio.testing

from bench.harness.machine import machine_description
from botcall.relay import fastpath
from botcall.relay.core import MediaRelay
from botcall.relay.transport import UdpTransport, open_udp_socket
from tests.kit.relay import Wire, latch, make_bot, rtp

BUFFER = 4 * 1024 * 1024
FRAME = 0.020


def _client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


# name: (batched system calls, compiled fast path, speech detection)
VARIANTS = {
    "recvfrom": (False, "off", True),
    "mmsg": (True, "off", True),
    "fast": (False, "inline", True),
    "recvfrom-nospeech": (False, "off", False),
    "fast-nospeech": (False, "inline", False),
}


async def _run(pairs: int, bursts: int, variant: str, profiler: cProfile.Profile | None) -> tuple[float, int]:
    batched, fast_path, speech = VARIANTS[variant]
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=batched, fast_path=fast_path)
    relay = MediaRelay(
        transport.transmit, max_packets_per_second=10**9, max_speech_decoders=0, max_peers=4 * pairs + 10, speech_detection=speech
    )
    wire = Wire()
    relay.transmit = wire  # latching's checks and successes go to the record, not the sockets
    speakers, listeners = [], []
    for index in range(pairs):
        for role, group in (("s", speakers), ("l", listeners)):
            sock = _client()
            peer = make_bot(relay, transport.transmit, f"{role}{index}", 0x1000 + 2 * index + (role == "l"), room=f"r{index}")
            latch(relay, wire, peer, sock.getsockname())
            group.append((sock, peer))
    relay.transmit = transport.transmit
    relay_addr = transport.local_address
    for sock, _ in speakers:
        sock.connect(relay_addr)
    packets = [[rtp(peer.ssrc, seq) for seq in range(bursts)] for _, peer in speakers]
    received = 0
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run, relay)
            gc.collect()
            gc.disable()
            if profiler is not None:
                profiler.enable()
            started = time.process_time()
            for seq in range(bursts):
                for (sock, _), mine in zip(speakers, packets):
                    sock.send(mine[seq])
                # One frame later on the virtual clock: the relay reads and
                # forwards the burst meanwhile (bot play-out releases each
                # packet at its due time, so the clock has to move on).
                await trio.sleep(FRAME)
                for sock, _ in listeners:
                    while True:
                        try:
                            sock.recv(2048)
                        except BlockingIOError:
                            break
                        received += 1
            elapsed = time.process_time() - started
            if profiler is not None:
                profiler.disable()
            gc.enable()
            nursery.cancel_scope.cancel()
    finally:
        for sock, _ in speakers + listeners:
            sock.close()
        transport.sock.close()
    return elapsed, received


def _clock() -> trio.testing.MockClock:
    """Virtual time that jumps ahead whenever every task waits: no real sleeps,
    and the frames' pacing is exact whatever the machine's load."""
    return trio.testing.MockClock(autojump_threshold=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=250)
    parser.add_argument("--bursts", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default="recvfrom,mmsg,fast", help="comma-separated, from " + ",".join(VARIANTS))
    parser.add_argument("--profile", choices=tuple(VARIANTS), help="print a cProfile of one run of this variant instead")
    args = parser.parse_args()
    variants = [name for name in args.variants.split(",") if name]
    if set(variants) - set(VARIANTS):
        parser.error(f"unknown variants; choose from {', '.join(VARIANTS)}")
    if "fast" in "".join(variants + [args.profile or ""]) and not fastpath.available():
        parser.error("the compiled fast path is not built (pip install -e .)")
    print(machine_description())
    if args.profile:
        profiler = cProfile.Profile()
        elapsed, received = trio.run(_run, args.pairs, args.bursts, args.profile, profiler, clock=_clock())
        print(f"{args.profile}: {received} forwarded, {elapsed / max(received, 1) * 1e6:.2f} µs CPU per packet (under cProfile)")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
        return
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name in variants:
            elapsed, received = trio.run(_run, args.pairs, args.bursts, name, None, clock=_clock())
            expected = args.pairs * args.bursts
            per_packet = elapsed / max(received, 1) * 1e6
            results[name].append(per_packet)
            print(f"{name:18} {received}/{expected} forwarded  {per_packet:6.2f} µs CPU per packet", flush=True)
    for name, values in results.items():
        print(f"{name:18} median {statistics.median(values):.2f} µs (range {min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
