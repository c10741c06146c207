"""SRTP/SRTCP contexts over real libsrtp, keyed by real DTLS-SRTP handshakes."""

from __future__ import annotations

import functools
import struct

import pytest
from hypothesis import example, given, strategies as st

from botcall.errors import SrtpError
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.dtls.endpoint import DtlsEndpoint, DtlsState
from botcall.webrtc.srtp import SrtpContext, SrtpKeys, SrtpProfile
from tests.kit.cheap import c_heap_in_use

RTP = struct.Struct("!BBHII")
SERVER_CERT = DtlsCertificate.generate()
CLIENT_CERT = DtlsCertificate.generate()
PROFILES = list(SrtpProfile)


@functools.cache
def handshake_keys(profile: SrtpProfile) -> tuple[SrtpKeys, SrtpKeys]:
    """(server keys, client keys) from a real, lossless DTLS handshake offering only ``profile``."""
    server = DtlsEndpoint(
        role="server", certificate=SERVER_CERT, remote_fingerprint=CLIENT_CERT.fingerprint, srtp_profiles=[profile]
    )
    client = DtlsEndpoint(
        role="client", certificate=CLIENT_CERT, remote_fingerprint=SERVER_CERT.fingerprint, srtp_profiles=[profile]
    )
    to_server = client.start(0.0)
    while to_server:
        to_client = [out for datagram in to_server for out in server.receive_untrusted(datagram, 0.0)]
        to_server = [out for datagram in to_client for out in client.receive_untrusted(datagram, 0.0)]
    assert server.state is client.state is DtlsState.CONNECTED
    return server.srtp_keys, client.srtp_keys


def contexts(profile: SrtpProfile, **kwargs: int) -> tuple[SrtpContext, SrtpContext]:
    """(relay side, browser side) contexts from one handshake."""
    server_keys, client_keys = handshake_keys(profile)
    return SrtpContext.from_keys(server_keys, **kwargs), SrtpContext.from_keys(client_keys, **kwargs)


def rtp(seq: int, ssrc: int = 0x1234ABCD, payload: bytes = bytes(range(160)), *, timestamp: int | None = None) -> bytes:
    """An Opus RTP packet (PT 111); the timestamp follows the sequence number unless given."""
    timestamp = seq * 960 if timestamp is None else timestamp
    return RTP.pack(0x80, 111, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


def rtcp_sender_report(ssrc: int = 0x1234ABCD, packets: int = 7) -> bytes:
    # RFC 3550 §6.4.1: SR with no report blocks, length 6 (28 bytes).
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3, packets, packets * 160)


def test_profile_wire_values_and_lengths():
    assert SrtpProfile.AES128_CM_HMAC_SHA1_80 == 0x0001  # RFC 5764 §4.1.2
    assert SrtpProfile.AEAD_AES_128_GCM == 0x0007  # RFC 7714 §14.2
    assert SrtpProfile.AEAD_AES_256_GCM == 0x0008
    assert (SrtpProfile.AES128_CM_HMAC_SHA1_80.key_length, SrtpProfile.AES128_CM_HMAC_SHA1_80.salt_length) == (16, 14)
    assert (SrtpProfile.AEAD_AES_128_GCM.key_length, SrtpProfile.AEAD_AES_128_GCM.salt_length) == (16, 12)
    assert SrtpProfile.from_openssl_name(b"SRTP_AES128_CM_SHA1_80") is SrtpProfile.AES128_CM_HMAC_SHA1_80
    assert SrtpProfile.from_openssl_name(b"") is None


@pytest.mark.parametrize("profile", PROFILES)
def test_rtp_round_trip_both_directions_with_handshake_keys(profile):
    relay, browser = contexts(profile)
    for seq in range(1, 50):
        packet = rtp(seq)
        protected = relay.protect(packet)
        assert len(protected) == len(packet) + profile.tag_length
        assert protected[:12] == packet[:12]  # the header stays readable (RFC 3711 §3.1)
        assert protected[12:172] != packet[12:172]  # the payload does not
        assert browser.unprotect_untrusted(protected) == packet
        back = rtp(seq, ssrc=0xB0B0B0B0, payload=b"from the browser")
        assert relay.unprotect_untrusted(browser.protect(back)) == back


@pytest.mark.parametrize("profile", PROFILES)
def test_rtcp_round_trip(profile):
    relay, browser = contexts(profile)
    for count in range(1, 5):
        report = rtcp_sender_report(packets=count)
        protected = relay.protect_rtcp(report)
        # SRTCP adds the E flag + index word and the tag (RFC 3711 §3.4).
        assert len(protected) == len(report) + 4 + profile.tag_length
        assert browser.unprotect_rtcp_untrusted(protected) == report
        assert relay.unprotect_rtcp_untrusted(browser.protect_rtcp(report)) == report


@pytest.mark.parametrize("profile", PROFILES)
def test_replayed_packets_are_refused(profile):
    relay, browser = contexts(profile)
    first = relay.protect(rtp(1))
    browser.unprotect_untrusted(first)
    browser.unprotect_untrusted(relay.protect(rtp(2)))
    for replay in (first, first):
        with pytest.raises(SrtpError) as excinfo:
            browser.unprotect_untrusted(replay)
        assert excinfo.value.counter == "srtp_replay"
    report = relay.protect_rtcp(rtcp_sender_report())
    browser.unprotect_rtcp_untrusted(report)
    with pytest.raises(SrtpError) as excinfo:
        browser.unprotect_rtcp_untrusted(report)
    assert excinfo.value.counter == "srtp_replay"
    # The stream still works afterwards.
    assert browser.unprotect_untrusted(relay.protect(rtp(3))) == rtp(3)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("where", [1, 6, 11, 12, 100, -1])  # PT, timestamp, SSRC, payload start/middle, tag
def test_tampered_packets_are_refused(profile, where):
    relay, browser = contexts(profile)
    protected = bytearray(relay.protect(rtp(10)))
    protected[where] ^= 0x01
    with pytest.raises(SrtpError) as excinfo:
        browser.unprotect_untrusted(bytes(protected))
    assert excinfo.value.counter in ("srtp_auth_failed", "srtp_unprotect_failed")
    # The genuine packet is still accepted: a forgery does not burn its index.
    protected[where] ^= 0x01
    assert browser.unprotect_untrusted(bytes(protected)) == rtp(10)


def test_keys_from_another_handshake_do_not_authenticate():
    relay, _ = contexts(SrtpProfile.AEAD_AES_128_GCM)
    _, other_browser = contexts(SrtpProfile.AES128_CM_HMAC_SHA1_80)
    stranger = SrtpContext(SrtpProfile.AEAD_AES_128_GCM, bytes(28), bytes(28))  # same profile, wrong keys
    protected = relay.protect(rtp(1))
    with pytest.raises(SrtpError) as excinfo:
        stranger.unprotect_untrusted(protected)
    assert excinfo.value.counter == "srtp_auth_failed"
    with pytest.raises(SrtpError):
        other_browser.unprotect_untrusted(protected)


def test_protecting_the_same_index_twice_is_refused():
    """Re-encrypting a sequence number would reuse a keystream (and, for GCM, leak the auth key)."""
    relay, browser = contexts(SrtpProfile.AEAD_AES_128_GCM)
    relay.protect(rtp(5))
    with pytest.raises(SrtpError) as excinfo:
        relay.protect(rtp(5, payload=b"different plaintext"))
    assert excinfo.value.counter == "srtp_protect_failed"
    assert browser.unprotect_untrusted(relay.protect(rtp(6))) == rtp(6)


@pytest.mark.parametrize("profile", PROFILES)
def test_sequence_number_wrap_keeps_the_rollover_counter_in_step(profile):
    relay, browser = contexts(profile)
    for seq in range(65530, 65550):  # wraps to 0..13 with ROC 1 (RFC 3711 §3.3.1)
        packet = rtp(seq)
        assert browser.unprotect_untrusted(relay.protect(packet)) == packet


@pytest.mark.parametrize("profile", PROFILES)
def test_many_ssrcs_on_one_outbound_session(profile):
    """A relay sends every speaker's SSRC toward one browser on one SRTP session."""
    speakers = 200
    server_keys, client_keys = handshake_keys(profile)
    relay = SrtpContext.from_keys(server_keys, max_streams=speakers)
    browser = SrtpContext.from_keys(client_keys, max_streams=speakers + 1)
    ssrcs = [0x10000000 + 7919 * index for index in range(speakers)]
    for seq in range(1, 4):
        for ssrc in ssrcs:
            packet = rtp(seq, ssrc=ssrc, payload=ssrc.to_bytes(4, "big") * 40)
            assert browser.unprotect_untrusted(relay.protect(packet)) == packet
    assert relay.outbound_ssrcs == frozenset(ssrcs) == browser.inbound_ssrcs
    assert len(relay.outbound_ssrcs) == speakers
    # One more speaker is refused until one leaves.
    with pytest.raises(SrtpError) as excinfo:
        relay.protect(rtp(1, ssrc=0xFEEDFACE))
    assert excinfo.value.counter == "srtp_too_many_streams"
    relay.remove_outbound_ssrc(ssrcs[0])
    relay.remove_outbound_ssrc(0x0BADC0DE)  # unknown: ignored
    assert browser.unprotect_untrusted(relay.protect(rtp(1, ssrc=0xFEEDFACE))) == rtp(1, ssrc=0xFEEDFACE)
    # The old streams kept their own replay state and keystreams.
    assert browser.unprotect_untrusted(relay.protect(rtp(4, ssrc=ssrcs[-1]))) == rtp(4, ssrc=ssrcs[-1])


def test_inbound_stream_limit_counts_only_authenticated_ssrcs():
    _, browser = contexts(SrtpProfile.AEAD_AES_128_GCM, max_streams=2)
    sender = SrtpContext.from_keys(handshake_keys(SrtpProfile.AEAD_AES_128_GCM)[0], max_streams=10)
    for ssrc in (1, 2):
        browser.unprotect_untrusted(sender.protect(rtp(1, ssrc=ssrc)))
    # Forged packets under new SSRCs neither pass nor take a slot...
    for ssrc in (3, 4):
        with pytest.raises(SrtpError):
            browser.unprotect_untrusted(rtp(1, ssrc=ssrc) + bytes(16))
    assert browser.inbound_ssrcs == {1, 2}
    # ...and a genuine third SSRC is over the limit.
    with pytest.raises(SrtpError) as excinfo:
        browser.unprotect_untrusted(sender.protect(rtp(1, ssrc=3)))
    assert excinfo.value.counter == "srtp_too_many_streams"
    assert browser.unprotect_untrusted(sender.protect(rtp(2, ssrc=2))) == rtp(2, ssrc=2)


def test_sizes_outside_what_libsrtp_takes_raise_srtp_error():
    relay, browser = contexts(SrtpProfile.AES128_CM_HMAC_SHA1_80)
    for packet in (b"", rtp(1)[:11], rtp(1, payload=bytes(1500))):
        with pytest.raises(SrtpError) as excinfo:
            relay.protect(packet)
        assert excinfo.value.counter == "srtp_protect_failed"
    with pytest.raises(SrtpError):
        relay.protect_rtcp(b"\x80\xc8\x00")
    for packet in (b"", rtp(1)[:21], bytes(1501)):
        with pytest.raises(SrtpError):
            browser.unprotect_untrusted(packet)
    assert len(relay.protect(rtp(1, payload=bytes(1500 - 16 - 128 - 12)))) == 1500 - 128 - 16 + 10


def test_context_validates_its_keys():
    with pytest.raises(ValueError):
        SrtpContext(SrtpProfile.AEAD_AES_128_GCM, bytes(30), bytes(28))
    with pytest.raises(ValueError):
        SrtpKeys(SrtpProfile.AES128_CM_HMAC_SHA1_80, bytes(30), bytes(28))
    with pytest.raises(ValueError):
        SrtpContext(SrtpProfile.AEAD_AES_128_GCM, bytes(28), bytes(28), max_streams=0)


# --- Fuzz -------------------------------------------------------------------------------------

FUZZ_RELAY, FUZZ_BROWSER = contexts(SrtpProfile.AES128_CM_HMAC_SHA1_80)
MALFORMED = [
    b"",
    b"\x80",
    rtp(1)[:12],
    rtp(1)[:12] + bytes(10),  # header + a tag's worth, no payload
    bytes([0x8F]) + rtp(1)[1:12] + bytes(20),  # 15 CSRCs past the end
    bytes([0x90]) + rtp(1)[1:12] + b"\xbe\xde\xff\xff" + bytes(20),  # extension past the end
    bytes(1501),
]


@given(data=st.binary(max_size=300))
@example(data=MALFORMED[0])
@example(data=MALFORMED[1])
@example(data=MALFORMED[2])
@example(data=MALFORMED[3])
@example(data=MALFORMED[4])
@example(data=MALFORMED[5])
@example(data=MALFORMED[6])
def test_unprotect_raises_only_srtp_error(data):
    for unprotect in (
        FUZZ_BROWSER.unprotect_untrusted,
        FUZZ_BROWSER.unprotect_rtcp_untrusted,
        lambda datagram: FUZZ_BROWSER.unprotect_restamped_untrusted(datagram, 111, b"\x00\x00\x00\x01"),
    ):
        try:
            unprotect(data)
        except SrtpError:
            continue
        raise AssertionError("random bytes authenticated")


@given(
    profile=st.sampled_from(PROFILES),
    seq=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=400),
    flip=st.integers(0, 10_000),
    bit=st.integers(0, 7),
)
def test_round_trip_and_any_bit_flip_is_caught(profile, seq, timestamp, ssrc, payload, flip, bit):
    relay, browser = contexts(profile)
    packet = rtp(seq, ssrc=ssrc, payload=payload, timestamp=timestamp)
    protected = relay.protect(packet)
    damaged = bytearray(protected)
    damaged[flip % len(damaged)] ^= 1 << bit
    with pytest.raises(SrtpError):
        browser.unprotect_untrusted(bytes(damaged))
    assert browser.unprotect_untrusted(protected) == packet


# --- The direct libsrtp calls: one shared buffer, fused header rewrites -----------------------

RTP_FIXED = struct.Struct("!BBHII")


def twin_contexts(profile: SrtpProfile) -> tuple[SrtpContext, SrtpContext, SrtpContext]:
    """Two relay-side contexts with the same keys (their output must be byte-identical) and the browser."""
    server_keys, client_keys = handshake_keys(profile)
    return SrtpContext.from_keys(server_keys), SrtpContext.from_keys(server_keys), SrtpContext.from_keys(client_keys)


def packet_with_header_extras(seq: int, csrcs: int, extension_words: int | None, payload: bytes, first_flags: int = 0) -> bytes:
    """An RTP packet with ``csrcs`` CSRCs and, if ``extension_words`` is not None, an extension block."""
    first = 0x80 | first_flags | csrcs | (0x10 if extension_words is not None else 0)
    header = RTP_FIXED.pack(first, 0x6F, seq, seq * 960, 0xCAFE0001)
    header += b"".join(struct.pack("!I", 0xC0000000 + index) for index in range(csrcs))
    if extension_words is not None:
        header += struct.pack("!HH", 0xBEDE, extension_words) + bytes(range(4 * extension_words))
    return header + payload


@pytest.mark.parametrize("profile", PROFILES)
def test_protect_with_header_is_protect_of_the_rebuilt_packet(profile):
    fused, reference, browser = twin_contexts(profile)
    cases = [(0, None), (3, None), (0, 2), (15, 0), (2, 5)]  # (CSRCs, extension words)
    for seq, (csrcs, extension_words) in enumerate(cases, start=1):
        payload = bytes([seq]) * (20 + seq)
        original = packet_with_header_extras(seq, csrcs, extension_words, payload, first_flags=0x20 if seq % 2 else 0)
        header_size = len(original) - len(payload)
        fields = (0x80 | (original[0] & 0x20), 0x80 | 111, 40000 + seq, 123456 + seq, 0x5EED0001)
        rebuilt = RTP_FIXED.pack(*fields) + payload
        protected = fused.protect_with_header(original, header_size, *fields)
        assert protected == reference.protect(rebuilt)
        assert browser.unprotect_untrusted(protected) == rebuilt
    assert fused.outbound_ssrcs == {0x5EED0001}


@given(
    seq=st.integers(0, 0xFFFF),
    csrcs=st.integers(0, 15),
    extension_words=st.none() | st.integers(0, 20),
    payload=st.binary(max_size=300),
    second=st.integers(0, 0xFF),
)
def test_protect_with_header_matches_protect_for_any_header(seq, csrcs, extension_words, payload, second):
    fused, reference, browser = twin_contexts(SrtpProfile.AEAD_AES_128_GCM)
    original = packet_with_header_extras(seq, csrcs, extension_words, payload)
    header_size = len(original) - len(payload)
    rebuilt = RTP_FIXED.pack(0x80, second, seq, 777, 0x5EED0002) + payload
    protected = fused.protect_with_header(original, header_size, 0x80, second, seq, 777, 0x5EED0002)
    assert protected == reference.protect(rebuilt)
    assert browser.unprotect_untrusted(protected) == rebuilt


def test_protect_with_header_refuses_what_protect_refuses():
    relay, _ = contexts(SrtpProfile.AEAD_AES_128_GCM, max_streams=1)
    good = rtp(1)
    bad_calls = [
        (good, 11, 0x80, 111, 1, 0, 5),  # a header shorter than RFC 3550's fixed part
        (good, len(good) + 1, 0x80, 111, 1, 0, 5),  # a header longer than the packet
        (rtp(1, payload=bytes(1500)), 12, 0x80, 111, 1, 0, 5),  # too big to protect
        (good, 12, 0x100, 111, 1, 0, 5),  # fields out of range for their header bytes
        (good, 12, 0x80, 111, 0x10000, 0, 5),
        (good, 12, 0x80, 111, 1, -1, 5),
    ]
    for call in bad_calls:
        with pytest.raises(SrtpError) as excinfo:
            relay.protect_with_header(*call)
        assert excinfo.value.counter == "srtp_protect_failed"
    assert relay.outbound_ssrcs == frozenset()
    relay.protect_with_header(good, 12, 0x80, 111, 1, 0, 5)
    with pytest.raises(SrtpError) as excinfo:
        relay.protect_with_header(good, 12, 0x80, 111, 1, 0, 6)  # a second SSRC over max_streams=1
    assert excinfo.value.counter == "srtp_too_many_streams"
    with pytest.raises(SrtpError) as excinfo:
        relay.protect_with_header(good, 12, 0x80, 111, 1, 0, 5)  # the same index again
    assert excinfo.value.counter == "srtp_protect_failed"
    # The size limit applies to the packet protected, after two CSRCs are stripped.
    largest_payload = 1500 - 16 - 128 - 12  # protect's limit: 1,356 bytes with the fixed header
    largest = packet_with_header_extras(2, 2, None, bytes(largest_payload))
    assert len(largest) == 20 + largest_payload
    assert len(relay.protect_with_header(largest, 20, 0x80, 111, 2, 0, 5)) == 12 + largest_payload + 16
    with pytest.raises(SrtpError):
        relay.protect_with_header(largest + b"!", 20, 0x80, 111, 3, 0, 5)


@pytest.mark.parametrize("profile", PROFILES)
def test_unprotect_restamped_is_unprotect_then_rewrite(profile):
    relay, browser = contexts(profile)
    new_ssrc = (0x0000AE00).to_bytes(4, "big")
    for seq, (marker, payload_type) in enumerate([(0, 111), (0x80, 109), (0x80, 0), (0, 127)], start=1):
        original = RTP_FIXED.pack(0x90, marker | payload_type, seq, seq * 960, 0x1951) + b"\xbe\xde\x00\x01\x10\xaa\x00\x00" + b"opus"
        expected = bytes((original[0], marker | 111)) + original[2:8] + new_ssrc + original[12:]
        assert relay.unprotect_restamped_untrusted(browser.protect(original), 111, new_ssrc) == expected
    assert relay.inbound_ssrcs == {0x1951}  # the stream is the sender's SSRC, not the new one
    for seq, (bad_type, bad_ssrc) in enumerate(((128, new_ssrc), (-1, new_ssrc), (111, b"abc")), start=40):
        protected = browser.protect(rtp(seq))
        with pytest.raises(ValueError):
            relay.unprotect_restamped_untrusted(protected, bad_type, bad_ssrc)
        # Refused before libsrtp saw the packet: its index is still unused.
        assert relay.unprotect_restamped_untrusted(protected, 111, new_ssrc)[8:12] == new_ssrc
    with pytest.raises(SrtpError) as excinfo:
        relay.unprotect_restamped_untrusted(protected, 111, new_ssrc)
    assert excinfo.value.counter == "srtp_replay"


def test_results_never_alias_the_shared_buffer():
    """Every context works in one module buffer; what it returns must be a copy."""
    relay_a, browser_a = contexts(SrtpProfile.AEAD_AES_128_GCM)
    relay_b, browser_b = contexts(SrtpProfile.AES128_CM_HMAC_SHA1_80)
    long_packet, short_packet = rtp(1, payload=bytes(range(256)) * 4), rtp(1, payload=b"short")
    first = relay_a.protect(long_packet)
    snapshot = bytes(bytearray(first))
    second = relay_b.protect(short_packet)
    third = relay_a.protect_rtcp(rtcp_sender_report())
    assert type(first) is type(second) is type(third) is bytes
    assert first == snapshot and len(second) == len(short_packet) + 10
    # Unprotecting on another context in between does not disturb either result.
    assert browser_b.unprotect_untrusted(second) == short_packet
    assert browser_a.unprotect_untrusted(first) == long_packet
    assert browser_a.unprotect_rtcp_untrusted(third) == rtcp_sender_report()


def test_an_index_left_of_the_replay_window_counts_as_replay():
    relay, browser = contexts(SrtpProfile.AEAD_AES_128_GCM)
    stale = relay.protect(rtp(1))
    for seq in range(2, 300):  # far past libsrtp's 128-packet window (RFC 3711 §3.3.2)
        browser.unprotect_untrusted(relay.protect(rtp(seq)))
    with pytest.raises(SrtpError) as excinfo:
        browser.unprotect_untrusted(stale)
    assert excinfo.value.counter == "srtp_replay"
    assert "replay_old" in str(excinfo.value)


def test_libsrtp_status_codes_follow_the_binding():
    """Our names must be libsrtp's numbering, which pylibsrtp's message table follows."""
    from pylibsrtp import ERRORS

    from botcall.webrtc.srtp import LibsrtpStatus

    assert len(LibsrtpStatus) == len(ERRORS)
    assert ERRORS[LibsrtpStatus.AUTH_FAIL] == "authentication failure"
    assert ERRORS[LibsrtpStatus.REPLAY_FAIL] == "replay check failed (bad index)"
    assert ERRORS[LibsrtpStatus.REPLAY_OLD] == "replay check failed (index too old)"
    assert ERRORS[LibsrtpStatus.PKT_IDX_OLD] == "packet index is too old to consider"


def test_dropped_contexts_free_their_libsrtp_sessions():
    server_keys, _ = handshake_keys(SrtpProfile.AEAD_AES_128_GCM)
    held = [SrtpContext.from_keys(server_keys) for _ in range(200)]
    for context in held:
        context.protect(rtp(1))
    before = c_heap_in_use()
    held.clear()
    freed = before - c_heap_in_use()
    # Two sessions, a template and a stream each: kilobytes per context.
    assert freed > 200 * 2000
    for _ in range(3):
        batch = [SrtpContext.from_keys(server_keys) for _ in range(200)]
        for context in batch:
            context.protect(rtp(1))
        del batch
    assert c_heap_in_use() - (before - freed) < 100_000
