"""Process management shared by every benchmark: relays in pinned subprocesses.

The second layer of the bench harness (machine <- process <- loadgen <- server):
it imports :mod:`bench.harness.machine` and :mod:`tests.kit.system`, never a
layer above.

* :class:`PinnedProcess` starts a command in a session of its own, pinned to
  one core (``taskset``), optionally at a raised priority
  (:func:`~tests.kit.system.set_priority`), logs its output to a file, reads
  its CPU time and memory from ``/proc/<pid>/stat``
  (:func:`~tests.kit.system.read_proc_stat`) and kills its whole process group
  when stopped, even on error. BotCall's bench server
  (``bench.harness.server.RelayProcess``), coturn, rtpengine and aiortc all run in one.
* :class:`Harness` is the life cycle every relay harness shares: a work
  directory, the relay's process, the UDP sockets handed to the load
  generator, all released by :meth:`Harness.close`; and the loop that sets up
  numbered flows.
* :func:`reserve_ports` hands a relay a block of UDP ports (its control port
  and its relay range) that no concurrent bench run holds and nothing had bound.
* :func:`ensure_debian_packages` installs the peers from Debian when missing.

Bench code, not on BotCall's path: it may block and it reads the wall clock.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path

from bench.harness.machine import open_socket
from tests.kit.system import HarnessError, ProcStat, read_proc_stat, set_priority, wait_readable

STOP_TIMEOUT = 5.0
APT_TIMEOUT = 900.0
LOG_TAIL_BYTES = 4000
# Relay port blocks sit below the kernel's ephemeral range, where every socket
# bound to port 0 (each client socket of a run, each bind-probed port) lands,
# and far below BotCall's default media port 40000, which concurrent test runs
# bind. Blocks are locked per bench run, so two runs never share one.
PORT_POOL_FLOOR = 10_240
PORT_POOL_CEILING = 32_768
PORT_BLOCK = 1024
PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "botcall-bench-ports"
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
HOST = "127.0.0.1"


class PinnedProcess:
    """One subprocess in a session of its own, pinned to a core, killed by :meth:`stop`.

    Use as a context manager so it is killed whatever happens::

        with PinnedProcess("coturn", ["turnserver", "-c", conf], core=0, log_dir=tmp) as relay:
            before = relay.stat().cpu_s

    Args:
        name: a short name for messages and the log file.
        argv: the command (without ``taskset``).
        core: the CPU to pin it to, or None to leave it unpinned (also when the
            machine has no such core or no ``taskset``).
        log_dir: where ``<name>.log`` (stdout and stderr) is written.
        env: extra environment variables.
        cwd: working directory.
        pipes: give the process a stdin and stdout pipe (commands and replies);
            stderr still goes to the log.
        nice: the niceness the process starts with, its session's autogroup
            included (:func:`set_priority`); None inherits this process's.
        stop_timeout: seconds :meth:`stop` waits after SIGTERM, then after SIGKILL.
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
        nice: int | None = None,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.name = name
        self.pipes = pipes
        self.argv = list(argv)
        self.core = core
        self.log_path = Path(log_dir) / f"{name}.log"
        self.env = dict(env or {})
        self.cwd = cwd
        self.nice = nice
        self.stop_timeout = stop_timeout
        self.popen: subprocess.Popen | None = None

    def __enter__(self) -> "PinnedProcess":
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
        if self.core is not None and self.core < (os.cpu_count() or 1) and shutil.which("taskset"):
            # taskset execs the command: the pid we get is the relay's own.
            argv = ["taskset", "-c", str(self.core), *argv]
        env = {**os.environ, **self.env}
        # Runs in the child after start_new_session's setsid: the session is its own.
        preexec = None if self.nice is None else partial(set_priority, self.nice)
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
                    preexec_fn=preexec,
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

    def read_line(self, timeout: float) -> bytes:
        """One line of the process's stdout (``pipes=True``).

        Raises:
            HarnessError: no line within ``timeout`` seconds, or the process closed its stdout.
        """
        stdout = self.popen.stdout if self.popen is not None else None
        if stdout is None:
            raise HarnessError(f"{self.name} has no output pipe")
        if not wait_readable(stdout, timeout):
            raise HarnessError(f"{self.name} said nothing for {timeout} s{self.log_tail()}")
        line = stdout.readline()
        if not line:
            # End of file: the process closed its stdout, which it does as it
            # exits. Wait for the exit itself (a busy machine may take a while to
            # reap it) instead of racing poll() against it.
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                raise HarnessError(f"{self.name} closed its output but is still running{self.log_tail()}") from None
            raise HarnessError(f"{self.name} exited{self.log_tail()}")
        return line

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after ``stop_timeout``; idempotent."""
        popen = self.popen
        if popen is None:
            return
        for stream in (popen.stdin, popen.stdout):
            if stream is not None:
                stream.close()
        if popen.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                popen.wait(self.stop_timeout)
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
        line = self.read_line(timeout)
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise HarnessError(f"{self.name}: bad reply {line[:200]!r}{self.log_tail()}") from exc
        if not isinstance(reply, dict):
            raise HarnessError(f"{self.name}: reply is not an object: {line[:200]!r}")
        if "error" in reply:
            raise HarnessError(f"{self.name}: {reply['error']}{self.log_tail()}")
        return reply


# --- ports ----------------------------------------------------------------------------------


class PortReservation:
    """Consecutive UDP ports on 127.0.0.1, locked against other bench runs until :meth:`close`.

    Attributes:
        ports: the reserved ports (whole blocks of ``PORT_BLOCK``, the first one even).
    """

    def __init__(self, ports: range, lock_fds: list[int]) -> None:
        self.ports = ports
        self._lock_fds = lock_fds

    @property
    def control_port(self) -> int:
        """The block's last port: for the relay's own listening or control socket."""
        return self.ports[-1]

    @property
    def relay_range(self) -> tuple[int, int]:
        """``(first, last)``, both included, for relayed media: from the first port
        (even) up to the last pair before the control port's, so that it ends
        odd, as RTP/RTCP pairs want (RFC 3550 §11)."""
        return self.ports[0], self.ports[-3]

    def close(self) -> None:
        """Release the locks (idempotent); the relay using the ports must have stopped."""
        for fd in self._lock_fds:
            os.close(fd)
        self._lock_fds = []

    def __enter__(self) -> "PortReservation":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def port_pool() -> range:
    """The ports blocks are taken from: from ``PORT_POOL_FLOOR`` to below the ephemeral range and 32768."""
    ceiling = PORT_POOL_CEILING
    try:
        ceiling = min(ceiling, int(EPHEMERAL_RANGE.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        ceiling = PORT_POOL_CEILING  # no /proc: the kernel default's floor
    return range(PORT_POOL_FLOOR, max(PORT_POOL_FLOOR, ceiling))


def reserve_ports(count: int) -> PortReservation:
    """Reserve at least ``count`` consecutive UDP ports for one relay.

    Whole blocks of the pool (:func:`port_pool`) are taken, the lowest that
    fit: each block is locked with ``flock`` on a file in ``PORT_LOCK_DIR``
    (held until the reservation closes, released by the kernel if this process
    dies), and every port in them is bind-probed, so neither another bench run
    nor any process that bound one of the ports by number is handed it.

    Args:
        count: ports needed (at least 2: a control port and a relay port).

    Returns:
        The reservation; close it once the relay has stopped.

    Raises:
        HarnessError: no free run of blocks that large.
    """
    blocks = max(1, math.ceil(max(2, count) / PORT_BLOCK))
    pool = port_pool()
    slots = len(pool) // PORT_BLOCK
    if blocks > slots:
        raise HarnessError(f"{count} ports asked for; the pool {pool.start}-{pool.stop - 1} holds {slots * PORT_BLOCK}")
    PORT_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for first_slot in range(slots - blocks + 1):
        start = pool.start + first_slot * PORT_BLOCK
        locks = _lock_blocks(start, blocks)
        if locks is None:
            continue
        ports = range(start, start + blocks * PORT_BLOCK)
        if all(_udp_port_free(port) for port in ports):
            return PortReservation(ports, locks)
        for fd in locks:
            os.close(fd)
    raise HarnessError(f"no {blocks} free blocks of {PORT_BLOCK} UDP ports in {pool.start}-{pool.stop - 1}")


def _lock_blocks(start: int, blocks: int) -> list[int] | None:
    """Lock ``blocks`` blocks from port ``start``; None (nothing held) if another run has one."""
    held: list[int] = []
    for index in range(blocks):
        fd = os.open(PORT_LOCK_DIR / f"{start + index * PORT_BLOCK}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            for other in held:
                os.close(other)
            return None
        held.append(fd)
    return held


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def udp_port_answers(port: int, request: bytes, *, host: str = HOST, timeout: float = 0.2) -> bool:
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
    """A port the kernel calls free on 127.0.0.1 right now (UDP by default), from the ephemeral range."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --- the harnesses' life cycle -------------------------------------------------------------


class Harness(ABC):
    """What every relay harness shares: a work directory, the relay's process,
    the sockets it hands out; :meth:`close` releases them all.

    Use as a context manager; a harness that fails to start is closed before
    the error propagates. Subclasses implement :meth:`launch` (start the relay,
    set ``process``, register clean-ups on ``_stack``) and, for plain
    forwarding, :meth:`create_flow`.

    Args:
        core: CPU to pin the relay to (None: unpinned).
        workdir: for configuration, data and logs (default: a new temporary directory).
        max_flows: the most flows :meth:`create_flows` sets up over the
            harness's life (what its reserved ports were sized for), or None.
    """

    name = "relay"
    first_ssrc = 0

    def __init__(self, *, core: int | None = 0, workdir: Path | None = None, max_flows: int | None = None) -> None:
        self._stack = ExitStack()
        self._workdir_arg = workdir
        self.core = core
        self.max_flows = max_flows
        self.workdir: Path | None = None
        self.process: PinnedProcess | None = None
        self.ports: PortReservation | None = None
        self._sockets: list[socket.socket] = []
        self.flows_created = 0

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def pid(self) -> int:
        """The relay process's id (its CPU time is the measurement)."""
        if self.process is None:
            raise HarnessError(f"{self.name} was not started")
        return self.process.pid

    def start(self) -> None:
        """Make the work directory, then :meth:`launch` the relay.

        Raises:
            HarnessError: the relay is missing, exits, or never becomes ready.
        """
        if self._workdir_arg is None:
            self.workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{self.name}-")))
        else:
            self.workdir = self._workdir_arg
        self.launch()

    @abstractmethod
    def launch(self) -> None:
        """Start the relay in ``self.workdir``; return once it serves."""

    def reserve_ports(self, count: int) -> PortReservation:
        """Reserve ``count`` ports (:func:`reserve_ports`) until the harness closes, after its relay stops.

        Call it before starting the process: clean-ups run in reverse order.
        """
        self.ports = self._stack.enter_context(reserve_ports(count))
        return self.ports

    def socket(self) -> socket.socket:
        """A bound, non-blocking UDP socket with large buffers, closed with the harness."""
        sock = open_socket(HOST)
        self._sockets.append(sock)
        return sock

    def keep_alive(self, *, force: bool = False) -> int:
        """Refresh whatever the relay would otherwise expire; none by default.

        Args:
            force: refresh even if not due.

        Returns:
            How many flows were refreshed (0: nothing to refresh).
        """
        return 0

    def create_flows(self, count: int, *, packet_size: int = 172) -> list:
        """``count`` flows, set up one at a time, numbered on from the last call's.

        Args:
            count: number of flows.
            packet_size: the RTP packet size the load generator will send.

        Returns:
            ``bench.harness.loadgen.Flow`` objects; flow ``i`` (over the harness's life) sends with SSRC ``first_ssrc + i``.

        Raises:
            HarnessError: the relay refused or did not answer, or more than
                ``max_flows`` flows were asked for.
        """
        if self.max_flows is not None and self.flows_created + count > self.max_flows:
            raise HarnessError(f"{self.name}'s ports were sized for {self.max_flows} flows; {self.flows_created + count} asked for")
        flows = []
        for _ in range(count):
            flows.append(self.create_flow((self.first_ssrc + self.flows_created) & 0xFFFFFFFF, packet_size))
            self.flows_created += 1
        return flows

    def create_flow(self, ssrc: int, packet_size: int):
        """One flow through the relay (plain-forwarding harnesses implement it).

        Raises:
            HarnessError: this harness carries no plain flows (aiortc's fan-out).
        """
        raise HarnessError(f"{self.name} sets up no plain flows")

    def close(self) -> None:
        """Close every socket handed out and stop the relay (idempotent)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._stack.close()


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
