"""Hypothesis: the RTCP parser returns packets or raises RtcpParseError, nothing else.

Also: generated compounds round-trip, and mutated valid compounds fail only
with RtcpParseError.
"""

from hypothesis import given, strategies as st

from botcall.errors import RtcpParseError
from botcall.wire.rtcp import (
    RTCP_HEADER,
    Bye,
    GenericNack,
    PictureLossIndication,
    RawRtcpPacket,
    ReceiverReport,
    ReportBlock,
    RtcpFeedback,
    RtcpPacketType,
    Sdes,
    SdesChunk,
    SdesItem,
    SenderReport,
    parse_rtcp_compound_untrusted,
    serialize_rtcp_compound,
)

from .test_fuzz_rtp import mutate, mutations, with_examples

RR = bytes.fromhex("80c9000100000001")

# Every malformed shape the unit tests name, kept as regression examples.
MALFORMED_COMPOUNDS = [
    bytes.fromhex(text.replace(" ", ""))
    for text in [
        "",  # length 0: empty input
        "80",  # truncated header
        "80c900",
        "80c90001 00000001 80c9",  # trailing bytes after a packet
        "00c90001 00000001",  # version 0
        "40c90001 00000001",  # version 1
        "c0c90001 00000001",  # version 3
        "80c90001 00000001 40c90001 00000001",  # second packet's version
        "80c90002 00000001",  # length field overruns the datagram
        "80c9ffff 00000001",
        "80c90001 00000001 80c90001 000000",  # second packet's length overruns
        "a0c90001 00000001 80c90001 00000001",  # padding not on the last packet
        "a0c90001 00000000",  # padding count 0
        "a0c90001 00000003",  # padding count not a multiple of 4
        "a0c90001 00000008",  # padding count past the body
        "a0cc0000",  # padding bit, no body
        "a0c90001 00000004",  # padding eats the RR's SSRC
        "80c80005" + "00" * 20,  # SR shorter than its sender info
        "81c80006" + "00" * 24,  # SR report count overruns
        "9fc8000c" + "00" * 48,  # SR report count 31
        "80c90000",  # RR without SSRC
        "81c90001 00000001",  # RR report count overruns
        "82c90007" + "00" * 28,
        "81ca0000",  # SDES chunk count overruns
        "82ca0002 00000001 00000000",
        "81ca0001 00000001",  # SDES chunk without END item
        "81ca0002 00000001 01026162",
        "81ca0002 00000001 01016105",  # SDES item without length octet
        "81ca0002 00000001 010a6162",  # SDES item overruns
        "81ca0002 00000001 00000100",  # SDES padding not null
        "81ca0003 00000001 00000000 00000000",  # data after the last chunk
        "80ca0001 00000000",
        "81cb0000",  # BYE source count overruns
        "83cb0002 00000001 00000002",
        "81cb0002 00000001 04616263",  # BYE reason overruns
        "81cb0002 00000001 ff000000",
        "81cb0003 00000001 01610000 00000000",  # data after the BYE reason
        "81cb0002 00000001 01610001",  # BYE reason padding not null
        "81cd0001 00000001",  # NACK without media SSRC
        "81ce0000",  # PLI without SSRCs
        "8fce0001 00000001",  # other feedback without media SSRC
        "81ce0003 00000001 00000002 00000000",  # PLI with an FCI
    ]
]


def has_padding(data: bytes) -> bool:
    """Whether any packet of a compound that parsed has its P bit set."""
    offset = 0
    while offset < len(data):
        first, _, words = RTCP_HEADER.unpack_from(data, offset)
        if first & 0x20:
            return True
        offset += 4 + 4 * words
    return False


def parse_or_reject(data: bytes) -> list | None:
    try:
        packets = parse_rtcp_compound_untrusted(data)
    except RtcpParseError as error:
        assert error.counter == "malformed_rtcp"
        return None
    assert packets
    serialised = serialize_rtcp_compound(packets)
    # Unpadded compounds come back byte for byte; padded ones lose only the padding.
    if has_padding(data):
        assert len(serialised) < len(data)
        assert parse_rtcp_compound_untrusted(serialised) == packets
    else:
        assert serialised == data
    return packets


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 2**32 - 1)
word_aligned = st.integers(0, 8).flatmap(lambda words: st.binary(min_size=4 * words, max_size=4 * words))
report_blocks = st.builds(
    ReportBlock, u32, st.integers(0, 255), st.integers(-0x800000, 0x7FFFFF), u32, u32, u32, u32
)
report_lists = st.lists(report_blocks, max_size=31).map(tuple)
sdes_chunks = st.builds(
    SdesChunk, u32, st.lists(st.builds(SdesItem, st.integers(1, 255), st.binary(max_size=255)), max_size=5).map(tuple)
)
rtcp_packets = st.one_of(
    st.builds(SenderReport, u32, st.integers(0, 2**64 - 1), u32, u32, u32, report_lists, word_aligned),
    st.builds(ReceiverReport, u32, report_lists, word_aligned),
    st.builds(Sdes, st.lists(sdes_chunks, max_size=31).map(tuple)),
    st.builds(Bye, st.lists(u32, max_size=31).map(tuple), st.none() | st.binary(max_size=255)),
    st.builds(GenericNack, u32, u32, st.lists(st.tuples(u16, u16), max_size=40).map(tuple)),
    st.builds(PictureLossIndication, u32, u32),
    # FMT 1 is a generic NACK under RTPFB and a PLI under PSFB: generated above.
    st.builds(
        RtcpFeedback,
        st.sampled_from([RtcpPacketType.RTPFB, RtcpPacketType.PSFB]),
        st.integers(0, 31).filter(lambda fmt: fmt != 1),
        u32,
        u32,
        word_aligned,
    ),
    st.builds(
        RawRtcpPacket,
        st.integers(0, 255).filter(lambda packet_type: not 200 <= packet_type <= 206),
        st.integers(0, 31),
        word_aligned,
    ),
)
compounds = st.lists(rtcp_packets, min_size=1, max_size=6)
# Arbitrary bytes rarely carry version 2 and a known type; half the inputs do.
rtcp_like = st.one_of(
    st.binary(max_size=400),
    st.builds(
        lambda first, packet_type, words, rest: bytes([first, packet_type]) + words.to_bytes(2, "big") + rest,
        st.integers(0x80, 0xBF),
        st.integers(200, 207),
        st.integers(0, 12),
        st.binary(max_size=60),
    ),
)


@with_examples(MALFORMED_COMPOUNDS)
@given(rtcp_like)
def test_arbitrary_bytes_parse_or_raise_rtcp_parse_error(data):
    parse_or_reject(data)


@given(compounds)
def test_generated_compounds_round_trip(packets):
    data = serialize_rtcp_compound(packets)
    assert parse_rtcp_compound_untrusted(data) == packets


@given(compounds, st.integers(1, 63))
def test_padded_compounds_parse_to_the_same_packets(packets, padding_words):
    # RFC 3550 §6.4.1: padding on the last packet, counted by its last octet.
    data = bytearray(serialize_rtcp_compound(packets))
    last = len(data) - len(bytes(packets[-1]))
    first, packet_type, words = RTCP_HEADER.unpack_from(data, last)
    RTCP_HEADER.pack_into(data, last, first | 0x20, packet_type, words + padding_words)
    data += bytes(4 * padding_words - 1) + bytes([4 * padding_words])
    assert parse_rtcp_compound_untrusted(bytes(data)) == packets


@given(compounds, mutations)
def test_mutated_compounds_parse_or_raise_rtcp_parse_error(packets, operations):
    parse_or_reject(mutate(serialize_rtcp_compound(packets), operations))
