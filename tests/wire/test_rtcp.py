"""RTCP codec (RFC 3550 §6, RFC 4585 §6), NACK expansion, NTP and report-block helpers."""


import pytest
from hypothesis import given, strategies as st

from botcall.errors import RtcpParseError
from botcall.wire.rtp import parse_rtp_untrusted
from botcall.wire.rtcp import (
    NTP_UNIX_OFFSET,
    Bye,
    GenericNack,
    PictureLossIndication,
    PsfbFormat,
    RawRtcpPacket,
    ReceiverReport,
    ReportBlock,
    RtcpFeedback,
    RtcpPacketType,
    RtpfbFormat,
    Sdes,
    SdesChunk,
    SdesItem,
    SdesItemType,
    SenderReport,
    compact_to_seconds,
    expand_nack_items,
    fraction_lost,
    nack_items_from_lost,
    ntp_middle_32,
    ntp_to_unix,
    parse_rtcp_compound_untrusted,
    report_block_from_stats,
    round_trip_time,
    seconds_to_compact,
    serialize_rtcp_compound,
    unix_to_ntp,
)
from tests.kit.captures import load_hex, load_hex_lines



def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def assert_round_trip(data: bytes) -> list:
    packets = parse_rtcp_compound_untrusted(data)
    assert serialize_rtcp_compound(packets) == data
    return packets


# --- Real-world shaped compounds -----------------------------------------------------


def test_chrome_shaped_sender_report_and_sdes():
    data = load_hex("chrome_sr_sdes.rtcp.hex")
    sr, sdes = assert_round_trip(data)
    assert sr == SenderReport(
        ssrc=0x5E3A0B71,
        ntp_timestamp=0xEB1F6A3C_80000000,
        rtp_timestamp=192000,
        packet_count=200,
        octet_count=20000,
        reports=(
            ReportBlock(
                ssrc=0x1A2B3C4D,
                fraction_lost=13,
                cumulative_lost=-2,
                highest_sequence=65536 + 7214,
                jitter=42,
                last_sr=0x6A3C4000,
                delay_since_last_sr=0x18000,
            ),
        ),
    )
    assert compact_to_seconds(sr.reports[0].delay_since_last_sr) == 1.5
    assert sr.reports[0].loss_ratio == 13 / 256
    assert ntp_to_unix(sr.ntp_timestamp) == 0xEB1F6A3C - NTP_UNIX_OFFSET + 0.5
    assert ntp_middle_32(sr.ntp_timestamp) == 0x6A3C8000
    assert sdes == Sdes((SdesChunk(0x5E3A0B71, (SdesItem(SdesItemType.CNAME, b"wB3Z7f0xTq9aLk2M"),)),))
    assert sdes.chunks[0].cname == b"wB3Z7f0xTq9aLk2M"


def test_chrome_shaped_receiver_report_remb_and_nack():
    data = load_hex("chrome_rr_remb_nack.rtcp.hex")
    rr, remb, nack = assert_round_trip(data)
    assert rr == ReceiverReport(1, (ReportBlock(0x5E3A0B71, 0, 0, 7214, 16, 0, 0),))
    assert remb == RtcpFeedback(RtcpPacketType.PSFB, PsfbFormat.AFB, 1, 0, h("52454d42 010bd4e0 5e3a0b71"))
    exponent, mantissa = remb.fci[5] >> 2, int.from_bytes(remb.fci[5:8], "big") & 0x3FFFF
    assert mantissa << exponent == 1_004_416
    assert nack == GenericNack(1, 0x5E3A0B71, ((7216, 0x8005),))
    assert nack.lost_sequence_numbers() == [7216, 7217, 7219, 7232]


def test_ffmpeg_sender_reports_and_sdes():
    captures = load_hex_lines("ffmpeg_sr_sdes_rtcp.hex")
    first_rtp = parse_rtp_untrusted(load_hex_lines("ffmpeg_opus_rtp.hex")[0])
    reports = []
    for data in captures:
        sr, sdes = assert_round_trip(data)
        assert sr.ssrc == first_rtp.ssrc == 305419896
        assert sr.reports == () and sr.extension == b""
        assert sdes.chunks == (SdesChunk(305419896, (SdesItem(SdesItemType.CNAME, b"botcall-capture"),)),)
        reports.append(sr)
    # The first SR went out with the first RTP packet: same RTP timestamp, nothing counted yet.
    assert (reports[0].rtp_timestamp, reports[0].packet_count, reports[0].octet_count) == (first_rtp.timestamp, 0, 0)
    assert (reports[1].packet_count, reports[1].octet_count) == (250, 0x72A6)
    # ffmpeg stamps wall-clock time: 250 packets of 20 ms later is ~5 s later in both clocks.
    elapsed_ntp = ntp_to_unix(reports[1].ntp_timestamp) - ntp_to_unix(reports[0].ntp_timestamp)
    elapsed_rtp = (reports[1].rtp_timestamp - reports[0].rtp_timestamp) / 48000
    assert 4.5 < elapsed_ntp < 6 and 4.5 < elapsed_rtp < 6
    assert 2020 < 1970 + ntp_to_unix(reports[0].ntp_timestamp) / (365.25 * 86400) < 2100


# --- Each packet type ----------------------------------------------------------------


def test_sender_report_without_blocks_keeps_its_profile_extension():
    data = h("80c80008 00000001 0000000100000002 00000003 00000004 00000005 cafebabe 01020304")
    (sr,) = assert_round_trip(data)
    assert sr == SenderReport(1, (1 << 32) | 2, 3, 4, 5, (), h("cafebabe 01020304"))


def test_receiver_report_with_two_blocks_and_extreme_losses():
    data = h(
        "82c9000d 0000000a"
        "0000000b ff7fffff ffffffff ffffffff ffffffff ffffffff"
        "0000000c 00800000 00000000 00000000 00000000 00000000"
    )
    (rr,) = assert_round_trip(data)
    assert rr.ssrc == 10
    assert rr.reports[0] == ReportBlock(11, 255, 0x7FFFFF, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1)
    assert rr.reports[1] == ReportBlock(12, 0, -0x800000)


def test_empty_receiver_report():
    (rr,) = assert_round_trip(h("80c90001 12345678"))
    assert rr == ReceiverReport(0x12345678)


@pytest.mark.parametrize("length", range(0, 8))
def test_sdes_item_lengths_pad_the_chunk_to_32_bits(length):
    sdes = Sdes((SdesChunk(7, (SdesItem(SdesItemType.NAME, b"n" * length),)),))
    data = bytes(sdes)
    assert len(data) % 4 == 0
    # The END octet plus padding: 1-4 null octets after the item.
    tail = data[4 + 4 + 2 + length :]
    assert 1 <= len(tail) <= 4 and set(tail) == {0}
    assert parse_rtcp_compound_untrusted(data) == [sdes]


def test_sdes_several_chunks_and_items():
    sdes = Sdes(
        (
            SdesChunk(1, (SdesItem(SdesItemType.CNAME, b"a@b"), SdesItem(SdesItemType.TOOL, b"botcall"))),
            SdesChunk(2, ()),
            SdesChunk(3, (SdesItem(SdesItemType.PRIV, b"\x01xyz"), SdesItem(99, b""))),
        )
    )
    data = bytes(sdes)
    assert data[0] == 0x83
    # The empty chunk is its SSRC and one word of nulls.
    assert h("00000002 00000000") in data
    assert assert_round_trip(data) == [sdes]
    assert sdes.chunks[0].cname == b"a@b"
    assert sdes.chunks[1].cname is None


def test_bye_variants():
    assert bytes(Bye((1,))) == h("81cb0001 00000001")
    assert bytes(Bye((1,), b"")) == h("81cb0002 00000001 00000000")
    assert bytes(Bye((1, 2), b"bye")) == h("82cb0003 00000001 00000002 03627965")
    assert bytes(Bye((), b"left")) == h("80cb0002 046c6566 74000000")
    for bye in [Bye(), Bye((1,)), Bye((1,), b""), Bye((1, 2), b"bye"), Bye((), b"left"), Bye(tuple(range(31)), bytes(255))]:
        assert assert_round_trip(bytes(bye)) == [bye]


def test_generic_nack_and_pli_wire_format():
    assert bytes(GenericNack(1, 2, ((100, 0x0003),))) == h("81cd0003 00000001 00000002 00640003")
    assert bytes(PictureLossIndication(1, 2)) == h("81ce0002 00000001 00000002")
    assert parse_rtcp_compound_untrusted(h("81ce0002 00000001 00000002")) == [PictureLossIndication(1, 2)]
    assert parse_rtcp_compound_untrusted(h("81cd0002 00000001 00000002")) == [GenericNack(1, 2, ())]


def test_other_feedback_is_kept_with_its_fci():
    twcc = h("8fcd0005 00000001 5e3a0b71 0001 0002 00000100 2000 0001")
    (packet,) = assert_round_trip(twcc)
    assert packet == RtcpFeedback(RtcpPacketType.RTPFB, RtpfbFormat.TRANSPORT_CC, 1, 0x5E3A0B71, twcc[12:])
    (sli,) = assert_round_trip(h("82ce0003 00000001 00000002 00040041"))
    assert sli == RtcpFeedback(RtcpPacketType.PSFB, PsfbFormat.SLI, 1, 2, h("00040041"))


def test_app_xr_and_unknown_types_are_kept_raw():
    app = h("85cc0003 00000001 6e616d65 64617461")
    xr = h("80cf0002 00000001 04000000")
    unknown = h("9fc00000")
    packets = assert_round_trip(app + xr + unknown)
    assert packets == [
        RawRtcpPacket(RtcpPacketType.APP, 5, h("00000001 6e616d65 64617461")),
        RawRtcpPacket(RtcpPacketType.XR, 0, h("00000001 04000000")),
        RawRtcpPacket(192, 31, b""),
    ]


def test_padding_on_the_last_packet_is_stripped():
    rr = h("80c90001 00000001")
    padded_bye = h("a1cb0002 00000002 00000004")
    assert parse_rtcp_compound_untrusted(rr + padded_bye) == [ReceiverReport(1), Bye((2,))]
    padded_raw = h("a0cc0003 6e616d65 00000000 00000008")
    assert parse_rtcp_compound_untrusted(padded_raw) == [RawRtcpPacket(204, 0, h("6e616d65"))]


def test_accepts_bytearray_and_memoryview():
    data = load_hex("chrome_rr_remb_nack.rtcp.hex") + load_hex("chrome_sr_sdes.rtcp.hex")
    expected = parse_rtcp_compound_untrusted(data)
    for view in (bytearray(data), memoryview(data), memoryview(b"junk" + data)[4:]):
        packets = parse_rtcp_compound_untrusted(view)
        assert packets == expected
        assert type(packets[1].fci) is bytes


# --- Malformed -----------------------------------------------------------------------

RR = h("80c90001 00000001")


@pytest.mark.parametrize(
    "data, message",
    [
        pytest.param(b"", "empty", id="length-0"),
        pytest.param(h("80"), "truncated RTCP header", id="one-byte"),
        pytest.param(h("80c900"), "truncated RTCP header", id="three-bytes"),
        pytest.param(RR + h("80c9"), "truncated RTCP header at offset 8", id="trailing-bytes"),
        pytest.param(h("00c90001 00000001"), "version 0", id="version-0"),
        pytest.param(h("40c90001 00000001"), "version 1", id="version-1"),
        pytest.param(h("c0c90001 00000001"), "version 3", id="version-3"),
        pytest.param(RR + h("40c90001 00000001"), "version 1 at offset 8", id="second-packet-version"),
        pytest.param(h("80c90002 00000001"), "length of 2 words at offset 0 overruns", id="length-overrun"),
        pytest.param(h("80c9ffff 00000001"), "overruns", id="length-ffff"),
        pytest.param(RR + h("80c90001 000000"), "offset 8 overruns", id="second-length-overrun"),
        pytest.param(h("a0c90001 00000001") + RR, "not the last", id="padding-not-last"),
        pytest.param(h("a0c90001 00000000"), "padding count 0", id="padding-0"),
        pytest.param(h("a0c90001 00000003"), "padding count 3", id="padding-unaligned"),
        pytest.param(h("a0c90001 00000008"), "padding count 8", id="padding-past-body"),
        pytest.param(h("a0cc0000"), "padding count 0 is invalid for a 0-byte body", id="padding-no-body"),
        pytest.param(h("a0c90001 00000004"), "RR body has no SSRC", id="padding-eats-ssrc"),
        pytest.param(h("80c80005") + bytes(20), "shorter than the sender info", id="sr-short"),
        pytest.param(h("81c80006") + bytes(24), "SR report count 1 overruns", id="sr-count"),
        pytest.param(h("9fc8000c") + bytes(48), "SR report count 31 overruns", id="sr-count-31"),
        pytest.param(h("80c90000"), "RR body has no SSRC", id="rr-empty"),
        pytest.param(h("81c90001 00000001"), "RR report count 1 overruns", id="rr-count"),
        pytest.param(h("82c90007") + bytes(28), "RR report count 2 overruns", id="rr-count-2"),
        pytest.param(h("81ca0000"), "SDES chunk count 1 overruns", id="sdes-count"),
        pytest.param(h("82ca0002 00000001 00000000"), "SDES chunk count 2 overruns", id="sdes-count-2"),
        pytest.param(h("81ca0001 00000001"), "no END item", id="sdes-no-end"),
        pytest.param(h("81ca0002 00000001 01026162"), "no END item", id="sdes-item-fills-body"),
        pytest.param(h("81ca0002 00000001 01016105"), "SDES item 5 has no length octet", id="sdes-item-no-length"),
        pytest.param(h("81ca0002 00000001 010a6162"), "SDES item 1 overruns", id="sdes-item-overrun"),
        pytest.param(h("81ca0002 00000001 00000100"), "SDES chunk padding", id="sdes-padding-not-null"),
        pytest.param(h("81ca0003 00000001 00000000 00000000"), "4 bytes after the last SDES chunk", id="sdes-trailing"),
        pytest.param(h("80ca0001 00000000"), "4 bytes after the last SDES chunk", id="sdes-count-0-body"),
        pytest.param(h("81cb0000"), "BYE source count 1 overruns", id="bye-count"),
        pytest.param(h("83cb0002 00000001 00000002"), "BYE source count 3 overruns", id="bye-count-3"),
        pytest.param(h("81cb0002 00000001 04616263"), "BYE reason overruns", id="bye-reason-overrun"),
        pytest.param(h("81cb0002 00000001 ff000000"), "BYE reason overruns", id="bye-reason-ff"),
        pytest.param(h("81cb0003 00000001 01610000 00000000"), "4 bytes after the BYE reason", id="bye-trailing"),
        pytest.param(h("81cb0002 00000001 01610001"), "BYE reason padding", id="bye-padding-not-null"),
        pytest.param(h("81cd0001 00000001"), "no SSRCs", id="nack-short"),
        pytest.param(h("81ce0000"), "no SSRCs", id="pli-empty"),
        pytest.param(h("8fce0001 00000001"), "no SSRCs", id="feedback-short"),
        pytest.param(h("81ce0003 00000001 00000002 00000000"), "PLI carries an FCI", id="pli-fci"),
    ],
)
def test_malformed_compounds_raise_rtcp_parse_error(data, message):
    with pytest.raises(RtcpParseError, match=message) as info:
        parse_rtcp_compound_untrusted(data)
    assert info.value.counter == "malformed_rtcp"


# --- Serialising ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "packet, message",
    [
        (ReportBlock(2**32), "ssrc"),
        (ReportBlock(1, fraction_lost=256), "fraction_lost"),
        (ReportBlock(1, cumulative_lost=0x800000), "cumulative_lost"),
        (ReportBlock(1, cumulative_lost=-0x800001), "cumulative_lost"),
        (ReportBlock(1, highest_sequence=-1), "highest_sequence"),
        (ReportBlock(1, jitter=2**32), "jitter"),
        (ReportBlock(1, last_sr=2**32), "last_sr"),
        (ReportBlock(1, delay_since_last_sr=2**32), "delay_since_last_sr"),
        (SenderReport(1, 2**64, 0, 0, 0), "ntp_timestamp"),
        (SenderReport(1, 0, 2**32, 0, 0), "rtp_timestamp"),
        (SenderReport(1, 0, 0, 2**32, 0), "packet_count"),
        (SenderReport(1, 0, 0, 0, 2**32), "octet_count"),
        (SenderReport(1, 0, 0, 0, 0, (ReportBlock(1),) * 32), "at most 31 report blocks"),
        (SenderReport(1, 0, 0, 0, 0, extension=b"abc"), "not 32-bit aligned"),
        (ReceiverReport(-1), "ssrc"),
        (ReceiverReport(1, (ReportBlock(1),) * 32), "at most 31"),
        (ReceiverReport(1, extension=bytes(4 * 65535)), "16-bit length field"),
        (Sdes((SdesChunk(1),) * 32), "at most 31 SDES chunks"),
        (Sdes((SdesChunk(2**32),)), "ssrc"),
        (Sdes((SdesChunk(1, (SdesItem(0, b"x"),)),)), "item type must be 1-255"),
        (Sdes((SdesChunk(1, (SdesItem(256, b"x"),)),)), "item type must be 1-255"),
        (Sdes((SdesChunk(1, (SdesItem(1, bytes(256)),)),)), "at most 255 bytes"),
        (Bye(tuple(range(32))), "at most 31 BYE SSRCs"),
        (Bye((2**32,)), "ssrc"),
        (Bye((1,), bytes(256)), "at most 255 bytes"),
        (GenericNack(2**32, 1), "sender_ssrc"),
        (GenericNack(1, 2**32), "media_ssrc"),
        (GenericNack(1, 2, ((65536, 0),)), "16-bit"),
        (GenericNack(1, 2, ((0, 65536),)), "16-bit"),
        (PictureLossIndication(-1, 0), "sender_ssrc"),
        (PictureLossIndication(0, -1), "media_ssrc"),
        (RtcpFeedback(256, 1, 0, 0), "packet_type"),
        (RtcpFeedback(205, 32, 0, 0), "fmt"),
        (RtcpFeedback(205, 15, 2**32, 0), "sender_ssrc"),
        (RtcpFeedback(205, 15, 0, 2**32), "media_ssrc"),
        (RtcpFeedback(205, 15, 0, 0, b"ab"), "not 32-bit aligned"),
        (RawRtcpPacket(256), "packet_type"),
        (RawRtcpPacket(204, 32), "count"),
        (RawRtcpPacket(204, 0, b"abc"), "not 32-bit aligned"),
    ],
)
def test_serialise_rejects_out_of_range_fields(packet, message):
    with pytest.raises(ValueError, match=message):
        bytes(packet)


def test_compound_needs_a_packet():
    with pytest.raises(ValueError, match="at least one packet"):
        serialize_rtcp_compound([])


def test_largest_packet_fits_the_length_field():
    raw = RawRtcpPacket(204, 0, bytes(4 * 65535))
    data = bytes(raw)
    assert data[2:4] == b"\xff\xff"
    assert parse_rtcp_compound_untrusted(data) == [raw]


# --- Generic NACK helpers ------------------------------------------------------------


def test_nack_items_pack_up_to_16_following_losses():
    assert nack_items_from_lost([100]) == ((100, 0),)
    assert nack_items_from_lost(range(100, 117)) == ((100, 0xFFFF),)
    assert nack_items_from_lost(range(100, 118)) == ((100, 0xFFFF), (117, 0))
    assert nack_items_from_lost([100, 102, 116, 117, 200]) == ((100, 0x8002), (117, 0), (200, 0))
    assert nack_items_from_lost([]) == ()


def test_nack_items_across_the_wrap():
    assert nack_items_from_lost([65534, 65535, 0, 3]) == ((65534, 0b10011),)
    assert expand_nack_items([(65534, 0b10011)]) == [65534, 65535, 0, 3]
    # Extended sequence numbers go on the wire as their low 16 bits.
    assert nack_items_from_lost([65536 * 3 + 5, 65536 * 3 + 6]) == ((5, 1),)


def test_nack_items_ignore_duplicates():
    assert nack_items_from_lost([7, 7, 8, 8]) == ((7, 1),)
    assert expand_nack_items([(7, 1), (7, 1), (8, 0)]) == [7, 8]


def test_generic_nack_from_lost_round_trips_through_bytes():
    nack = GenericNack.from_lost(1, 2, [10, 11, 40, 56, 57, 1000])
    parsed = parse_rtcp_compound_untrusted(bytes(nack))
    assert parsed == [nack]
    assert parsed[0].lost_sequence_numbers() == [10, 11, 40, 56, 57, 1000]


@given(st.integers(0, 2**20), st.sets(st.integers(0, 65535 - 1)))
def test_nack_expansion_recovers_every_lost_sequence_number(base, offsets):
    lost = [base + offset for offset in sorted(offsets)]
    items = nack_items_from_lost(lost)
    assert expand_nack_items(items) == [sequence & 0xFFFF for sequence in lost]
    # Never more items than losses, and a new item only when the gap exceeds 16.
    assert len(items) <= len(lost)
    pids = [pid for pid, _ in items]
    assert all((b - a) & 0xFFFF > 16 for a, b in zip(pids, pids[1:]))


# --- NTP -----------------------------------------------------------------------------


def test_ntp_epoch_offsets():
    assert unix_to_ntp(0) == 0x83AA7E80 << 32
    assert unix_to_ntp(0.5) == 0x83AA7E80 << 32 | 0x80000000
    assert unix_to_ntp(-NTP_UNIX_OFFSET) == 0
    assert ntp_to_unix(0x83AA7E80 << 32) == 0.0
    assert ntp_to_unix(0x83AA7E80 << 32 | 0x40000000) == 0.25


def test_ntp_era_wrap_in_2036():
    wrap = 2**32 - NTP_UNIX_OFFSET  # 2036-02-07 06:28:16 UTC
    assert unix_to_ntp(wrap - 1) == 0xFFFFFFFF << 32
    assert unix_to_ntp(wrap) == 0
    assert unix_to_ntp(wrap + 1.25) == 1 << 32 | 0x40000000
    assert ntp_to_unix(0) == wrap
    assert ntp_to_unix(0xFFFFFFFF << 32) == wrap - 1


def test_ntp_fraction_rounding_carries_into_seconds():
    assert unix_to_ntp(1 - 2**-40) == (0x83AA7E80 + 1) << 32


@given(st.floats(min_value=2**31 - NTP_UNIX_OFFSET, max_value=2**32 + 2**31 - NTP_UNIX_OFFSET - 1, allow_nan=False))
def test_ntp_round_trip(unix_seconds):
    ntp = unix_to_ntp(unix_seconds)
    assert 0 <= ntp < 2**64
    assert abs(ntp_to_unix(ntp) - unix_seconds) < 1e-6


def test_middle_32_bits_and_compact_values():
    assert ntp_middle_32(0x1122334455667788) == 0x33445566
    assert seconds_to_compact(1.5) == 0x18000
    assert seconds_to_compact(-1) == 0
    assert seconds_to_compact(1e9) == 2**32 - 1
    assert compact_to_seconds(0x00054000) == 5.25


def test_round_trip_time_example_from_rfc_3550_figure_2():
    # A = 0xb710:8000 (46864.500 s), LSR = 0xb705:2000, DLSR = 0x0005:4000 (5.250 s).
    assert round_trip_time(0xB7108000, 0xB7052000, 0x00054000) == 6.125


def test_round_trip_time_edge_cases():
    assert round_trip_time(0xB7108000, 0, 0x00054000) is None
    # A report that claims a longer delay than elapsed time: clamped, not 65536 s.
    assert round_trip_time(0x00010000, 0x00008000, 0x00010000) == 0.0
    # Across the 16.16 wrap.
    assert round_trip_time(0x00008000, 0xFFFF8000, 0) == 1.0


# --- Report blocks from statistics ---------------------------------------------------


def test_report_block_without_loss():
    block = report_block_from_stats(
        7, base_sequence=1000, extended_highest_sequence=1099, received=100, expected_prior=0, received_prior=0, jitter=3.9
    )
    assert block == ReportBlock(7, 0, 0, 1099, 3, 0, 0)


def test_report_block_with_interval_and_cumulative_loss():
    block = report_block_from_stats(
        7,
        base_sequence=0,
        extended_highest_sequence=199,
        received=190,
        expected_prior=100,
        received_prior=95,
        jitter=12.0,
        last_sr=0x6A3C8000,
        delay_since_last_sr=0.25,
    )
    # 100 expected this interval, 95 received: 5/100 of 256 = 12.
    assert (block.fraction_lost, block.cumulative_lost) == (12, 10)
    assert (block.last_sr, block.delay_since_last_sr) == (0x6A3C8000, 0x4000)
    assert block.loss_ratio == pytest.approx(0.05, abs=1 / 256)


def test_report_block_with_duplicates_and_total_loss():
    duplicates = report_block_from_stats(
        1, base_sequence=0, extended_highest_sequence=9, received=14, expected_prior=0, received_prior=0, jitter=0
    )
    assert (duplicates.fraction_lost, duplicates.cumulative_lost) == (0, -4)
    silent = report_block_from_stats(
        1, base_sequence=0, extended_highest_sequence=99, received=0, expected_prior=0, received_prior=0, jitter=0
    )
    assert (silent.fraction_lost, silent.cumulative_lost) == (255, 100)


def test_report_block_clamps_to_wire_widths():
    block = report_block_from_stats(
        1,
        base_sequence=0,
        extended_highest_sequence=2**32 + 0x20000 + 5,
        received=1,
        expected_prior=0,
        received_prior=0,
        jitter=2.0**40,
        last_sr=0,
        delay_since_last_sr=3.0,
    )
    assert block.cumulative_lost == 0x7FFFFF
    assert block.highest_sequence == 0x20005
    assert block.jitter == 2**32 - 1
    assert block.delay_since_last_sr == 0  # no SR received: DLSR stays 0
    assert parse_rtcp_compound_untrusted(bytes(ReceiverReport(2, (block,)))) == [ReceiverReport(2, (block,))]
    assert report_block_from_stats(
        1, base_sequence=0, extended_highest_sequence=0, received=2**30, expected_prior=0, received_prior=0, jitter=-1
    ).cumulative_lost == -0x800000


def test_fraction_lost_matches_rfc_3550_a3():
    assert fraction_lost(0, 0) == 0
    assert fraction_lost(100, 100) == 0
    assert fraction_lost(100, 110) == 0
    assert fraction_lost(256, 255) == 1
    assert fraction_lost(100, 50) == 128
    assert fraction_lost(3, 0) == 255


def test_report_block_and_rtt_end_to_end():
    # A sender stamps an SR; the receiver answers 0.75 s later; the SR's sender
    # gets the RR 0.2 s after that: RTT 0.2 s.
    sent_at = 1_700_000_000.0
    sr = SenderReport(9, unix_to_ntp(sent_at), 0, 0, 0)
    last_sr = ntp_middle_32(parse_rtcp_compound_untrusted(bytes(sr))[0].ntp_timestamp)
    block = report_block_from_stats(
        9,
        base_sequence=0,
        extended_highest_sequence=49,
        received=50,
        expected_prior=0,
        received_prior=0,
        jitter=0,
        last_sr=last_sr,
        delay_since_last_sr=0.75,
    )
    (rr,) = parse_rtcp_compound_untrusted(bytes(ReceiverReport(3, (block,))))
    arrival = ntp_middle_32(unix_to_ntp(sent_at + 0.95))
    rtt = round_trip_time(arrival, rr.reports[0].last_sr, rr.reports[0].delay_since_last_sr)
    assert rtt == pytest.approx(0.2, abs=2 / 65536)
