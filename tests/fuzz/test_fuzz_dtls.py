"""Hypothesis: DTLS bytes from the network raise DtlsError or nothing.

Covers the record splitter (arbitrary bytes, generated records round-trip,
truncations), datagram packing, SDP fingerprint parsing, and real endpoints fed
garbage, record-shaped garbage and mutated ClientHellos at each stage of the
handshake. Every malformed shape found or named is kept as an ``@example``.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, example, given, settings, strategies as st

from botcall.errors import DtlsError
from botcall.webrtc.dtls.certificate import DtlsCertificate, parse_fingerprint_untrusted
from botcall.webrtc.dtls.endpoint import DEFAULT_MTU, DtlsEndpoint, DtlsState
from botcall.webrtc.dtls.records import MAX_RECORD_PAYLOAD, DtlsRecord, pack_datagrams, split_records_untrusted
from botcall.webrtc.fingerprint import Fingerprint as DtlsFingerprint

SERVER_CERT = DtlsCertificate.generate()
CLIENT_CERT = DtlsCertificate.generate()
MTU = DEFAULT_MTU


def new_pair() -> tuple[DtlsEndpoint, DtlsEndpoint]:
    server = DtlsEndpoint(role="server", certificate=SERVER_CERT, remote_fingerprint=CLIENT_CERT.fingerprint)
    client = DtlsEndpoint(role="client", certificate=CLIENT_CERT, remote_fingerprint=SERVER_CERT.fingerprint)
    return server, client


def shuttle(server: DtlsEndpoint, client: DtlsEndpoint, first: list[bytes], now: float = 0.0) -> None:
    """Lossless ping-pong starting with the client's datagrams ``first``."""
    to_server = first
    for _ in range(10):
        to_client = [out for datagram in to_server for out in server.receive_untrusted(datagram, now)]
        to_server = [out for datagram in to_client for out in client.receive_untrusted(datagram, now)]
        if not to_server:
            return


def connected_pair() -> tuple[DtlsEndpoint, DtlsEndpoint]:
    server, client = new_pair()
    shuttle(server, client, client.start(0.0))
    assert server.state is client.state is DtlsState.CONNECTED
    return server, client


_SERVER, _CLIENT = new_pair()
CLIENT_HELLO = _CLIENT.start(0.0)[0]
SERVER_FIRST_FLIGHT = _SERVER.receive_untrusted(CLIENT_HELLO, 0.0)[0]

# Malformed framings (each must raise DtlsError from the splitter).
MALFORMED_DATAGRAMS = [
    b"\x16",
    b"\x16\xfe\xfd" + bytes(9),  # 12 header bytes
    b"\x16\xfe\xfd" + bytes(8) + b"\x00\x10" + b"short",  # length overruns
    bytes(DtlsRecord(22, 0xFEFD, 0, 0, b"x")) + b"\x17",  # stray byte after a record
    b"\x17\xfe\xfd" + bytes(8) + b"\xff\xff" + bytes(100),
    b"\x17\xfe\xfd" + bytes(8) + (MAX_RECORD_PAYLOAD + 1).to_bytes(2, "big") + bytes(MAX_RECORD_PAYLOAD + 1),
    CLIENT_HELLO[:-1],  # a real ClientHello cut short
    CLIENT_HELLO[:13],  # header only, length says more
]

# Well-framed records carrying nonsense (they reach OpenSSL).
RECORD_SHAPED = [
    bytes(DtlsRecord(22, 0xFEFD, 0, 1, b"")),  # empty handshake record
    bytes(DtlsRecord(22, 0xFEFD, 0, 1, bytes(12))),  # HelloRequest-shaped
    bytes(DtlsRecord(22, 0xFEFD, 0, 1, b"\x01\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x05hello")),
    bytes(DtlsRecord(22, 0xFEFD, 0, 1, b"\x01\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x01x")),  # 16 MB message
    bytes(DtlsRecord(21, 0xFEFD, 0, 1, b"\x02\x28")),  # plaintext fatal handshake_failure alert
    bytes(DtlsRecord(21, 0xFEFD, 0, 1, b"\x01\x00")),  # plaintext close_notify
    bytes(DtlsRecord(21, 0xFEFD, 1, 1, bytes(26))),  # forged encrypted alert
    bytes(DtlsRecord(20, 0xFEFD, 0, 1, b"\x01")),  # ChangeCipherSpec out of turn
    bytes(DtlsRecord(23, 0xFEFD, 1, 1, bytes(40))),  # application data
    bytes(DtlsRecord(63, 0x0000, 0xFFFF, (1 << 48) - 1, b"")),  # unknown type, odd fields
    bytes(DtlsRecord(22, 0x0303, 0, 0, CLIENT_HELLO[13:])),  # the ClientHello under a TLS version
]


def with_examples(examples, name):
    def decorate(test):
        for value in examples:
            test = example(**{name: value})(test)
        return test

    return decorate


records_strategy = st.builds(
    DtlsRecord,
    content_type=st.integers(0, 255),
    version=st.integers(0, 0xFFFF),
    epoch=st.integers(0, 0xFFFF),
    sequence_number=st.integers(0, (1 << 48) - 1),
    fragment=st.binary(max_size=300),
)

record_shaped_datagrams = st.lists(
    st.builds(
        DtlsRecord,
        content_type=st.integers(20, 25),
        version=st.sampled_from([0xFEFD, 0xFEFF, 0x0303]),
        epoch=st.integers(0, 2),
        sequence_number=st.integers(0, 64),
        fragment=st.binary(max_size=120),
    ),
    min_size=1,
    max_size=4,
).map(lambda records: b"".join(bytes(record) for record in records))


# --- The record splitter --------------------------------------------------------------


@given(data=st.binary(max_size=600))
@with_examples(MALFORMED_DATAGRAMS + RECORD_SHAPED + [b"", CLIENT_HELLO, SERVER_FIRST_FLIGHT], "data")
def test_split_either_parses_whole_input_or_raises_dtls_error(data):
    try:
        records = split_records_untrusted(data)
    except DtlsError as exc:
        assert exc.counter == "dtls_malformed"
        return
    assert b"".join(bytes(record) for record in records) == data


@given(records=st.lists(records_strategy, max_size=5))
def test_generated_records_round_trip(records):
    encoded = b"".join(bytes(record) for record in records)
    assert split_records_untrusted(encoded) == records


@given(records=st.lists(records_strategy, min_size=1, max_size=4), data=st.data())
def test_truncating_inside_a_record_raises(records, data):
    encoded = b"".join(bytes(record) for record in records)
    boundaries = set()
    position = 0
    for record in records:
        position += len(bytes(record))
        boundaries.add(position)
    cuts = [n for n in range(1, len(encoded)) if n not in boundaries]
    if not cuts:
        return  # a single empty-bodied record has no inside to cut
    cut = data.draw(st.sampled_from(cuts))
    try:
        split_records_untrusted(encoded[:cut])
    except DtlsError:
        return
    raise AssertionError(f"a cut at {cut} of {len(encoded)} bytes parsed")


def test_malformed_examples_really_are_malformed():
    for data in MALFORMED_DATAGRAMS:
        try:
            split_records_untrusted(data)
        except DtlsError as exc:
            assert exc.counter == "dtls_malformed"
        else:
            raise AssertionError(f"{data[:20]!r} parsed")


@given(sizes=st.lists(st.integers(13, 400), max_size=12), mtu=st.integers(400, 1500))
def test_pack_datagrams_keeps_order_and_whole_records_under_the_mtu(sizes, mtu):
    records = [
        bytes(DtlsRecord(22, 0xFEFD, 0, index, bytes([index % 256]) * (size - 13))) for index, size in enumerate(sizes)
    ]
    datagrams = pack_datagrams(records, mtu)
    assert all(0 < len(datagram) <= mtu for datagram in datagrams)
    assert b"".join(datagrams) == b"".join(records)
    assert [bytes(record) for datagram in datagrams for record in split_records_untrusted(datagram)] == records
    # Greedy: the next record never fit in the previous datagram.
    for first, second in itertools.pairwise(datagrams):
        assert len(first) + len(split_records_untrusted(second)[0].fragment) + 13 > mtu


# --- Fingerprints --------------------------------------------------------------------------


@given(text=st.text(max_size=200))
@example(text="sha-256 " + ":".join(["+1"] * 32))
@example(text="sha-256 " + ":".join(["1_"] * 32))
@example(text="sha-256 " + ":".join(["٣٣"] * 32))  # Arabic-Indic digits: int() would accept them
@example(text="sha-256\u00a0" + ":".join(["AB"] * 32))
@example(text="md5 " + ":".join(["AB"] * 16))
def test_fingerprint_parser_raises_only_dtls_error(text):
    try:
        fingerprint = parse_fingerprint_untrusted(text)
    except DtlsError as exc:
        assert exc.counter == "dtls_bad_fingerprint"
        return
    assert parse_fingerprint_untrusted(str(fingerprint)) == fingerprint


@given(
    algorithm_size=st.sampled_from([("sha-1", 20), ("sha-224", 28), ("sha-256", 32), ("sha-384", 48), ("sha-512", 64)]),
    data=st.data(),
)
def test_fingerprints_round_trip(algorithm_size, data):
    algorithm, size = algorithm_size
    fingerprint = DtlsFingerprint(algorithm, data.draw(st.binary(min_size=size, max_size=size)))
    assert parse_fingerprint_untrusted(str(fingerprint)) == fingerprint


# --- Endpoints -------------------------------------------------------------------------------

endpoint_settings = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def feed(endpoint: DtlsEndpoint, data: bytes, now: float = 0.0) -> list[bytes]:
    """Feed untrusted bytes: DtlsError is the only acceptable failure."""
    before = endpoint.state
    try:
        out = endpoint.receive_untrusted(data, now)
    except DtlsError as exc:
        if exc.counter in ("dtls_malformed", "dtls_not_open"):
            # A dropped datagram leaves the endpoint as it was (a NEW server starts, though).
            assert endpoint.state in (before, DtlsState.HANDSHAKING)
        else:
            assert endpoint.state is DtlsState.FAILED
            assert endpoint.srtp_keys is None and endpoint.failure_reason
        return []
    assert all(0 < len(datagram) <= MTU for datagram in out)
    for datagram in out:
        split_records_untrusted(datagram)
    return out


@endpoint_settings
@given(data=st.one_of(st.binary(max_size=400), record_shaped_datagrams))
@with_examples(MALFORMED_DATAGRAMS + RECORD_SHAPED, "data")
def test_fresh_server_fed_garbage(data):
    server, _ = new_pair()
    feed(server, data)


@endpoint_settings
@given(data=st.data())
@example(data=None)
def test_mutated_client_hello(data):
    """Flip, insert and cut bytes of a real ClientHello (header included)."""
    hello = bytearray(CLIENT_HELLO)
    if data is not None:
        for _ in range(data.draw(st.integers(1, 6))):
            position = data.draw(st.integers(0, len(hello) - 1))
            action = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
            if action == "flip":
                hello[position] ^= 1 << data.draw(st.integers(0, 7))
            elif action == "set":
                hello[position] = data.draw(st.integers(0, 255))
            elif action == "insert":
                hello[position:position] = data.draw(st.binary(min_size=1, max_size=8))
            elif len(hello) > 1:
                del hello[position]
        if data.draw(st.booleans()):
            hello = hello[: data.draw(st.integers(0, len(hello)))]
    server, _ = new_pair()
    feed(server, bytes(hello))
    # Whatever the mutation did, the endpoint still obeys its contract afterwards.
    feed(server, CLIENT_HELLO)
    try:
        server.handle_timeout(1.0)
    except DtlsError:
        assert server.state is DtlsState.FAILED


@endpoint_settings
@given(data=st.lists(st.one_of(st.binary(max_size=200), record_shaped_datagrams), min_size=1, max_size=4))
@with_examples([[datagram] for datagram in RECORD_SHAPED], "data")
def test_client_waiting_for_the_server_fed_garbage(data):
    _, client = new_pair()
    client.start(0.0)
    for datagram in data:
        feed(client, datagram)


@endpoint_settings
@given(data=st.lists(st.one_of(st.binary(max_size=200), record_shaped_datagrams), min_size=1, max_size=4))
@with_examples([[datagram] for datagram in RECORD_SHAPED], "data")
def test_server_mid_handshake_fed_garbage(data):
    server, client = new_pair()
    flight = server.receive_untrusted(client.start(0.0)[0], 0.0)
    assert flight
    for datagram in data:
        feed(server, datagram)


@endpoint_settings
@given(data=st.lists(st.one_of(st.binary(max_size=200), record_shaped_datagrams), min_size=1, max_size=4))
@with_examples([[datagram] for datagram in RECORD_SHAPED + MALFORMED_DATAGRAMS], "data")
def test_connected_endpoints_survive_unauthenticated_garbage(data):
    """Nothing without the keys can end a connected association (RFC 6347 §4.1.2.7)."""
    server, client = connected_pair()
    keys = server.srtp_keys
    for datagram in data:
        feed(server, datagram, 1.0)
        feed(client, datagram, 1.0)
    assert server.state is client.state is DtlsState.CONNECTED
    assert server.srtp_keys == keys
