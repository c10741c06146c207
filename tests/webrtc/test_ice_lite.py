"""The one Binding responder (bots and browsers) and per-peer ICE-lite state:
verification by our own checks, at-most-once transaction ids, rates, consent."""

import hashlib
import hmac
import struct
import zlib

import pytest
from aioice.stun import Class
from hypothesis import given, strategies as st

from botcall.errors import StunParseError
from botcall.webrtc.ice_lite import (
    CHECK_INTERVAL,
    CHECK_TIMEOUT,
    MAX_PENDING_CHECKS,
    REQUEST_BURST,
    REQUEST_RATE,
    TRANSACTION_MEMORY,
    UNKNOWN_SOURCE_CHECK_INTERVAL,
    BindingReason,
    CheckResult,
    IceLiteState,
    Sighting,
    TransactionLog,
    answer_binding_untrusted,
)
from botcall.wire.stun import binding_request, parse_binding_response_untrusted, parse_stun_untrusted

# Captured from Chromium 156 (headless, Debian) checking our ICE-lite answer on
# 127.0.0.1: USERNAME "relayUfrag1:FgqC", 0xC057, ICE-CONTROLLING, PRIORITY,
# MESSAGE-INTEGRITY, FINGERPRINT; the second is the nomination (USE-CANDIDATE).
CHROME_UFRAG = "relayUfrag1"
CHROME_PASSWORD = "relayPasswordABCDEFGHIJ12"
CHROME_CHECK = bytes.fromhex(
    "000100502112a44234534a666c577775654978790006001072656c61795566726167313a46677143"
    "c057000400010000802a0008506e14ed83e1f9e7002400046e7c1eff00080014b0fed04ea13b4284"
    "06cc88db139c1387e732315b8028000401ee065b"
)
CHROME_NOMINATION = bytes.fromhex(
    "000100542112a4424535647436784175684648500006001072656c61795566726167313a46677143"
    "c057000400010000802a0008506e14ed83e1f9e700250000002400046e7c1eff00080014a9393d07"
    "8670892002c6f3fee96dd14d4a69215e80280004fe2c12b4"
)

UFRAG = "Ab3d"
PASSWORD = "sessionPassword+1234567/89"
SESSIONS = {UFRAG: PASSWORD, CHROME_UFRAG: CHROME_PASSWORD}
BROWSER = ("192.0.2.10", 50000)
BOT = ("198.51.100.7", 41000)


def tlv(attribute_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attribute_type, len(value)) + value + bytes(-len(value) % 4)


def sign(header_and_body: bytes, key: bytes | None, *, fingerprint: bool = True) -> bytes:
    """Append MESSAGE-INTEGRITY (if key) and FINGERPRINT by hand (RFC 8489 §14.5, §14.7)."""
    data = header_and_body
    if key is not None:
        covered = data[:2] + struct.pack("!H", len(data) - 20 + 24) + data[4:]
        data = covered + tlv(0x0008, hmac.new(key, covered, hashlib.sha1).digest())
    if fingerprint:
        data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:]
        data += tlv(0x8028, struct.pack("!I", zlib.crc32(data) ^ 0x5354554E))
    return data


def chrome_style_request(
    username: str,
    key: bytes | None,
    *,
    use_candidate: bool = False,
    transaction_id: bytes = b"chromeTxn001",
    method_and_class: int = 0x0001,
) -> bytes:
    """A check shaped like Chrome's, including Google's 0xC057 (network id, cost)."""
    body = tlv(0x0006, username.encode()) if username is not None else b""
    body += tlv(0xC057, b"\x00\x01\x00\x0a")
    body += tlv(0x802A, (0x1122334455667788).to_bytes(8, "big"))
    if use_candidate:
        body += tlv(0x0025, b"")
    body += tlv(0x0024, (1853824767).to_bytes(4, "big"))
    header = struct.pack("!HHI12s", method_and_class, len(body), 0x2112A442, transaction_id)
    return sign(header + body, key)


def check_success(outcome, request: bytes, addr, password: str) -> None:
    assert outcome.reason is BindingReason.SUCCESS and outcome.authenticated
    assert outcome.reply is not None and len(outcome.reply) <= len(request)
    transaction_id = parse_stun_untrusted(request).transaction_id
    assert parse_binding_response_untrusted(outcome.reply, password, transaction_id) == addr


# --- Real Chrome checks ----------------------------------------------------------


def test_captured_chrome_check_is_answered():
    outcome = answer_binding_untrusted(CHROME_CHECK, BROWSER, SESSIONS.get)
    check_success(outcome, CHROME_CHECK, BROWSER, CHROME_PASSWORD)
    assert outcome.ufrag == CHROME_UFRAG
    assert not outcome.use_candidate


def test_captured_chrome_nomination_carries_use_candidate():
    outcome = answer_binding_untrusted(CHROME_NOMINATION, BROWSER, SESSIONS.get)
    check_success(outcome, CHROME_NOMINATION, BROWSER, CHROME_PASSWORD)
    assert outcome.use_candidate
    assert outcome.transaction_id == CHROME_NOMINATION[8:20]


def test_captured_chrome_check_fails_with_another_password():
    outcome = answer_binding_untrusted(CHROME_CHECK, BROWSER, {CHROME_UFRAG: PASSWORD}.get)
    assert outcome.reason is BindingReason.UNAUTHORIZED and not outcome.authenticated
    assert parse_stun_untrusted(outcome.reply).error_code == 401


# --- Hand-built checks -----------------------------------------------------------


@pytest.mark.parametrize("addr", [BROWSER, ("2001:db8::7", 3478)])
@pytest.mark.parametrize("use_candidate", [False, True])
def test_chrome_style_check_is_answered(addr, use_candidate):
    request = chrome_style_request(f"{UFRAG}:remote", PASSWORD.encode(), use_candidate=use_candidate)
    outcome = answer_binding_untrusted(request, addr, SESSIONS.get)
    check_success(outcome, request, addr, PASSWORD)
    assert outcome.use_candidate is use_candidate


def test_bot_request_is_answered():
    request = binding_request(f"{UFRAG}:bot-42", PASSWORD)
    outcome = answer_binding_untrusted(request, BOT, SESSIONS.get)
    check_success(outcome, request, BOT, PASSWORD)
    assert outcome.ufrag == UFRAG and not outcome.use_candidate


def test_bot_request_from_ipv6_fits_the_amplification_limit():
    request = binding_request(f"{UFRAG}:", PASSWORD)
    outcome = answer_binding_untrusted(request, ("2001:db8::1", 9), SESSIONS.get)
    check_success(outcome, request, ("2001:db8::1", 9), PASSWORD)


def test_role_conflict_is_never_487():
    # A peer claiming ICE-CONTROLLED against a lite agent: still a plain success.
    request = binding_request(f"{UFRAG}:x", PASSWORD, controlling=False, priority=1)
    outcome = answer_binding_untrusted(request, BOT, SESSIONS.get)
    check_success(outcome, request, BOT, PASSWORD)


def test_username_splits_at_the_first_colon():
    seen = []

    def lookup(ufrag):
        seen.append(ufrag)
        return PASSWORD if ufrag == UFRAG else None

    request = binding_request(f"{UFRAG}:a:b:c", PASSWORD)
    assert answer_binding_untrusted(request, BOT, lookup).authenticated
    assert seen == [UFRAG]


# --- Refusals --------------------------------------------------------------------


def test_wrong_password_is_401_without_integrity():
    request = binding_request(f"{UFRAG}:bot", "the wrong password, quite long")
    outcome = answer_binding_untrusted(request, BOT, SESSIONS.get)
    assert outcome.reason is BindingReason.UNAUTHORIZED
    assert not outcome.authenticated and not outcome.use_candidate
    assert outcome.ufrag == UFRAG
    reply = parse_stun_untrusted(outcome.reply)
    assert reply.message_class == Class.ERROR and reply.error_code == 401
    assert "MESSAGE-INTEGRITY" not in reply.attributes and "FINGERPRINT" in reply.attributes
    assert reply.transaction_id == parse_stun_untrusted(request).transaction_id


def test_unknown_ufrag_is_dropped_silently():
    request = chrome_style_request("nobody:remote", PASSWORD.encode())
    outcome = answer_binding_untrusted(request, BROWSER, SESSIONS.get)
    assert outcome.reply is None and outcome.ufrag is None and not outcome.authenticated
    assert outcome.reason is BindingReason.UNKNOWN_UFRAG and outcome.reason == "stun_unknown_ufrag"


def test_unknown_ufrag_without_integrity_is_dropped_too():
    outcome = answer_binding_untrusted(chrome_style_request("nobody:x", None), BROWSER, SESSIONS.get)
    assert outcome.reply is None and outcome.reason is BindingReason.UNKNOWN_UFRAG


def test_known_ufrag_without_integrity_is_400():
    request = chrome_style_request(f"{UFRAG}:remote", None)
    outcome = answer_binding_untrusted(request, BROWSER, SESSIONS.get)
    assert outcome.reason is BindingReason.BAD_REQUEST and outcome.ufrag == UFRAG
    assert not outcome.authenticated
    assert parse_stun_untrusted(outcome.reply).error_code == 400


def test_missing_username_is_400():
    body = tlv(0x0024, (1).to_bytes(4, "big")) + tlv(0x8022, b"some software name")
    request = sign(struct.pack("!HHI12s", 0x0001, len(body), 0x2112A442, b"noUsername01") + body, b"k")
    outcome = answer_binding_untrusted(request, BROWSER, SESSIONS.get)
    assert outcome.reason is BindingReason.BAD_REQUEST and outcome.ufrag is None
    assert parse_stun_untrusted(outcome.reply).error_code == 400


def test_bare_request_gets_nothing_because_a_400_would_amplify():
    # 20 bytes in; a 400 would be 48 bytes out.
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, b"bareRequest1")
    outcome = answer_binding_untrusted(request, BROWSER, SESSIONS.get)
    assert outcome.reason is BindingReason.BAD_REQUEST
    assert outcome.reply is None and outcome.reply_suppressed


def test_fingerprint_mismatch_is_a_parse_error():
    request = bytearray(chrome_style_request(f"{UFRAG}:remote", PASSWORD.encode()))
    request[-1] ^= 0xFF
    with pytest.raises(StunParseError) as caught:
        answer_binding_untrusted(bytes(request), BROWSER, SESSIONS.get)
    assert caught.value.counter == "stun_bad_fingerprint"


@pytest.mark.parametrize(
    "method_and_class, reason",
    [
        (0x0011, BindingReason.INDICATION),
        (0x0101, BindingReason.UNEXPECTED_RESPONSE),
        (0x0111, BindingReason.UNEXPECTED_RESPONSE),
        (0x0003, BindingReason.UNSUPPORTED_METHOD),  # TURN Allocate
    ],
)
def test_non_binding_requests_get_no_reply(method_and_class, reason):
    data = chrome_style_request(f"{UFRAG}:r", PASSWORD.encode(), method_and_class=method_and_class)
    outcome = answer_binding_untrusted(data, BROWSER, SESSIONS.get)
    assert outcome.reason is reason and outcome.reply is None and not outcome.authenticated


@given(
    username=st.text(max_size=40),
    password=st.text(min_size=1, max_size=40),
    known=st.booleans(),
    sign_it=st.booleans(),
    use_candidate=st.booleans(),
    ipv6=st.booleans(),
    port=st.integers(0, 65535),
)
def test_reply_is_never_larger_than_the_request(username, password, known, sign_it, use_candidate, ipv6, port):
    ufrag = username.partition(":")[0]
    sessions = {ufrag: password} if known else {}
    request = chrome_style_request(username, password.encode() if sign_it else None, use_candidate=use_candidate)
    addr = ("2001:db8::5", port) if ipv6 else ("192.0.2.5", port)
    outcome = answer_binding_untrusted(request, addr, sessions.get)
    if outcome.reply is not None:
        assert len(outcome.reply) <= len(request)
    assert outcome.authenticated is (known and sign_it)
    if not known:
        assert outcome.reply is None
    if outcome.authenticated:
        check_success(outcome, request, addr, password)


# --- IceLiteState ----------------------------------------------------------------

A = ("192.0.2.1", 1000)
B = ("192.0.2.2", 2000)
C = ("192.0.2.3", 3000)

_ids = iter(range(10**9))


def txid() -> bytes:
    return next(_ids).to_bytes(12, "big")


def request(state, addr, now, *, use_candidate=False, transaction_id=None):
    return state.on_valid_request(addr, use_candidate, now, transaction_id=transaction_id or txid())


def verify(state, addr, now):
    """Our check to ``addr``, answered from ``addr``."""
    check = txid()
    state.add_check(check, addr, now)
    return state.on_check_success(check, addr, now)


def test_a_bot_is_latched_only_once_its_address_answers_a_check():
    state = IceLiteState(nominate_on="any")
    first = request(state, A, 0.0)
    # Valid credentials prove nothing about the source address.
    assert first.fresh and not first.verified and not first.changed and state.selected is None
    result, update = verify(state, A, 0.01)
    assert result is CheckResult.VERIFIED
    assert update.changed and update.selected == A and update.previous is None
    again = request(state, A, 10.0)
    assert again.verified and not again.changed and state.deadline() == 40.0


def test_a_bot_moves_only_after_the_new_address_answers():
    state = IceLiteState(nominate_on="any")
    request(state, A, 0.0)
    verify(state, A, 0.0)
    moving = request(state, B, 15.0)
    assert not moving.verified and not moving.changed and state.selected == A
    _, update = verify(state, B, 15.01)
    assert update.changed and update.selected == B and update.previous == A
    # A bot has one address: the one it left must prove itself again.
    assert not state.is_verified(A, 15.02)
    back = request(state, A, 16.0)
    assert not back.verified and state.selected == B


def test_a_browser_learns_addresses_and_selects_a_verified_nomination():
    state = IceLiteState(nominate_on="use_candidate")
    request(state, A, 0.0)
    _, update = verify(state, A, 0.01)
    assert not update.changed and state.selected is None and state.candidates == (A,)
    nominated = request(state, A, 0.1, use_candidate=True)
    assert nominated.verified and nominated.changed and nominated.selected == A
    # A check on another pair does not move the selection...
    request(state, B, 1.0)
    verify(state, B, 1.0)
    assert state.selected == A and set(state.candidates) == {A, B}
    # ... a renomination of a verified address does.
    renominated = request(state, B, 2.0, use_candidate=True)
    assert renominated.changed and renominated.selected == B and renominated.previous == A


def test_a_nomination_from_an_unverified_address_waits_for_its_check():
    state = IceLiteState(nominate_on="use_candidate")
    early = request(state, A, 0.0, use_candidate=True)
    assert not early.verified and not early.changed and state.selected is None
    _, update = verify(state, A, 0.02)
    assert update.changed and update.selected == A


def test_a_check_answer_is_single_use_from_the_right_address_in_time():
    state = IceLiteState(nominate_on="any")
    request(state, A, 0.0)
    check = txid()
    state.add_check(check, A, 0.0)
    assert state.on_check_success(check, B, 0.01) == (CheckResult.WRONG_ADDRESS, None)
    assert state.selected is None and state.pending_checks == {check: A}  # the right answer may still come
    assert state.on_check_success(check, A, 0.02)[0] is CheckResult.VERIFIED
    assert state.on_check_success(check, A, 0.03) == (CheckResult.UNKNOWN, None)
    late = txid()
    state.add_check(late, B, 1.0)
    assert state.on_check_success(late, B, 1.0 + CHECK_TIMEOUT) == (CheckResult.EXPIRED, None)
    assert state.selected == A and not state.is_verified(B, 5.0)


def test_checks_are_rate_limited_per_address_and_bounded_per_peer():
    state = IceLiteState(nominate_on="any")
    assert state.check_allowed(A, 0.0)
    state.add_check(txid(), A, 0.0)
    assert not state.check_allowed(A, CHECK_INTERVAL / 2)
    assert state.check_allowed(B, CHECK_INTERVAL / 2)
    assert state.check_allowed(A, CHECK_INTERVAL)
    dropped = []
    for port in range(10):
        dropped += state.add_check(txid(), ("203.0.113.1", port), 1.0)
    assert len(state.pending_checks) == MAX_PENDING_CHECKS
    assert len(dropped) == 1 + 10 - MAX_PENDING_CHECKS  # the oldest go first
    assert state.expire_checks(1.0 + CHECK_TIMEOUT) and not state.pending_checks


def test_unknown_source_checks_are_rate_limited_per_peer():
    state = IceLiteState(nominate_on="any")
    assert state.check_allowed(A, 0.0, unknown_source=True)
    state.add_check(txid(), A, 0.0, unknown_source=True)
    assert not state.check_allowed(B, UNKNOWN_SOURCE_CHECK_INTERVAL / 2, unknown_source=True)
    assert state.check_allowed(B, UNKNOWN_SOURCE_CHECK_INTERVAL / 2)  # a request's check is not held back
    assert state.check_allowed(B, UNKNOWN_SOURCE_CHECK_INTERVAL, unknown_source=True)


def test_a_retransmission_is_answered_but_changes_nothing():
    state = IceLiteState(nominate_on="any")
    request(state, A, 0.0)
    verify(state, A, 0.0)
    keepalive = txid()
    assert request(state, A, 10.0, transaction_id=keepalive).fresh
    assert state.deadline() == 40.0
    again = request(state, A, 20.0, transaction_id=keepalive)
    assert again.retransmission and again.verified and not again.fresh
    assert state.deadline() == 40.0  # no consent refresh from an id used before


def test_a_replay_from_elsewhere_is_ignored_even_after_expiry_and_many_newer_requests():
    state = IceLiteState(nominate_on="any")
    captured = txid()
    request(state, A, 0.0, transaction_id=captured)
    verify(state, A, 0.0)
    for index in range(200):  # far more than the 32 ids the old window held
        request(state, A, 1.0 + index * 0.5)
    replay = request(state, C, 200.0, transaction_id=captured)
    assert replay.replayed and not replay.changed and state.selected == A
    assert state.expired(500.0)
    for now in (500.0, 5000.0):  # consent lapsed: the ids are still remembered
        assert request(state, C, now, transaction_id=captured).replayed
        assert request(state, A, now + 1, transaction_id=captured).retransmission


def test_consent_expires_after_thirty_seconds_and_only_the_selected_address_refreshes_it():
    state = IceLiteState(nominate_on="use_candidate")
    assert state.deadline() is None and not state.expired(1e9)
    request(state, A, 100.0, use_candidate=True)
    verify(state, A, 100.0)
    assert state.deadline() == 130.0
    request(state, B, 110.0)
    verify(state, B, 110.0)  # another pair
    assert state.deadline() == 130.0
    request(state, A, 120.0)
    assert state.deadline() == 150.0
    assert not state.expired(149.999) and state.expired(150.0)


def test_a_request_after_expiry_starts_over():
    state = IceLiteState(nominate_on="any")
    request(state, A, 0.0)
    verify(state, A, 0.0)
    update = request(state, A, 31.0)
    assert update.changed and update.previous == A and update.selected is None
    assert not update.verified  # a fresh check is due
    assert verify(state, A, 31.0)[1].selected == A


def test_configurable_timeout():
    state = IceLiteState(nominate_on="any", consent_timeout=5.0)
    request(state, A, 1.0)
    verify(state, A, 1.0)
    assert state.expired(6.0) and not state.expired(5.9)


def test_authenticated_requests_are_rate_limited():
    state = IceLiteState(nominate_on="any")
    updates = [request(state, A, 0.0) for _ in range(REQUEST_BURST + 5)]
    assert sum(update.rate_limited for update in updates) == 5
    assert not any(update.fresh for update in updates[REQUEST_BURST:])
    later = 1.0 / REQUEST_RATE
    assert not request(state, A, later).rate_limited
    assert request(state, A, later).rate_limited


def test_verified_addresses_are_bounded_and_the_selected_one_survives():
    state = IceLiteState(nominate_on="use_candidate", max_candidates=3, consent_timeout=1e6)
    request(state, A, 0.0, use_candidate=True)
    verify(state, A, 0.0)
    for port in range(100):
        addr = ("203.0.113.1", port)
        request(state, addr, 1.0 + port)
        verify(state, addr, 1.0 + port)
        assert len(state.candidates) <= 3 and A in state.candidates
    assert state.candidates == (A, ("203.0.113.1", 98), ("203.0.113.1", 99))


def test_stale_verified_addresses_are_dropped_but_not_the_selected_one():
    state = IceLiteState(nominate_on="use_candidate")
    request(state, A, 0.0, use_candidate=True)
    verify(state, A, 0.0)
    request(state, B, 1.0)
    verify(state, B, 1.0)
    assert state.drop_stale(30.0) == []
    assert state.drop_stale(31.0) == [B] and state.candidates == (A,)


def test_bad_arguments():
    with pytest.raises(ValueError):
        IceLiteState(nominate_on="sometimes")
    with pytest.raises(ValueError):
        IceLiteState(nominate_on="any", max_candidates=1)
    with pytest.raises(ValueError):
        IceLiteState(nominate_on="any", consent_timeout=0)
    with pytest.raises(ValueError):
        TransactionLog(0)


def test_reset_forgets_the_addresses_but_not_the_transaction_ids():
    state = IceLiteState(nominate_on="any")
    request(state, A, 0.0, transaction_id=b"x" * 12)
    verify(state, A, 0.0)
    state.reset()
    assert state.selected is None and state.candidates == () and state.deadline() is None
    assert request(state, B, 1.0, transaction_id=b"x" * 12).replayed


def test_a_renegotiated_peer_inherits_the_used_transaction_ids():
    old = IceLiteState(nominate_on="use_candidate")
    request(old, A, 0.0, transaction_id=b"y" * 12)
    new = IceLiteState(nominate_on="use_candidate")
    new.inherit(old)
    assert request(new, C, 1.0, transaction_id=b"y" * 12).replayed


# --- TransactionLog ---------------------------------------------------------------


def test_the_log_tells_new_retransmission_and_replay_apart():
    log = TransactionLog()
    assert log.sighting(b"a" * 12, A) is Sighting.NEW
    log.add(b"a" * 12, A)
    assert log.sighting(b"a" * 12, A) is Sighting.RETRANSMISSION
    assert log.sighting(b"a" * 12, B) is Sighting.REPLAY
    assert log.sighting(b"b" * 12, A) is Sighting.NEW


def test_the_log_is_bounded_at_sixteen_bytes_an_id_and_forgets_the_oldest_first():
    log = TransactionLog(capacity=100)
    for index in range(250):
        log.add(index.to_bytes(12, "big"), A)
        assert len(log) <= 100 and log.nbytes <= 16 * 100
    assert log.sighting((149).to_bytes(12, "big"), B) is Sighting.NEW  # forgotten
    assert all(log.sighting(index.to_bytes(12, "big"), B) is Sighting.REPLAY for index in range(150, 250))


def test_the_default_log_is_32_kib_at_most():
    assert TRANSACTION_MEMORY * 16 == 32 * 1024


@given(st.lists(st.tuples(st.binary(min_size=12, max_size=12), st.sampled_from([A, B, C])), max_size=60))
def test_the_log_agrees_with_a_plain_dictionary(events):
    if len({hash(addr) & 0xFFFF for addr in (A, B, C)}) < 3:
        pytest.skip("this process's hash key gives two test addresses the same 16 bits")
    log = TransactionLog(capacity=16)
    model: dict[bytes, set] = {}
    order: list[bytes] = []
    for transaction_id, addr in events:
        seen = model.get(transaction_id)
        expected = Sighting.NEW if seen is None else Sighting.RETRANSMISSION if addr in seen else Sighting.REPLAY
        assert log.sighting(transaction_id, addr) is expected
        if expected is Sighting.NEW:
            log.add(transaction_id, addr)
            model.setdefault(transaction_id, set()).add(addr)
            order.append(transaction_id)
            if len(order) > 16:
                del model[order.pop(0)]
