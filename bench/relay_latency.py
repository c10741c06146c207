"""Relay latency, loss and CPU per forwarded packet, with N concurrent voice legs.

Usage (from the repository root)::

    python -m bench.relay_latency                              # bots, N = 100,250,500,1000
    python -m bench.relay_latency --mode bots --legs 100,250,500,1000,1500 --duration 10 --repeat 3
    python -m bench.relay_latency --mode calls --legs 100,250,500    # bot <-> browser, SRTP
    python -m bench.relay_latency --mode bot-to-browser --legs 500
    python -m bench.relay_latency --mode browser-to-bot --legs 500

For every N a fresh server (``bench.harness.server.RelayProcess``: the real
``run_server`` in a subprocess, ``taskset -c 0``) gets N rooms over the HTTP
API; the generator (this process, pinned to core 1) joins and latches the bots
and, for browser modes, joins simulated browsers over the signaling WebSocket
and runs their ICE checks and DTLS handshakes over UDP. Then:

1. the direct baseline: the same flows socket to socket with no relay, with
   the same SRTP work in the generator (``direct_like``);
2. the relay runs (``--repeat`` times, each after a consent refresh).

Modes (every flow is 50 packets/s of 172-byte RTP unless told otherwise):

* ``bots``: N one-way legs, bot A -> relay -> bot B, one room per pair;
* ``bot-to-browser``: N legs, bot -> relay (plain in, SRTP out) -> browser;
* ``browser-to-bot``: N legs, browser -> relay (SRTP in, plain out) -> bot;
* ``calls``: N bot <-> browser calls, both directions: 2N legs.

RFC 6464 audio levels (``--audio-level``, the default in ``calls`` mode): each
packet carries a one-byte header extension with its level, as real callers
send it: the simulated browsers at the id the captured Chromium offer
negotiates (1), the bots at ``BOT_AUDIO_LEVEL_ID`` (1, as the SDK's bots), in a
talk-spurt pattern (2 s at -20 dBov, 1 s at -70). The relay's speech detection
then takes the level path, as with Chromium and SDK bots; ``--no-audio-level``
sends bare 12-byte headers (ffmpeg, hand-written bots: the relay decodes the
first ``speech_max_decoders`` streams and counts packet sizes for the rest), as
every mode did before 6 December 2026 (§18d of docs/bench-results.md). Packets
keep ``--packet-size`` either way.

Printed per run: offered and delivered packets/s, loss, latency p50/p99 through
the relay, the direct baseline's, their difference (relay-added), the relay's
CPU per forwarded packet (user + system from /proc over the window) and as a
share of one core, the generator's own CPU and the CPU of everything else on
the machine (a disturbed run shows there).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass

from bench.harness.machine import GENERATOR_CORE, machine_description, run_isolated, wait_for_quiet
from bench.harness.server import Api, bot_browser_calls, bot_pairs, drain, latch_bots, refresh_browsers, RelayProcess
from bench.harness.lightgen import run_light
from bench.harness.loadgen import Flow, LoadResult, packets_per_flow, run_load
from botcall.audio.vad import BOT_AUDIO_LEVEL_ID
from tests.kit.browser import OFFER
from bench.harness.nativegen import run_native
from bench.harness.machine import open_socket, pin_to_core
from bench.srtp_cost import handshake
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.srtp import SrtpContext

MODES = ("bots", "bot-to-browser", "browser-to-bot", "calls")
# The RFC 6464 level's extension id in the captured Chromium offer the simulated browsers send.
BROWSER_AUDIO_LEVEL_ID = int(re.search(r"a=extmap:(\d+) urn:ietf:params:rtp-hdrext:ssrc-audio-level", OFFER).group(1))  # type: ignore[union-attr]
# Modes whose packets carry audio levels unless told otherwise: what real callers send.
LEVELS_BY_DEFAULT = ("calls",)
# The load generators (``--generator``): the classic one works per packet inside
# the window; the light one builds and protects before it and checks after it
# (bench/harness/lightgen.py); the native one is the light one with its window
# in C (bench/harness/nativegen.py). All measure the same things the same way.
GENERATORS = {"light": run_light, "classic": run_load, "native": run_native}
DEFAULT_GENERATOR = "light"


@dataclass
class Cell:
    """One relay run beside the direct baseline of the same load."""

    mode: str
    legs: int
    relay: LoadResult
    direct: LoadResult

    @property
    def added_p50_ms(self) -> float:
        return self.relay.latency_p50_ms - self.direct.latency_p50_ms

    @property
    def added_p99_ms(self) -> float:
        return self.relay.latency_p99_ms - self.direct.latency_p99_ms

    def within(self, max_loss: float = 0.001, max_added_p99_ms: float = 5.0) -> bool:
        """The goals' bounds: loss below ``max_loss`` and added p99 below ``max_added_p99_ms``."""
        return self.relay.loss < max_loss and self.added_p99_ms < max_added_p99_ms


HEADER = (
    f"{'mode':<16}{'legs':>6}{'offered':>9}{'deliv.':>9}{'loss%':>8}{'p50':>7}{'p99':>7}"
    f"{'d.p50':>7}{'d.p99':>7}{'+p50':>7}{'+p99':>7}{'µs/pkt':>8}{'relay%':>7}{'gen%':>6}{'other%':>7}"
)


def format_cell(cell: Cell) -> str:
    """One row under :data:`HEADER`; latencies in milliseconds."""
    relay, direct = cell.relay, cell.direct
    return (
        f"{cell.mode:<16}{cell.legs:>6}{relay.offered_pps:>9.0f}{relay.delivered_pps:>9.0f}{relay.loss * 100:>8.3f}"
        f"{relay.latency_p50_ms:>7.2f}{relay.latency_p99_ms:>7.2f}{direct.latency_p50_ms:>7.2f}{direct.latency_p99_ms:>7.2f}"
        f"{cell.added_p50_ms:>7.2f}{cell.added_p99_ms:>7.2f}{relay.relay_cpu_us_per_packet:>8.1f}{relay.relay_cpu_percent:>7.1f}"
        f"{relay.generator_cpu_percent:>6.1f}{relay.other_cpu_percent:>7.1f}"
    )


def relay_flows(mode: str, relay: RelayProcess, api: Api, legs: int, *, audio_levels: bool = False) -> tuple[list[Flow], list, list]:
    """Set up ``legs`` legs (or calls) of ``mode`` on ``relay``.

    Args:
        audio_levels: bots' and browsers' packets carry RFC 6464 levels (see the module docstring).

    Returns:
        ``(flows, bots, browsers)``; bots and browsers for consent refreshes.
    """
    if mode == "bots":
        pairs = bot_pairs(relay, api, legs)
        flows = [
            Flow(send_sock=a.sock, dest=relay.media_addr, recv_sock=b.sock, ssrc=a.ssrc, audio_level_id=BOT_AUDIO_LEVEL_ID if audio_levels else None)
            for a, b in pairs
        ]
        return flows, [bot for pair in pairs for bot in pair], []
    calls = bot_browser_calls(relay, api, legs)
    flows = []
    if mode in ("bot-to-browser", "calls"):
        flows += [
            Flow(
                send_sock=bot.sock,
                dest=relay.media_addr,
                recv_sock=browser.sock,
                ssrc=bot.ssrc,
                recv_ssrc=browser.out_ssrc,
                unprotect=browser.srtp.unprotect_untrusted,
                audio_level_id=BOT_AUDIO_LEVEL_ID if audio_levels else None,
            )
            for bot, browser in calls
        ]
    if mode in ("browser-to-bot", "calls"):
        flows += [
            Flow(
                send_sock=browser.sock,
                dest=relay.media_addr,
                recv_sock=bot.sock,
                ssrc=browser.send_ssrc,
                recv_ssrc=browser.session_ssrc,
                protect=browser.srtp.protect,
                audio_level_id=BROWSER_AUDIO_LEVEL_ID if audio_levels else None,
            )
            for bot, browser in calls
        ]
    return flows, [bot for bot, _ in calls], [browser for _, browser in calls]


class DirectFlows:
    """The direct baseline's flows: one socket pair per relay flow, with the same
    SRTP work in the generator.

    A flow whose sender protects (a browser) protects here too but sends the
    plain packet (the receiver, a bot, reads plain RTP); a flow whose receiver
    unprotects (a browser) gets packets its sender protected (the relay's job
    on the real path; here it costs the generator one extra protect).
    """

    def __init__(self, flows: list[Flow]) -> None:
        self.sockets = []
        self.flows = []
        keys = None
        if any(flow.protect or flow.unprotect for flow in flows):
            server, client = handshake(DtlsCertificate.generate(), DtlsCertificate.generate())
            keys = (client.srtp_keys, server.srtp_keys)
        for index, flow in enumerate(flows):
            sender, receiver = open_socket(), open_socket()
            sender.connect(receiver.getsockname())
            self.sockets += (sender, receiver)
            protect = unprotect = None
            if flow.unprotect is not None:
                protect = SrtpContext.from_keys(keys[0]).protect
                unprotect = SrtpContext.from_keys(keys[1]).unprotect_untrusted
            elif flow.protect is not None:
                protect = _ProtectAndDiscard(SrtpContext.from_keys(keys[0]).protect)
            self.flows.append(
                Flow(
                    send_sock=sender,
                    dest=receiver.getsockname(),
                    recv_sock=receiver,
                    ssrc=index + 1,
                    protect=protect,
                    unprotect=unprotect,
                    audio_level_id=flow.audio_level_id,  # the same packets as through the relay
                )
            )

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


class _ProtectAndDiscard:
    """Spend a protect on the packet, then send it plain (see :class:`DirectFlows`)."""

    __slots__ = ("protect",)

    def __init__(self, protect) -> None:
        self.protect = protect

    def __call__(self, packet: bytes) -> bytes:
        self.protect(packet)
        return packet


def run_cells(
    mode: str,
    legs: int,
    *,
    duration: float,
    warmup: float,
    repeat: int = 1,
    rate: float = 50.0,
    packet_size: int = 172,
    quiet_wait: float = 60.0,
    log=print,
    generator: str = DEFAULT_GENERATOR,
    config: dict | None = None,
    audio_levels: bool | None = None,
) -> list[Cell]:
    """Measure ``repeat`` relay runs of ``legs`` legs of ``mode`` on a fresh server.

    Args:
        generator: a key of :data:`GENERATORS` (the direct baseline uses the same one),
            or several, comma-separated: each run of the repeat then measures each
            generator in turn on the same calls, each beside its own baseline.
        config: further ``Config`` fields for the server (``RelayProcess(config=...)``).
        audio_levels: packets carry RFC 6464 levels; None: in the modes of
            :data:`LEVELS_BY_DEFAULT` (``calls``), as real callers send them.

    Returns:
        One :class:`Cell` per run, each beside the same direct baseline.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    names = generator.split(",")
    if not set(names) <= set(GENERATORS):
        raise ValueError(f"generator must be one of {sorted(GENERATORS)}, comma-separated")
    with RelayProcess(config=config) as relay:
        api = Api(relay.http_url, relay.data_dir)
        started = time.monotonic()
        levels = mode in LEVELS_BY_DEFAULT if audio_levels is None else audio_levels
        flows, bots, browsers = relay_flows(mode, relay, api, legs, audio_levels=levels)
        api.close()
        log(f"# {mode} x {legs}: {len(flows)} flows set up in {time.monotonic() - started:.1f} s; audio levels {'on' if levels else 'off'}")
        kwargs = dict(rate_per_flow=rate, duration=duration, warmup=warmup, packet_size=packet_size)
        direct_flows = DirectFlows(flows)
        directs = {}
        try:
            for index, name in enumerate(names):
                wait_for_quiet(max_wait=quiet_wait)
                directs[name] = GENERATORS[name](direct_flows.flows, seq_base=index * packets_per_flow(rate, duration, warmup), **kwargs)
        finally:
            direct_flows.close()
        cells = []
        per_flow = packets_per_flow(rate, duration, warmup)
        run = 0
        for _ in range(repeat):
            for name in names:  # several generators: alternating, on the same calls
                wait_for_quiet(max_wait=quiet_wait)
                latch_bots(bots)
                if browsers:
                    refresh_browsers(browsers)
                drain({flow.recv_sock for flow in flows})
                result = GENERATORS[name](flows, cpu_pid=relay.pid, seq_base=run * per_flow, **kwargs)
                run += 1
                label = mode if len(names) == 1 else f"{mode}/{name}"
                cells.append(Cell(mode=label, legs=legs, relay=result, direct=directs[name]))
        for sock in {flow.send_sock for flow in flows} | {flow.recv_sock for flow in flows}:
            sock.close()
    return cells


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_isolated(lambda: _main(argv)))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description="Relay latency, loss and CPU with N concurrent voice legs.")
    parser.add_argument("--mode", choices=MODES, default="bots")
    parser.add_argument("--legs", default="100,250,500,1000", help="comma-separated N (legs, or calls in 'calls' mode)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (at most 20: consent lasts 30 s)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--packet-size", type=int, default=172)
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait for an idle machine before each run")
    parser.add_argument("--generator", default=DEFAULT_GENERATOR,
                        help="light, native or classic (bench/harness/lightgen.py, nativegen.py, loadgen.py); 'classic,light' alternates them")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="a server Config field for every run (repeatable), e.g. media_fast_path='\"thread\"'")
    parser.add_argument("--audio-level", action=argparse.BooleanOptionalAction, default=None,
                        help="packets carry an RFC 6464 audio level (one-byte extension, id 1) as Chromium and SDK bots send; "
                             "default: on in 'calls' mode (what real callers send), off otherwise (light and native generators)")
    parser.add_argument("--variants", default="",
                        help="server configurations to alternate, ';'-separated, each ','-separated FIELD=JSON "
                             "(e.g. 'media_fast_srtp=false;media_fast_srtp=true'): every repeat runs each on a fresh server in turn")
    args = parser.parse_args(argv)
    if args.duration + args.warmup > 20:
        parser.error("warmup + duration must stay under 20 s (the relay forgets addresses after 30 s without STUN)")
    try:
        base = parse_fields(args.set)
        variants = [parse_fields(part.split(",")) for part in args.variants.split(";") if part.strip()] or [{}]
    except ValueError as exc:
        parser.error(str(exc))
    pin_to_core(GENERATOR_CORE)
    print(machine_description())
    print(f"relay on core 0, generator on core {GENERATOR_CORE}; {args.rate:g} packets/s per leg, {args.packet_size}-byte RTP")
    print("latencies in ms (d. = direct baseline, + = relay-added); µs/pkt = relay CPU per forwarded packet")
    print(HEADER, flush=True)
    for legs in (int(value) for value in args.legs.split(",")):
        # With variants, each repeat runs every variant in turn (old and new alternate).
        for _ in range(args.repeat if len(variants) > 1 else 1):
            for variant in variants:
                if len(variants) > 1:
                    print(f"# variant {variant}", flush=True)
                for cell in run_cells(
                    args.mode,
                    legs,
                    duration=args.duration,
                    warmup=args.warmup,
                    repeat=1 if len(variants) > 1 else args.repeat,
                    rate=args.rate,
                    packet_size=args.packet_size,
                    quiet_wait=args.quiet_wait,
                    log=lambda line: print(line, flush=True),
                    generator=args.generator,
                    config={**base, **variant},
                    audio_levels=args.audio_level,
                ):
                    print(format_cell(cell) + (f"  {variant}" if len(variants) > 1 else ""), flush=True)


def parse_fields(items: list[str]) -> dict:
    """``FIELD=JSON`` strings as a dict of Config fields.

    Raises:
        ValueError: an item without ``=`` or whose value is not JSON.
    """
    fields = {}
    for item in items:
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected FIELD=JSON")
        try:
            fields[name] = json.loads(value)
        except ValueError:
            raise ValueError(f"{item!r}: the value must be JSON") from None
    return fields


if __name__ == "__main__":
    main()
