"""SRTP/SRTCP contexts over real libsrtp, keyed by real DTLS-SRTP handshakes."""

from __future__ import annotations

import functools
import struct

import pytest
from hypothesis import example, given, strategies as st

from botcall.errors import SrtpError
from botcall.rtp.dtls import DtlsCertificate, DtlsEndpoint, DtlsState
from botcall.rtp.srtp import SrtpContext, SrtpKeys, SrtpProfile

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
    for unprotect in (FUZZ_BROWSER.unprotect_untrusted, FUZZ_BROWSER.unprotect_rtcp_untrusted):
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
