"""A private PulseAudio daemon as headless Chromium's sound devices: an ear and a mouth.

Headless Chromium plays and records through PulseAudio when ``PULSE_SERVER``
names a daemon, Playwright's default ``--mute-audio`` is dropped and
``--use-fake-device-for-media-stream`` is not given (the fake-UI flag may stay:
it only answers the permission prompt). :func:`pulse_devices` starts a daemon with
two null sinks at 48 kHz:

* ``botcall_ear``, the default sink: what the page plays (its remote
  ``<audio>`` elements) ends up there; its monitor is read by :class:`DeviceRecorder`.
* ``botcall_mouth``, a sink :class:`DeviceWriter` plays into, and
  ``botcall_mic``, the default source, a remap of its monitor (Chromium lists
  no monitor source as a microphone): the page's microphone. A second
  :class:`DeviceRecorder` on that source records what the page records.

The daemon's default rate is the sinks' 48 kHz (its ``daemon.conf`` is named by
``PULSE_CONFIG``; :func:`pulse_daemon` checks it), so Chromium's streams need no
resampler. Readers and writers connect before a call starts (a writer plays
silence until :meth:`DeviceWriter.play`): a stream connecting to the daemon
can stall the others.

Samples are stamped on the bots' clock (``time.time()``) as they are read from
``parec`` (:func:`device_times`); the reader's own buffering is what
``pactl list source-outputs`` reports as its latency (:func:`reader_latency_ms`).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.kit.system import wait_for_unix_socket

PULSEAUDIO = shutil.which("pulseaudio")
RATE = 48000
EAR_SINK = "botcall_ear"
MOUTH_SINK = "botcall_mouth"
MIC_SOURCE = "botcall_mic"
# The latency asked of parec and pacat: small fragments, so a sample is read
# soon after the sink renders it (the daemon reports what it really gives).
DEVICE_LATENCY_MSEC = 20
START_S = 30.0  # a last resort: the wait ends on the socket listening or the daemon exiting
PIPE_BYTES = 4096  # the writer's pipe: ~43 ms of mono s16le at 48 kHz
READ_BYTES = 960  # 10 ms of mono s16le at 48 kHz; os.read returns what is there, up to this
LOUD = 0.02  # a sample above this (of full scale) is sound, for wait_loud
# The Chromium flags that make it use the daemon's devices (with PULSE_SERVER in its environment).
CHROMIUM_IGNORE_DEFAULT_ARGS = ("--mute-audio",)


@dataclass(frozen=True)
class PulseDevices:
    """A running daemon: its server string (``unix:…``) and its two sinks."""

    server: str
    ear_sink: str = EAR_SINK
    mouth_sink: str = MOUTH_SINK
    mic_source: str = MIC_SOURCE

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PULSE_SERVER": self.server}


def pactl(server: str, *args: str) -> str:
    """``pactl ARGS`` against the daemon at ``server``; its output."""
    return subprocess.run(
        ["pactl", *args], env={**os.environ, "PULSE_SERVER": server}, capture_output=True, text=True, timeout=START_S, check=True
    ).stdout


def server_sample_rate(server: str) -> int | None:
    """The daemon's default sample rate (``pactl info``): the rate clients open streams at."""
    found = re.search(r"Default Sample Specification: \S+ \d+ch (\d+)Hz", pactl(server, "info"))
    return int(found.group(1)) if found else None


@contextmanager
def pulse_daemon(modules: tuple[str, ...], *, rate: int = RATE) -> Iterator[str]:
    """A private PulseAudio daemon (``pulseaudio -n``: no default modules) that loads
    ``modules`` (``module-null-sink sink_name=...``...) and the native protocol on a
    socket of its own; clients open streams at ``rate``. Yields its server string
    (``unix:…``); stops it.

    Raises:
        RuntimeError: ``pulseaudio`` is not installed, or did not answer in time.
    """
    if PULSEAUDIO is None:
        raise RuntimeError("pulseaudio is not installed (apt-get install pulseaudio)")
    with tempfile.TemporaryDirectory(prefix="botcall-pulse-") as home:
        socket_path = Path(home) / "native"
        # Clients (Chromium) open streams at the daemon's default rate: it must be the
        # sinks'. PULSE_CONFIG names the file: with XDG_CONFIG_HOME alone the daemon
        # read /etc/pulse/daemon.conf (44.1 kHz), Chromium played and recorded at
        # 44.1 kHz through two resamplers, and its audio ran at 0.96-0.98 of real time.
        config = Path(home) / "daemon.conf"
        config.write_text(f"default-sample-rate = {rate}\nalternate-sample-rate = {rate}\n")
        env = {**os.environ, "HOME": home, "XDG_RUNTIME_DIR": home, "XDG_CONFIG_HOME": home, "PULSE_CONFIG": str(config)}
        loads = [arg for module in modules for arg in ("-L", module)]
        process = subprocess.Popen(
            [
                PULSEAUDIO, "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--log-target=stderr",
                *loads,
                "-L", f"module-native-protocol-unix socket={socket_path} auth-anonymous=1",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_unix_socket(socket_path, process, START_S)
            server = f"unix:{socket_path}"
            default_rate = server_sample_rate(server)
            if default_rate != rate:
                raise RuntimeError(f"the PulseAudio daemon runs at {default_rate} Hz, not {rate} Hz: its daemon.conf was not read")
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def pulse_devices() -> Iterator[PulseDevices]:
    """A private PulseAudio daemon with the ear sink (the default sink), the mouth
    sink and the microphone (the default source: the mouth sink's monitor, remapped
    to mono); null sinks at 48 kHz.

    Raises:
        RuntimeError: ``pulseaudio`` is not installed, or did not answer in time.
    """
    modules = (
        f"module-null-sink sink_name={EAR_SINK} rate={RATE}",
        f"module-null-sink sink_name={MOUTH_SINK} rate={RATE}",
        # Chromium lists no monitor source as a microphone: a remap of the mouth's monitor is one.
        f"module-remap-source master={MOUTH_SINK}.monitor source_name={MIC_SOURCE} channels=1 channel_map=mono",
    )
    with pulse_daemon(modules) as server:
        pactl(server, "set-default-sink", EAR_SINK)
        pactl(server, "set-default-source", MIC_SOURCE)
        yield PulseDevices(server)


def device_times(reads: np.ndarray, count: int, rate: int = RATE, bin_s: float = 1.0) -> np.ndarray:
    """The Unix time of each of ``count`` samples read from a device, from the reads.

    ``reads`` rows are ``(time.time() when a read returned, samples read in all
    by then)``. A sample cannot be read before it exists, and a busy reader only
    adds delay, so each read gives an upper bound of ``read time - end / rate``
    on the time of sample 0. The smallest bound in each ``bin_s`` of audio
    gives the device's clock against ours; a straight line through those
    minima (the two clocks may drift apart slowly), lowered onto the lowest of
    them, maps every sample. What the reader lags even at its most prompt
    read stays in (it cannot be seen from here): the times are late by that.

    Returns:
        ``count`` times (s); all zero when there are no reads.
    """
    if reads.size == 0 or count == 0:
        return np.zeros(count)
    ends = reads[:, 1] / rate
    offsets = reads[:, 0] - ends
    bins = np.floor(ends / bin_s)
    keys = np.unique(bins)
    lowest = [int(np.flatnonzero(bins == key)[np.argmin(offsets[bins == key])]) for key in keys]
    centres, minima = ends[lowest], offsets[lowest]
    # Theil-Sen (the median of the pairwise slopes): a bin without a prompt read
    # (a descheduled reader, a last bin of one read) does not tilt the line.
    first, second = np.triu_indices(keys.size, 1)
    spans = centres[second] - centres[first]
    slope = float(np.median((minima[second] - minima[first])[spans > 0] / spans[spans > 0])) if np.any(spans > 0) else 0.0
    intercept = float(np.min(minima - slope * centres))
    positions = np.arange(count) / rate
    return positions + intercept + slope * positions


class DeviceRecorder:
    """``parec`` on a source (a sink's monitor), mono s16le at 48 kHz, read in a thread
    that stamps each read with ``time.time()``."""

    def __init__(self, devices: PulseDevices, source: str, latency_msec: int = DEVICE_LATENCY_MSEC) -> None:
        self.devices = devices
        self.source = source
        self.name = f"botcall-rec-{source}"
        self._process = subprocess.Popen(
            [
                "parec", "-d", source, "--format=s16le", f"--rate={RATE}", "--channels=1", "--raw",
                f"--latency-msec={latency_msec}", f"--client-name={self.name}", f"--stream-name={self.name}",
            ],
            env=devices.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._chunks: list[bytes] = []
        self._reads: list[tuple[float, int]] = []
        self._loud = 0  # samples above LOUD so far (wait_loud)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        total = 0
        pending = b""
        while True:
            data = os.read(fd, READ_BYTES)
            now = time.time()
            if not data:
                return
            data = pending + data
            whole = len(data) - len(data) % 2
            pending = data[whole:]
            total += whole // 2
            chunk = data[:whole]
            with self._changed:
                self._chunks.append(chunk)
                self._reads.append((now, total))
                self._loud += int(np.count_nonzero(np.abs(np.frombuffer(chunk, "<i2")) > LOUD * 32768))
                self._changed.notify_all()

    def wait_loud(self, seconds: float, timeout: float = START_S) -> bytes:
        """Wait until ``seconds`` of loud samples were read; the pcm16 read from
        the first loud read on (the caller checks what it is).

        Raises:
            TimeoutError: not in ``timeout`` seconds (a safety net).
        """
        with self._changed:
            if not self._changed.wait_for(lambda: self._loud >= seconds * RATE, timeout=timeout):
                raise TimeoutError(f"{self.source}: {self._loud / RATE:.2f} s loud after {timeout} s")
            pcm = b"".join(self._chunks)
        samples = np.frombuffer(pcm, "<i2")
        first = int(np.flatnonzero(np.abs(samples) > LOUD * 32768)[0])
        return samples[first:].tobytes()

    def stop(self) -> tuple[np.ndarray, np.ndarray]:
        """Stop ``parec``; the samples (floats) and their Unix times."""
        self._process.terminate()
        self._process.wait(timeout=5)
        self._thread.join(timeout=5)
        samples = np.frombuffer(b"".join(self._chunks), "<i2").astype(np.float32) / 32768.0
        reads = np.asarray(self._reads, dtype=np.float64).reshape(-1, 2)
        return samples, device_times(reads, samples.size)


class DeviceWriter:
    """``pacat --playback`` into a sink: ``signal`` (floats, mono, 48 kHz) written in a
    thread as fast as the stream takes it (it plays at real time). Where its
    onsets really were is measured at the sink's monitor, not assumed.

    With no ``signal`` it plays silence until :meth:`play`: the stream can then be
    connected before a call starts: a stream connecting to the daemon can stall
    the others (§16h of docs/bench-results.md), so a measurement connects its
    readers and writers first."""

    def __init__(
        self, devices: PulseDevices, sink: str, signal: np.ndarray | None = None, latency_msec: int = DEVICE_LATENCY_MSEC
    ) -> None:
        name = f"botcall-play-{sink}"
        self._process = subprocess.Popen(
            [
                "pacat", "--playback", "-d", sink, "--format=s16le", f"--rate={RATE}", "--channels=1", "--raw",
                f"--latency-msec={latency_msec}", f"--client-name={name}", f"--stream-name={name}",
            ],
            env=devices.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert self._process.stdin is not None
        # A small pipe: silence written ahead delays play() by at most this much.
        fcntl.fcntl(self._process.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._data: bytes | None = None
        self._ready = threading.Event()
        if signal is not None:
            self.play(signal)
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def play(self, signal: np.ndarray) -> None:
        """Play ``signal`` after the silence written so far (once)."""
        self._data = (np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes()
        self._ready.set()

    def _write(self) -> None:
        assert self._process.stdin is not None
        silence = bytes(READ_BYTES)
        try:
            while not self._ready.is_set():
                self._process.stdin.write(silence)  # blocks while the pipe is full: real time
                self._process.stdin.flush()
            assert self._data is not None
            self._process.stdin.write(self._data)
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError):
            return  # stopped before the end: what was played is what the monitor saw

    def stop(self) -> None:
        self._ready.set()
        self._process.terminate()
        self._process.wait(timeout=5)
        self._thread.join(timeout=5)


def sink_input_latencies_ms(server: str, sink: str) -> list[tuple[float, float]]:
    """``(buffer, sink)`` latencies (ms) the daemon reports for each stream playing into
    the sink called ``sink``. The buffer is what the player has written and the sink has
    not yet rendered (inside a measurement at the monitor); the sink latency is how far
    ahead the sink has rendered (a null sink renders in blocks ahead of its clock, and
    its monitor gets each block at once): a real device would play that much later."""
    index = next((line.split()[0] for line in pactl(server, "list", "short", "sinks").splitlines() if line.split()[1:2] == [sink]), None)
    out = []
    for block in pactl(server, "list", "sink-inputs").split("\n\n"):
        owner = re.search(r"Sink: (\d+)", block)
        buffer = re.search(r"Buffer Latency: (\d+) usec", block)
        rendered = re.search(r"Sink Latency: (\d+) usec", block)
        if owner and buffer and rendered and owner.group(1) == index:
            out.append((int(buffer.group(1)) / 1000, int(rendered.group(1)) / 1000))
    return out


def reader_latency_ms(server: str, name: str) -> float | None:
    """The latency the daemon reports for the source output (a recorder) called ``name``:
    how long a sample waits in its buffer before the reader gets it (ms)."""
    listing = pactl(server, "list", "source-outputs")
    for block in listing.split("\n\n"):
        if name in block:
            found = re.search(r"Buffer Latency: (\d+) usec", block)
            source = re.search(r"Source Latency: (\d+) usec", block)
            if found:
                return (int(found.group(1)) + (int(source.group(1)) if source else 0)) / 1000
    return None
