"""What tests and benchmarks read from, and ask of, the machine: /proc, priorities, readiness.

* :func:`read_proc_stat`: a process's CPU time and resident memory from ``/proc/<pid>/stat``.
* :func:`set_priority`: a session autogroup's niceness and the process's own.
* :func:`wait_readable`: ``poll`` for one descriptor (a socket or a pipe).
* :func:`wait_for_unix_socket`: a child process's Unix socket accepting connections, on events (inotify, pidfd).
* :class:`HarnessError`: a process under test could not be started or driven.

Shared by the live attack tests (``tests/kit/attack``) and the bench harness
(``bench/harness``). It may block and it reads the wall clock.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

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


# inotify(7): the constants of <sys/inotify.h>; Python has no binding of its own.
_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000
_IN_CREATE = 0x100
_IN_MOVED_TO = 0x80
# Between a server's bind() (the file appears) and its listen(), a connect() is
# refused and no event says when that ends: only then we retry, from 1 ms doubling to 50 ms.
_LISTEN_RETRY_FIRST_S = 0.001
_LISTEN_RETRY_MAX_S = 0.05


def wait_for_unix_socket(path: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Return once ``process`` accepts connections on the Unix socket ``path``.

    Waits on events, not on the clock: inotify on ``path``'s directory for the
    file, a pidfd for the process's exit. Only the moment between the socket's
    ``bind`` and ``listen`` is retried with a short backoff.

    Raises:
        HarnessError: the process exited first, or ``timeout`` seconds passed.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    inotify = libc.inotify_init1(_IN_CLOEXEC | _IN_NONBLOCK)
    if inotify < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    exited = os.pidfd_open(process.pid)
    try:
        if libc.inotify_add_watch(inotify, bytes(path.parent), _IN_CREATE | _IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path.parent}")
        poller = select.poll()
        poller.register(inotify, select.POLLIN)
        poller.register(exited, select.POLLIN)
        deadline = time.monotonic() + timeout
        retry = _LISTEN_RETRY_FIRST_S
        while True:
            # Checked after the watch is in place: a file made before it is seen here, one made after wakes the poll.
            if path.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    try:
                        probe.connect(str(path))
                        return
                    except OSError as exc:
                        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                            raise
            if process.poll() is not None:
                raise HarnessError(f"{process.args[0]} exited with {process.returncode} before it listened on {path}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise HarnessError(f"{process.args[0]} did not listen on {path} within {timeout:g} s")
            if path.exists():  # bound, not listening yet
                time.sleep(min(retry, left))
                retry = min(2 * retry, _LISTEN_RETRY_MAX_S)
                continue
            poller.poll(left * 1000)
            with contextlib.suppress(BlockingIOError):  # drained: the events only wake us
                while os.read(inotify, 4096):
                    pass
    finally:
        os.close(exited)
        os.close(inotify)

