"""The benchmarks' process management: pinned subprocesses, reserved relay ports, the harness life cycle.

Real processes and real sockets: a child's affinity, niceness and autogroup
are read back from /proc, a stopped child's whole process group is gone, and
port reservations are checked against real ``flock`` locks (held by this
process and by another one) and real bound sockets. Every wait is for an
event, bounded.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from bench.harness.process import Harness, PinnedProcess, PORT_BLOCK, PORT_LOCK_DIR, port_pool, reserve_ports
from tests.kit.system import HarnessError, read_proc_stat, wait_readable

WAIT = 10.0
BOTCALL_DEFAULT_MEDIA_PORT = 40000

# A child that reports its niceness, starts a grandchild in its own process
# group (the session's), prints the grandchild's pid, then waits for stdin.
REPORTER = textwrap.dedent(
    """
    import os, subprocess, sys
    grandchild = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    print(os.getpriority(os.PRIO_PROCESS, 0), grandchild.pid, flush=True)
    sys.stdin.read()
    """
)


def test_pinned_process_is_pinned_reniced_and_killed_with_its_group(tmp_path):
    with PinnedProcess("reporter", [sys.executable, "-c", REPORTER], core=0, log_dir=tmp_path, pipes=True, nice=7) as child:
        nice, grandchild = (int(value) for value in child.read_line(WAIT).split())
        grandchild_exit = os.pidfd_open(grandchild)  # readable once it has exited
        assert nice == 7
        with open(f"/proc/{child.pid}/autogroup") as autogroup:
            assert autogroup.read().split()[-1] == "7"  # its own session's autogroup
        with open(f"/proc/{child.pid}/status") as status:
            allowed = [line.split()[1] for line in status if line.startswith("Cpus_allowed_list")]
        assert allowed == ["0"]
        assert os.getsid(child.pid) == child.pid != os.getsid(0)
        assert child.stat().rss_bytes > 0 and child.alive()
    try:
        assert not child.alive()
        assert wait_readable(grandchild_exit, WAIT)  # the whole group went, not just the child
    finally:
        os.close(grandchild_exit)


def test_pinned_process_without_nice_inherits_this_processes(tmp_path):
    with PinnedProcess("reporter", [sys.executable, "-c", REPORTER], core=None, log_dir=tmp_path, pipes=True) as child:
        nice = int(child.read_line(WAIT).split()[0])
    assert nice == os.getpriority(os.PRIO_PROCESS, 0)


def test_read_line_says_when_the_process_exited(tmp_path):
    with PinnedProcess("quiet", [sys.executable, "-c", "import sys; print('bye', file=sys.stderr)"], core=None, log_dir=tmp_path, pipes=True) as child:
        with pytest.raises(HarnessError, match="exited[^$]*bye"):
            child.read_line(WAIT)


def test_missing_executable_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError, match="cannot run"):
        PinnedProcess("nothing", ["/nonexistent/relay"], core=None, log_dir=tmp_path).start()


def test_proc_stat_rss_is_vmrss():
    ballast = bytearray(64 * 2**20)  # 64 MiB touched: RSS far above any drift between two reads
    ballast[:: 4096] = b"\1" * len(ballast[:: 4096])
    with open("/proc/self/status") as status:
        vmrss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    assert abs(read_proc_stat(os.getpid()).rss_bytes - vmrss) < 4 * 2**20
    del ballast


# --- ports -------------------------------------------------------------------------------


def _ephemeral_floor() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        return int(ports.read().split()[0])


def test_reservation_lies_below_the_ephemeral_range_and_botcalls_port():
    with reserve_ports(5001) as reservation:
        ports = reservation.ports
        assert len(ports) >= 5001 and len(ports) % PORT_BLOCK == 0
        assert ports.stop <= _ephemeral_floor() and BOTCALL_DEFAULT_MEDIA_PORT not in ports
        first, last = reservation.relay_range
        assert first == ports[0] and first % 2 == 0 and last % 2 == 1
        assert reservation.control_port == ports[-1] > last


def test_concurrent_reservations_are_disjoint_and_released():
    with reserve_ports(3 * PORT_BLOCK) as one, reserve_ports(PORT_BLOCK) as two:
        assert not set(one.ports) & set(two.ports)
        lock = os.open(PORT_LOCK_DIR / f"{two.ports[0]}.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            two.close()
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on close
        finally:
            os.close(lock)


def test_another_runs_lock_is_respected():
    # Another process (another bench run) holds the lowest free block.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from bench.harness.process import reserve_ports; "
         "r = reserve_ports(2); print(r.ports[0], flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        theirs = int(holder.stdout.readline())
        with reserve_ports(2) as mine:
            assert theirs not in mine.ports
    finally:
        holder.stdin.close()
        holder.wait(WAIT)


def test_a_block_with_a_bound_port_is_skipped():
    with reserve_ports(2) as probe:
        lowest = probe.ports
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with squatter:
        squatter.bind(("127.0.0.1", lowest[PORT_BLOCK // 2]))
        with reserve_ports(2) as reservation:
            assert lowest[PORT_BLOCK // 2] not in reservation.ports


def test_more_ports_than_the_pool_holds_is_refused():
    with pytest.raises(HarnessError, match="pool"):
        reserve_ports(len(port_pool()) + 1)


# --- the harness life cycle ----------------------------------------------------------------


class FailingHarness(Harness):
    """Reserves ports and a socket, then finds no relay to start."""

    name = "failing"

    def launch(self) -> None:
        self.reserve_ports(2)
        self.sock = self.socket()
        raise HarnessError("no relay here")


def test_a_harness_that_fails_to_start_releases_everything():
    harness = FailingHarness(core=None)
    with pytest.raises(HarnessError, match="no relay here"):
        with harness:
            pytest.fail("a harness that failed to start is never entered")
    assert harness.sock.fileno() == -1  # closed
    assert not harness.workdir.exists()  # its temporary directory is gone
    lock = os.open(PORT_LOCK_DIR / f"{harness.ports.ports[0]}.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the ports are free for the next run
    finally:
        os.close(lock)
