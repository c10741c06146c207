"""The native generator's own parts: the build on first use, unconnected senders
(sendto from C), a receive socket shared by several flows (several datagrams a
read), the bounded store of what arrived, and its window's CPU against the
light generator's on the same flows.

Counting through a lossy, duplicating or corrupting relay is checked beside
the other generators in ``test_lightgen.py``.
"""

from __future__ import annotations

import pytest

import bench.harness.nativegen as nativegen
from bench.harness.lightgen import run_light
from bench.harness.loadgen import Flow
from bench.harness.machine import open_socket
from bench.harness.nativegen import BUILD_DIR, NativeUnavailable, run_native, window_module

RATE = 50.0
DURATION = 0.6
WARMUP = 0.2


@pytest.fixture
def sockets():
    opened = []

    def make():
        sock = open_socket()
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close()


def test_the_window_is_built_once_into_the_ignored_build_directory():
    module = window_module()
    assert window_module() is module  # cached: one build and one load per process
    assert module.__file__ is not None and BUILD_DIR in __import__("pathlib").Path(module.__file__).parents
    # Named by the source's hash: a changed source is a new file, never a stale one.
    assert nativegen.SOURCE.name.removesuffix(".c") in module.__file__


def test_a_source_that_does_not_compile_says_why(tmp_path, monkeypatch):
    broken = tmp_path / "_native_window.c"
    broken.write_text("this is not C;\n")
    monkeypatch.setattr(nativegen, "SOURCE", broken)
    monkeypatch.setattr(nativegen, "BUILD_DIR", tmp_path / "build")
    nativegen.window_module.cache_clear()
    try:
        with pytest.raises(NativeUnavailable, match="failed"):
            window_module()
        assert not list((tmp_path / "build").glob("_native_window_*"))  # no half-written module left
    finally:
        nativegen.window_module.cache_clear()


def test_unconnected_senders_and_a_shared_receiver_are_counted_exactly(sockets):
    # Four flows from unconnected sockets (C then uses sendto with the flow's
    # address) into one shared receiving socket (read several datagrams a tick).
    receiver = sockets()
    flows = [Flow(send_sock=sockets(), dest=receiver.getsockname(), recv_sock=receiver, ssrc=0x2000 + index) for index in range(4)]
    result = run_native(flows, rate_per_flow=RATE, duration=DURATION, warmup=WARMUP)
    assert result.sent == 4 * round(RATE * DURATION)
    assert result.received == result.sent and result.loss == 0.0
    assert result.duplicates == 0 and result.bad == 0
    assert result.latencies_ms.size == result.received and 0 < result.latencies_ms.min() < 20.0


def test_what_does_not_fit_the_store_is_counted_bad_not_kept(sockets, monkeypatch):
    # Room for 30 datagrams of the run's 40 (4 flows x 10 packets): the rest is
    # read (never left to fill the socket) and counted bad; the 30 kept are measured.
    monkeypatch.setattr(nativegen, "KEPT_FACTOR", 0.0)
    monkeypatch.setattr(nativegen, "KEPT_EXTRA", 30)
    flows = []
    for index in range(4):
        sender, receiver = sockets(), sockets()
        sender.connect(receiver.getsockname())
        flows.append(Flow(send_sock=sender, dest=receiver.getsockname(), recv_sock=receiver, ssrc=0x3000 + index))
    result = run_native(flows, rate_per_flow=RATE, duration=0.1, warmup=0.1)
    assert result.bad == 40 - 30
    assert result.received == 30 - 4 * round(RATE * 0.1)  # the kept datagrams after the warm-up's
    assert result.received + result.bad + 4 * round(RATE * 0.1) == 40


def test_the_native_window_costs_less_cpu_than_the_light_one(sockets):
    # 300 flows socket to socket for 1.5 s each, alternating light, native,
    # light, native: the native window's CPU must be clearly lower (measured
    # here about half; a C loop that spun instead of sleeping, or woke per
    # datagram, would not be).
    flows = []
    for index in range(300):
        sender, receiver = sockets(), sockets()
        sender.connect(receiver.getsockname())
        flows.append(Flow(send_sock=sender, dest=receiver.getsockname(), recv_sock=receiver, ssrc=0x4000 + index))
    cpu = {"light": [], "native": []}
    base = 0
    for _ in range(2):
        for name, generator in (("light", run_light), ("native", run_native)):
            result = generator(flows, rate_per_flow=RATE, duration=1.5, warmup=0.2, seq_base=base)
            base += 100
            assert result.loss == 0.0 and result.bad == 0
            cpu[name].append(result.generator_cpu_percent)
    assert min(cpu["light"]) > 0
    assert min(cpu["native"]) < 0.8 * min(cpu["light"]), cpu
