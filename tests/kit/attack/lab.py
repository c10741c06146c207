"""The live-attack kit: the real ``botcall serve`` process, a concurrent call beside
the attack, and clients that talk from chosen loopback source addresses.

Shared by ``tests/attack`` (which asserts) and ``bench/attack_impact.py`` (which
measures and prints); the attacks themselves are in ``tests/kit/attack/attacks.py``::

    lab = Lab(tmp_path)
    lab.start()                                   # the server process + the concurrent call
    async with lab.window("crash bytes") as window:
        await attacks.crash_bytes(lab.target)
    window.impact.assert_harmless(rss_bound=RSS_BOUND)
    lab.close()                                   # SIGTERM, then SIGKILL: always

Who talks from where. The attacker uses 127.0.0.1, the default source address
on loopback. Legitimate clients use other loopback addresses (``SPEAKER``,
``LISTENER``, ``PROBE``, ``LEGIT``, ``LEGIT_2``), because the server's
connection budgets are per source address: an attack from 127.0.0.1 must not
be able to spend them.

The concurrent call (``tests/kit/attack/legit.py``, a child process so that the
attacker's CPU use in this process cannot delay its clock readings): two SDK
bots over UDP in a room of their own, one speaking a continuous tone in paced
20 ms frames, the other timestamping every RTP packet it receives; a probe
that asks ``/healthz`` every 0.2 s (deadline 1 s); and a sampler of the
server's resident memory. All of it goes, one JSON object per line, to a
record file this process reads (times are ``time.monotonic()``, one clock for
both processes).

Test-kit shims (they reach past public API on purpose, and only here):

* :func:`source` binds the sockets created inside it to one address: a trio
  socket factory (``trio.socket.set_custom_socket_factory``) binds TCP sockets
  before trio connects them, and its socket class (a subclass of trio's
  private ``_SocketType``) turns the SDK's wildcard UDP bind into a bind to the
  address; a wrapper around ``socket.create_connection`` does the same for the
  SDK's HTTP calls (``urllib`` in a worker thread, which inherits the context).
  Outside a ``source`` block everything behaves as usual.
* :func:`record_arrivals` wraps an SDK call's ``Call._on_media`` to timestamp
  every RTP packet it receives (the concurrent call's listener, and the
  receivers inside some attacks).

Resident memory is ``/proc/<pid>/stat``'s rss (the counters ``VmRSS`` sums),
CPU its utime + stime, both through ``tests.kit.system.read_proc_stat``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import os
import re
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
import wsproto
import wsproto.connection
import wsproto.utilities
from trio._socket import _SocketType  # the shim's one private import (see the module docstring)
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.kit.system import HarnessError, read_proc_stat, set_priority
from botcall.auth.keys import DevIssuer, ensure_dev_issuer
from tests.kit.server import HttpResponse, http_request

REPO = Path(__file__).resolve().parents[3]

# Source addresses (see the module docstring).
ATTACKER = "127.0.0.1"
SPEAKER = "127.0.0.2"
LISTENER = "127.0.0.3"
PROBE = "127.0.0.4"
LEGIT = "127.0.0.5"
LEGIT_2 = "127.0.0.6"
# A loopback address nobody else uses: the "victim" a forged source address names.
SPOOF_VICTIM = "127.0.0.9"

DEV_ISSUER = "botcall-dev"
AUDIENCE = "botcall"
ALL_SCOPES = ("call:create", "call:voice", "call:receive")
TOKEN_TTL = 900.0

MB = 1 << 20

# The issue's bounds, and the kit's patience (never a speed requirement).
MAX_AUDIO_GAP = 0.100
HEALTHZ_DEADLINE = 1.0
PROBE_INTERVAL = 0.2
RSS_SAMPLE_INTERVAL = 0.1
SETTLE = 1.0
# The server and the concurrent call run above normal priority (when allowed), each
# in a session of its own. In the field the attacker is another machine: here its
# CPU use, and other work on a shared test machine, must not be what the
# concurrent call's gap measures. The attack still costs the server whatever it
# costs the server.
SERVER_NICE = -10
CALL_NICE = -10
STARTUP_TIMEOUT = 60.0
CALL_READY_TIMEOUT = 60.0
STOP_GRACE = 10.0
RECORD_WAIT = 5.0
# A legitimate room creation or WebSocket upgrade that takes this long has failed
# (a time-out, not a speed requirement: they take milliseconds).
LEGIT_DEADLINE = 5.0
# What an attack may add to the server's resident memory. The issue's lobby flood
# cost +43 MB; an attack the server bounds costs a few MB, and the rest is
# headroom for the allocator's noise.
RSS_BOUND = 24 * MB
LOG_TAIL_CHARS = 3000

_LISTENING = re.compile(r"listening on (http://[^\s;()]+).*?media advertised at udp (\S+):(\d+)")


# --- the source-address shim ------------------------------------------------------------

_SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("attack_kit_source", default=None)
_CREATED: contextvars.ContextVar[list | None] = contextvars.ContextVar("attack_kit_created", default=None)
_FACTORY_INSTALLED: trio.lowlevel.RunVar[bool] = trio.lowlevel.RunVar("attack_kit_factory", default=False)
_stdlib_create_connection = socket.create_connection
_SOCKET_TYPE_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def _bind_source(sock: socket.socket, address: str) -> None:
    # Bind only the address; connect() picks the port, so thousands of
    # connections from one address do not each pin an ephemeral port early.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((address, 0))


class _SourceBoundSocket(_SocketType):
    """A trio socket whose wildcard ``bind`` goes to the current ``source`` address."""

    async def bind(self, address: Any) -> None:
        chosen = _SOURCE.get()
        if chosen is not None and self.family == socket.AF_INET and address[0] in ("", "0.0.0.0"):
            address = (chosen, *address[1:])
        await super().bind(address)


class _SourceSocketFactory(trio.abc.SocketFactory):
    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0) -> trio.socket.SocketType:
        sock = socket.socket(family, type, proto)
        chosen = _SOURCE.get()
        if chosen is not None and family == socket.AF_INET and (type & ~_SOCKET_TYPE_FLAGS) == socket.SOCK_STREAM:
            try:
                _bind_source(sock, chosen)
            except OSError:
                sock.close()
                raise
        created = _SourceBoundSocket(sock)
        record = _CREATED.get()
        if record is not None:
            record.append(created)
        return created


def _create_connection(address: Any, timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT, source_address: Any = None, **kwargs: Any) -> socket.socket:  # type: ignore[attr-defined]
    if source_address is None and _SOURCE.get() is not None:
        source_address = (_SOURCE.get(), 0)
    return _stdlib_create_connection(address, timeout, source_address, **kwargs)


def install_source_binding() -> None:
    """Install the shim in this process and this ``trio.run`` (idempotent)."""
    socket.create_connection = _create_connection
    if not _FACTORY_INSTALLED.get():
        trio.socket.set_custom_socket_factory(_SourceSocketFactory())
        _FACTORY_INSTALLED.set(True)


@contextmanager
def source(address: str, *, created: list | None = None) -> Iterator[None]:
    """Sockets created inside (and in tasks and worker threads started inside) talk from ``address``.

    Args:
        address: a local IPv4 address.
        created: if given, every trio socket created inside is appended to it
            (how a test gets hold of the socket an SDK call uses).
    """
    install_source_binding()
    token = _SOURCE.set(address)
    record_token = _CREATED.set(created)
    try:
        yield
    finally:
        _CREATED.reset(record_token)
        _SOURCE.reset(token)


# --- attestations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """Mints attestations with one issuer's key (the dev issuer or a test issuer)."""

    issuer: DevIssuer
    audience: str = AUDIENCE

    @property
    def name(self) -> str:
        return self.issuer.issuer

    def token(
        self,
        agent: str,
        controller: str = "attacker",
        *,
        scopes: Sequence[str] = ALL_SCOPES,
        ttl: float = TOKEN_TTL,
        room: str | None = None,
    ) -> str:
        return self.issuer.mint(
            agent=agent, controller=controller, audience=self.audience, scopes=tuple(scopes), ttl=ttl, now=time.time(), room=room
        )


def dev_signer(data_dir: Path) -> Signer:
    """The server's local dev issuer (its key lives in the data directory)."""
    return Signer(ensure_dev_issuer(data_dir, DEV_ISSUER)[0])


def other_signer(directory: Path, issuer: str) -> Signer:
    """A separate Ed25519 issuer: its key and JWKS file (``signer.issuer.jwks_path``) in ``directory``."""
    return Signer(ensure_dev_issuer(directory, issuer)[0])


# --- the server process ----------------------------------------------------------------------


class ServerStartError(RuntimeError):
    """The server process did not come up; the message ends with its log."""


@functools.cache
def server_flags(code_root: Path) -> frozenset[str]:
    """The flags ``botcall serve --help`` of the code at ``code_root`` lists."""
    result = subprocess.run(
        [sys.executable, "-m", "botcall.cli", "serve", "--help"],
        cwd=code_root,
        env=_code_env(code_root),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return frozenset(re.findall(r"--[a-z0-9][a-z0-9-]*", result.stdout))


def _code_env(code_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    if code_root != REPO:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), env.get("PYTHONPATH")]))
    return env


class ServerProcess:
    """``python -m botcall.cli serve --port 0 --media-port 0 --data-dir D [flags]`` as a subprocess.

    (``botcall.cli`` rather than ``botcall``: the package has no ``__main__``; it is
    the same entry point as the ``botcall`` script.)

    Args:
        data_dir: the server's data directory.
        log_path: where its stdout and stderr go.
        flags: extra flags, e.g. ``("--max-connections-per-ip", "8")``.
        optional_flags: flags given only if this server's ``serve --help`` lists
            them (the hardening flags do not exist before the fixes); each entry is
            a tuple, flag first. Dropped ones are listed in ``dropped_flags``.
        nofile: an open-file limit (soft and hard) for the process.
        code_root: run the code of this checkout (``PYTHONPATH``); default: this one.
        nice: the process's niceness, in a session (autogroup) of its own; raising
            priority needs root and is skipped without it (see ``SERVER_NICE``).
    """

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *,
        flags: Sequence[str] = (),
        optional_flags: Sequence[tuple[str, ...]] = (),
        nofile: int | None = None,
        code_root: Path | None = None,
        nice: int = SERVER_NICE,
    ) -> None:
        self.data_dir = data_dir
        self.nice = nice
        self.log_path = log_path
        self.code_root = code_root or REPO
        known = server_flags(self.code_root) if optional_flags else frozenset()
        kept = [flag for flag in optional_flags if flag[0] in known]
        self.dropped_flags = [flag[0] for flag in optional_flags if flag[0] not in known]
        self.argv = [
            sys.executable, "-m", "botcall.cli", "serve", "--port", "0", "--media-port", "0",
            "--data-dir", str(data_dir), *flags, *(part for flag in kept for part in flag),
        ]
        self.nofile = nofile
        self.process: subprocess.Popen | None = None
        self.http_url = ""
        self.media_addr: tuple[str, int] = ("", 0)

    def start(self, timeout: float = STARTUP_TIMEOUT) -> "ServerProcess":
        """Start the process and wait for its ``listening on`` line.

        Raises:
            ServerStartError: it exited or said nothing within ``timeout``.
        """
        nofile, nice = self.nofile, self.nice

        def prepare() -> None:
            # In the child, after setsid(): the new session has an autogroup of its own.
            set_priority(nice)
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.data_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.code_root,
                env=_code_env(self.code_root),
                start_new_session=True,
                preexec_fn=prepare,
            )
        deadline = time.monotonic() + timeout
        while True:
            match = _LISTENING.search(self.log_text()[offset:])
            if match:
                self.http_url = match.group(1)
                self.media_addr = (match.group(2), int(match.group(3)))
                return self
            if self.process.poll() is not None:
                raise ServerStartError(f"server exited with {self.process.returncode} at start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"server said nothing like 'listening on' within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def ws_base(self) -> str:
        return "ws" + self.http_url[len("http") :]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log_text()[-chars:]

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds so far, or None once the process is gone."""
        try:
            return read_proc_stat(self.pid).cpu_s
        except HarnessError:
            return None

    def rss_bytes(self) -> int | None:
        """Resident memory (as VmRSS counts it), or None once the process is gone."""
        try:
            return read_proc_stat(self.pid).rss_bytes
        except HarnessError:
            return None

    def send_signal(self, signum: int) -> None:
        if self.alive:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. Safe to call twice."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if self.wait(grace) is None:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# --- the concurrent call ------------------------------------------------------------------------


class ConcurrentCall:
    """The legitimate call beside an attack: ``python -m tests.kit.attack.legit`` (see the module docstring).

    Args:
        server: the running server.
        signer: mints the call's attestations (controller ``legit``).
        workdir: where its tokens, records and log go.
    """

    def __init__(self, server: ServerProcess, signer: Signer, workdir: Path) -> None:
        self.server = server
        self.signer = signer
        self.workdir = workdir
        self.records_path = workdir / "call-records.jsonl"
        self.log_path = workdir / "call.log"
        self.process: subprocess.Popen | None = None
        self._records: list[dict] = []
        self._offset = 0

    def start(self, timeout: float = CALL_READY_TIMEOUT) -> "ConcurrentCall":
        """Start the child and wait until the listener hears the speaker and a probe passed.

        Raises:
            HarnessError: the child exited or did not get ready in time.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        tokens = {
            "create": self.signer.token("legit-host", "legit", scopes=("call:create",)),
            "speaker": self.signer.token("legit-speaker", "legit", scopes=("call:voice", "call:receive")),
            "listener": self.signer.token("legit-listener", "legit", scopes=("call:voice", "call:receive")),
        }
        tokens_path = self.workdir / "call-tokens.json"
        tokens_path.write_text(json.dumps(tokens))
        self.records_path.write_text("")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "tests.kit.attack.legit",
                    "--server", self.server.http_url,
                    "--tokens", str(tokens_path),
                    "--out", str(self.records_path),
                    "--server-pid", str(self.server.pid),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not any(r["k"] == "ready" for r in self.records()):
            problem = None
            if self.process.poll() is not None:
                problem = f"the concurrent call exited with {self.process.returncode}"
            elif time.monotonic() > deadline:
                problem = f"the concurrent call was not ready within {timeout:.0f} s"
            if problem is not None:
                self.stop()
                errors = [r for r in self.records() if r["k"] == "error"]
                raise HarnessError(f"{problem}: {errors}\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def records(self) -> list[dict]:
        """Every record so far (read incrementally; a partial last line waits)."""
        with open(self.records_path, "rb") as records:
            records.seek(self._offset)
            data = records.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            self._records.append(json.loads(line))
        self._offset += end
        return self._records

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    async def records_after(self, moment: float, timeout: float = RECORD_WAIT) -> list[dict]:
        """The records once one of each kind (arrival, probe) is later than ``moment``,
        or whatever there is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            kinds = {r["k"] for r in records if r["t"] > moment}
            if {"a", "h"} <= kinds or time.monotonic() > deadline:
                return records
            await trio.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def largest_gap(arrivals: Sequence[float], start: float, end: float) -> float:
    """The longest time in ``[start, end]`` with no packet arriving (from the last
    arrival before ``start`` when there is one)."""
    before = [t for t in arrivals if t <= start]
    previous = max(before) if before else start
    gap = 0.0
    for arrival in sorted(t for t in arrivals if start < t <= end):
        gap = max(gap, arrival - previous)
        previous = arrival
    return max(gap, end - previous)


# --- what an attack cost -------------------------------------------------------------------


@dataclass
class Impact:
    """What one attack window did to the server and the concurrent call.

    Attributes:
        name: the attack.
        seconds: the window (attack plus ``SETTLE``).
        survived: the process was alive at the end; ``exit_code`` otherwise.
        max_gap_s: the concurrent call's largest inter-arrival gap in the window.
        probes: ``/healthz`` probes that started in the window.
        bad_probes: the ones that failed or took longer than ``HEALTHZ_DEADLINE``.
        worst_probe_s: the slowest answered probe.
        rss_growth_bytes: peak resident memory in the window minus the baseline.
        cpu_s: server CPU seconds in the window, minus the concurrent call's own
            steady cost for as long (``idle_cpu_rate``), or None.
        dropped_flags: flags this server does not know (run without them).
        log_tail: the end of the server's log.
    """

    name: str
    seconds: float
    survived: bool
    exit_code: int | None
    max_gap_s: float
    probes: int
    bad_probes: list[str]
    worst_probe_s: float | None
    rss_baseline_bytes: int | None
    rss_growth_bytes: int | None
    cpu_s: float | None
    dropped_flags: list[str] = field(default_factory=list)
    log_tail: str = ""

    def problems(self, *, rss_bound: int, max_gap: float = MAX_AUDIO_GAP) -> list[str]:
        """Each broken invariant, in words (empty when the attack was harmless)."""
        found = []
        if not self.survived:
            found.append(f"the server process exited with code {self.exit_code}")
        if self.max_gap_s >= max_gap:
            found.append(f"the concurrent call's largest audio gap was {self.max_gap_s * 1000:.0f} ms (bound {max_gap * 1000:.0f} ms)")
        if self.probes == 0:
            found.append("no /healthz probe ran in the window")
        if self.bad_probes:
            found.append(f"{len(self.bad_probes)} of {self.probes} /healthz probes failed or took over {HEALTHZ_DEADLINE:.0f} s: {self.bad_probes[:5]}")
        if self.rss_growth_bytes is not None and self.rss_growth_bytes >= rss_bound:
            found.append(f"resident memory grew by {self.rss_growth_bytes / MB:.1f} MB (bound {rss_bound / MB:.0f} MB)")
        return found

    def assert_harmless(self, *, rss_bound: int, max_gap: float = MAX_AUDIO_GAP, checks: Sequence[tuple[bool, str]] = ()) -> None:
        """Raise AssertionError naming every broken invariant, and every one of the
        attack's own ``checks`` (``(held, what it means)`` pairs) that did not hold."""
        found = self.problems(rss_bound=rss_bound, max_gap=max_gap) + [what for held, what in checks if not held]
        if found:
            dropped = f"\n(run without {', '.join(self.dropped_flags)}: this server does not know them)" if self.dropped_flags else ""
            raise AssertionError(f"{self.name}: " + "; ".join(found) + dropped + f"\n--- server log tail ---\n{self.log_tail}")

    def summary(self) -> str:
        gap = "none arrived" if math.isinf(self.max_gap_s) else f"{self.max_gap_s * 1000:.0f} ms"
        return (
            f"{self.name}: survived={self.survived} gap={gap} probes={self.probes} bad={len(self.bad_probes)} "
            f"rss+={(self.rss_growth_bytes or 0) / MB:.1f} MB cpu={self.cpu_s}"
        )


@dataclass
class Window:
    """An attack window opened by :meth:`Lab.window`; ``impact`` is set when it closes."""

    name: str
    start: float
    rss_baseline: int | None
    cpu_start: float | None
    impact: Impact | None = None


def measure_impact(
    name: str,
    server: ServerProcess,
    records: Sequence[dict],
    *,
    start: float,
    end: float,
    rss_baseline: int | None,
    cpu_start: float | None,
    cpu_end: float | None,
    idle_cpu_rate: float = 0.0,
) -> Impact:
    """Judge the window ``[start, end]`` from the concurrent call's records."""
    arrivals = [r["t"] for r in records if r["k"] == "a"]
    probes = [r for r in records if r["k"] == "h" and start <= r["t"] <= end]
    bad = [
        f"{r.get('error') or r['status']} after {r['d']:.2f} s"
        for r in probes
        if r["status"] != 200 or r["d"] > HEALTHZ_DEADLINE
    ]
    answered = [r["d"] for r in probes if r["status"] == 200]
    samples = [r["b"] for r in records if r["k"] == "r" and start <= r["t"] <= end and r["b"] is not None]
    growth = None
    if rss_baseline is not None and samples:
        growth = max(samples) - rss_baseline
    cpu = None
    if cpu_start is not None and cpu_end is not None:
        cpu = max(0.0, cpu_end - cpu_start - idle_cpu_rate * (end - start))
    return Impact(
        name=name,
        seconds=end - start,
        survived=server.alive,
        exit_code=server.returncode,
        max_gap_s=largest_gap(arrivals, start, end),
        probes=len(probes),
        bad_probes=bad,
        worst_probe_s=max(answered) if answered else None,
        rss_baseline_bytes=rss_baseline,
        rss_growth_bytes=growth,
        cpu_s=cpu,
        dropped_flags=list(server.dropped_flags),
        log_tail=server.log_tail(),
    )


# --- the lab: a server, its concurrent call, attack windows ------------------------------------------


@dataclass(frozen=True)
class Target:
    """What an attack needs to know about the server under attack."""

    http_url: str
    media_addr: tuple[str, int]
    signer: Signer

    @property
    def ws_base(self) -> str:
        return "ws" + self.http_url[len("http") :]

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.http_url)
        return parts.hostname, parts.port

    def token(self, agent: str, controller: str = "attacker", **kwargs: Any) -> str:
        return self.signer.token(agent, controller, **kwargs)


class Lab:
    """One server process at a time (restartable on the same data directory), its
    concurrent call, and the attack windows measured against both.

    Args:
        workdir: a fresh directory for data, logs and records.
        code_root: run the server from this checkout (bench ``--rev``).
    """

    def __init__(self, workdir: Path, *, code_root: Path | None = None) -> None:
        self.workdir = workdir
        self.code_root = code_root
        self.data_dir = workdir / "data"
        self.server: ServerProcess | None = None
        self.call: ConcurrentCall | None = None
        self.signer: Signer | None = None
        self.idle_cpu_rate = 0.0
        self._starts = 0

    def start(
        self,
        *,
        flags: Sequence[str] = (),
        optional_flags: Sequence[tuple[str, ...]] = (),
        nofile: int | None = None,
        signer: Signer | None = None,
        call: bool = True,
    ) -> ServerProcess:
        """Start the server (after stopping any previous one) and, with ``call``, the concurrent call.

        Args:
            signer: who mints tokens (default: the dev issuer of the data directory).
        """
        self.stop()
        self._starts += 1
        self.signer = signer or dev_signer(self.data_dir)
        self.server = ServerProcess(
            self.data_dir,
            self.workdir / "server.log",
            flags=flags,
            optional_flags=optional_flags,
            nofile=nofile,
            code_root=self.code_root,
        ).start()
        if call:
            self.call = ConcurrentCall(self.server, self.signer, self.workdir / f"call-{self._starts}")
            self.call.start()
        return self.server

    @property
    def target(self) -> Target:
        assert self.server is not None and self.signer is not None
        return Target(self.server.http_url, self.server.media_addr, self.signer)

    def token(self, agent: str, controller: str = "attacker", **kwargs: Any) -> str:
        assert self.signer is not None
        return self.signer.token(agent, controller, **kwargs)

    async def measure_idle_cpu(self, seconds: float = 1.0) -> float:
        """The server's CPU seconds per second with only the concurrent call running."""
        before = self.server.cpu_seconds()
        started = time.monotonic()
        await trio.sleep(seconds)
        after = self.server.cpu_seconds()
        if before is not None and after is not None:
            self.idle_cpu_rate = (after - before) / (time.monotonic() - started)
        return self.idle_cpu_rate

    @asynccontextmanager
    async def window(self, name: str, *, settle: float = SETTLE) -> AsyncIterator[Window]:
        """Measure an attack: the body is the attack; ``window.impact`` is filled on exit
        (after ``settle`` more seconds of probing, and also when the body raised)."""
        assert self.server is not None and self.call is not None, "window() needs the concurrent call"
        window = Window(name, time.monotonic(), self.server.rss_bytes(), self.server.cpu_seconds())
        try:
            yield window
        except Exception as exc:
            await self._close_window(window, settle)
            if not window.impact.survived:
                # The attack failed because the server died under it: say that, not how the client noticed.
                raise AssertionError(f"{name}: the server died during the attack: {window.impact.summary()}\n{window.impact.log_tail}") from exc
            raise
        await self._close_window(window, settle)

    async def _close_window(self, window: Window, settle: float) -> None:
        if window.impact is None:
            with trio.CancelScope(shield=True):
                await trio.sleep(settle)
                end = time.monotonic()
                cpu_end = self.server.cpu_seconds()
                records = await self.call.records_after(end)
                window.impact = measure_impact(
                    window.name,
                    self.server,
                    records,
                    start=window.start,
                    end=end,
                    rss_baseline=window.rss_baseline,
                    cpu_start=window.cpu_start,
                    cpu_end=cpu_end,
                    idle_cpu_rate=self.idle_cpu_rate,
                )

    def stop(self) -> None:
        """Stop the concurrent call and the server (SIGTERM, then SIGKILL)."""
        if self.call is not None:
            self.call.stop()
            self.call = None
        if self.server is not None:
            self.server.stop()

    def close(self) -> None:
        self.stop()


# --- clients ---------------------------------------------------------------------------------


async def request(target: Target, method: str, path: str, *, bearer: str | None = None, timeout: float = 10.0, **kwargs: Any) -> HttpResponse:
    """One HTTP request on a fresh connection (from the current ``source``, else 127.0.0.1)."""
    headers = dict(kwargs.pop("headers", None) or {})
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return await http_request(target.http_url + path, method, headers=headers, timeout=timeout, **kwargs)


async def create_room(target: Target, token: str, **body: Any) -> dict:
    """``POST /v1/rooms/create``; asserts 201."""
    response = await request(target, "POST", "/v1/rooms/create", bearer=token, json_body=body)
    assert response.status == 201, (response.status, response.body[:300])
    return response.json()


async def join(
    target: Target,
    token: str,
    room_id: str,
    agent: str,
    *,
    transport: str = "udp",
    encoding: str | None = None,
    sample_rate: int | None = None,
    text_chat: bool = True,
) -> HttpResponse:
    """``POST /v1/join`` for a bot (the response, whatever its status)."""
    media: dict[str, Any] = {"transport": transport}
    if encoding is not None:
        media["encoding"] = encoding
    if sample_rate is not None:
        media["sample_rate"] = sample_rate
    body = {
        "agent_id": agent,
        "room_id": room_id,
        "attestation": {"token": token},
        "capabilities": {"audio_in": True, "audio_out": True, "video": False, "text_chat": text_chat},
        "media": media,
    }
    return await request(target, "POST", "/v1/join", json_body=body)


async def joined(target: Target, token: str, room_id: str, agent: str, **kwargs: Any) -> dict:
    """Join and assert 200; the join response."""
    response = await join(target, token, room_id, agent, **kwargs)
    assert response.status == 200, (response.status, response.body[:300])
    return response.json()


async def legit_operations(target: Target, *, deadline: float = LEGIT_DEADLINE) -> dict:
    """What a legitimate client on ``LEGIT`` gets from the server right now: ``/healthz``
    (within ``HEALTHZ_DEADLINE``), a room creation, a WebSocket bot's join and the
    upgrade of its channel to ``welcome`` (each within ``deadline``).

    Returns:
        ``{"healthz": 200, "create": 201, "join": 200, "websocket": "welcome"}`` when
        all is well; a failed step holds what went wrong instead, and the steps after
        it are missing.
    """
    outcome: dict[str, Any] = {}
    tag = secrets.token_hex(3)
    with source(LEGIT):
        try:
            with trio.fail_after(HEALTHZ_DEADLINE):
                outcome["healthz"] = (await request(target, "GET", "/healthz")).status
            with trio.fail_after(deadline):
                created = await request(target, "POST", "/v1/rooms/create", bearer=target.token(f"legit-{tag}", "legit-ops"), json_body={})
            outcome["create"] = created.status
            with trio.fail_after(deadline):
                answer = await join(target, target.token(f"legit-bot-{tag}", "legit-ops"), created.json()["room_id"], f"legit-bot-{tag}", transport="websocket")
            outcome["join"] = answer.status
            with trio.fail_after(deadline):
                ws = await open_ws(target, f"/v1/stream/{answer.json()['session_id']}", source_address=LEGIT)
                try:
                    outcome["websocket"] = (await ws.expect("welcome"))["type"]
                finally:
                    await ws.aclose()
        except Exception as exc:  # the failed step is the finding: keep it, in words
            outcome[f"failed after {list(outcome) or 'nothing'}"] = repr(exc)[:300]
    return outcome


LEGIT_OK = {"healthz": 200, "create": 201, "join": 200, "websocket": "welcome"}


def invite_secret(invite_url: str) -> str:
    """The secret in an invite URL's fragment (``…#invite=<secret>``)."""
    fragment = urlsplit(invite_url).fragment
    assert fragment.startswith("invite="), invite_url
    return fragment[len("invite=") :]


@dataclass(frozen=True)
class Closed:
    """The end of a WebSocket as the client saw it (``code`` None: no close frame, just EOF)."""

    code: int | None
    reason: str = ""


class WebSocketRejected(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"upgrade refused: {status} {body[:200]!r}")
        self.status = status
        self.body = body


class RawWebSocket:
    """A WebSocket client on a plain trio socket (wsproto): the caller picks the source
    address and the receive buffer, and reads only when it wants to.

    Use :meth:`connect`; ``receive`` returns a ``str``, ``bytes`` or a :class:`Closed`.
    """

    def __init__(self, stream: trio.SocketStream, connection: wsproto.WSConnection, pending: list) -> None:
        self.stream = stream
        self.connection = connection
        self._pending = pending
        self._parts: list = []
        self._send_lock = trio.Lock()
        self.closed: Closed | None = None

    @classmethod
    async def connect(
        cls, url: str, *, source_address: str | None = None, rcvbuf: int | None = None, timeout: float = 10.0
    ) -> "RawWebSocket":
        """Open ``ws://host:port/path`` and finish the upgrade.

        Raises:
            WebSocketRejected: a non-101 answer (its status and body).
            OSError / trio.TooSlowError: no connection in ``timeout`` seconds.
        """
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source_address is not None:
                _bind_source(sock, source_address)
            trio_sock = trio.socket.from_stdlib_socket(sock)
        except BaseException:
            sock.close()
            raise
        stream: trio.SocketStream | None = None
        try:
            with trio.fail_after(timeout):
                await trio_sock.connect((parts.hostname, parts.port))
                stream = trio.SocketStream(trio_sock)
                connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                await stream.send_all(connection.send(Request(host=parts.netloc, target=target)))
                status, body = 0, b""
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        raise WebSocketRejected(status, body or b"connection closed during the upgrade")
                    connection.receive_data(data)
                    events = list(connection.events())
                    for index, event in enumerate(events):
                        if isinstance(event, AcceptConnection):
                            return cls(stream, connection, events[index + 1 :])
                        if isinstance(event, RejectConnection):
                            status = event.status_code
                            if not event.has_body:
                                raise WebSocketRejected(status, body)
                        elif isinstance(event, RejectData):
                            body += event.data
                            if event.body_finished:
                                raise WebSocketRejected(status, body)
        except BaseException:
            if stream is not None:
                await _abort(stream)
            else:
                trio_sock.close()
            raise

    async def send_text(self, text: str) -> None:
        await self._send(Message(data=text))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(Message(data=data))

    async def _send(self, event: Message) -> None:
        """Send one message (one task at a time: a reader may be answering a ping).

        Raises:
            trio.ClosedResourceError: the WebSocket is closed (by either side).
            trio.BrokenResourceError: the connection broke.
        """
        async with self._send_lock:
            if self.closed is not None or self.connection.state is not wsproto.connection.ConnectionState.OPEN:
                raise trio.ClosedResourceError(f"the WebSocket is closed ({self.closed})")
            await self.stream.send_all(self.connection.send(event))

    async def send_json(self, message: dict) -> None:
        await self.send_text(json.dumps(message))

    async def receive(self, timeout: float = 10.0) -> str | bytes | Closed:
        """The next whole message, or :class:`Closed` (also every time after).

        Raises:
            trio.TooSlowError: nothing within ``timeout`` seconds.
        """
        if self.closed is not None:
            return self.closed
        with trio.fail_after(timeout):
            while True:
                while self._pending:
                    event = self._pending.pop(0)
                    if isinstance(event, (TextMessage, BytesMessage)):
                        self._parts.append(event.data)
                        if event.message_finished:
                            parts, self._parts = self._parts, []
                            return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                    elif isinstance(event, Ping):
                        await self._send_quietly(self.connection.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self.closed = Closed(event.code, event.reason or "")
                        await self._send_quietly(self.connection.send(event.response()))
                        return self.closed
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.closed = Closed(None, f"broken: {exc!r}")
                    return self.closed
                if not data:
                    self.closed = Closed(None, "eof")
                    return self.closed
                try:
                    self.connection.receive_data(data)
                except wsproto.utilities.RemoteProtocolError as exc:
                    self.closed = Closed(None, f"protocol error: {exc}")
                    return self.closed
                self._pending.extend(self.connection.events())

    async def receive_json(self, timeout: float = 10.0) -> dict | Closed:
        """The next text message decoded (binary messages are skipped), or :class:`Closed`."""
        while True:
            message = await self.receive(timeout)
            if isinstance(message, Closed):
                return message
            if isinstance(message, str):
                return json.loads(message)

    async def expect(self, kind: str, timeout: float = 10.0) -> dict:
        """Read events until one of type ``kind``; AssertionError if the socket closes first."""
        with trio.fail_after(timeout):
            while True:
                event = await self.receive_json(timeout)
                assert not isinstance(event, Closed), f"closed ({event}) while waiting for {kind!r}"
                if event.get("type") == kind:
                    return event

    async def events_until_closed(self, timeout: float = 10.0) -> tuple[list[dict], Closed]:
        """Every JSON event until the socket closes (binary messages skipped)."""
        events = []
        with trio.fail_after(timeout):
            while True:
                event = await self.receive_json(timeout)
                if isinstance(event, Closed):
                    return events, event
                events.append(event)

    async def _send_quietly(self, data: bytes) -> None:
        # The answer to a ping or a close: the server may be gone already, which is its right.
        async with self._send_lock:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(data)

    async def aclose(self) -> None:
        """Close politely if still open, then drop the connection."""
        if self.closed is None and self.connection.state is wsproto.connection.ConnectionState.OPEN:
            with trio.move_on_after(1):
                await self._send_quietly(self.connection.send(CloseConnection(code=1000)))
        await _abort(self.stream, reset=False)

    async def abort(self) -> None:
        """Drop the connection with a TCP reset, no close frame."""
        await _abort(self.stream)


async def _abort(stream: trio.SocketStream, *, reset: bool = True) -> None:
    if reset:
        with contextlib.suppress(OSError):
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await stream.aclose()


async def open_ws(target: Target, path: str, **kwargs: Any) -> RawWebSocket:
    """:meth:`RawWebSocket.connect` to ``path`` on the target."""
    return await RawWebSocket.connect(target.ws_base + path, **kwargs)


def record_arrivals(call: Any, on_arrival: Callable[[float, int, int], None]) -> None:
    """Test-kit shim: call ``on_arrival(time.monotonic(), sequence number, bytes)`` for
    every RTP packet an SDK ``Call`` receives, before the SDK handles it (wraps
    ``Call._on_media``)."""
    handle = call._on_media

    def timestamped(data: bytes, now: float) -> None:
        on_arrival(time.monotonic(), int.from_bytes(data[2:4], "big") if len(data) >= 4 else -1, len(data))
        handle(data, now)

    call._on_media = timestamped


def raise_own_file_limit(wanted: int) -> None:
    """Let this process hold ``wanted`` descriptors (an attacker with many sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted, hard))
