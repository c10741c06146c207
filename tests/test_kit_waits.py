"""The test kit's event waits on a real process: a Unix socket coming up
(``tests.kit.system.wait_for_unix_socket``) and a PulseAudio daemon's streams
(``tests.kit.firefox.wait_for_sink_input``).

The child here binds and listens only when the test says so (a line on its
stdin) and says when it has bound (a line on its stdout): each case is a fixed
order of events, not a race against the clock.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.kit.firefox import pulse_events, pulse_null_sink, wait_for_sink_input
from tests.kit.pulse import PULSEAUDIO
from tests.kit.system import HarnessError, wait_for_unix_socket

# Binds at its first stdin line (and says "bound"), listens at the second, holds until stdin ends.
SERVER = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if sys.stdin.readline() == "bind\\n":
    sock.bind(sys.argv[1])
    print("bound", flush=True)
    if sys.stdin.readline() == "listen\\n":
        sock.listen()
        sys.stdin.read()
"""
GUARD_S = 60.0  # a hang's safety net; every case below ends on an event well before


@contextmanager
def socket_server(path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        process.stdout.close()


def command(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


class Waiter(threading.Thread):
    """``wait_for_unix_socket`` in a thread: what it returned or raised."""

    def __init__(self, path: Path, process: subprocess.Popen[str], timeout: float = GUARD_S) -> None:
        super().__init__(daemon=True)
        self.path, self.process, self.timeout = path, process, timeout
        self.error: BaseException | None = None
        self.returned = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            wait_for_unix_socket(self.path, self.process, self.timeout)  # type: ignore[arg-type]
            self.returned.set()
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> BaseException | None:
        self.join(GUARD_S)
        assert not self.is_alive(), "the wait did not end"
        return self.error


def test_the_wait_ends_when_the_socket_listens_not_when_the_file_appears(tmp_path):
    path = tmp_path / "sock"
    with socket_server(path) as server:
        waiter = Waiter(path, server)  # before the file exists: inotify wakes it
        command(server, "bind")
        assert server.stdout is not None and server.stdout.readline() == "bound\n"
        # Bound, not listening: a connect is refused, so that is not ready (a second wait, in this thread, says so).
        with pytest.raises(HarnessError, match="did not listen"):
            wait_for_unix_socket(path, server, 0.3)  # type: ignore[arg-type]
        assert not waiter.returned.is_set()
        command(server, "listen")
        assert waiter.outcome() is None and waiter.returned.is_set()


def test_a_socket_already_listening_is_ready_at_once(tmp_path):
    path = tmp_path / "sock"
    with socket_server(path) as server:
        command(server, "bind")
        command(server, "listen")
        assert server.stdout is not None and server.stdout.readline() == "bound\n"
        assert Waiter(path, server).outcome() is None


def test_a_process_that_exits_first_fails_the_wait_at_once(tmp_path):
    path = tmp_path / "sock"
    with socket_server(path) as server:
        waiter = Waiter(path, server)
        command(server, "quit")  # exits without binding: the pidfd says so, long before the guard
        error = waiter.outcome()
    assert isinstance(error, HarnessError) and "exited with 0 before it listened" in str(error), error


def test_the_timeout_is_a_last_resort_that_still_ends_the_wait(tmp_path):
    path = tmp_path / "sock"
    with socket_server(path) as server:
        error = Waiter(path, server, timeout=0.2).outcome()
        assert server.poll() is None  # still running, never bound
    assert isinstance(error, HarnessError) and "did not listen" in str(error), error


@pytest.mark.skipif(PULSEAUDIO is None, reason="pulseaudio is not installed")
def test_a_new_stream_in_the_daemon_ends_the_wait_for_it(tmp_path):
    with pulse_null_sink() as pulse, pulse_events(pulse) as events:
        # Nothing plays yet: the wait ends at its (short) timeout with what is there.
        assert "botcall-probe" not in wait_for_sink_input(pulse, events, "botcall-probe", timeout=0.3)
        player = subprocess.Popen(
            ["pacat", "--playback", "--client-name=botcall-probe", "--raw", "--rate=48000", "--channels=1", "--format=s16le", "/dev/zero"],
            env={"PULSE_SERVER": pulse},
        )
        try:
            inputs = wait_for_sink_input(pulse, events, "botcall-probe", timeout=GUARD_S)
        finally:
            player.kill()
            player.wait()
    assert "botcall-probe" in inputs, inputs
