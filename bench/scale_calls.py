"""Call capacity of ``botcall serve --workers N``: the calls mode of ``bench.capacity``
against the real supervisor, its front and N worker processes.

Driven by ``python -m bench.scale_out --capacity --workers 1,2`` (see there);
this module holds the pieces: :class:`ServeProcess` (``botcall serve --workers
N`` as a subprocess, its workers' pids and ports read from its log) and
:func:`measure_calls` (N bot <-> browser calls set up through the front, the
load aimed at each room's own worker media port, as the join responses name it).

With ``--workers 1`` ``botcall serve`` runs one process and no front (what a
user gets); its front CPU is then reported as absent (NaN).

CPU is sampled from /proc around each whole run (warm-up, drain and the
generator's building and checking included, so the shares are slightly
diluted): each worker, the front (the supervisor process), the generator
(this process) and the rest of the machine (``other``), as shares of one core;
the workers' CPU together is also read over the measured window alone
(``w.win%``, the generator's ``cpu_pid``), which is what calls per worker core
(``bench.scale_out``'s summary) divide by; the 1-minute
load average is taken at the end of the run. Nothing is pinned by default:
on this two-core machine the workers and the generator share both cores
(``pin=True``, ``--pin``: worker i on core i, and with one worker the generator
on the other core, as ``bench.capacity`` runs).
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.loadgen import Flow, LoadResult, packets_per_flow
from bench.harness.machine import BENCH_NICE, GENERATOR_CORE, machine_busy_seconds, wait_for_quiet
from bench.harness.process import HarnessError, PinnedProcess
from bench.harness.server import REPO, Api, Bot, connected_socket, drain, join_browsers, latch_bots, refresh_browsers
from bench.relay_latency import DEFAULT_GENERATOR, GENERATORS, Cell, DirectFlows
from botcall.webrtc.dtls.certificate import DtlsCertificate
from tests.kit.system import read_proc_stat

WORKER_STARTED = re.compile(r"worker (?P<index>\d+) started \(pid (?P<pid>\d+), http 127\.0\.0\.1:(?P<http>\d+), media udp (?P<media>\d+)")
FRONT_LISTENING = re.compile(r"listening on (?P<url>https?://\S+) \(public URL \S+\) with (?P<count>\d+) workers")
# One process (--workers 1): botcall.server's start line names its HTTP URL and media port.
SINGLE_LISTENING = re.compile(r"listening on (?P<url>https?://\S+)")
START_TIMEOUT_S = 60.0
_UNLIMITED = "rate=1000000,burst=1000000"
# What bench.harness.server.bench_config changes, as BOTCALL_* settings (see its docstring).
BENCH_ENV = {
    "BOTCALL_WS_CONNECT_GRACE_S": "86400",
    "BOTCALL_MAX_LIVE_ROOMS_PER_CONTROLLER": "100000",
    "BOTCALL_MAX_ROOMS_TOTAL": "100000",
    "BOTCALL_MAX_SESSIONS_TOTAL": "100000",
    "BOTCALL_RATE_LIMIT_TABLE_MAX": "100000",
    "BOTCALL_REPLAY_CACHE_MAX": "1000000",
    "BOTCALL_MAX_CONNECTIONS_PER_IP": "100000",
    "BOTCALL_MAX_WEBSOCKETS_PER_IP": "100000",
    "BOTCALL_MAX_LOBBY_SOCKETS_PER_ROOM": "100000",
    **{
        f"BOTCALL_{name.upper()}": _UNLIMITED
        for name in ("create_limit_per_agent", "create_limit_per_ip", "join_limit_per_agent", "join_limit_per_ip",
                     "query_limit_per_ip", "connection_rate_per_ip")
    },
}


class ServeProcess(PinnedProcess):
    """``botcall serve --workers N`` on 127.0.0.1 (free ports), unpinned, at the bench's niceness.

    Attributes:
        url: the public (front) URL.
        worker_pids / media_ports: per worker index (one process: index 0 is the server itself).
        worker_priority: per worker process, whether it got the bench's priority
            (its own session's autogroup at :data:`BENCH_NICE`; see :func:`_raise_worker_priority`).

    Raises:
        HarnessError: it did not start within :data:`START_TIMEOUT_S`.
    """

    def __init__(self, data_dir: Path, workers: int) -> None:
        command = [sys.executable, "-m", "botcall.cli", "serve", "--workers", str(workers), "--port", "0",
                   "--media-port", "0", "--media-host", "127.0.0.1"]
        env = {"BOTCALL_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), **BENCH_ENV}
        super().__init__("serve", command, core=None, log_dir=data_dir, env=env, cwd=REPO, nice=BENCH_NICE, stop_timeout=15.0)
        self.workers = workers
        self.url = ""
        self.worker_pids: dict[int, int] = {}
        self.media_ports: dict[int, int] = {}
        self.start()
        try:
            self.wait_ready(self._read_start, timeout=START_TIMEOUT_S, interval=0.1)
        except BaseException:
            self.stop()
            raise
        self.worker_priority = {index: _raise_worker_priority(pid) for index, pid in self.worker_pids.items() if pid != self.pid}

    def _read_start(self) -> bool:
        text = self.log_path.read_text(errors="replace")
        if self.workers == 1:
            match = SINGLE_LISTENING.search(text)
            if match:
                self.url, self.worker_pids[0] = match["url"], self.pid
            return bool(match)
        for found in WORKER_STARTED.finditer(text):
            self.worker_pids[int(found["index"])] = int(found["pid"])
            self.media_ports[int(found["index"])] = int(found["media"])
        match = FRONT_LISTENING.search(text)
        if match:
            self.url = match["url"]
        return bool(match) and len(self.worker_pids) == self.workers

    @property
    def front_pid(self) -> int | None:
        """The supervisor (the front runs in it); None with one process."""
        return None if self.workers == 1 else self.pid


def _raise_worker_priority(pid: int) -> bool:
    """Give a worker process the bench's priority, as the server process has.

    The supervisor used to start each worker in a session of its own
    (``start_new_session``), and the kernel's autogroup scheduler shares the
    CPU between sessions before it applies nice: a worker inherited nice -20
    but sat in a new autogroup at nice 0, level with every other session on
    the machine (see :func:`tests.kit.system.set_priority`). Measured before
    this (6 December 2026, 06:37 UTC, other sessions at ~150 % of a core):
    2 workers failed at 50 calls with stalls of 0.45-0.69 s while one worker
    (in the bench's own autogroup at -20) passed 100-150. Workers now stay in
    the supervisor's session (``process_group=0``), so this only confirms it
    (and still helps against an older server).

    Returns:
        Whether the worker's autogroup and the worker got :data:`BENCH_NICE` (needs root).
    """
    try:
        with open(f"/proc/{pid}/autogroup", "w") as autogroup:
            autogroup.write(str(BENCH_NICE))
        os.setpriority(os.PRIO_PROCESS, pid, BENCH_NICE)
    except OSError:
        return False
    return True


# SCHED_FIFO priorities for --realtime: above every fair-share task, low among
# real-time ones; the generator one above the workers, so that its ticks go out
# on schedule, as independent callers' packets would (under SCHED_FIFO a worker
# busy with a batch does not yield to an equal priority: at 1,300 calls on two
# workers the generator then lagged its schedule by 53-121 ms).
REALTIME_PRIORITY = 10
GENERATOR_REALTIME_PRIORITY = 11


def realtime_scheduling(worker_pids: set[int]) -> None:
    """Put the workers' and this process's (the generator's) main threads under
    ``SCHED_FIFO``, the generator one step above the workers.

    Why: other sessions on this shared machine run CPU hogs (``stress-ng``) and
    browser tests. At nice -20 the bench's processes get most of the CPU, but
    not at once: a worker woken by a datagram may wait for a hog's slice to
    end, and three busy processes of ours (two workers and the generator) meet
    that more often than two do. A real-time thread preempts every fair-share
    one as it wakes, so both worker counts are measured with the other
    sessions' work out of the way (the kernel's real-time throttling,
    ``sched_rt_runtime_us``, still leaves them 5 % of each core). Only the main
    threads (the relays' Trio loops, the generator's window) are moved; the
    same for one worker and for two.

    Raises:
        HarnessError: the scheduler refused (not root).
    """
    try:
        for pid in sorted(worker_pids):
            os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(GENERATOR_REALTIME_PRIORITY))
    except OSError as error:
        raise HarnessError(f"SCHED_FIFO refused ({error}): --realtime needs root") from error


def _fair_scheduling(pid: int) -> None:
    os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))


class _Relay:
    """What :func:`join_browsers` needs to know of a relay: the signaling URL and one worker's media address."""

    def __init__(self, http_url: str, media_addr: tuple[str, int]) -> None:
        self.http_url = http_url
        self.media_addr = media_addr


def worker_calls(url: str, data_dir: Path, count: int) -> tuple[list[tuple[Bot, object]], dict[int, int]]:
    """``count`` rooms created through the front, each with a latched UDP bot and a
    connected simulated browser, both on the media port the bot's join response names.

    Returns:
        ``(calls, calls per media port)``.
    """
    api = Api(url, data_dir)
    try:
        bots, rooms = [], []
        for index in range(count):
            agent = f"bench-bot{index}"
            room_id, invite = api.create_room(agent, max_humans=1)
            joined = api.join(agent, room_id)
            bot = Bot(agent=agent, joined=joined, sock=connected_socket((joined["media"]["host"], int(joined["media"]["port"]))))
            bots.append(bot)
            rooms.append((room_id, invite))
    finally:
        api.close()
    latch_bots(bots)
    certificate = DtlsCertificate.generate()
    browsers: list[object] = [None] * count
    per_port: dict[int, int] = {}
    for addr in sorted({bot.relay_addr for bot in bots}):
        indexes = [i for i, bot in enumerate(bots) if bot.relay_addr == addr]
        per_port[addr[1]] = len(indexes)
        joined = join_browsers(_Relay(url, addr), [rooms[i] for i in indexes], certificate)  # type: ignore[arg-type]
        for i, browser in zip(indexes, joined):
            browsers[i] = browser
    return list(zip(bots, browsers)), per_port


def call_flows(calls: list[tuple[Bot, object]]) -> list[Flow]:
    """Both directions of every call (``bench.relay_latency``'s calls mode), aimed at the call's own worker."""
    flows = [
        Flow(send_sock=bot.sock, dest=bot.relay_addr, recv_sock=browser.sock, ssrc=bot.ssrc,
             recv_ssrc=browser.out_ssrc, unprotect=browser.srtp.unprotect_untrusted)
        for bot, browser in calls
    ]
    flows += [
        Flow(send_sock=browser.sock, dest=bot.relay_addr, recv_sock=bot.sock, ssrc=browser.send_ssrc,
             recv_ssrc=browser.session_ssrc, protect=browser.srtp.protect)
        for bot, browser in calls
    ]
    return flows


@dataclass
class WorkersRun:
    """One measured run: the load result and where the CPU went (shares of one core)."""

    cell: Cell
    calls_per_worker: dict[int, int]
    worker_cpu_percent: dict[int, float]
    front_cpu_percent: float
    generator_cpu_percent: float
    other_cpu_percent: float
    load_average: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def relay(self) -> LoadResult:
        return self.cell.relay


def _cpu(pid: int | None) -> float:
    return math.nan if pid is None else read_proc_stat(pid).cpu_s


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def measure_calls(
    workers: int, calls: int, *, duration: float, warmup: float, repeat: int, quiet_wait: float = 60.0, log=print,
    pin: bool = False, generator: str = DEFAULT_GENERATOR, realtime: bool = False,
) -> list[WorkersRun]:
    """``repeat`` runs of ``calls`` bot <-> browser calls on a fresh ``botcall serve --workers N``.

    Args:
        pin: worker i on core i (modulo the cores), the generator on the other
            core with one worker (as ``bench.capacity``), unpinned with several.
        realtime: the workers' and the generator's main threads under ``SCHED_FIFO``
            (:data:`REALTIME_PRIORITY`) while the calls run (see :func:`realtime_scheduling`).

    Raises:
        HarnessError: the server did not start, or calls landed on a media port no worker announced.
    """
    run_gen = GENERATORS[generator]
    with tempfile.TemporaryDirectory(prefix="botcall-bench-workers-") as tmp:
        serve = ServeProcess(Path(tmp), workers)
        try:
            cores = os.cpu_count() or 1
            if pin:
                for index, pid in serve.worker_pids.items():
                    os.sched_setaffinity(pid, {index % cores})
                os.sched_setaffinity(0, {GENERATOR_CORE % cores} if workers == 1 else set(range(cores)))
            if realtime:
                realtime_scheduling(set(serve.worker_pids.values()))
            started = time.monotonic()
            pairs, per_port = worker_calls(serve.url, Path(tmp), calls)
            if workers == 1:
                index_of = {port: 0 for port in per_port}
            else:
                index_of = {port: index for index, port in serve.media_ports.items()}
                if not set(per_port) <= set(index_of):
                    raise HarnessError(f"calls on media ports {sorted(per_port)}, workers announced {serve.media_ports}")
            per_worker = {index: 0 for index in serve.worker_pids}
            for port, count in per_port.items():
                per_worker[index_of[port]] += count
            log(f"# {workers} worker(s) x {calls} calls: set up in {time.monotonic() - started:.1f} s, per worker {per_worker}")
            flows = call_flows(pairs)
            kwargs = dict(rate_per_flow=50.0, duration=duration, warmup=warmup, packet_size=172)
            direct_flows = DirectFlows(flows)
            try:
                wait_for_quiet(max_wait=quiet_wait)
                direct = run_gen(direct_flows.flows, **kwargs)
            finally:
                direct_flows.close()
            per_flow = packets_per_flow(50.0, duration, warmup)
            runs = []
            for run in range(repeat):
                wait_for_quiet(max_wait=quiet_wait)
                latch_bots([bot for bot, _ in pairs])
                refresh_browsers([browser for _, browser in pairs])
                drain({flow.recv_sock for flow in flows})
                pids = dict(serve.worker_pids)
                before = {index: _cpu(pid) for index, pid in pids.items()}
                front_before, own_before, machine_before = _cpu(serve.front_pid), _own_cpu(), machine_busy_seconds()
                wall = time.monotonic()
                result = run_gen(flows, seq_base=run * per_flow, cpu_pid=tuple(pids.values()), **kwargs)
                wall = time.monotonic() - wall
                after = {index: _cpu(pid) for index, pid in pids.items()}
                front_used = _cpu(serve.front_pid) - front_before
                own_used, machine_used = _own_cpu() - own_before, machine_busy_seconds() - machine_before
                worker_used = {index: after[index] - before[index] for index in pids}
                known = own_used + sum(worker_used.values()) + (0.0 if math.isnan(front_used) else front_used)
                runs.append(WorkersRun(
                    cell=Cell(mode="calls", legs=calls, relay=result, direct=direct),
                    calls_per_worker=per_worker,
                    worker_cpu_percent={index: used / wall * 100 for index, used in worker_used.items()},
                    front_cpu_percent=front_used / wall * 100,
                    generator_cpu_percent=result.generator_cpu_percent,
                    other_cpu_percent=max(0.0, machine_used - known) / wall * 100,
                    load_average=os.getloadavg()[0],
                    extra={"generator_run_cpu_percent": own_used / wall * 100,
                           "workers_window_percent": result.relay_cpu_percent,
                           "generator_before_s": getattr(result, "prepare_cpu_s", math.nan),
                           "generator_after_s": getattr(result, "verify_cpu_s", math.nan)},
                ))
            for bot, browser in pairs:
                bot.sock.close()
                browser.sock.close()
            return runs
        finally:
            if realtime:
                _fair_scheduling(0)
            serve.stop()


HEADER = (
    f"{'workers':>7}{'calls':>6} {'per worker':<12}{'loss%':>7}{'+p50':>7}{'+p99':>7}{'d.p99':>7}"
    f"  {'worker CPU %':<14}{'w.win%':>7}{'front%':>7}{'gen%':>6}{'g.run%':>7}{'other%':>7}{'load1':>6}{'lag ms':>7}"
)


def format_run(workers: int, run: WorkersRun) -> str:
    """One row under :data:`HEADER`."""
    per_worker = "/".join(str(run.calls_per_worker[i]) for i in sorted(run.calls_per_worker))
    cpu = "/".join(f"{run.worker_cpu_percent[i]:.0f}" for i in sorted(run.worker_cpu_percent))
    front = "-" if math.isnan(run.front_cpu_percent) else f"{run.front_cpu_percent:.1f}"
    return (
        f"{workers:>7}{run.cell.legs:>6} {per_worker:<12}{run.relay.loss * 100:>7.3f}{run.cell.added_p50_ms:>7.2f}"
        f"{run.cell.added_p99_ms:>7.2f}{run.cell.direct.latency_p99_ms:>7.2f}  {cpu:<14}{run.extra.get('workers_window_percent', math.nan):>7.1f}{front:>7}"
        f"{run.generator_cpu_percent:>6.1f}{run.extra.get('generator_run_cpu_percent', math.nan):>7.1f}{run.other_cpu_percent:>7.1f}{run.load_average:>6.1f}{run.relay.max_send_lag_ms:>7.1f}"
    )
