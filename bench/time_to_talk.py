"""Time to talk for a UDP bot: from ``POST /v1/join`` to its first audio packet
arriving at the other participant.

Usage (from the repository root)::

    python -m bench.time_to_talk [--joins 50] [--sdk-joins 20]

The real server runs in a subprocess (``bench.harness.server.RelayProcess``, core 0).
For every join a fresh room holds a listener bot, already joined and latched.
The clock starts just before the speaker's ``POST /v1/join`` (its attestation
is minted beforehand, as a bot holds its token before it calls) and stops when
the listener's socket has the speaker's first RTP packet. In between, the
speaker does what every UDP bot must:

1. ``join``: ``POST /v1/join`` on a new TCP connection;
2. ``ws``: open the ``websocket_url`` and read the ``welcome`` event;
3. ``latch``: a signed STUN Binding request, the relay's check of the
   address answered, the request again, until the Binding success
   (retransmitted after 50 ms, 100 ms... as the SDK does);
4. ``rtp``: send one Opus RTP packet, which the listener receives.

Two runs: the protocol done by hand here (lean: trio + h11 + trio-websocket,
nothing else), and the Python SDK (``botcall_sdk.connect`` then ``send_opus``),
which is what a bot author gets. Printed: median, p95 and max of the total and
of each phase, in milliseconds. After each join the room is deleted, so the
server's state stays the same from one join to the next.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
import numpy
import trio
from trio_websocket import open_websocket_url

from bench.harness.machine import GENERATOR_CORE, machine_description, run_isolated
from bench.harness.server import Api, join_bot, latch_bots, RelayProcess
from bench.harness.machine import pin_to_core
from botcall.errors import BadPacket
from botcall.wire.stun import answer_check_untrusted, binding_request, parse_binding_response_untrusted

PHASES = ("join", "ws", "latch", "rtp")
STEP_TIMEOUT = 10.0
LATCH_FIRST_RETRANSMIT = 0.05
LATCH_MAX_RETRANSMIT = 0.5
HTTP_MAX_BYTES = 64 * 1024
# One Opus frame's worth of payload (20 ms at ~64 kbit/s).
OPUS_PAYLOAD = bytes(range(160))


@dataclass
class Timeline:
    """One join's phases, in seconds (see the module docstring)."""

    phases: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.phases.values())


async def http_json(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    """One HTTP/1.1 request on a new TCP connection (as a bot's first call makes it).

    Returns:
        ``(status, JSON body)``.
    """
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        connection = h11.Connection(h11.CLIENT)
        data = b"" if body is None else json.dumps(body).encode()
        headers = [("Host", parts.netloc), ("Content-Length", str(len(data))), ("Connection", "close")]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        await stream.send_all(connection.send(h11.Request(method=method, target=target, headers=headers)))
        await stream.send_all(connection.send(h11.Data(data=data)) + connection.send(h11.EndOfMessage()))
        status, chunks, size = 0, [], 0
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(4096))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > HTTP_MAX_BYTES:
                    raise RuntimeError("response too large")
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    payload = b"".join(chunks)
    return status, json.loads(payload) if payload else {}


def rtp_packet(ssrc: int, seq: int) -> bytes:
    """A plain Opus RTP packet (RFC 3550 §5.1, payload type 111)."""
    return bytes((0x80, 111)) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big") + ssrc.to_bytes(4, "big") + OPUS_PAYLOAD


async def wait_for_rtp(sock: socket.socket, ssrc: int) -> None:
    """Until ``sock`` (the listener's) receives an RTP packet of ``ssrc``."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            continue
        if len(data) >= 12 and data[0] >> 6 == 2 and int.from_bytes(data[8:12], "big") == ssrc:
            return


async def latch_by_hand(sock, relay_addr, media: dict) -> None:
    """STUN Binding with retransmission until the relay's signed success.

    The relay first checks our address with a Binding request of its own; we
    answer it and send our request again at once (as the SDK does).
    """
    transaction_id = secrets.token_bytes(12)
    request = binding_request(f"{media['ice_ufrag']}:ttt", media["ice_pwd"], transaction_id=transaction_id)
    interval = LATCH_FIRST_RETRANSMIT
    while True:
        await sock.sendto(request, relay_addr)
        with trio.move_on_after(interval):
            while True:
                data, source = await sock.recvfrom(2048)
                if data[:2] == b"\x00\x01":  # the relay's check
                    try:
                        answer = answer_check_untrusted(data, source, username=f"ttt:{media['ice_ufrag']}", password=media["ice_pwd"])
                    except BadPacket:
                        continue
                    await sock.sendto(answer, relay_addr)
                    await sock.sendto(request, relay_addr)
                    continue
                try:
                    parse_binding_response_untrusted(data, media["ice_pwd"], transaction_id)
                    return
                except BadPacket:
                    continue
        interval = min(interval * 2, LATCH_MAX_RETRANSMIT)


async def talk_by_hand(relay: RelayProcess, token: str, agent: str, room_id: str, listener_sock: socket.socket) -> Timeline:
    """The protocol done by hand; returns the phases of one join."""
    timeline = Timeline()
    clock = time.perf_counter
    with trio.fail_after(STEP_TIMEOUT):
        started = clock()
        body = {"agent_id": agent, "room_id": room_id, "attestation": {"token": token}}
        status, joined = await http_json("POST", f"{relay.http_url}/v1/join", body)
        if status != 200:
            raise RuntimeError(f"join: {status} {joined}")
        mark = clock()
        timeline.phases["join"] = mark - started
        async with open_websocket_url(joined["websocket_url"]) as ws:
            welcome = json.loads(await ws.get_message())
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"unexpected first event {welcome}")
            timeline.phases["ws"], mark = clock() - mark, clock()
            media = joined["media"]
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                await sock.bind(("127.0.0.1", 0))
                relay_addr = (media["host"], media["port"])
                await latch_by_hand(sock, relay_addr, media)
                timeline.phases["latch"], mark = clock() - mark, clock()
                await sock.sendto(rtp_packet(media["ssrc"], 0), relay_addr)
                await wait_for_rtp(listener_sock, media["ssrc"])
                timeline.phases["rtp"] = clock() - mark
    return timeline


async def talk_with_sdk(relay: RelayProcess, token: str, room_id: str, listener_sock: socket.socket) -> Timeline:
    """``botcall_sdk.connect`` then ``send_opus``; the SDK hides the phases, so only the total."""
    from botcall_sdk import connect

    timeline = Timeline()
    with trio.fail_after(STEP_TIMEOUT):
        started = time.perf_counter()
        async with connect(relay.http_url, room_id, token) as call:
            await call.send_opus(OPUS_PAYLOAD)
            await wait_for_rtp(listener_sock, call.media["ssrc"])
            timeline.phases["sdk"] = time.perf_counter() - started
    return timeline


def run_joins(relay: RelayProcess, joins: int, *, sdk: bool) -> list[Timeline]:
    """``joins`` measured joins, each into a fresh room with a latched listener."""
    api = Api(relay.http_url, relay.data_dir)
    timelines = []
    try:
        for index in range(joins):
            owner = f"ttt-owner{index}"
            room_id, _ = api.create_room(owner, max_humans=0)
            listener = join_bot(api, f"ttt-listener{index}", room_id, relay.media_addr)
            try:
                latch_bots([listener])
                agent = f"ttt-speaker{index}"
                token = api.token(agent)
                if sdk:
                    timeline = trio.run(talk_with_sdk, relay, token, room_id, listener.sock)
                else:
                    timeline = trio.run(talk_by_hand, relay, token, agent, room_id, listener.sock)
                timelines.append(timeline)
            finally:
                listener.sock.close()
                status, body = api.request("DELETE", f"/v1/rooms/{room_id}", None, api.token(owner))
                if status != 200:
                    raise RuntimeError(f"delete room: {status} {body}")
    finally:
        api.close()
    return timelines


def summarize(label: str, values_s: list[float]) -> str:
    """``label  median  p95  max  (n)`` in milliseconds."""
    values = numpy.asarray(values_s) * 1e3
    return (
        f"{label:<14}{statistics.median(values):>9.2f}{numpy.percentile(values, 95):>9.2f}"
        f"{values.min():>9.2f}{values.max():>9.2f}{len(values):>6}"
    )


HEADER = f"{'':<14}{'median':>9}{'p95':>9}{'min':>9}{'max':>9}{'n':>6}"


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_isolated(lambda: _main(argv)))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description="Time to talk for a UDP bot, join to first audio at the other side.")
    parser.add_argument("--joins", type=int, default=50, help="measured joins, protocol by hand")
    parser.add_argument("--sdk-joins", type=int, default=20, help="measured joins through botcall_sdk.connect (0: skip)")
    args = parser.parse_args(argv)
    pin_to_core(GENERATOR_CORE)
    print(machine_description())
    print("time to talk, UDP bot: POST /v1/join -> first RTP packet at the other bot, milliseconds")
    with RelayProcess() as relay:
        by_hand = run_joins(relay, args.joins, sdk=False)
        print(f"\nprotocol by hand ({args.joins} joins)")
        print(HEADER)
        print(summarize("total", [t.total for t in by_hand]))
        for phase in PHASES:
            print(summarize(f"  {phase}", [t.phases[phase] for t in by_hand]))
        if args.sdk_joins:
            with_sdk = run_joins(relay, args.sdk_joins, sdk=True)
            print(f"\nbotcall_sdk.connect + send_opus ({args.sdk_joins} joins)")
            print(HEADER)
            print(summarize("total", [t.total for t in with_sdk]))


if __name__ == "__main__":
    main()
