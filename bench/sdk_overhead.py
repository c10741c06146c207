"""What the Python and Node SDKs cost a bot: CPU per second of a two-way call, and the latency ``say`` adds.

Run from the repository root::

    python -m bench.sdk_overhead                 # 10 s windows, 100 latency samples
    python -m bench.sdk_overhead --seconds 2 --samples 20 --json

For each event loop (asyncio, then Trio, in the same run) and each media path
(UDP Opus, WebSocket Opus, WebSocket pcm16), against the real server in a
subprocess pinned to core 0 (this process runs on core 1):

* **CPU**: two SDK bots in this process join one room. First both sit silent
  (reading ``call.audio()`` and ``call.events()``, keepalives running): the
  idle baseline. Then both speak at once, each a tone streamed the way a
  text-to-speech engine does (100 ms chunks at 24 kHz, in real time; the SDK
  resamples, frames, encodes and sends them), while each reads every frame of
  the other's (jitter buffer, decode). The process's CPU time (user + system,
  all threads) over a window of each, per second: ``call`` and ``idle``; the
  SDK's cost of the call is ``call - idle``, for two bots.
* **Latency**: one bot ``say`` s a single 20 ms frame, ``samples`` times; the
  time from the ``say`` call to the first packet of it on the wire, read by a
  packet socket on the loopback interface (``AF_PACKET``, kernel timestamps;
  needs root): an RTP packet with the bot's SSRC to the relay (UDP), or a
  binary WebSocket frame to the server (TCP). This is the SDK's share of
  mouth-to-ear on the sending side: task start, resampling, framing, Opus,
  RTP, the socket call.

Then the **Node SDK** (``sdk/js``) in the same run, against the same server: its
two WebSocket paths (Opus, pcm16), the same two-bot call in one Node process
(``sdk/js/bench/sdk_overhead_peer.mjs``, on this process's core), its CPU over
the same windows (``process.cpuUsage``, all threads), and the same say → wire
latency: that script reports the wall-clock time of each ``say`` call and the
packet socket here finds the first binary WebSocket frame after it. Skipped
(with a line saying so) when ``node`` or ``sdk/js/node_modules`` is missing.

The server's own CPU is not counted (another process). The machine is shared:
other processes' load shows as noise in both figures.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

import botcall_sdk
from bench.harness.machine import GENERATOR_CORE, machine_description, pin_to_core
from bench.harness.server import Api, RelayProcess

REPO = Path(__file__).resolve().parents[1]
JS = REPO / "sdk" / "js"
BACKENDS = ("asyncio", "trio")
# (transport, encoding): the SDK's three media paths.
PATHS = (("udp", "opus"), ("websocket", "opus"), ("websocket", "pcm16"))
TTS_RATE = 24_000  # a typical text-to-speech engine's output rate
TTS_CHUNK_S = 0.1
SETTLE_S = 1.0  # after the speech starts, before the window (the send-ahead burst)
PACKET_WAIT_S = 2.0
SAMPLE_INTERVAL_S = 0.1  # 10 say calls a second
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
WATCH_BUFFER = 4 * 1024 * 1024
ETH_HEADER = 14


@dataclass
class PathResult:
    backend: str
    transport: str
    encoding: str
    window_s: float
    idle_cpu_ms_per_s: float
    call_cpu_ms_per_s: float
    sdk_cpu_ms_per_call_s: float  # call - idle, two bots
    frames_heard: int  # loud frames of the other bot, both bots together
    say_to_wire_ms_p50: float
    say_to_wire_ms_p90: float
    say_to_wire_ms_max: float
    samples: int


def tone(frequency: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * 32767 * np.sin(2 * math.pi * frequency * t)).astype(np.int16)


async def tts_stream(frequency: float, seconds: float) -> AsyncIterator[bytes]:
    """A tone as a real-time TTS makes it: 100 ms chunks, one every 100 ms."""
    pcm = tone(frequency, seconds, TTS_RATE)
    step = int(TTS_RATE * TTS_CHUNK_S)
    start = anyio.current_time()
    for index, offset in enumerate(range(0, pcm.size, step)):
        yield pcm[offset : offset + step].tobytes()
        await anyio.sleep_until(start + (index + 1) * TTS_CHUNK_S)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- the wire: a packet socket on lo -------------------------------------------------------


class WireWatch:
    """Kernel-timestamped packets on the loopback interface that ``match`` (a thread of its own).

    ``match(ip_protocol, src_port, dst_port, payload) -> bool``; :meth:`first_after`
    returns the earliest matching packet's time (``time.time()`` clock) at or after ``t0``.
    """

    def __init__(self, match: Callable[[int, int, int, bytes], bool], protocol: int, dst_port: int) -> None:
        self._match = match
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        # The kernel keeps only our packets: the loopback of a shared machine
        # carries others' load tests, more than a Python reader keeps up with.
        attach_port_filter(self._sock, protocol, dst_port)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WATCH_BUFFER)
        self._sock.bind(("lo", 0))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.setblocking(False)
        self._times: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wire-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._sock], [], [], 0.1)
            if not readable:
                continue
            while True:
                try:
                    data, ancillary, _flags, _address = self._sock.recvmsg(2048, 64)
                except BlockingIOError:
                    break
                stamp = next((struct.unpack("qq", payload[:16]) for level, kind, payload in ancillary if kind == SO_TIMESTAMPNS), None)
                if stamp is None or len(data) < ETH_HEADER + 20 or data[12:14] != b"\x08\x00":
                    continue
                ip = data[ETH_HEADER:]
                header = (ip[0] & 0x0F) * 4
                protocol = ip[9]
                if protocol == socket.IPPROTO_UDP:
                    body = ip[header + 8 :]
                elif protocol == socket.IPPROTO_TCP:
                    body = ip[header + (ip[header + 12] >> 4) * 4 :]
                else:
                    continue
                src_port, dst_port = struct.unpack_from("!HH", ip, header)
                if body and self._match(protocol, src_port, dst_port, body):
                    with self._lock:
                        self._times.append(stamp[0] + stamp[1] / 1e9)

    def first_after(self, t0: float) -> float | None:
        with self._lock:
            later = [t for t in self._times if t >= t0]
        return min(later) if later else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def attach_port_filter(sock: socket.socket, protocol: int, dst_port: int) -> None:
    """A classic BPF program on ``sock``: IPv4 ``protocol`` packets to ``dst_port`` only (SO_ATTACH_FILTER)."""
    program = [
        (0x28, 0, 0, 12),  # ldh [12]: the EtherType
        (0x15, 0, 6, 0x0800),  # IPv4, else drop
        (0x30, 0, 0, ETH_HEADER + 9),  # ldb: the IP protocol
        (0x15, 0, 4, protocol),
        (0xB1, 0, 0, ETH_HEADER),  # ldxb 4*([14]&0xf): the IP header's length
        (0x48, 0, 0, ETH_HEADER + 2),  # ldh [x+16]: the destination port
        (0x15, 0, 1, dst_port),
        (0x06, 0, 0, 0xFFFF),  # accept
        (0x06, 0, 0, 0),  # drop
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *instruction) for instruction in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program


def matcher(call: botcall_sdk.Call, server_port: int, media_port: int) -> Callable[[int, int, int, bytes], bool]:
    """Our speech on the wire: RTP with our SSRC to the relay, or a binary WebSocket frame to the server."""
    ssrc = struct.pack("!I", call.ssrc)
    if call.transport == "udp":
        return lambda protocol, src, dst, body: protocol == socket.IPPROTO_UDP and dst == media_port and len(body) >= 12 and body[8:12] == ssrc
    # Only the bot under test sends binary WebSocket frames (the other is silent).
    return lambda protocol, src, dst, body: protocol == socket.IPPROTO_TCP and dst == server_port and has_binary_frame(body)


def has_binary_frame(segment: bytes) -> bool:
    """Whether a TCP segment of a client's WebSocket stream holds a binary frame.

    Walks the frames from the segment's start: a small frame may share a
    segment with a ping or a JSON message before it.
    """
    offset = 0
    while offset + 2 <= len(segment):
        opcode, length = segment[offset] & 0x0F, segment[offset + 1] & 0x7F
        header = 2
        if length == 126:
            if offset + 4 > len(segment):
                return False
            (length,) = struct.unpack_from("!H", segment, offset + 2)
            header = 4
        elif length == 127:
            if offset + 10 > len(segment):
                return False
            (length,) = struct.unpack_from("!Q", segment, offset + 2)
            header = 10
        if segment[offset + 1] & 0x80:
            header += 4  # the client's mask
        if opcode == 0x2:
            return True
        offset += header + length
    return False


# --- one path on one event loop ------------------------------------------------------------


async def measure_path(
    relay: RelayProcess, api: Api, backend: str, transport: str, encoding: str, window: float, samples: int
) -> PathResult:
    room, _ = api.create_room("creator")
    options = {"transport": transport, "encoding": encoding}
    if encoding == "pcm16":
        options["sample_rate"] = 16000
    heard = [0, 0]
    async with botcall_sdk.connect(relay.http_url, room, api.token(f"alto-{backend}-{transport}-{encoding}"), **options) as alto:  # type: ignore[arg-type]
        async with botcall_sdk.connect(relay.http_url, room, api.token(f"bass-{backend}-{transport}-{encoding}"), **options) as bass:  # type: ignore[arg-type]
            async with anyio.create_task_group() as group:
                for index, (call, other) in enumerate(((alto, bass), (bass, alto))):
                    group.start_soon(listen, call, other, heard, index)
                    group.start_soon(drain_events, call)
                while other_id(alto, bass) is None or other_id(bass, alto) is None:
                    await anyio.sleep(0.02)

                # Idle: joined, reading, silent.
                await anyio.sleep(SETTLE_S)
                idle = await cpu_per_second(window)

                # A two-way call: both stream a tone in real time.
                first = [await call.say(tts_stream(frequency, window + 2 * SETTLE_S), sample_rate=TTS_RATE) for call, frequency in ((alto, 440.0), (bass, 660.0))]
                await anyio.sleep(SETTLE_S)
                heard[:] = [0, 0]
                busy = await cpu_per_second(window)
                frames = sum(heard)
                for speech in first:
                    await speech.done()

                latencies = await say_to_wire(alto, relay, samples)
                group.cancel_scope.cancel()
    return PathResult(
        backend, transport, encoding, window, round(idle, 2), round(busy, 2), round(busy - idle, 2), frames,
        round(percentile(latencies, 0.5), 3), round(percentile(latencies, 0.9), 3), round(max(latencies), 3), len(latencies),
    )


def other_id(call: botcall_sdk.Call, other: botcall_sdk.Call) -> str | None:
    return other.participant_id if other.participant_id in call.participants else None


async def listen(call: botcall_sdk.Call, other: botcall_sdk.Call, heard: list[int], index: int) -> None:
    async for frame in call.audio():
        if frame.speaker == other.participant_id and not frame.concealed and np.abs(frame.samples).max(initial=0) > 1000:
            heard[index] += 1


async def drain_events(call: botcall_sdk.Call) -> None:
    async for _event in call.events():
        pass


async def cpu_per_second(window: float) -> float:
    """This process's CPU ms per wall-clock second over ``window`` seconds."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    await anyio.sleep(window)
    return (time.process_time() - cpu0) * 1000 / (time.monotonic() - wall0)


async def say_to_wire(call: botcall_sdk.Call, relay: RelayProcess, samples: int) -> list[float]:
    frame = tone(550.0, 0.02, 48000).tobytes()
    server_port = int(relay.http_url.rsplit(":", 1)[1].rstrip("/"))
    if call.transport == "udp":
        watch = WireWatch(matcher(call, server_port, relay.media_addr[1]), socket.IPPROTO_UDP, relay.media_addr[1])
    else:
        watch = WireWatch(matcher(call, server_port, relay.media_addr[1]), socket.IPPROTO_TCP, server_port)
    latencies: list[float] = []
    try:
        for _ in range(samples):
            started = anyio.current_time()
            t0 = time.time()
            speech = await call.say(frame, sample_rate=48000)
            seen = None
            with anyio.move_on_after(PACKET_WAIT_S):
                while (seen := watch.first_after(t0)) is None:
                    await anyio.sleep(0.002)
            if seen is None:
                raise RuntimeError(
                    f"no packet of our speech on the wire within {PACKET_WAIT_S} s ({call.transport}, sample {len(latencies)}, "
                    f"finished {speech.finished}, counters {call.counters})"
                )
            latencies.append((seen - t0) * 1000)
            await speech.done()  # played out: the next say is not queued behind it
            # Each say sends a mark; the server takes 20 JSON messages a second.
            await anyio.sleep_until(started + SAMPLE_INTERVAL_S)
    finally:
        watch.close()
    return latencies


# --- the run -------------------------------------------------------------------------------


def run(
    window: float, samples: int, backends: tuple[str, ...] = BACKENDS, paths: tuple[tuple[str, str], ...] = PATHS, *, node: bool = True
) -> list[PathResult]:
    """Every path on every Python event loop, then the Node SDK's WebSocket paths, on one server."""
    results = []
    with RelayProcess() as relay:
        api = Api(relay.http_url, relay.data_dir)
        try:
            for backend in backends:
                for transport, encoding in paths:
                    results.append(anyio.run(measure_path, relay, api, backend, transport, encoding, window, samples, backend=backend))
            if node:
                for transport, encoding in paths:
                    if transport == "websocket":  # the Node SDK's only transport
                        results.append(measure_node_path(relay, api, encoding, window, samples))
        finally:
            api.close()
    return results


def node_available() -> bool:
    """Whether the Node SDK can run here (node, and sdk/js's packages installed)."""
    return shutil.which("node") is not None and (JS / "node_modules").is_dir()


def measure_node_path(relay: RelayProcess, api: Api, encoding: str, window: float, samples: int) -> PathResult:
    """The same call and the same say → wire measurement for the Node SDK.

    ``sdk/js/bench/sdk_overhead_peer.mjs`` holds the two bots (one Node process,
    on this process's core: the affinity is inherited) and reports its CPU
    windows and each ``say`` call's wall-clock time; the packet socket here
    finds the first binary WebSocket frame on the wire after each.
    """
    room, _ = api.create_room("creator")
    tokens = [api.token(f"{voice}-node-{encoding}") for voice in ("alto", "bass")]
    server_port = int(relay.http_url.rsplit(":", 1)[1].rstrip("/"))
    script = JS / "bench" / "sdk_overhead_peer.mjs"
    args = ["node", str(script), relay.http_url, room, *tokens, encoding, str(window), str(samples)]
    node = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert node.stdin is not None and node.stdout is not None

    def report() -> dict[str, Any]:
        line = node.stdout.readline() if node.stdout is not None else ""
        if not line:
            node.wait(5)
            raise RuntimeError(f"{script.name} exited {node.returncode}: {node.stderr.read()[-2000:] if node.stderr else ''}")
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    try:
        report()  # ready
        idle = report()["idle_cpu_ms_per_s"]
        busy = report()
        if report().get("latency") != "armed":
            raise RuntimeError(f"{script.name}: unexpected output")
        watch = WireWatch(
            lambda protocol, src, dst, body: protocol == socket.IPPROTO_TCP and dst == server_port and has_binary_frame(body),
            socket.IPPROTO_TCP, server_port,
        )
        try:
            node.stdin.write("go\n")
            node.stdin.flush()
            starts: list[float] = []
            while "t0" in (line := report()):
                starts.append(line["t0"] / 1000)
            latencies = []
            for index, t0 in enumerate(starts):
                seen = watch.first_after(t0)
                following = starts[index + 1] if index + 1 < len(starts) else math.inf
                if seen is None or seen >= following:
                    raise RuntimeError(f"no packet of the Node bot's speech on the wire for sample {index}")
                latencies.append((seen - t0) * 1000)
        finally:
            watch.close()
    finally:
        if node.poll() is None:
            node.kill()
        node.wait(10)
    return PathResult(
        "node", "websocket", encoding, window, round(idle, 2), round(busy["call_cpu_ms_per_s"], 2),
        round(busy["call_cpu_ms_per_s"] - idle, 2), int(busy["frames_heard"]),
        round(percentile(latencies, 0.5), 3), round(percentile(latencies, 0.9), 3), round(max(latencies), 3), len(latencies),
    )


def format_table(results: list[PathResult]) -> str:
    lines = [
        "| loop | path | idle CPU ms/s (2 bots) | call CPU ms/s (2 bots) | SDK CPU per call-second, per bot | say → wire p50 / p90 / max (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.backend} | {r.transport} {r.encoding} | {r.idle_cpu_ms_per_s:.1f} | {r.call_cpu_ms_per_s:.1f} | "
            f"{r.sdk_cpu_ms_per_call_s / 2:.1f} ms ({r.sdk_cpu_ms_per_call_s / 20:.1f} %) | "
            f"{r.say_to_wire_ms_p50:.2f} / {r.say_to_wire_ms_p90:.2f} / {r.say_to_wire_ms_max:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The Python SDK's CPU per call-second and say-to-wire latency.")
    parser.add_argument("--seconds", type=float, default=10.0, help="each CPU window (idle, call)")
    parser.add_argument("--samples", type=int, default=100, help="say-to-wire latency samples per path")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument("--no-node", action="store_true", help="skip the Node SDK's benchmark")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.sdk_overhead reads the wire with a packet socket: run it as root", file=sys.stderr)
        return 2
    pin_to_core(GENERATOR_CORE)
    node = not args.no_node and node_available()
    results = run(args.seconds, args.samples, node=node)
    if args.json:
        for result in results:
            print(json.dumps({"sdk": "node" if result.backend == "node" else "python", **asdict(result)}))
        return 0
    print(machine_description())
    print(format_table(results))
    if not node and not args.no_node:
        print("\nNode SDK: not measured (no node or no sdk/js/node_modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
