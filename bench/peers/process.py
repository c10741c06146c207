"""Subprocess control shared by the relay harnesses.

* :class:`RelayProcess` starts a relay pinned to one core (``taskset``), logs
  its output to a file, reads its CPU time from ``/proc/<pid>/stat`` and kills
  it (its whole process group) when stopped, even on error;
* :func:`ensure_debian_packages` installs the peers from Debian when missing;
* :func:`pin_current_process` moves the load generator to the other core.

Bench code, not on BotCall's path: it may block and it reads the wall clock.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Fields 14 and 15 of /proc/<pid>/stat (proc(5)), counted after the ")" that
# closes the command name (which may itself hold spaces and parentheses).
_UTIME_AFTER_COMM = 11
_STIME_AFTER_COMM = 12
_RSS_AFTER_COMM = 21
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
STOP_TIMEOUT = 5.0
APT_TIMEOUT = 900.0
LOG_TAIL_BYTES = 4000


class HarnessError(RuntimeError):
    """A relay under test could not be installed, started or driven.

    Bench-only: the message says what failed and, when a process is involved,
    ends with the tail of its log.
    """


@dataclass(frozen=True, slots=True)
class ProcStat:
    """CPU time and resident memory of one process, read once.

    Attributes:
        cpu_s: user + system CPU seconds of all its threads so far.
        rss_bytes: resident set size.
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
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise HarnessError(f"process {pid} is gone: {exc}") from exc
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[_UTIME_AFTER_COMM]) + int(fields[_STIME_AFTER_COMM])
    return ProcStat(cpu_s=ticks / CLOCK_TICKS, rss_bytes=int(fields[_RSS_AFTER_COMM]) * PAGE_SIZE)


def pin_current_process(core: int) -> None:
    """Run the calling process (the load generator) on ``core`` only."""
    os.sched_setaffinity(0, {core})


def cores() -> tuple[int, int]:
    """(relay core, load-generator core): 0 and 1, or 0 and 0 on a one-core machine."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) >= 2:
        return available[0], available[1]
    return available[0], available[0]


class RelayProcess:
    """One relay subprocess, pinned to a core, killed by :meth:`stop`.

    Use as a context manager so it is killed whatever happens::

        with RelayProcess("coturn", ["turnserver", "-c", conf], core=0, log_dir=tmp) as relay:
            before = relay.stat().cpu_s

    Args:
        name: a short name for messages and the log file.
        argv: the command (without ``taskset``).
        core: the CPU to pin it to, or None to leave it unpinned.
        log_dir: where ``<name>.log`` (stdout and stderr) is written.
        env: extra environment variables.
        cwd: working directory.
        pipes: give the process a stdin and stdout pipe (commands and replies);
            stderr still goes to the log.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        core: int | None,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pipes: bool = False,
    ) -> None:
        self.name = name
        self.pipes = pipes
        self.argv = list(argv)
        self.core = core
        self.log_path = Path(log_dir) / f"{name}.log"
        self.env = dict(env or {})
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None

    def __enter__(self) -> "RelayProcess":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise HarnessError(f"{self.name} was not started")
        return self.popen.pid

    def start(self) -> None:
        """Start the process in its own session (so :meth:`stop` can kill its group).

        Raises:
            HarnessError: the executable is missing.
        """
        argv = self.argv
        if self.core is not None:
            # taskset execs the command: the pid we get is the relay's own.
            argv = ["taskset", "-c", str(self.core), *argv]
        env = {**os.environ, **self.env}
        with open(self.log_path, "wb") as log:
            try:
                self.popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE if self.pipes else subprocess.DEVNULL,
                    stdout=subprocess.PIPE if self.pipes else log,
                    stderr=log if self.pipes else subprocess.STDOUT,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise HarnessError(f"{self.name}: cannot run {argv[0]!r}: {exc}") from exc

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stat(self) -> ProcStat:
        """CPU time and memory now.

        Raises:
            HarnessError: the process has exited.
        """
        if not self.alive():
            raise HarnessError(f"{self.name} has exited ({self.returncode()}){self.log_tail()}")
        return read_proc_stat(self.pid)

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_tail(self) -> str:
        """The end of the process's log, prefixed for appending to a message."""
        try:
            data = self.log_path.read_bytes()[-LOG_TAIL_BYTES:]
        except OSError:
            return ""
        return f"\n--- {self.log_path} (tail) ---\n" + data.decode("utf-8", "replace")

    def wait_ready(self, probe: Callable[[], bool], *, timeout: float = 15.0, interval: float = 0.05) -> None:
        """Poll ``probe`` until it returns True.

        Raises:
            HarnessError: the process exited, or ``timeout`` seconds passed.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise HarnessError(f"{self.name} exited during start-up ({self.returncode()}){self.log_tail()}")
            if probe():
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name} not ready after {timeout} s{self.log_tail()}")
            time.sleep(interval)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after a grace period; idempotent."""
        popen = self.popen
        if popen is None:
            return
        for stream in (popen.stdin, popen.stdout):
            if stream is not None:
                stream.close()
        if popen.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            try:
                os.killpg(popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def command(self, message: dict, *, timeout: float) -> dict:
        """Send one JSON line on stdin and read one JSON line back (``pipes=True``).

        Raises:
            HarnessError: no reply within ``timeout``, the process exited, or
                the reply is not a JSON object.
        """
        popen = self.popen
        if popen is None or popen.stdin is None:
            raise HarnessError(f"{self.name} has no command pipe")
        try:
            popen.stdin.write((json.dumps(message) + "\n").encode())
            popen.stdin.flush()
        except BrokenPipeError as exc:
            raise HarnessError(f"{self.name} exited ({self.returncode()}){self.log_tail()}") from exc
        ready, _, _ = select.select([popen.stdout], [], [], timeout)
        if not ready:
            raise HarnessError(f"{self.name}: no reply to {message.get('cmd')} within {timeout} s{self.log_tail()}")
        line = popen.stdout.readline()
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise HarnessError(f"{self.name}: bad reply {line[:200]!r}{self.log_tail()}") from exc
        if not isinstance(reply, dict):
            raise HarnessError(f"{self.name}: reply is not an object: {line[:200]!r}")
        if "error" in reply:
            raise HarnessError(f"{self.name}: {reply['error']}{self.log_tail()}")
        return reply


def ensure_debian_packages(binaries: Mapping[str, str], *, install: bool = True) -> dict[str, str]:
    """Install the Debian packages providing ``binaries`` that are not on PATH.

    Runs ``apt-get update`` only when a package is unknown to apt (a fresh
    machine), so a second run costs nothing.

    Args:
        binaries: executable name -> Debian package (``{"turnserver": "coturn"}``).
        install: False to only report what is missing.

    Returns:
        The executables still missing afterwards, with the reason.
    """
    missing = {binary: package for binary, package in binaries.items() if shutil.which(binary) is None}
    if not missing or not install:
        return {binary: f"{binary} not on PATH (Debian package {package})" for binary, package in missing.items()}
    if shutil.which("apt-get") is None:
        return {binary: f"no apt-get to install {package}" for binary, package in missing.items()}
    packages = sorted(set(missing.values()))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    known = subprocess.run(["apt-cache", "policy", *packages], capture_output=True, text=True, env=env)
    if "Candidate: (none)" in known.stdout or any(p not in known.stdout for p in packages):
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=APT_TIMEOUT)
    result = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        capture_output=True,
        text=True,
        env=env,
        timeout=APT_TIMEOUT,
    )
    still = {binary: package for binary, package in missing.items() if shutil.which(binary) is None}
    tail = result.stderr.strip().splitlines()[-1:] if result.returncode else []
    return {binary: f"apt-get install {package} failed{': ' + tail[0] if tail else ''}" for binary, package in still.items()}


def udp_port_answers(port: int, request: bytes, *, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Whether a UDP server at ``host:port`` answers ``request`` within ``timeout``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(request, (host, port))
            sock.recvfrom(4096)
        except OSError:
            return False
    return True


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port the kernel calls free on 127.0.0.1 right now (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
