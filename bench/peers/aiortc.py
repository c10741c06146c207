"""aiortc as a benchmark peer: its MediaRelay fanning one Opus track out to K subscribers.

aiortc is never a BotCall dependency. :func:`ensure_bench_venv` creates a
separate virtualenv (``~/.cache/botcall-bench/venv``, or
``$BOTCALL_BENCH_VENV``) holding aiortc and matplotlib, and
:class:`AiortcFanout` runs :mod:`bench.peers.aiortc_peer` with that Python in
two processes: the relay pinned to the relay core, the sender and the K
subscribers pinned to the load core. The relay's CPU over a window comes from
``/proc``; the frames each subscriber decoded and the RTP packets it received
over the same window come from the clients.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from bench.harness.fanout import FanoutResult
from bench.harness.process import Harness, PinnedProcess, free_port
from tests.kit.system import HarnessError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BENCH_VENV = Path(os.environ.get("BOTCALL_BENCH_VENV", Path.home() / ".cache" / "botcall-bench" / "venv"))
BENCH_REQUIREMENTS = ("aiortc>=1.9,<2", "matplotlib>=3.7,<4")
PIP_TIMEOUT = 900.0
# Per subscriber: signaling, ICE and a DTLS handshake in Python on one core.
SETUP_S_PER_SUBSCRIBER = 2.0
SETUP_S_BASE = 30.0


def bench_python(venv: Path = BENCH_VENV) -> Path:
    return venv / "bin" / "python"


def ensure_bench_venv(venv: Path = BENCH_VENV, *, install: bool = True) -> Path:
    """The bench virtualenv's Python, with aiortc and matplotlib importable.

    Creates the virtualenv and pip-installs ``BENCH_REQUIREMENTS`` when they are
    missing; a second call costs one ``import`` check.

    Args:
        venv: where the virtualenv lives.
        install: False to only check.

    Returns:
        Path to its ``python``.

    Raises:
        HarnessError: it cannot be created or the packages do not install.
    """
    python = bench_python(venv)
    check = [str(python), "-c", "import aiortc, matplotlib"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    if not install:
        raise HarnessError(f"no bench virtualenv with aiortc and matplotlib at {venv}")
    base = getattr(sys, "_base_executable", None) or sys.executable
    if not python.exists():
        created = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
        if created.returncode:
            raise HarnessError(f"cannot create {venv}: {created.stderr.strip()[-500:]}")
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *BENCH_REQUIREMENTS], capture_output=True, text=True, timeout=PIP_TIMEOUT
    )
    if installed.returncode or subprocess.run(check, capture_output=True).returncode:
        raise HarnessError(f"pip could not install {BENCH_REQUIREMENTS} into {venv}: {installed.stderr.strip()[-500:]}")
    return python


def _tcp_accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class AiortcFanout(Harness):
    """aiortc's MediaRelay with one sender and K subscribers, ready to measure.

    Use as a context manager (both processes are killed on exit)::

        with AiortcFanout(10, relay_core=0, load_core=1) as fanout:
            result = fanout.measure(10.0)

    Args:
        subscribers: K.
        relay_core, load_core: CPUs for the relay and for the clients.
        python: the bench virtualenv's Python (default: :func:`ensure_bench_venv`).
        workdir: for the logs (default: a new temp dir).

    Attributes:
        process: the relay's process; ``clients`` is the load's.
    """

    name = "aiortc"

    def __init__(
        self,
        subscribers: int,
        *,
        relay_core: int | None = 0,
        load_core: int | None = 1,
        python: Path | None = None,
        workdir: Path | None = None,
    ) -> None:
        super().__init__(core=relay_core, workdir=workdir)
        self.subscribers = subscribers
        self.load_core = load_core
        self.python = python
        self.clients: PinnedProcess | None = None
        self.setup_s = 0.0
        self.close_problem: str | None = None

    def launch(self) -> None:
        """Start the relay and the clients; returns once every subscriber has a frame.

        Raises:
            HarnessError: a process exits, or set-up does not finish in time.
        """
        python = str(self.python or ensure_bench_venv())
        port = free_port(socket.SOCK_STREAM)
        module = ["-m", "bench.peers.aiortc_peer"]
        self.process = self._stack.enter_context(
            PinnedProcess("aiortc-relay", [python, *module, "relay", "--port", str(port)], core=self.core, log_dir=self.workdir, cwd=REPO_ROOT)
        )
        self.process.wait_ready(lambda: _tcp_accepts(port), timeout=30.0)
        self.clients = self._stack.enter_context(
            PinnedProcess(
                "aiortc-clients",
                [python, *module, "clients", "--relay-port", str(port)],
                core=self.load_core,
                log_dir=self.workdir,
                cwd=REPO_ROOT,
                pipes=True,
            )
        )
        timeout = SETUP_S_BASE + SETUP_S_PER_SUBSCRIBER * self.subscribers
        reply = self.clients.command({"cmd": "setup", "subscribers": self.subscribers}, timeout=timeout)
        self.setup_s = float(reply["setup_s"])

    def measure(self, seconds: float) -> FanoutResult:
        """Relay CPU and what the subscribers received over ``seconds``.

        Returns:
            The window's figures; ``forwarded`` counts RTP packets the
            subscribers received, ``per_subscriber_pps`` decoded frames per second.
        """
        before, load_before = self.process.stat().cpu_s, self.clients.stat().cpu_s
        reply = self.clients.command({"cmd": "measure", "seconds": seconds}, timeout=seconds + 60.0)
        after, load_after = self.process.stat().cpu_s, self.clients.stat().cpu_s
        window = float(reply["seconds"])
        frames, packets = reply["frames"], reply["packets"]
        return FanoutResult(
            relay="aiortc",
            subscribers=self.subscribers,
            window_s=window,
            relay_cpu_s=after - before,
            forwarded=sum(packets),
            per_subscriber_pps=sum(frames) / len(frames) / window,
            min_subscriber_pps=min(frames) / window,
            load_cpu_percent=(load_after - load_before) / window * 100,
        )

    def close(self) -> None:
        """Ask the clients to close, then stop both processes (idempotent)."""
        if self.clients is not None and self.clients.alive():
            try:
                self.clients.popen.stdin.write(b'{"cmd": "close"}\n')
                self.clients.popen.stdin.flush()
                self.clients.popen.wait(5.0)
            except (OSError, subprocess.TimeoutExpired) as exc:
                # Not fatal: the exit stack below kills the process group.
                self.close_problem = f"clients did not exit when asked ({exc!r}); killed"
        super().close()
