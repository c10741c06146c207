"""What each attack of the hardening issue costs a live server with a call in progress.

Usage (from the repository root)::

    python -m bench.attack_impact [--rev REV] [--only NAME[,NAME...]] [--quiet-wait S]

For every attack class, a fresh ``botcall serve`` process (``tests/kit/attack/lab.py``:
``python -m botcall.cli serve --port 0 --media-port 0``, at nice -10 in a session
of its own when run as root) with the concurrent call beside it (two SDK bots
over UDP in a room of their own, one saying a tone in paced 20 ms frames, the
other timestamping every packet; a ``/healthz`` probe every 0.2 s; a resident
memory sampler), then the attack (``tests/kit/attack/attacks.py``, from 127.0.0.1),
then one more second of watching. Printed, as a Markdown table:

* survived: the process was alive at the end (else its exit code);
* gap: the concurrent call's largest inter-arrival gap in the window (20 ms is
  normal; the issue's bound is 100 ms);
* healthz: the slowest answered probe, and how many failed or took over 1 s;
* CPU: the server's user + system CPU seconds in the window (``/proc/<pid>/stat``),
  minus what the concurrent call alone costs it for as long (measured for 1 s
  before each attack);
* RSS: peak resident memory in the window minus the memory before the attack;
* the attacker's view: what the attack got (in lobby, muted events fanned out,
  media received...).

``--rev REV`` runs the server of another revision: a temporary ``git worktree``
of REV, used as the server's ``PYTHONPATH`` and working directory (the clients
and the attacks stay this checkout's, on the same virtualenv), removed at the
end. ``--rev HEAD`` is the committed code of this checkout.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from bench.harness.machine import machine_description, wait_for_quiet
from tests.kit.attack import attacks
from tests.kit.attack.lab import MB, REPO, Impact, Lab, Target, legit_operations

# The machine counts as idle below this busy fraction of one core (bench.harness.machine.wait_for_quiet).
QUIET = 0.15


@dataclass(frozen=True)
class AttackClass:
    """One row of the table.

    Attributes:
        name: what the row says.
        run: the attack, given the target.
        view: what the attacker got, in a few words, from the attack's result.
        nofile: start the server with this open-file limit.
    """

    name: str
    run: Callable[[Target], Awaitable[dict]]
    view: Callable[[dict], str]
    nofile: int | None = None


async def _connection_flood(target: Target) -> dict:
    return await attacks.connection_flood(target, count=1100, during=lambda: legit_operations(target), refill=0.5)


def _flood_view(result: dict) -> str:
    refused = result["codes"].get("too_many_connections", 0)
    return f"kept {result['still_open']} open, {refused} refused with 503; a legitimate client meanwhile: {result['during']}"


def _slowloris_view(result: dict) -> str:
    ended = {}
    for ending in result["ended"]:
        key = (ending["kind"], ending["status"])
        ended[key] = max(ended.get(key, 0.0), ending["after_s"])
    described = ", ".join(f"{kind}: {status or 'a close'} within {seconds:.0f} s" for (kind, status), seconds in sorted(ended.items(), key=str))
    return f"still open after 40 s: {result['open_at_end'] or 'none'}; ended: {described or 'none'}"


ATTACKS = [
    AttackClass("crash bytes (12 early closes)", attacks.crash_bytes, lambda r: f"{r['sent']} sent"),
    AttackClass(
        "pcm16 frame of 15 MB",
        lambda t: attacks.pcm16_big_frame(t, size=15 * MB, wait=90),
        lambda r: f"close {r['close_code']}" if r["closed"] else f"served; pong {r['pong_after_s']:.1f} s after the frame" if r["pong_after_s"] else str(r),
    ),
    AttackClass("lobby flood (1,000 sockets, one address)", attacks.lobby_flood, lambda r: f"{r['in_lobby']} in the lobby; {r['outcomes']}"),
    AttackClass(
        "control flood (2,000 mute toggles)",
        attacks.control_flood,
        lambda r: f"{r['muted_events']} muted events fanned out, {r['rate_limited']} rate_limited, close {r['close_code']}",
    ),
    AttackClass(
        # Past the default body time-out (30 s): what a server on its defaults does.
        "slowloris (8 headers + 8 bodies, 40 s)",
        lambda t: attacks.slowloris(t, headers=8, bodies=8, duration=40.0),
        _slowloris_view,
    ),
    AttackClass("connection flood (1,100 kept open, 1,024-file limit)", _connection_flood, _flood_view, nofile=1024),
    AttackClass(
        "connection flood released (1,100 answered early, 1,024-file limit)",
        lambda t: attacks.connection_flood(t, count=1100, payload=attacks.ANSWERED_BEFORE_ITS_BODY),
        lambda r: f"statuses {r['statuses']}",
        nofile=1024,
    ),
    AttackClass(
        "h2c rapid reset (4 x 5,000 streams)",
        attacks.h2c_rapid_reset,
        lambda r: f"HTTP/2 answered on {r['h2_answers']} of 4; HTTP/1 statuses {r['http1_statuses']}",
    ),
    AttackClass(
        "STUN replay from another port",
        attacks.stun_replay,
        lambda r: f"attacker got {r['attacker']['rtp']} RTP; victim got {r['victim_after']} packets in 2 s after",
    ),
    AttackClass(
        "STUN spoofed-source latch",
        attacks.stun_spoof_latch,
        lambda r: f"forged source got {r['victim']['rtp']} RTP, {r['victim']['stun']} STUN",
    ),
    AttackClass(
        "malformed UDP spray (5,000 datagrams)",
        attacks.udp_spray,
        lambda r: f"{sum(r['replies'].values())} replies, {r['reply_bytes']} bytes back for {r['sent_bytes']}",
    ),
]


@dataclass
class Row:
    attack: AttackClass
    impact: Impact | None
    view: str


async def measure(attack: AttackClass, workdir: Path, code_root: Path | None) -> Row:
    """Run one attack against a fresh server with the concurrent call."""
    lab = Lab(workdir, code_root=code_root)
    try:
        lab.start(nofile=attack.nofile)
        await lab.measure_idle_cpu()
        view = ""
        try:
            async with lab.window(attack.name) as window:
                result = await attack.run(lab.target)
            view = attack.view(result)
        except Exception as exc:  # a row that failed still says what it saw
            if window.impact is not None and not window.impact.survived:
                view = "the server died during the attack"
            else:
                view = f"attack raised {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                traceback.print_exc()
        return Row(attack, window.impact, view)
    finally:
        lab.close()


def _cell_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return "none arrived" if math.isinf(seconds) else f"{seconds * 1000:.0f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| attack | survived | largest gap (ms) | /healthz slowest (ms), bad | server CPU (s) | RSS growth (MB) | the attacker's view |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        impact = row.impact
        if impact is None:
            lines.append(f"| {row.attack.name} | ? | ? | ? | ? | ? | {row.view} |")
            continue
        survived = "yes" if impact.survived else f"**no** (exit {impact.exit_code})"
        gap = _cell_ms(impact.max_gap_s)
        if impact.max_gap_s >= 0.1:
            gap = f"**{gap}**"
        healthz = f"{_cell_ms(impact.worst_probe_s)}, {len(impact.bad_probes)}/{impact.probes}"
        cpu = "-" if impact.cpu_s is None else f"{impact.cpu_s:.2f}"
        rss = "-" if impact.rss_growth_bytes is None else f"{impact.rss_growth_bytes / MB:+.1f}"
        view = row.view.replace("|", "/")
        lines.append(f"| {row.attack.name} | {survived} | {gap} | {healthz} | {cpu} | {rss} | {view} |")
    return "\n".join(lines)


@contextmanager
def checkout(rev: str | None) -> Iterator[tuple[Path | None, str]]:
    """A temporary ``git worktree`` of ``rev`` (removed afterwards), or this checkout."""
    if rev is None:
        yield None, "working tree of " + _git("rev-parse", "--short", "HEAD")
        return
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    directory = Path(tempfile.mkdtemp(prefix="botcall-attack-rev-"))
    _git("worktree", "add", "--detach", str(directory), commit)
    try:
        yield directory, f"{rev} = {commit[:12]} ({_git('log', '-1', '--format=%s', commit)[:70]})"
    finally:
        _git("worktree", "remove", "--force", str(directory))


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


async def main(args: argparse.Namespace) -> int:
    chosen = [a for a in ATTACKS if not args.only or any(word.lower() in a.name.lower() for word in args.only.split(","))]
    if not chosen:
        print(f"no attack matches {args.only!r}; names: {[a.name for a in ATTACKS]}", file=sys.stderr)
        return 2
    with checkout(args.rev) as (code_root, described), tempfile.TemporaryDirectory(prefix="botcall-attack-") as scratch:
        print(f"server code: {described}")
        print(machine_description())
        rows = []
        for index, attack in enumerate(chosen):
            busy = await trio.to_thread.run_sync(lambda: wait_for_quiet(max_wait=args.quiet_wait, threshold=QUIET))
            started = time.monotonic()
            try:
                row = await measure(attack, Path(scratch) / f"{index:02d}", code_root)
            except Exception as exc:  # the server did not start, say: the row says so, the others run
                row = Row(attack, None, f"not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            if not math.isnan(busy) and busy > QUIET:
                row.view += f" (other work kept the machine {busy:.0%} of a core busy before this row)"
            print(f"  {attack.name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
            rows.append(row)
        print()
        print(table(rows))
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attack_impact", description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default=None, help="run the server of this git revision (a temporary worktree); default: this checkout")
    parser.add_argument("--only", default="", help="comma-separated words: run only the attacks whose names contain one")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="wait up to this many seconds for an idle machine before each attack (0: never)")
    return trio.run(main, parser.parse_args())


if __name__ == "__main__":
    sys.exit(cli())
