"""``python -m bench.scale_out --capacity`` at a tiny size: the real ``botcall serve
--workers 2`` (supervisor, front, two worker processes), calls set up through the
front and aimed at each room's own worker. Checks the report's shape and that
both workers carried calls; never speed."""

import argparse
import math
import os

import pytest

from bench.harness.machine import BENCH_NICE
from bench.scale_calls import HEADER, ServeProcess, format_run, measure_calls

CALLS = 6
DURATION = 0.6
WARMUP = 0.2


def test_two_workers_each_carry_calls_and_every_packet_arrives():
    runs = measure_calls(2, CALLS, duration=DURATION, warmup=WARMUP, repeat=2, quiet_wait=0, log=lambda line: None)
    assert len(runs) == 2
    for run in runs:
        # Placement by load spreads the rooms: both workers hold some, none is lost.
        assert sorted(run.calls_per_worker) == [0, 1]
        assert all(count > 0 for count in run.calls_per_worker.values())
        assert sum(run.calls_per_worker.values()) == CALLS
        relay, direct = run.cell.relay, run.cell.direct
        # Both directions of every call, each packet once: a call aimed at the
        # wrong worker's port, or a front that does not route the signaling,
        # delivers nothing.
        assert relay.sent == direct.sent == 2 * CALLS * round(50 * DURATION)
        assert relay.received == relay.sent and relay.bad == 0 and relay.duplicates == 0
        assert 0 < relay.latency_p50_ms <= relay.latency_p99_ms
        # Both workers worked (CPU read from /proc), the front (the supervisor) was sampled.
        assert all(share > 0 for share in run.worker_cpu_percent.values())
        assert not math.isnan(run.front_cpu_percent) and run.front_cpu_percent >= 0
        assert run.generator_cpu_percent > 0 and run.load_average >= 0
        # The workers' CPU over the window alone, both pids summed by the generator.
        assert 0 < run.extra["workers_window_percent"] < 200
        assert run.cell.relay.relay_cpu_percent == run.extra["workers_window_percent"]
        row = format_run(2, run)
        assert len(row.split()) == len(HEADER.split()) - 4  # "per worker", "worker CPU %", "lag ms": one column each
        assert f"{run.calls_per_worker[0]}/{run.calls_per_worker[1]}" in row


def test_one_worker_is_one_process_without_a_front():
    (run,) = measure_calls(1, 2, duration=DURATION, warmup=WARMUP, repeat=1, quiet_wait=0, log=lambda line: None)
    assert run.calls_per_worker == {0: 2}
    assert run.cell.relay.received == run.cell.relay.sent == 2 * 2 * round(50 * DURATION)
    assert math.isnan(run.front_cpu_percent) and "  -" in format_run(1, run)


def autogroup_nice(pid: int) -> int:
    # "/autogroup-<id> nice <n>" (sched(7)).
    with open(f"/proc/{pid}/autogroup") as autogroup:
        return int(autogroup.read().split()[-1])


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs root")
def test_workers_run_at_the_same_priority_as_a_single_server(tmp_path):
    # The supervisor starts each worker in a session (autogroup) of its own; left
    # at nice 0 there, the workers would compete with every other session while a
    # one-process server runs at the bench's -20, and 1 vs 2 workers would compare
    # priorities, not workers.
    serve = ServeProcess(tmp_path, 2)
    try:
        assert serve.worker_priority == {0: True, 1: True}
        for pid in serve.worker_pids.values():
            assert autogroup_nice(pid) == BENCH_NICE
            assert os.getpriority(os.PRIO_PROCESS, pid) == BENCH_NICE
    finally:
        serve.stop()


def test_rounds_alternate_worker_counts_and_the_summary_keeps_the_goal_apart(capsys):
    # Two rounds of 1 and 2 workers at one tiny probe each (start = max = 4 calls),
    # with the native generator (the default): the searches run 1, 2, 1, 2, each
    # limit carries its passing runs, and the summary gives medians, the per-round
    # ratios and the calls per worker core under a label that is not the goal's.
    from bench.scale_out import capacity

    args = argparse.Namespace(start="4", step=4, max=4, resolution=4, duration=DURATION, warmup=WARMUP, repeat=1,
                              quiet_wait=0, pin=False, generator="native", rounds=2, realtime=False)
    limits = capacity(args, [1, 2])
    assert [limit.workers for limit in limits] == [1, 2, 1, 2]
    for limit in limits:
        assert limit.calls == 4 and len(limit.runs) == 1
        assert limit.runs[0].cell.relay.received == limit.runs[0].cell.relay.sent > 0
        # Calls per worker core: 4 calls over the workers' measured CPU (in cores).
        assert 0 < limit.worker_cores < limit.workers
        assert limit.calls_per_worker_core == pytest.approx(4 / limit.worker_cores)
    out = capsys.readouterr().out
    assert "# 1 worker(s): capacity 4 [4-4] over 2 searches" in out
    assert "# per round: 4/4 = 1.00x, 4/4 = 1.00x" in out
    assert "NOT the goal, the workers' own scaling" in out


def test_the_summary_counts_a_search_with_no_pass_as_zero_and_takes_medians():
    from bench.scale_out import Limit, parse_starts, summary

    limits = [Limit(1, 500, False), Limit(2, 900, False), Limit(1, None, False), Limit(2, 700, False), Limit(1, 550, False), Limit(2, 1000, False)]
    text = summary(limits, [1, 2])
    assert "# 1 worker(s): capacity 500 [0-550] over 3 searches ([500, 0, 550])" in text
    assert "# 2 worker(s): capacity 900 [700-1000]" in text
    assert "medians: 1.80x" in text
    assert "900/500 = 1.80x, 700/0, 1000/550 = 1.82x" in text
    assert "NOT the goal" not in text  # no runs, no CPU: no per-core figure is invented
    assert parse_starts("300", [1, 2]) == {1: 300, 2: 300}
    assert parse_starts("1:300,2:600", [1, 2]) == {1: 300, 2: 600}
    with pytest.raises(ValueError):
        parse_starts("1:300", [1, 2])


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root")
def test_realtime_runs_the_workers_and_the_generator_under_sched_fifo_then_restores_the_generator():
    # --realtime: the measurement itself is unchanged (every packet arrives), the
    # workers run under SCHED_FIFO while it runs, and the bench process is back
    # to fair sharing afterwards (it goes on to build, check and start servers).
    from bench.scale_calls import GENERATOR_REALTIME_PRIORITY, REALTIME_PRIORITY, realtime_scheduling

    seen: dict[int, tuple[int, int]] = {}

    def log(line: str) -> None:
        # The set-up line is logged once the calls are up: the workers are real-time by then.
        if "set up in" in line:
            for pid in os.listdir("/proc"):
                if pid.isdigit() and pid != str(os.getpid()):
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                            if b"botcall.cluster.worker" in cmdline.read():
                                seen[int(pid)] = (os.sched_getscheduler(int(pid)), os.sched_getparam(int(pid)).sched_priority)
                    except OSError:
                        continue
            seen[0] = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)

    runs = measure_calls(2, 4, duration=DURATION, warmup=WARMUP, repeat=1, quiet_wait=0, log=log, realtime=True)
    assert runs[0].cell.relay.received == runs[0].cell.relay.sent > 0
    fifo = (os.SCHED_FIFO, REALTIME_PRIORITY)
    assert seen[0] == (os.SCHED_FIFO, GENERATOR_REALTIME_PRIORITY)
    # Both workers (botcall.cluster.worker processes) are real-time.
    assert sorted(policy for pid, policy in seen.items() if pid != 0).count(fifo) == 2
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert callable(realtime_scheduling)
