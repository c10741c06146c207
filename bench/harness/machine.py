"""The machine under the benchmarks: cores, priorities, sockets, how busy it is.

The lowest layer of the bench harness (machine <- process <- loadgen <- server):
it imports none of the others.

* :data:`RELAY_CORE`, :data:`GENERATOR_CORE`, :func:`cores`, :func:`pin_to_core`,
  :func:`pin_current_process`: the relay on one core, the load generator on the other.
* :func:`raise_priority` and :func:`run_isolated`: a session of its own at
  :data:`BENCH_NICE`, so other work on a shared machine does not preempt a run.
* :func:`open_socket`: a bound, non-blocking UDP socket with large buffers.
* :func:`machine_busy_seconds`, :func:`wait_for_quiet`, :func:`machine_description`:
  other work on a shared two-core machine disturbs a measurement; wait for it
  to pass and say what the machine is (``python -m bench.harness.machine`` prints it).

Bench code, not on BotCall's path: it may block and it reads the wall clock.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import sys
import time
from pathlib import Path

from tests.kit.system import CLOCK_TICKS, set_priority

RELAY_CORE = 0
GENERATOR_CORE = 1
BENCH_NICE = -20
LOADGEN_SOCKET_BUFFER = 4 * 1024 * 1024


def pin_current_process(core: int) -> None:
    """Run the calling process (the load generator) on ``core`` only."""
    os.sched_setaffinity(0, {core})


def cores() -> tuple[int, int]:
    """(relay core, load-generator core): 0 and 1, or 0 and 0 on a one-core machine."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) >= 2:
        return available[0], available[1]
    return available[0], available[0]


def pin_to_core(core: int) -> bool:
    """Pin this process to one CPU core, if the machine has it.

    Returns:
        Whether the affinity was set.
    """
    if core not in os.sched_getaffinity(0) and core >= (os.cpu_count() or 1):
        return False
    os.sched_setaffinity(0, {core})
    return True


def raise_priority() -> bool:
    """Put this process in its own scheduling group at nice -20, when allowed (root).

    The process starts a session of its own (``setsid``: the kernel's autogroup
    scheduler shares CPU between sessions first, see
    :func:`~tests.kit.system.set_priority`) and gives it and itself
    :data:`BENCH_NICE`.

    Returns:
        Whether both the session and the priorities were set.
    """
    try:
        os.setsid()
    except OSError:
        return False  # a process group leader cannot; see run_isolated
    return set_priority(BENCH_NICE)


def run_isolated(main) -> int:
    """Run ``main()`` in a forked child that :func:`raise_priority` can isolate.

    A process started from a shell is usually its process group's leader and
    may not call ``setsid``; its child may. The parent waits, forwarding
    Ctrl-C (the child's new session no longer gets the terminal's signals).

    Returns:
        The child's exit status (0 when ``main`` returned normally).
    """
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        status = 0
        try:
            raise_priority()
            main()
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            status = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)
    while True:
        try:
            _, wait_status = os.waitpid(child, 0)
            return os.waitstatus_to_exitcode(wait_status)
        except KeyboardInterrupt:
            os.kill(child, signal.SIGINT)


def open_socket(host: str = "127.0.0.1", *, buffer: int = LOADGEN_SOCKET_BUFFER) -> socket.socket:
    """A bound, non-blocking UDP socket with large kernel buffers (for flows).

    Args:
        host: local address; the port is chosen by the kernel.
        buffer: SO_RCVBUF/SO_SNDBUF to ask for (capped by the sysctls unless root).

    Returns:
        The socket.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    for option, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        # SO_RCVBUFFORCE / SO_SNDBUFFORCE (33 / 32 on Linux) pass rmem_max when we may.
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, buffer)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, buffer)
    sock.setblocking(False)
    sock.bind((host, 0))
    return sock


def machine_busy_seconds() -> float:
    """CPU seconds spent busy (not idle, not waiting for I/O) on all cores since boot, from /proc/stat."""
    with open("/proc/stat", "rb") as stat:
        fields = stat.readline().split()
    # cpu user nice system idle iowait irq softirq steal ...
    values = [int(value) for value in fields[1:9]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS



def wait_for_quiet(*, max_wait: float = 60.0, threshold: float = 0.15, interval: float = 1.0) -> float:
    """Wait until the machine is nearly idle (other engineers' tests share it).

    Args:
        max_wait: give up after this many seconds.
        threshold: busy fraction of one core (all cores together) counted as quiet.
        interval: length of each sample.

    Returns:
        The last sample's busy fraction of one core (above ``threshold`` when it
        gave up); NaN without sampling when ``max_wait`` is not positive.
    """
    if max_wait <= 0:
        return float("nan")
    started = time.monotonic()
    while True:
        before = machine_busy_seconds()
        time.sleep(interval)
        busy = (machine_busy_seconds() - before) / interval
        if busy <= threshold or time.monotonic() - started >= max_wait:
            return busy


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or ``unknown``."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"  # no /proc
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine_description() -> str:
    """nproc, CPU model, kernel, Python, Trio and library versions, one line each."""
    import trio

    model = cpu_model()
    versions = []
    for name in ("pylibsrtp", "pyOpenSSL", "hypercorn", "quart-trio"):
        try:
            from importlib.metadata import version

            versions.append(f"{name} {version(name)}")
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            versions.append(f"{name} missing")
    return "\n".join(
        [
            f"nproc: {os.cpu_count()}; CPU: {model}; clock ticks/s: {CLOCK_TICKS}",
            f"kernel: {platform.release()}; {platform.platform()}",
            f"Python {platform.python_version()}; trio {trio.__version__}; " + "; ".join(versions),
        ]
    )


if __name__ == "__main__":
    print(machine_description())
