"""``python -m bench.scale_out --capacity`` at a tiny size: the real ``botcall serve
--workers 2`` (supervisor, front, two worker processes), calls set up through the
front and aimed at each room's own worker. Checks the report's shape and that
both workers carried calls; never speed."""

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
