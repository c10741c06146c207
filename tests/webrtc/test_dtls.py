"""DTLS-SRTP endpoints, both roles, over a simulated network on a simulated clock.

Every handshake here is real OpenSSL (pyOpenSSL memory BIOs) with real
certificates; the network in between is a seeded model that drops, duplicates
and reorders datagrams, and the clock jumps straight to the next event or
deadline (no sleeping).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import example, given, strategies as st
from OpenSSL import SSL
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from botcall.errors import DtlsError
from botcall.webrtc.dtls.certificate import DtlsCertificate, fingerprint_of_der, parse_fingerprint_untrusted
from botcall.webrtc.dtls.endpoint import MIN_MTU, DtlsEndpoint, DtlsState
from botcall.webrtc.dtls.records import ContentType, DtlsRecord, HandshakeType, pack_datagrams, split_records_untrusted
from botcall.webrtc.fingerprint import Fingerprint as DtlsFingerprint
from botcall.webrtc.srtp import SrtpKeys, SrtpProfile
from tests.kit.cheap import c_heap_in_use

SERVER_CERT = DtlsCertificate.generate()
CLIENT_CERT = DtlsCertificate.generate()
OTHER_CERT = DtlsCertificate.generate()


def make_pair(
    *,
    server_fp: object = "client",
    client_fp: object = "server",
    mtu: int = 1200,
    server_profiles: tuple[SrtpProfile, ...] | None = None,
    client_profiles: tuple[SrtpProfile, ...] | None = None,
    handshake_timeout: float = 30.0,
) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    """A server and a client that trust each other unless told otherwise."""
    fps = {"client": str(CLIENT_CERT.fingerprint), "server": str(SERVER_CERT.fingerprint), None: None}
    extra_s = {"srtp_profiles": server_profiles} if server_profiles else {}
    extra_c = {"srtp_profiles": client_profiles} if client_profiles else {}
    server = DtlsEndpoint(
        role="server",
        certificate=SERVER_CERT,
        remote_fingerprint=fps.get(server_fp, server_fp),
        mtu=mtu,
        handshake_timeout=handshake_timeout,
        **extra_s,
    )
    client = DtlsEndpoint(
        role="client",
        certificate=CLIENT_CERT,
        remote_fingerprint=fps.get(client_fp, client_fp),
        mtu=mtu,
        handshake_timeout=handshake_timeout,
        **extra_c,
    )
    return server, client


# --- The simulated network --------------------------------------------------------------


@dataclass
class SimNet:
    """Two endpoints, a seeded lossy network between them, and a simulated clock.

    ``drop`` decides per datagram (sender name, index of that sender's
    datagram, the datagram) whether the network eats it, on top of random loss.
    """

    server: DtlsEndpoint
    client: DtlsEndpoint
    seed: int = 0
    loss: float = 0.0
    duplicate: float = 0.0
    min_delay: float = 0.010
    max_delay: float = 0.010
    drop: Callable[[str, int, bytes], bool] = lambda sender, index, datagram: False
    now: float = 0.0
    sent: dict[str, list[bytes]] = field(default_factory=lambda: {"server": [], "client": []})
    errors: dict[str, DtlsError] = field(default_factory=dict)
    _queue: list = field(default_factory=list)
    _tiebreak: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.connected_at: dict[str, float] = {}

    def endpoint(self, name: str) -> DtlsEndpoint:
        return self.server if name == "server" else self.client

    def transmit(self, sender: str, datagrams: list[bytes]) -> None:
        receiver = "client" if sender == "server" else "server"
        for datagram in datagrams:
            index = len(self.sent[sender])
            self.sent[sender].append(datagram)
            if self.drop(sender, index, datagram) or self.rng.random() < self.loss:
                continue
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                arrival = self.now + self.rng.uniform(self.min_delay, self.max_delay)
                heapq.heappush(self._queue, (arrival, next(self._tiebreak), receiver, datagram))

    def _step_endpoint(self, name: str, action: Callable[[], list[bytes]]) -> None:
        if name in self.errors:
            return
        try:
            out = action()
        except DtlsError as exc:
            if self.endpoint(name).state is DtlsState.FAILED:
                self.errors[name] = exc
                return
            raise
        if self.endpoint(name).state is DtlsState.CONNECTED and name not in self.connected_at:
            self.connected_at[name] = self.now
        self.transmit(name, out)

    def start(self) -> None:
        self._step_endpoint("server", lambda: self.server.start(self.now))
        self._step_endpoint("client", lambda: self.client.start(self.now))

    def next_event(self) -> float | None:
        times = [self._queue[0][0]] if self._queue else []
        for endpoint in (self.server, self.client):
            deadline = endpoint.next_deadline()
            if deadline is not None:
                times.append(deadline)
        return min(times) if times else None

    def run(self, *, until: Callable[[], bool], limit: float = 120.0, max_steps: int = 10_000) -> None:
        """Deliver datagrams and fire timers, jumping the clock, until ``until()`` or nothing is left."""
        for _ in range(max_steps):
            if until():
                return
            when = self.next_event()
            if when is None or when > limit:
                return
            self.now = max(self.now, when)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, receiver, datagram = heapq.heappop(self._queue)
                endpoint = self.endpoint(receiver)
                if endpoint.state in (DtlsState.FAILED, DtlsState.CLOSED):
                    continue
                self._step_endpoint(receiver, lambda e=endpoint, d=datagram: e.receive_untrusted(d, self.now))
            for name in ("server", "client"):
                endpoint = self.endpoint(name)
                deadline = endpoint.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self._step_endpoint(name, lambda e=endpoint: e.handle_timeout(self.now))
        raise AssertionError("simulation did not settle")

    def both_connected(self) -> bool:
        return self.server.state is DtlsState.CONNECTED and self.client.state is DtlsState.CONNECTED

    def settled(self) -> bool:
        return self.both_connected() or bool(self.errors)


def handshake(net: SimNet, **kwargs: object) -> SimNet:
    net.start()
    net.run(until=net.settled, **kwargs)
    return net


def assert_keys_match(server: DtlsEndpoint, client: DtlsEndpoint, profile: SrtpProfile) -> None:
    server_keys, client_keys = server.srtp_keys, client.srtp_keys
    assert server_keys is not None and client_keys is not None
    assert server_keys.profile is client_keys.profile is profile
    assert client_keys.local_key_salt == server_keys.remote_key_salt
    assert client_keys.remote_key_salt == server_keys.local_key_salt
    assert client_keys.local_key_salt != client_keys.remote_key_salt
    assert len(client_keys.local_key_salt) == profile.key_length + profile.salt_length


def assert_whole_records_within(datagrams: list[bytes], mtu: int) -> None:
    for datagram in datagrams:
        assert 0 < len(datagram) <= mtu
        records = split_records_untrusted(datagram)  # raises unless whole records
        assert b"".join(bytes(record) for record in records) == datagram


# --- Handshakes ---------------------------------------------------------------------------


def test_clean_handshake_connects_both_roles_with_matching_keys():
    server, client = make_pair()
    net = handshake(SimNet(server, client))
    assert net.both_connected() and not net.errors
    assert_keys_match(server, client, SrtpProfile.AEAD_AES_128_GCM)
    # Four flights, no retransmission: well under one initial timeout.
    assert net.now < 0.1
    assert len(net.sent["client"]) == 2 and len(net.sent["server"]) == 2
    assert server.peer_fingerprint == CLIENT_CERT.fingerprint
    assert client.peer_fingerprint == SERVER_CERT.fingerprint
    assert server.next_deadline() is None and client.next_deadline() is None


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    ("client_profiles", "server_profiles", "expected"),
    [
        (None, None, SrtpProfile.AEAD_AES_128_GCM),
        ((SrtpProfile.AES128_CM_HMAC_SHA1_80,), None, SrtpProfile.AES128_CM_HMAC_SHA1_80),
        ((SrtpProfile.AEAD_AES_128_GCM,), None, SrtpProfile.AEAD_AES_128_GCM),
        (None, (SrtpProfile.AES128_CM_HMAC_SHA1_80,), SrtpProfile.AES128_CM_HMAC_SHA1_80),
        ((SrtpProfile.AEAD_AES_256_GCM,), (SrtpProfile.AEAD_AES_256_GCM,), SrtpProfile.AEAD_AES_256_GCM),
    ],
)
def test_handshake_over_a_terrible_network(seed, client_profiles, server_profiles, expected):
    """Loss, duplication, reordering, and both sides' first flights dropped entirely."""
    server, client = make_pair(client_profiles=client_profiles, server_profiles=server_profiles)
    net = SimNet(
        server,
        client,
        seed=seed,
        loss=0.2,
        duplicate=0.2,
        min_delay=0.001,
        max_delay=0.150,
        # The network eats the first transmission of the ClientHello and of the
        # server's first flight, whatever the dice say.
        drop=lambda sender, index, datagram: index == 0,
    )
    handshake(net)
    assert not net.errors, net.errors
    assert net.both_connected()
    assert_keys_match(server, client, expected)
    assert net.now < 30.0
    # Both first flights were lost, so each side needed at least one retransmission.
    assert net.now >= 1.0
    for name in ("server", "client"):
        assert_whole_records_within(net.sent[name], 1200)


def test_lost_final_flight_is_resent_when_the_client_retransmits():
    """The server is done after its last flight; if that is lost, only the client's retransmission can recover it."""
    server, client = make_pair()
    server_final = []

    def drop(sender: str, index: int, datagram: bytes) -> bool:
        # The server's final flight starts with ChangeCipherSpec (RFC 5246 §7.1).
        if sender == "server" and datagram[0] == ContentType.CHANGE_CIPHER_SPEC and not server_final:
            server_final.append(datagram)
            return True
        return False

    net = handshake(SimNet(server, client, drop=drop))
    assert net.both_connected(), net.errors
    assert server_final, "the final flight was never dropped"
    assert net.connected_at["server"] < 0.1
    # The client retransmitted its flight after its 1 s timer; the server answered at once.
    assert 1.0 <= net.connected_at["client"] < 1.1
    assert_keys_match(server, client, SrtpProfile.AEAD_AES_128_GCM)
    # The resent final flight differs from the lost one: fresh epoch-0 record numbers.
    resent = [d for d in net.sent["server"] if d[0] == ContentType.CHANGE_CIPHER_SPEC]
    assert len(resent) == 2 and resent[0] != resent[1]
    first, again = split_records_untrusted(resent[0])[0], split_records_untrusted(resent[1])[0]
    assert first.epoch == again.epoch == 0 and again.sequence_number > first.sequence_number


def test_a_repeated_client_hello_is_answered_at_once_with_fresh_record_numbers():
    """RFC 6347 §4.2.4: a retransmitted peer flight means ours was lost; resend without waiting."""
    server, client = make_pair()
    hello = client.start(0.0)[0]
    flight = server.receive_untrusted(hello, 0.0)
    assert server.next_deadline() == pytest.approx(1.0)
    again = server.receive_untrusted(hello, 0.6)
    assert len(again) == len(flight) == 1 and again != flight
    first_records, again_records = split_records_untrusted(flight[0]), split_records_untrusted(again[0])
    assert [r.fragment for r in first_records] == [r.fragment for r in again_records]
    assert min(r.sequence_number for r in again_records) > max(r.sequence_number for r in first_records)
    assert server.receive_untrusted(hello, 0.7) == []  # duplicates arriving together: once
    assert server.next_deadline() == pytest.approx(1.0)  # the timer is not disturbed


@pytest.mark.parametrize("victim", ["server", "client"])
def test_an_injected_handshake_record_mid_handshake_does_not_derail_it(victim):
    """A plaintext record claiming handshake message 60000 (epoch 0 has no MAC to reject it)."""
    server, client = make_pair(mtu=MIN_MTU)
    net = SimNet(server, client)
    net.transmit("client", client.start(0.0))
    net.run(until=lambda: server.state is DtlsState.HANDSHAKING)
    # Record number 50: inside OpenSSL's 64-record replay window, clear of the real ones.
    bogus = bytes(DtlsRecord(ContentType.HANDSHAKE, 0xFEFD, 0, 50, bytes([1, 0, 0, 0, 0xEA, 0x60]) + bytes(6)))
    assert net.endpoint(victim).receive_untrusted(bogus, net.now) == []
    net.run(until=net.settled)
    assert net.both_connected()
    server_hellos = [
        record
        for datagram in net.sent["server"]
        for record in split_records_untrusted(datagram)
        if record.epoch == 0 and record.fragment[:1] == bytes([HandshakeType.SERVER_HELLO])
    ]
    assert len(server_hellos) == 1  # nothing was resent: no retransmission was imagined
    assert net.now < 0.5


def test_retransmissions_back_off_and_the_handshake_deadline_fails_the_endpoint():
    server, client = make_pair(handshake_timeout=20.0)
    net = SimNet(server, client, drop=lambda sender, index, datagram: sender == "client")
    net.transmit("client", client.start(0.0))  # the server is never started: it hears nothing
    net.run(until=lambda: "client" in net.errors, limit=60.0)
    error = net.errors["client"]
    assert error.counter == "dtls_handshake_timeout"
    assert client.state is DtlsState.FAILED
    assert client.srtp_keys is None and client.failure_reason == "handshake not completed in time"
    assert net.now == pytest.approx(20.0)
    # ClientHello at 0, then the timer doubles: 1, 3, 7, 15 (RFC 6347 §4.2.4.1).
    assert len(net.sent["client"]) == 5
    assert client.next_deadline() is None
    assert client.handle_timeout(100.0) == []
    assert server.state is DtlsState.NEW and server.next_deadline() is None
    # A started server that never hears a ClientHello fails at its deadline too.
    assert server.start(0.0) == [] and server.next_deadline() == pytest.approx(20.0)
    assert server.handle_timeout(19.9) == []
    with pytest.raises(DtlsError) as excinfo:
        server.handle_timeout(20.0)
    assert excinfo.value.counter == "dtls_handshake_timeout" and server.state is DtlsState.FAILED


def test_timer_backoff_values():
    _, client = make_pair()
    assert client.start(0.0)
    deadlines = [client.next_deadline()]
    now = 0.0
    for _ in range(4):
        now = client.next_deadline()
        assert client.handle_timeout(now)  # a retransmission
        deadlines.append(client.next_deadline())
    assert deadlines == [1.0, 3.0, 7.0, 15.0, 30.0]  # the last one is the handshake deadline
    # Nothing happens before a deadline.
    assert client.handle_timeout(29.0) == []


def test_receive_after_the_deadline_fails_even_without_handle_timeout():
    server, client = make_pair(handshake_timeout=5.0)
    hello = client.start(0.0)
    assert server.start(0.0) == []
    with pytest.raises(DtlsError) as excinfo:
        server.receive_untrusted(hello[0], 5.0)
    assert excinfo.value.counter == "dtls_handshake_timeout"
    assert server.state is DtlsState.FAILED


def test_a_server_started_by_its_first_datagram_counts_its_deadline_from_there():
    server, client = make_pair(handshake_timeout=5.0)
    hello = client.start(100.0)
    assert server.receive_untrusted(hello[0], 100.0)
    assert server.next_deadline() == pytest.approx(101.0)  # its flight's retransmission timer
    server.handle_timeout(101.0)
    server.handle_timeout(103.0)
    assert server.next_deadline() == pytest.approx(105.0)  # the handshake deadline


# --- Fingerprints ---------------------------------------------------------------------------


def test_server_rejects_a_client_whose_certificate_does_not_match():
    server, client = make_pair(server_fp=str(OTHER_CERT.fingerprint))
    net = handshake(SimNet(server, client))
    assert net.errors["server"].counter == "dtls_fingerprint_mismatch"
    assert server.state is DtlsState.FAILED and server.srtp_keys is None
    # The client never got a Finished from the server.
    assert client.state is not DtlsState.CONNECTED and client.srtp_keys is None
    # The server prepared a fatal alert; delivering it ends the client at once.
    alert = server.close()
    assert alert and split_records_untrusted(alert[0])[0].content_type == ContentType.ALERT
    assert server.close() == []  # only once
    with pytest.raises(DtlsError) as excinfo:
        client.receive_untrusted(alert[0], net.now)
    assert client.state is DtlsState.FAILED
    assert excinfo.value.counter == "dtls_handshake_failed"


def test_client_rejects_a_server_whose_certificate_does_not_match():
    server, client = make_pair(client_fp=str(OTHER_CERT.fingerprint))
    net = handshake(SimNet(server, client))
    assert net.errors["client"].counter == "dtls_fingerprint_mismatch"
    assert client.state is DtlsState.FAILED and client.srtp_keys is None
    assert server.state is DtlsState.HANDSHAKING and server.srtp_keys is None
    assert "fingerprint" in client.failure_reason


@pytest.mark.parametrize("algorithm", ["sha-1", "sha-224", "sha-256", "sha-384", "sha-512"])
def test_every_supported_fingerprint_hash_is_checked(algorithm):
    client_fp = str(fingerprint_of_der(SERVER_CERT.der, algorithm))
    server_fp = str(fingerprint_of_der(CLIENT_CERT.der, algorithm))
    server, client = make_pair(server_fp=server_fp, client_fp=client_fp)
    assert handshake(SimNet(server, client)).both_connected()
    wrong = str(fingerprint_of_der(OTHER_CERT.der, algorithm))
    server, client = make_pair(client_fp=wrong)
    assert handshake(SimNet(server, client)).errors["client"].counter == "dtls_fingerprint_mismatch"


def test_fingerprint_arriving_after_the_handshake_releases_keys_only_when_it_matches():
    server, client = make_pair(server_fp=None)
    net = SimNet(server, client)
    net.start()
    net.run(until=lambda: client.state is DtlsState.CONNECTED)
    # OpenSSL finished, but nothing was verified yet: no keys.
    assert client.state is DtlsState.CONNECTED
    assert server.state is DtlsState.HANDSHAKING and server.srtp_keys is None
    assert server.next_deadline() == pytest.approx(30.0)  # only the handshake deadline
    server.set_remote_fingerprint(str(CLIENT_CERT.fingerprint))
    assert server.state is DtlsState.CONNECTED
    assert_keys_match(server, client, SrtpProfile.AEAD_AES_128_GCM)

    server, client = make_pair(server_fp=None)
    net = SimNet(server, client)
    net.start()
    net.run(until=lambda: client.state is DtlsState.CONNECTED)
    with pytest.raises(DtlsError) as excinfo:
        server.set_remote_fingerprint(OTHER_CERT.fingerprint)
    assert excinfo.value.counter == "dtls_fingerprint_mismatch"
    assert server.state is DtlsState.FAILED and server.srtp_keys is None


def test_unverified_handshake_still_fails_at_the_deadline():
    server, client = make_pair(server_fp=None, handshake_timeout=10.0)
    net = handshake(SimNet(server, client))
    net.run(until=lambda: "server" in net.errors)
    assert net.errors["server"].counter == "dtls_handshake_timeout"
    assert server.srtp_keys is None


def test_fingerprint_parsing_and_sdp_form():
    fp = SERVER_CERT.fingerprint
    text = str(fp)
    assert text.startswith("sha-256 ") and len(text.split()[1]) == 32 * 3 - 1
    assert text.split()[1] == text.split()[1].upper()
    assert parse_fingerprint_untrusted(text) == fp
    assert parse_fingerprint_untrusted(text.lower().replace("sha-256", "SHA-256")) == fp
    assert parse_fingerprint_untrusted("  sha-256\t" + text.split()[1] + " \r\n") == fp
    assert fp.matches(SERVER_CERT.der) and not fp.matches(CLIENT_CERT.der)
    digest_hex = text.split()[1]
    for bad in [
        "",
        "sha-256",
        "md5 " + ":".join(["AB"] * 16),
        "sha-256 " + digest_hex[:-3],  # 31 bytes
        "sha-256 " + digest_hex + ":00",  # 33 bytes
        "sha-256 " + digest_hex.replace(":", ""),  # no colons
        "sha-256 " + "+A" + digest_hex[2:],  # int() would take it
        "sha-256 " + "G0" + digest_hex[2:],
        "sha-256 " + digest_hex + " extra",
    ]:
        with pytest.raises(DtlsError) as excinfo:
            parse_fingerprint_untrusted(bad)
        assert excinfo.value.counter == "dtls_bad_fingerprint"
    with pytest.raises(DtlsError):
        DtlsEndpoint(role="server", certificate=SERVER_CERT, remote_fingerprint="sha-256 zz")


def test_certificate_is_self_signed_p256_with_a_short_window():
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    cert = DtlsCertificate.generate(now=now, validity=timedelta(days=7))
    other = DtlsCertificate.generate(now=now, validity=timedelta(days=7))
    c = cert.certificate
    assert isinstance(cert.private_key, ec.EllipticCurvePrivateKey)
    assert isinstance(cert.private_key.curve, ec.SECP256R1)
    assert c.issuer == c.subject
    c.verify_directly_issued_by(c)  # self-signed: its own key signs it
    assert isinstance(c.signature_hash_algorithm, hashes.SHA256)
    assert c.not_valid_before_utc == now - timedelta(days=1)
    assert c.not_valid_after_utc == now + timedelta(days=7)
    assert c.serial_number != other.certificate.serial_number
    assert c.subject != other.certificate.subject
    assert cert.der == c.public_bytes(serialization.Encoding.DER)
    assert cert.fingerprint == fingerprint_of_der(cert.der)
    assert cert.fingerprint != other.fingerprint
    assert "private_key" not in repr(cert)


def test_one_certificate_serves_many_endpoints():
    """The relay's shape: one certificate, many peers, each with its own keys."""
    clients = [DtlsCertificate.generate() for _ in range(3)]
    keys = []
    for client_cert in clients:
        server = DtlsEndpoint(role="server", certificate=SERVER_CERT, remote_fingerprint=client_cert.fingerprint)
        client = DtlsEndpoint(role="client", certificate=client_cert, remote_fingerprint=SERVER_CERT.fingerprint)
        assert handshake(SimNet(server, client)).both_connected()
        keys.append(server.srtp_keys.local_key_salt)
    assert len(set(keys)) == 3


# --- SRTP profile negotiation ------------------------------------------------------------------


def test_no_common_srtp_profile_fails_without_keys():
    server, client = make_pair(
        server_profiles=(SrtpProfile.AEAD_AES_128_GCM,), client_profiles=(SrtpProfile.AES128_CM_HMAC_SHA1_80,)
    )
    net = handshake(SimNet(server, client))
    # OpenSSL completes a handshake without use_srtp; the server notices first
    # and never sends its Finished, so the client cannot complete either.
    assert net.errors["server"].counter == "dtls_no_srtp"
    assert server.state is DtlsState.FAILED and "SRTP" in server.failure_reason
    assert server.srtp_keys is None and client.srtp_keys is None
    assert client.state is DtlsState.HANDSHAKING


def test_key_material_layout_follows_rfc5764():
    material = bytes(range(60))  # AES128_CM: 16-byte keys, 14-byte salts
    client = SrtpKeys.from_keying_material(SrtpProfile.AES128_CM_HMAC_SHA1_80, material, is_client=True)
    server = SrtpKeys.from_keying_material(SrtpProfile.AES128_CM_HMAC_SHA1_80, material, is_client=False)
    client_key, server_key = material[0:16], material[16:32]
    client_salt, server_salt = material[32:46], material[46:60]
    assert client.local_key_salt == client_key + client_salt == server.remote_key_salt
    assert client.remote_key_salt == server_key + server_salt == server.local_key_salt
    gcm = SrtpKeys.from_keying_material(SrtpProfile.AEAD_AES_128_GCM, bytes(range(56)), is_client=True)
    assert gcm.local_key_salt == bytes(range(0, 16)) + bytes(range(32, 44))
    assert gcm.remote_key_salt == bytes(range(16, 32)) + bytes(range(44, 56))
    with pytest.raises(ValueError):
        SrtpKeys.from_keying_material(SrtpProfile.AEAD_AES_128_GCM, material, is_client=True)
    assert "local_key_salt" not in repr(client)


# --- MTU ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mtu", [MIN_MTU, 300, 576, 1200])
def test_every_datagram_fits_the_mtu_and_holds_whole_records(mtu):
    server, client = make_pair(mtu=mtu)
    net = SimNet(server, client, seed=mtu, loss=0.2, duplicate=0.2, max_delay=0.1)
    handshake(net)
    assert net.both_connected(), net.errors
    for name in ("server", "client"):
        assert_whole_records_within(net.sent[name], mtu)
    # The certificate message is bigger than a small MTU: it went out in fragments.
    if mtu == MIN_MTU:
        fragments = [
            record
            for datagram in net.sent["server"]
            for record in split_records_untrusted(datagram)
            if record.epoch == 0
            and record.content_type == ContentType.HANDSHAKE
            and record.fragment[0] == HandshakeType.CERTIFICATE
        ]
        offsets = {int.from_bytes(record.fragment[6:9], "big") for record in fragments}
        assert len(offsets) >= 2 and 0 in offsets


def test_mtu_below_the_minimum_is_refused():
    with pytest.raises(ValueError):
        DtlsEndpoint(role="server", certificate=SERVER_CERT, remote_fingerprint=None, mtu=MIN_MTU - 1)


def test_pack_datagrams_is_greedy_and_ordered():
    records = [bytes([22]) + bytes(12) + b"a" * 87, bytes(150), bytes(60), bytes(200)]  # 100, 150, 60, 200
    packed = pack_datagrams(records, 250)
    assert packed == [records[0] + records[1], records[2], records[3]]
    assert pack_datagrams(records, 1000) == [b"".join(records)]
    assert pack_datagrams([], 1200) == []
    with pytest.raises(ValueError):
        pack_datagrams([bytes(300)], 250)


# --- Garbage and teardown ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16",  # one byte of a header
        b"\x16\xfe\xfd" + bytes(9),  # 12 of 13 header bytes
        b"\x16\xfe\xfd" + bytes(8) + b"\x00\x10" + b"short",  # claims 16, carries 5
        bytes(DtlsRecord(22, 0xFEFD, 0, 0, b"x")) + b"\x17",  # a whole record, then a stray byte
        b"\x17\xfe\xfd" + bytes(8) + b"\xff\xff" + bytes(100),  # 65535 claimed
    ],
)
def test_malformed_datagrams_are_dropped_without_harming_the_handshake(garbage):
    server, client = make_pair()
    hello = client.start(0.0)
    with pytest.raises(DtlsError) as excinfo:
        server.receive_untrusted(garbage, 0.0)
    assert excinfo.value.counter == "dtls_malformed"
    assert server.state is DtlsState.HANDSHAKING  # started by the datagram, not failed
    flight = server.receive_untrusted(hello[0], 0.0)
    assert flight
    with pytest.raises(DtlsError):
        client.receive_untrusted(garbage, 0.0)
    assert client.state is DtlsState.HANDSHAKING
    net = SimNet(server, client)
    net.transmit("server", flight)
    net.run(until=net.settled)
    assert net.both_connected()


def test_empty_datagram_is_malformed():
    server, _ = make_pair()
    with pytest.raises(DtlsError) as excinfo:
        server.receive_untrusted(b"", 0.0)
    assert excinfo.value.counter == "dtls_malformed"


def test_datagram_before_a_client_starts_is_refused():
    _, client = make_pair()
    with pytest.raises(DtlsError) as excinfo:
        client.receive_untrusted(bytes(DtlsRecord(22, 0xFEFD, 0, 0, b"")), 0.0)
    assert excinfo.value.counter == "dtls_not_open"
    assert client.state is DtlsState.NEW
    client.start(0.0)
    with pytest.raises(RuntimeError):
        client.start(0.0)


def connected_pair() -> tuple[DtlsEndpoint, DtlsEndpoint, SimNet]:
    server, client = make_pair()
    net = handshake(SimNet(server, client))
    assert net.both_connected()
    return server, client, net


def test_close_notify_from_the_peer_closes_and_is_answered():
    server, client, net = connected_pair()
    goodbye = client.close()
    assert client.state is DtlsState.CLOSED and client.srtp_keys is None
    assert len(goodbye) == 1
    record = split_records_untrusted(goodbye[0])[0]
    assert record.content_type == ContentType.ALERT and record.epoch == 1
    reply = server.receive_untrusted(goodbye[0], net.now)
    assert server.state is DtlsState.CLOSED and server.srtp_keys is None
    assert len(reply) == 1 and split_records_untrusted(reply[0])[0].content_type == ContentType.ALERT
    assert server.next_deadline() is None
    with pytest.raises(DtlsError) as excinfo:
        server.receive_untrusted(goodbye[0], net.now)
    assert excinfo.value.counter == "dtls_not_open"
    assert server.close() == [] and client.close() == []


def test_forged_alert_and_application_data_do_not_disturb_a_connected_endpoint():
    server, client, net = connected_pair()
    forged_alert = bytes(DtlsRecord(ContentType.ALERT, 0xFEFD, 1, 9, bytes(26)))  # epoch 1, bad tag
    assert server.receive_untrusted(forged_alert, net.now) == []
    assert server.state is DtlsState.CONNECTED
    data = bytes(DtlsRecord(ContentType.APPLICATION_DATA, 0xFEFD, 1, 10, b"\x00" * 40))
    assert server.receive_untrusted(data + data, net.now) == []
    assert server.records_dropped == 2
    assert server.state is DtlsState.CONNECTED and server.srtp_keys is not None
    # A genuine close_notify after all that still works.
    server.receive_untrusted(client.close()[0], net.now)
    assert server.state is DtlsState.CLOSED


def test_late_duplicate_of_an_old_flight_after_connecting_is_harmless():
    server, client = make_pair()
    net = handshake(SimNet(server, client))
    hello = net.sent["client"][0]
    final_flight = net.sent["server"][-1]
    outs = [server.receive_untrusted(hello, net.now + 5.0) for _ in range(3)]
    assert server.state is DtlsState.CONNECTED
    # The first repeat is answered with the final flight (it may have been lost); the
    # duplicates arriving together are not (RESEND_ON_RETRANSMISSION_INTERVAL).
    assert len(outs[0]) == 1 and outs[0][0][0] == ContentType.CHANGE_CIPHER_SPEC
    assert len(outs[0][0]) == len(final_flight) and outs[1:] == [[], []]
    assert server.receive_untrusted(hello, net.now + 6.0)  # half a second later: again
    # A connected client has nothing to resend.
    assert client.receive_untrusted(net.sent["server"][0], net.now + 5.0) == []
    assert client.state is DtlsState.CONNECTED
    assert client.records_dropped > 0


def test_closing_before_the_handshake_finishes_sends_nothing():
    server, client = make_pair()
    client.start(0.0)
    assert client.close() == []
    assert client.state is DtlsState.CLOSED and client.next_deadline() is None
    assert server.close() == [] and server.state is DtlsState.CLOSED


def test_record_codec_round_trip_and_fields():
    record = DtlsRecord(ContentType.HANDSHAKE, 0xFEFD, 1, (1 << 48) - 1, b"hello")
    encoded = bytes(record)
    assert encoded[:3] == b"\x16\xfe\xfd" and encoded[3:5] == b"\x00\x01"
    assert encoded[5:11] == b"\xff" * 6 and encoded[11:13] == b"\x00\x05"
    assert split_records_untrusted(encoded + encoded) == [record, record]
    with pytest.raises(ValueError):
        DtlsRecord(22, 0xFEFD, 0, 1 << 48, b"")
    assert DtlsFingerprint("sha-256", bytes(32)).matches(b"") is False


# --- Memory after the handshake ---------------------------------------------------------------


@pytest.mark.parametrize("role", ["server", "client"])
def test_contexts_release_idle_openssl_buffers(role):
    """SSL_MODE_RELEASE_BUFFERS: an idle connection gives back its record buffers."""
    # A fresh certificate: pyOpenSSL refuses set_mode once a context made a connection.
    context = DtlsCertificate.generate()._context(role, (SrtpProfile.AEAD_AES_128_GCM,))
    assert context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS  # set_mode returns the mode now in force


def test_release_frees_openssl_state_and_keeps_the_keys():
    warm = [connected_pair() for _ in range(3)]  # OpenSSL's one-off allocations happen here
    before = c_heap_in_use()
    pairs = [connected_pair()[:2] for _ in range(40)]  # the endpoints, not the simulated network
    held = (c_heap_in_use() - before) / 40
    for server, client in pairs:
        keys = server.srtp_keys
        server.release()
        client.release()
        assert server.released and client.released
        assert server.state is client.state is DtlsState.CONNECTED and server.srtp_keys == keys
        assert_keys_match(server, client, SrtpProfile.AEAD_AES_128_GCM)
    released = (c_heap_in_use() - before) / 40
    # ~170 KB per connected pair on this machine; next to nothing once released.
    assert held > 50_000
    assert released < 5_000
    assert len(warm) == 3


def test_a_released_endpoint_ignores_dtls_and_sends_nothing():
    server, client, net = connected_pair()
    hello = net.sent["client"][0]
    server.release()
    server.release()  # again: nothing more to free
    dropped = server.records_dropped
    # A retransmitted flight is no longer answered, and a close_notify closes nothing.
    assert server.receive_untrusted(hello, net.now + 5.0) == []
    assert server.receive_untrusted(client.close()[0], net.now + 5.0) == []
    assert server.records_dropped == dropped + len(split_records_untrusted(hello)) + 1
    assert server.state is DtlsState.CONNECTED and server.next_deadline() is None
    assert server.handle_timeout(net.now + 100.0) == []
    with pytest.raises(DtlsError) as excinfo:
        server.receive_untrusted(b"\x16\xfe", net.now)  # still malformed, still DtlsError
    assert excinfo.value.counter == "dtls_malformed"
    # A late fingerprint that does not match fails it without any OpenSSL call.
    with pytest.raises(DtlsError):
        server.set_remote_fingerprint(OTHER_CERT.fingerprint)
    assert server.state is DtlsState.FAILED and server.close() == []
    with pytest.raises(DtlsError) as excinfo:
        server.receive_untrusted(hello, net.now)
    assert excinfo.value.counter == "dtls_not_open"


def test_release_closes_quietly_and_refuses_an_unfinished_handshake():
    server, client, net = connected_pair()
    server.release()
    assert server.close() == [] and server.state is DtlsState.CLOSED
    fresh_server, fresh_client = make_pair()
    with pytest.raises(RuntimeError):
        fresh_client.release()  # NEW
    fresh_client.start(0.0)
    with pytest.raises(RuntimeError):
        fresh_client.release()  # HANDSHAKING: its flight may still be needed
    assert not fresh_client.released


@given(data=st.binary(max_size=200))
@example(data=b"")
@example(data=bytes(DtlsRecord(ContentType.ALERT, 0xFEFD, 1, 7, bytes(26))))
def test_a_released_endpoint_raises_only_dtls_error(data):
    server = RELEASED_SERVER
    try:
        assert server.receive_untrusted(data, 1.0) == []
    except DtlsError as exc:
        assert exc.counter == "dtls_malformed"
    assert server.state is DtlsState.CONNECTED


RELEASED_SERVER = connected_pair()[0]
RELEASED_SERVER.release()
