"""What tests and benchmarks read from, and ask of, the machine: /proc, priorities, readiness.

* :func:`read_proc_stat`: a process's CPU time and resident memory from ``/proc/<pid>/stat``.
* :func:`set_priority`: a session autogroup's niceness and the process's own.
* :func:`wait_readable`: ``poll`` for one descriptor (a socket or a pipe).
* :class:`HarnessError`: a process under test could not be started or driven.

Shared by the live attack tests (``tests/kit/attack``) and the bench harness
(``bench/harness``). It may block and it reads the wall clock.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Fields 14 and 15 of /proc/<pid>/stat (proc(5)), counted after the ")" that
# closes the command name (which may itself hold spaces and parentheses).
_UTIME_AFTER_COMM = 11
_STIME_AFTER_COMM = 12
_RSS_AFTER_COMM = 21
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class HarnessError(RuntimeError):
    """A relay or server under test could not be installed, started or driven.

    Test and bench code only: the message says what failed and, when a process
    is involved, ends with the tail of its log.
    """


@dataclass(frozen=True, slots=True)
class ProcStat:
    """CPU time and resident memory of one process, read once.

    Attributes:
        cpu_s: user + system CPU seconds of all its threads so far.
        rss_bytes: resident set size (the counters VmRSS of ``/proc/<pid>/status`` sums).
    """

    cpu_s: float
    rss_bytes: int


def read_proc_stat(pid: int) -> ProcStat:
    """Read ``/proc/<pid>/stat``.

    Args:
        pid: a live process id.

    Returns:
        Its CPU time (clock-tick resolution, 10 ms here) and resident memory.

    Raises:
        HarnessError: the process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError as exc:
        raise HarnessError(f"process {pid} is gone: {exc}") from exc
    fields = text[text.rindex(b")") + 2 :].split()
    ticks = int(fields[_UTIME_AFTER_COMM]) + int(fields[_STIME_AFTER_COMM])
    return ProcStat(cpu_s=ticks / CLOCK_TICKS, rss_bytes=int(fields[_RSS_AFTER_COMM]) * PAGE_SIZE)


def set_priority(nice: int) -> bool:
    """Give the calling process's session autogroup, and the process, niceness ``nice``.

    The kernel's autogroup scheduler shares CPU between sessions first and
    applies nice only inside a session, so a plain ``nice`` does not keep other
    engineers' work on a shared machine off a benchmark's core: a process that
    leads a session of its own sets that session's autogroup nice
    (``/proc/self/autogroup``, see sched(7)) and its own.

    Args:
        nice: -20 (first) to 19.

    Returns:
        Whether both were set (raising priority needs root).
    """
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(nice))
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        return False
    return True


def wait_readable(stream, timeout: float) -> bool:
    """Whether ``stream`` (a socket or file with ``fileno``) became readable within ``timeout`` seconds.

    ``poll``, not ``select``: descriptors above 1024 work (a run holds thousands of sockets).
    """
    poller = select.poll()
    poller.register(stream, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))
