"""Speech detection on the fast path's routes (issue 17, §18d of docs/bench-results.md).

A speaker whose tracker is on the level path (RFC 6464 levels: here a UDP peer
sending ``BOT_AUDIO_LEVEL_ID``, made a human with a barge-in limit) has its
detector run in C by its route; Python gets only the events. The same packets
(silence, speech, a gap, a burst that reaches Python mid-run, a stop by the
levels, a stop by the relay's speaking sweep, a barge-in while a bot plays, a
packet without a level that takes the tracker off the level path) through the
real transport on real UDP sockets with the fast path ``off``, ``inline`` and
``thread`` give the same speech events, speaking lights, barge-in and final
tracker state; with the helper, the level packets never reach Python.
"""

from __future__ import annotations

import shutil
import struct

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from botcall.audio.vad import BOT_AUDIO_LEVEL_ID, SpeechStarted, SpeechStopped
from botcall.relay import fastpath
from botcall.relay.bot_playout import BotPlayout
from botcall.relay.core import Interrupted, MediaRelay, StreamStarted
from botcall.relay.transport import UdpTransport, open_udp_socket
from tests.kit.relay import make_bot, rtp
from tests.relay.test_fastpath import barrier, drain_socket
from tests.relay.test_hot_path import client_socket, latch_over_udp

pytestmark = pytest.mark.skipif(
    not fastpath.available() and shutil.which("gcc") is None,
    reason="botcall.relay._fastpath is not built and there is no gcc to build it",
)

HUMAN_SSRC, BOT_SSRC = 7, 8
OPUS_20MS = b"\x78" + bytes(60)  # TOC config 15: 20 ms
SILENCE, SPEECH = 0x80 | 90, 0x80 | 20  # RFC 6464: V flag, -90 / -20 dBov
INTERRUPTION_MS = 200


def level_packet(position: int, octet: int | None, element_id: int = BOT_AUDIO_LEVEL_ID) -> bytes:
    """A's packet ``position`` (20 ms each) with the level ``octet`` (None: no extension)."""
    header = struct.pack("!BBHII", 0x90 if octet is not None else 0x80, 111, position & 0xFFFF, position * 960, HUMAN_SSRC)
    if octet is None:
        return header + OPUS_20MS
    return header + b"\xbe\xde\x00\x01" + bytes([element_id << 4, octet, 0, 0]) + OPUS_20MS


async def send(ctx, positions_and_levels, *, burst=False):
    """a's packets, paced 1 ms apart as a sender's would be (most reach the relay in
    reads of their own), or as one burst. The pacing waits for nothing: however the
    reads fall, every mode must give the same speech, and ``barrier`` is the wait.
    (A barrier per packet is not possible: it is a STUN request, rate-limited.)"""
    for position, octet in positions_and_levels:
        ctx["sock_a"].sendto(level_packet(position, octet), ctx["addr"])
        if not burst:
            await trio.sleep(0.001)
    await barrier(ctx)


async def until_quiet(ctx):
    """Wait until the relay turns a's speaking light off (its ``on_speaking``)."""
    quiet = ctx["quiet"] = trio.Event()
    with trio.fail_after(10):  # a safety net against a hung relay, not a speed requirement
        if ctx["a"].speaking:
            await quiet.wait()


async def script(ctx):
    relay, a = ctx["relay"], ctx["a"]
    silence = lambda start, count: [(p, SILENCE) for p in range(start, start + count)]  # noqa: E731
    speech = lambda start, count: [(p, SPEECH) for p in range(start, start + count)]  # noqa: E731
    await send(ctx, silence(0, 10))
    # The bot starts talking: 3 s queued in its playout.
    for seq in range(150):
        ctx["sock_b"].sendto(rtp(BOT_SSRC, seq), ctx["addr"])
    await barrier(ctx)
    assert ctx["b"].playout.pending
    await send(ctx, speech(10, 4))
    # A datagram Python handles (from a stranger), then a's packets in the same
    # batch: they reach Python, and the tracker comes back around each.
    ctx["stranger"].sendto(b"\x00\x01junk-for-python", ctx["addr"])
    await send(ctx, speech(14, 6), burst=True)
    await send(ctx, speech(20, 15))  # past the barge-in limit
    await send(ctx, silence(35, 5))
    await send(ctx, silence(90, 5) + speech(95, 20) + silence(115, 30))  # a gap; a run the levels end
    await send(ctx, silence(145, 5) + speech(150, 15))
    # a stops sending while speaking: the relay's sweep ends the run, once the
    # hangover has passed in real time (not sooner, and not a sweep period late).
    silent_since = trio.current_time()
    await until_quiet(ctx)
    ctx["silent_for"] = trio.current_time() - silent_since
    relay.routes_changed()  # a reprogramming brings the tracker back to Python (and hands it over again)
    await barrier(ctx)
    ctx["on_the_level_path"] = tracker_state(a)
    # A packet without a level: the tracker leaves the level path (packet sizes here).
    await send(ctx, [(165, None)] + silence(166, 5))
    relay.routes_changed()  # a reprogramming brings every tracker back to Python
    await barrier(ctx)
    ctx["got_by_b"] = len(drain_socket(ctx["sock_b"]))


async def run(fast_path):
    transport = UdpTransport(open_udp_socket("127.0.0.1", 0), batched=False, fast_path=fast_path)
    relay = MediaRelay(transport.transmit, max_speech_decoders=0)
    a = make_bot(relay, transport.transmit, "a", HUMAN_SSRC)
    b = make_bot(relay, transport.transmit, "b", BOT_SSRC)
    a.human, a.interruption_ms = True, INTERRUPTION_MS
    b.playout = BotPlayout()
    events, lights, tracked = [], [], []
    ctx = {}

    def on_event(peer, event):
        if isinstance(event, SpeechStarted):
            events.append((peer.participant_id, "started", event.stream_ms))
        elif isinstance(event, SpeechStopped):
            events.append((peer.participant_id, "stopped", event.stream_ms, event.duration_ms))
        elif isinstance(event, Interrupted):
            events.append((peer.participant_id, "interrupted", event.by))
        elif isinstance(event, StreamStarted):
            events.append((peer.participant_id, "stream", event.rtp_timestamp))

    relay.on_event = on_event

    def on_speaking(peer, speaking):
        lights.append((peer.participant_id, speaking))
        if peer is a and not speaking and "quiet" in ctx:
            ctx["quiet"].set()

    relay.on_speaking = on_speaking
    track = relay.track_forwarded

    def track_forwarded(peer, data, now):
        tracked.append(data)
        track(peer, data, now)

    relay.track_forwarded = track_forwarded
    ctx.update(relay=relay, transport=transport, a=a, b=b, sock_a=client_socket(), sock_b=client_socket(), stranger=client_socket())
    try:
        async with trio.open_nursery() as nursery:
            ctx["addr"] = await nursery.start(transport.run, relay)
            for sock, peer in ((ctx["sock_a"], a), (ctx["sock_b"], b)):
                await latch_over_udp(sock, peer, ctx["addr"])
            await script(ctx)
            nursery.cancel_scope.cancel()
    finally:
        for name in ("sock_a", "sock_b", "stranger"):
            ctx[name].close()
        transport.sock.close()
    final = (ctx["on_the_level_path"], tracker_state(a), relay.counters["barge_in"])
    hangover_s = a.speech._levels.config()[5] / 1000
    # The sweep runs every 0.1 s; the margin is for a busy machine.
    assert hangover_s - 0.03 <= ctx["silent_for"] <= hangover_s + 1.0, (ctx["silent_for"], hangover_s)
    return events, lights, final, tracked, ctx["got_by_b"]


def tracker_state(peer):
    speech = peer.speech
    assert speech is not None
    return (
        speech.onset_ms, speech.last_ms, speech.interrupted, speech.packet_ms, speech._levels and speech._levels.state(),
        speech._sizes is not None, peer.speaking,
    )


@pytest.fixture(scope="module")
def python_run():
    return trio.run(run, "off")


def test_the_python_run_has_every_kind_of_event(python_run):
    events, lights, final, tracked, got_by_b = python_run
    kinds = [event[1] for event in events if event[0] == "p-a"]
    assert kinds == ["stream", "started", "stopped", "started", "stopped", "started", "stopped"]
    assert ("p-b", "interrupted", "p-a") in events
    assert lights == [("p-a", True), ("p-a", False)] * 3
    on_the_level_path, after, barge_ins = final
    assert not on_the_level_path[5] and after[5] and barge_ins == 1  # it left the level path; one barge-in
    assert got_by_b == 121  # every packet of a forwarded


@pytest.mark.parametrize("fast_path", ["inline", "thread"])
async def test_the_fast_path_gives_the_same_speech_as_python(fast_path, python_run):
    events, lights, final, tracked, got_by_b = await run(fast_path)
    assert events == python_run[0]
    assert lights == python_run[1]
    assert final == python_run[2]
    assert got_by_b == python_run[4]
    # Only the packets from the one without a level on were mirrored to Python's tracker.
    assert [data[0] for data in tracked][:1] == [0x80] and len(tracked) == 6, len(tracked)


# --- the same, random: the helper drained by hand on the relay's own clock ---------------

OCTETS = st.sampled_from([SPEECH, SPEECH, SILENCE, SILENCE, 0x80 | 45, 20])  # 20: loud, V clear


@st.composite
def scenarios(draw):
    steps = []
    for _ in range(draw(st.integers(1, 140))):
        kind = draw(st.sampled_from(["level"] * 12 + ["gap", "back", "wait", "after-python", "bare"]))
        if kind == "level":
            steps.append((kind, draw(OCTETS)))
        elif kind == "after-python":
            steps.append((kind, (draw(OCTETS), draw(st.integers(1, 8)))))
        elif kind in ("gap", "back"):
            steps.append((kind, draw(st.integers(1, 40))))
        elif kind == "wait":
            steps.append((kind, draw(st.integers(1, 1500))))
        else:
            steps.append((kind, None))
    return steps


def run_by_hand(steps, fast):
    """Speaker a (a human, barge-in after 200 ms) and bots b and c (c with 3 s queued),
    latched on real loopback sockets; ``steps`` through ``MediaRelay.handle_datagram``
    or through ``FastForwarder.drain`` on the same explicit clock."""
    from tests.kit.relay import Wire, latch

    wire = Wire()
    relay = MediaRelay(wire, max_speech_decoders=0)
    relay_sock = open_udp_socket("127.0.0.1", 0)
    sockets = {name: client_socket() for name in ("a", "b", "c", "stranger")}
    peers = {name: make_bot(relay, wire, name, ssrc) for name, ssrc in (("a", HUMAN_SSRC), ("b", BOT_SSRC), ("c", 9))}
    a = peers["a"]
    a.human, a.interruption_ms = True, INTERRUPTION_MS
    peers["c"].playout = BotPlayout()
    events, lights = [], []
    relay.on_event = lambda peer, event: events.append((peer.participant_id, type(event).__name__, getattr(event, "stream_ms", None), getattr(event, "duration_ms", None)))
    relay.on_speaking = lambda peer, speaking: lights.append((peer.participant_id, speaking))
    helper = fastpath.FastForwarder(relay_sock, relay) if fast else None
    target = relay_sock.getsockname()
    now = 1.0
    try:
        for name, peer in peers.items():
            latch(relay, wire, peer, sockets[name].getsockname(), now)
        for seq in range(150):
            relay.handle_datagram(rtp(9, seq), sockets["c"].getsockname(), now)

        def deliver(datagrams):
            if helper is None:
                for data, name in datagrams:
                    relay.handle_datagram(data, sockets[name].getsockname(), now)
                return
            for data, name in datagrams:
                sockets[name].sendto(data, target)
            received = 0
            while received < len(datagrams):  # loopback queued them within sendto
                count, _, to_python, _, error = helper.drain(now, True, 64)
                assert error == 0
                received += count
                helper.handle_returned(relay.handle_datagram, to_python, now)

        position = 0
        for kind, value in steps:
            if kind == "wait":
                now += value / 1000
                relay.handle_timeout(now)
                continue
            if kind == "gap":
                position += value
                continue
            now += 0.02
            if kind == "back":
                deliver([(level_packet(max(0, position - value), SPEECH), "a")])
                continue
            if kind == "after-python":  # one batch: a datagram for Python first, then a's packets
                octet, count = value
                packets = [(level_packet(position + k, octet), "a") for k in range(count)]
                position += count
                deliver([(b"\x00\x01junk-for-python", "stranger")] + packets)
                continue
            packet = level_packet(position, value if kind != "bare" else None)
            position += 1
            deliver([(packet, "a")])
        relay.routes_changed()  # the tracker comes back to Python
        if helper is not None:
            helper.drain(now, True, 64)
        return events, lights, tracker_state(a), a.last_voice, relay.counters["barge_in"]
    finally:
        relay_sock.close()
        for sock in sockets.values():
            sock.close()


@settings(max_examples=80, deadline=None)
@given(scenarios())
def test_random_level_streams_give_the_same_speech_through_the_helper(steps):
    assert run_by_hand(steps, fast=True) == run_by_hand(steps, fast=False)
