"""Smoke run of the comparison's harnesses, and the bench-side codecs they rely on.

Each relay really starts (coturn, rtpengine in userspace mode, BotCall's
server, aiortc's MediaRelay in the bench virtualenv), passes a few packets
through real loopback UDP (TURN ChannelData with long-term credentials, ng
calls, latched bots, DTLS-SRTP legs) that arrive byte for byte, and is gone
after its ``with`` block. Nothing here measures speed: every wait is for an
event with a generous bound, and the assertions are about content and
counts. A peer that is not installed is skipped with the command that
installs it.

The ng protocol's bencode decoder reads bytes from the network: it is fuzzed
(either a value or ``BencodeError``, and ``decode(encode(v)) == v``), with a
regression example for each malformed shape.
"""

from __future__ import annotations

import math
import os
import select
import shutil
import socket
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bench import compare
from bench.peers.coturn import FIRST_CHANNEL, CoturnRelay, TurnClient, channel_data_header
from bench.harness.fanout import drive_fanout, FanoutResult, packets_per_run
from tests.kit.system import HarnessError, read_proc_stat
from bench.peers.rtpengine import (
    BencodeError,
    RtpengineRelay,
    decode_bencode_untrusted,
    encode_bencode,
    parse_ng_reply_untrusted,
    sdp_media_address,
)

RTP = struct.Struct("!BBHII")
WAIT = 10.0  # a bound on a loopback round trip, far above what it takes

needs_coturn = pytest.mark.skipif(
    shutil.which("turnserver") is None, reason="coturn is not installed: apt-get install coturn (python -m bench.compare installs it)"
)
needs_rtpengine = pytest.mark.skipif(
    shutil.which("rtpengine") is None,
    reason="rtpengine is not installed: apt-get install rtpengine-daemon (python -m bench.compare installs it)",
)


def rtp_packet(ssrc: int, seq: int, size: int = 172) -> bytes:
    head = RTP.pack(0x80, 111, seq, seq * 960, ssrc)
    return head + bytes((seq + i) & 0xFF for i in range(size - len(head)))


def receive(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` datagrams from a non-blocking socket, waiting for each at most ``WAIT``."""
    got: list[bytes] = []
    while len(got) < count:
        ready, _, _ = select.select([sock], [], [], WAIT)
        if not ready:
            break
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            continue
    return got


def assert_gone(pid: int) -> None:
    with pytest.raises(HarnessError):
        read_proc_stat(pid)


# --- coturn -------------------------------------------------------------------------------


@pytest.mark.e2e
@needs_coturn
def test_coturn_relays_channel_data_to_the_peer_byte_for_byte():
    with CoturnRelay(core=None, max_flows=3) as relay:
        flows = relay.create_flows(3, packet_size=172)
        assert {flow.prefix for flow in flows} == {channel_data_header(FIRST_CHANNEL, 172)}
        assert len({flow.send_sock.getsockname() for flow in flows}) == 3  # one allocation each
        assert relay.keep_alive() == 0  # just made: nothing due
        for round_ in range(2):
            sent = []
            for seq in range(4):
                for flow in flows:
                    packet = rtp_packet(flow.ssrc, seq)
                    flow.send_sock.sendto(flow.prefix + packet, flow.dest)
                    sent.append(packet)
            got = receive(relay.peer_sock, len(sent))
            assert sorted(got) == sorted(sent)  # the ChannelData header is gone, the rest intact
            if round_ == 0:
                # Refresh (allocation, channel, permission) and leave the sockets usable.
                assert relay.keep_alive(force=True) == 3
        # Each allocation relays from a port of coturn's reserved range.
        port_min, port_max = relay.ports.relay_range
        assert all(port_min <= a.relayed[1] <= port_max for a in relay.allocations) and port_max < 32768
        assert relay.port == relay.ports.control_port
        # Numbered on from the first flow; the range was sized for three.
        assert [flow.ssrc for flow in flows] == [CoturnRelay.first_ssrc + i for i in range(3)]
        with pytest.raises(HarnessError, match="sized for 3 flows"):
            relay.create_flows(1, packet_size=172)
        pid = relay.pid
    assert_gone(pid)


@pytest.mark.e2e
@needs_coturn
def test_coturn_refuses_a_wrong_password():
    with CoturnRelay(core=None, max_flows=1) as relay:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        with sock:
            client = TurnClient(sock, ("127.0.0.1", relay.port), password="not-the-password")
            with pytest.raises(HarnessError, match="credentials refused|401"):
                client.allocate()


def test_channel_data_header_bounds():
    assert channel_data_header(0x4000, 172) == b"\x40\x00\x00\xac"
    assert channel_data_header(0x4FFF, 0) == b"\x4f\xff\x00\x00"
    for channel, length in ((0x3FFF, 1), (0x5000, 1), (0x4000, -1), (0x4000, 0x10000)):
        with pytest.raises(ValueError):
            channel_data_header(channel, length)


# --- rtpengine ---------------------------------------------------------------------------


@pytest.mark.e2e
@needs_rtpengine
def test_rtpengine_relays_every_call_to_the_callee():
    with RtpengineRelay(core=None, max_flows=3) as relay:
        flows = relay.create_flows(3)
        # One call per flow: each caller sends to its own rtpengine port, one
        # of the range reserved for it (below the ephemeral range, not its ng port).
        assert len({flow.dest for flow in flows}) == 3
        port_min, port_max = relay.ports.relay_range
        assert all(flow.dest[0] == "127.0.0.1" and port_min <= flow.dest[1] <= port_max for flow in flows)
        assert relay.ng_port == relay.ports.control_port and port_max < 32768
        sent = []
        for seq in range(4):
            for flow in flows:
                packet = rtp_packet(flow.ssrc, seq)
                flow.send_sock.sendto(packet, flow.dest)
                sent.append(packet)
        got = receive(relay.callee_sock, len(sent))
        assert sorted(got) == sorted(sent)
        pid = relay.pid
    assert_gone(pid)


def test_sdp_media_address_reads_rewritten_sdp():
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\nc=IN IP4 127.0.0.1\r\nm=audio 30000 RTP/AVP 111\r\n"
    assert sdp_media_address(sdp) == ("127.0.0.1", 30000)
    with pytest.raises(HarnessError):
        sdp_media_address("v=0\r\nm=audio 30000 RTP/AVP 111\r\n")


# --- BotCall ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_botcall_forwards_bot_flows_and_srtp_fanout():
    from bench.peers.botcall_relay import BotCallRelay

    with BotCallRelay(core=None, max_humans=4) as relay:
        # Like its peers, the server runs at the comparison's niceness, and the
        # generator's sockets are not connected (it sends with sendto to all).
        assert os.getpriority(os.PRIO_PROCESS, relay.pid) == os.getpriority(os.PRIO_PROCESS, 0)
        assert relay.process.log_path.parent == relay.workdir
        flows = relay.create_flows(2)
        for flow in flows:
            with pytest.raises(OSError):
                flow.send_sock.getpeername()
        sent = {}
        for seq in range(3):
            for flow in flows:
                packet = rtp_packet(flow.ssrc, seq)
                flow.send_sock.sendto(packet, flow.dest)
                sent.setdefault(flow.recv_sock.fileno(), []).append(packet)
        for flow in flows:
            # Each listener hears its own room's speaker, unchanged.
            assert receive(flow.recv_sock, 3) == sent[flow.recv_sock.fileno()]

        speaker, legs = relay.create_subscribers(2)
        packets = [rtp_packet(speaker.ssrc, seq) for seq in range(3)]
        for packet in packets:
            speaker.sock.sendto(packet, speaker.relay_addr)
        for leg in legs:
            plain = [leg.srtp.unprotect_untrusted(data) for data in receive(leg.sock, 3)]
            assert [p[12:] for p in plain] == [p[12:] for p in packets]  # payload intact
            assert {RTP.unpack_from(p)[4] for p in plain} == {leg.out_ssrc}  # the SSRC its answer announced

        # Two runs of the fan-out drive from the same speaker: the second continues
        # the sequence numbers, so SRTP's replay window accepts it.
        run = dict(rate=50.0, duration=0.2, warmup=0.0, cpu_pid=relay.pid)
        first_seq = 3
        for _ in range(2):
            result = drive_fanout(speaker, legs, first_seq=first_seq, **run)
            assert result.bad == 0 and result.forwarded > 0 and result.subscribers == 2
            first_seq += packets_per_run(rate=50.0, duration=0.2, warmup=0.0)
        pid = relay.pid
    assert_gone(pid)


def test_fanout_result_derived_figures():
    result = FanoutResult("botcall", 10, window_s=10.0, relay_cpu_s=0.5, forwarded=5000, per_subscriber_pps=50.0, min_subscriber_pps=49.0)
    assert result.cpu_us_per_packet == pytest.approx(100.0)
    assert result.relay_cpu_percent == pytest.approx(5.0)
    assert result.subscribers_per_core() == pytest.approx(200.0)
    empty = FanoutResult("aiortc", 1, window_s=1.0, relay_cpu_s=0.1, forwarded=0, per_subscriber_pps=0, min_subscriber_pps=0)
    assert math.isnan(empty.cpu_us_per_packet) and math.isnan(empty.subscribers_per_core())


# --- aiortc -----------------------------------------------------------------------------------


def _bench_python():
    from bench.peers.aiortc import ensure_bench_venv

    try:
        return ensure_bench_venv(install=False)
    except HarnessError as exc:
        pytest.skip(f"{exc} (python -m bench.compare creates it)")


@pytest.mark.e2e
def test_aiortc_relay_feeds_every_subscriber():
    from bench.peers.aiortc import AiortcFanout

    python = _bench_python()
    with AiortcFanout(2, relay_core=None, load_core=None, python=python) as fanout:
        # Set-up returns only once every subscriber decoded a frame of the relayed track.
        assert fanout.setup_s > 0
        result = fanout.measure(2.0)
        assert result.subscribers == 2 and result.forwarded > 0 and result.relay_cpu_s >= 0
        pids = (fanout.pid, fanout.clients.pid)
    for pid in pids:
        assert_gone(pid)


# --- the report ---------------------------------------------------------------------------------


def plain_cell(relay, flows, cost, repeat=0, **figures):
    values = dict(offered_pps=flows * 50.0, delivered_pps=flows * 50.0, loss=0.0, latency_p50_ms=0.2, latency_p99_ms=1.0)
    values.update(added_p50_ms=0.1, added_p99_ms=0.5, relay_cpu_percent=10.0, generator_cpu_percent=20.0, other_cpu_percent=0.0)
    values.update(figures)
    return compare.PlainCell(relay=relay, flows=flows, repeat=repeat, cpu_us_per_packet=cost, **values)


def fanout_cell(relay, k, cost, worst=50.0, repeat=0):
    nan = math.nan
    return compare.FanoutCell(relay, k, repeat, 10.0, cost * k * 500 / 1e6, k * 500, cost, 1.0, 50.0, worst, nan, nan, nan, nan, 1.0)


def test_goals_compare_medians_and_say_met_or_missed():
    plain = [plain_cell("botcall", 100, cost, repeat=i) for i, cost in enumerate((11.0, 12.0, 30.0))]
    plain += [plain_cell("coturn", 100, 10.0), plain_cell("rtpengine", 100, 16.0)]
    fanout = [fanout_cell("aiortc", 1, 2000.0), fanout_cell("botcall", 1, 400.0), fanout_cell("aiortc", 10, 1500.0)]
    fanout += [fanout_cell("botcall", 10, 50.0), fanout_cell("aiortc", 20, 1400.0, worst=30.0), fanout_cell("botcall", 20, 25.0)]
    lines = compare.goals(plain, fanout, (100,))
    # Median 12 us against coturn's 10 and rtpengine's 16.
    assert any("1.2x coturn's: MET (N=100: 1.20x)" in line for line in lines)
    assert any("rtpengine's: MET (N=100: 0.75x)" in line for line in lines)
    assert any("at every K: MET (K=1: 5.0x, K=10: 30.0x, K=20: 56.0x)" in line for line in lines)
    # aiortc served K=10 at most (K=20's worst subscriber got 30/s): 1e6/(50*1500) per core.
    assert compare.subscribers_per_core(fanout, "aiortc") == (10, pytest.approx(1e6 / (50 * 1500)))
    assert compare.subscribers_per_core(fanout, "botcall") == (20, pytest.approx(800.0))
    assert any("subscribers per core >= 25x aiortc's: MET (60x" in line for line in lines)

    slow = [plain_cell("botcall", 100, 14.0), plain_cell("coturn", 100, 10.0)]
    assert any("coturn's: MISSED (N=100: 1.40x)" in line for line in compare.goals(slow, [], (100,)))


def test_tables_show_spread_and_ratio():
    plain = [plain_cell("direct", 100, math.nan)]
    plain += [plain_cell("botcall", 100, cost, repeat=i) for i, cost in enumerate((9.0, 10.0, 12.0))]
    plain += [plain_cell("coturn", 100, 8.0)]
    table = "\n".join(compare.plain_table(plain, (100,)))
    assert "10.00 [9.00..12.00]" in table  # median [min..max] of BotCall's repeats
    assert "1.25x" in table  # BotCall's median over coturn's
    fan = "\n".join(compare.fanout_table([fanout_cell("aiortc", 5, 1500.0), fanout_cell("botcall", 5, 100.0)]))
    assert "15.0x" in fan


def test_a_botcall_variant_gets_its_own_rows_and_its_ratio_to_coturn():
    from bench.peers.botcall_relay import variant_config

    plain = [plain_cell("botcall", 100, 12.0), plain_cell("coturn", 100, 8.0), plain_cell("botcall+plain+fast", 100, 7.0)]
    rows = [line for line in compare.plain_table(plain, (100,)) if "botcall+plain+fast" in line]
    assert len(rows) == 1 and rows[0].rstrip().endswith("0.88x")  # 7 / 8: the variant against coturn
    assert variant_config("botcall") == {}
    assert variant_config("botcall+plain+fast") == {"media_bot_playout": False, "speech_detection": False, "media_fast_path": "inline"}
    for bad in ("botcall+turbo", "coturn+fast", "botcallfast"):
        with pytest.raises(ValueError):
            variant_config(bad)
    assert compare.parse_args(["--relays", "botcall,botcall+fast,coturn"]).relays == ("botcall", "botcall+fast", "coturn")


# --- bencode (the ng protocol) -----------------------------------------------------------------


bencode_values = st.recursive(
    st.integers(min_value=-(10**30), max_value=10**30) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.binary(max_size=10), children, max_size=5),
    max_leaves=30,
)


@given(bencode_values)
def test_bencode_round_trip(value):
    assert decode_bencode_untrusted(encode_bencode(value)) == value


@given(st.binary(max_size=200))
@example(b"")
@example(b"i-0e")  # negative zero
@example(b"i01e")  # leading zero
@example(b"ie")  # no digits
@example(b"i12")  # no end
@example(b"01:a")  # length with a leading zero
@example(b"5:ab")  # string past the end
@example(b"4294967296:")  # length far past the end
@example(b"1a")  # length without a colon
@example(b"l" * 40 + b"e" * 40)  # nested too deeply
@example(b"li1e")  # list without its end
@example(b"d1:ai1e")  # dictionary without its end
@example(b"di1ei2ee")  # a key that is not a string
@example(b"d1:ai1e1:ai2ee")  # duplicate key
@example(b"i1ee")  # trailing bytes
@example(b"x")  # unknown lead byte
def test_bencode_decoder_raises_only_its_own_error(data):
    try:
        value = decode_bencode_untrusted(data)
    except BencodeError:
        return
    # What it accepts is bencode: it decodes back to itself (keys may come unsorted).
    assert decode_bencode_untrusted(encode_bencode(value)) == value


@pytest.mark.parametrize(
    "data",
    [b"i-0e", b"i01e", b"01:a", b"5:ab", b"l" * 40 + b"e" * 40, b"di1ei2ee", b"d1:ai1e1:ai2ee", b"i1ee", b"4294967296:"],
)
def test_bencode_regressions_are_refused(data):
    with pytest.raises(BencodeError):
        decode_bencode_untrusted(data)


def test_ng_reply_needs_our_cookie_and_a_dictionary():
    assert parse_ng_reply_untrusted(b"abc d6:result4:ponge", b"abc") == {b"result": b"pong"}
    for data in (b"abd d6:result4:ponge", b"abcd6:result4:ponge", b"abc li1ee", b"abc "):
        with pytest.raises(BencodeError):
            parse_ng_reply_untrusted(data, b"abc")


@given(st.binary(max_size=100))
def test_ng_reply_parser_raises_only_its_own_error(data):
    try:
        reply = parse_ng_reply_untrusted(data, b"cookie")
    except BencodeError:
        return
    assert isinstance(reply, dict)
