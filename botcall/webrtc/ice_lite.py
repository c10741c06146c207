"""Answering Binding requests and proving addresses: bot latching and browsers' ICE-lite.

Bots prove their UDP address with a Binding request whose USERNAME is
``"<ice_ufrag>:<bot ufrag>"``; browsers run ICE against our ICE-lite agent
(RFC 8445 §2.5) with USERNAME ``"<our ufrag>:<their ufrag>"``. Both sign with our
ICE password, so one stateless function answers both: the session is found by
the part of USERNAME before the first ``':'``.

A valid request proves the sender knows the password, not that it receives at
its source address: a captured request can be replayed from elsewhere, a
source address can be forged. So an address is used (media sent there, the
session moved there) only once it is *verified*: the relay sent it a Binding
request of its own (a check, RFC 8445 §7.2.2) and a valid success came back
from that same address (return routability).

Three parts, all sans-IO:

* ``answer_binding_untrusted`` / ``answer_binding`` — stateless: a datagram (or
  its parsed message) and source address in, a ``BindingOutcome`` (reply bytes
  or None, and what happened) out. No state is created for an unknown ufrag or
  a request that fails authentication.
* ``TransactionLog`` — which transaction ids a session's credentials have used,
  16 bytes each, bounded: a transaction id changes state at most once.
* ``IceLiteState`` — per peer: a rate limit on authenticated requests, the
  transaction log, the relay's outstanding checks, the verified addresses, the
  selected one (a bot's latest verified address; a browser's verified
  nomination) and consent freshness (RFC 7675).

The relay's use (see ``MediaRelay._handle_stun``)::

    outcome = answer_binding(message, len(data), addr, sessions.password_for_ufrag)
    update = peer.ice.on_valid_request(addr, outcome.use_candidate, now,
                                       transaction_id=outcome.transaction_id)
    if update.verified:
        send(outcome.reply)                   # the success
    elif peer.ice.check_allowed(addr, now):
        peer.ice.add_check(transaction_id, addr, now)
        send(binding_check(...))              # instead of (bots) or before (browsers) the success
    ...
    result, update = peer.ice.on_check_success(check_id, addr, now)   # its answer
    if update is not None and update.changed:
        relay.latch(peer, update.selected)
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Literal

from botcall.wire.stun import (
    Class,
    Message,
    Method,
    StunErrorCode,
    binding_error,
    binding_success,
    parse_stun_untrusted,
)

__all__ = [
    "BindingOutcome",
    "BindingReason",
    "CHECK_INTERVAL",
    "CHECK_TIMEOUT",
    "CheckResult",
    "DEFAULT_CONSENT_TIMEOUT",
    "IceLiteState",
    "MAX_PENDING_CHECKS",
    "NominateOn",
    "PeerUpdate",
    "REQUEST_BURST",
    "REQUEST_RATE",
    "Sighting",
    "TRANSACTION_MEMORY",
    "TransactionLog",
    "UNKNOWN_SOURCE_CHECK_INTERVAL",
    "answer_binding",
    "answer_binding_untrusted",
]

# RFC 7675 §5.1: consent expires 30 s after the last authenticated check.
DEFAULT_CONSENT_TIMEOUT = 30.0
# Verified addresses kept per peer (a browser checks from each of its
# candidates; a bot has one address at a time).
DEFAULT_MAX_CANDIDATES = 8
# Transaction ids remembered per session (16 bytes each: 32 KiB at most). At a
# bot's 10 s keepalive that is over five hours, at Chrome's 2.5 s consent
# checks 85 minutes; see TransactionLog for what forgetting one can do.
TRANSACTION_MEMORY = 2048
# Authenticated requests per peer: a token bucket. Chrome's first second (a
# check per candidate pair every ~50 ms, plus retransmissions) stays within the
# burst; afterwards a peer checks every 2.5 s (browsers) or 10 s (bots).
REQUEST_RATE = 10.0
REQUEST_BURST = 32
# The relay's own checks: a transaction id is good for CHECK_TIMEOUT seconds
# (RFC 8489 §6.2.1 gives up on a request after ~40 s; a reachable peer answers
# within a round trip). At most MAX_PENDING_CHECKS per peer (a new one evicts
# the oldest) and one per address per CHECK_INTERVAL, so a flood of
# authenticated requests from forged sources cannot make the relay a reflector
# beyond its own rate limit; checks triggered by RTP from an unknown address go
# out at most once per UNKNOWN_SOURCE_CHECK_INTERVAL per peer.
CHECK_TIMEOUT = 3.0
CHECK_INTERVAL = 0.1
MAX_PENDING_CHECKS = 4
UNKNOWN_SOURCE_CHECK_INTERVAL = 0.2

_HASH_48 = (1 << 48) - 1
_HASH_16 = (1 << 16) - 1

NominateOn = Literal["any", "use_candidate"]


class BindingReason(StrEnum):
    """What ``answer_binding_untrusted`` did; also the relay's counter name."""

    SUCCESS = "stun_binding_success"
    UNKNOWN_UFRAG = "stun_unknown_ufrag"  # silently dropped, no reply, no state
    BAD_REQUEST = "stun_bad_request"  # 400: no USERNAME or no MESSAGE-INTEGRITY
    UNAUTHORIZED = "stun_unauthorized"  # 401: MESSAGE-INTEGRITY does not verify
    INDICATION = "stun_binding_indication"  # RFC 8445 §11 keepalive: nothing to answer
    UNEXPECTED_RESPONSE = "stun_unexpected_response"  # we are lite: we never ask
    UNSUPPORTED_METHOD = "stun_unsupported_method"  # TURN and friends: not a TURN server


@dataclass(frozen=True, slots=True)
class BindingOutcome:
    """The result of answering one STUN datagram.

    Attributes:
        reply: bytes to send back to the source address, or None.
        ufrag: our ufrag the request matched (a known session), or None.
        remote_ufrag: the part of USERNAME after the first ``':'`` (a bot's own
            ufrag, used in our checks to it), or None.
        authenticated: the request carried a MESSAGE-INTEGRITY valid under that
            session's password; only then may the caller touch session state.
        use_candidate: the authenticated request carried USE-CANDIDATE.
        reason: what happened, also the counter name.
        transaction_id: the request's transaction ID (None when not a request).
        reply_suppressed: a reply was due but would have been larger than the
            request, so none is sent (no amplification).
    """

    reply: bytes | None
    ufrag: str | None
    authenticated: bool
    use_candidate: bool
    reason: BindingReason
    transaction_id: bytes | None = None
    reply_suppressed: bool = False
    remote_ufrag: str | None = None


def _limit_reply(
    request_size: int,
    reply: bytes,
    *,
    ufrag: str | None,
    authenticated: bool,
    use_candidate: bool,
    reason: BindingReason,
    transaction_id: bytes,
    remote_ufrag: str | None = None,
) -> BindingOutcome:
    # Never answer with more bytes than we received: a spoofed source must not
    # turn us into an amplifier (RFC 8489 §16.1.3 discusses reflection).
    suppressed = len(reply) > request_size
    return BindingOutcome(
        reply=None if suppressed else reply,
        ufrag=ufrag,
        authenticated=authenticated,
        use_candidate=use_candidate,
        reason=reason,
        transaction_id=transaction_id,
        reply_suppressed=suppressed,
        remote_ufrag=remote_ufrag,
    )


def answer_binding_untrusted(
    data: bytes,
    addr: tuple[Any, ...],
    lookup: Callable[[str], str | None],
) -> BindingOutcome:
    """Answer one STUN datagram as an ICE-lite agent / bot latching point.

    Rules, in order (RFC 8489 §9.1.3 with ICE-lite's choices):

    1. Not a Binding request: no reply (indications and responses are counted).
    2. No USERNAME: 400.
    3. A ufrag (USERNAME up to the first ``':'``) that ``lookup`` does not know:
       silently dropped, no reply.
    4. No MESSAGE-INTEGRITY: 400.
    5. MESSAGE-INTEGRITY that does not verify with the session's password: 401.
    6. Otherwise: Binding success with XOR-MAPPED-ADDRESS = ``addr``, signed with
       the password, with FINGERPRINT. Role attributes are ignored: a lite agent
       is always controlled and never answers 487 (RFC 8445 §7.3.1.1).

    Any reply larger than the request is not sent (``reply_suppressed``). A
    success is what the request deserves; whether the caller may send it (the
    source address is verified) is ``IceLiteState``'s business.

    Args:
        data: the datagram, already classified as STUN.
        addr: its source address; ``(host, port)`` or a longer socket tuple.
        lookup: our ufrag -> our ICE password for that session, or None.

    Returns:
        A ``BindingOutcome``; only an ``authenticated`` one may change state.

    Raises:
        StunParseError: the datagram is not well-formed STUN (see
            ``parse_stun_untrusted``); count ``err.counter`` and drop it.
    """
    return answer_binding(parse_stun_untrusted(data), len(data), addr, lookup)


def answer_binding(
    message: Message,
    size: int,
    addr: tuple[Any, ...],
    lookup: Callable[[str], str | None],
) -> BindingOutcome:
    """``answer_binding_untrusted`` for a message the caller already parsed.

    Args:
        message: the output of ``parse_stun_untrusted``.
        size: the datagram's size in bytes (no reply is larger).
        addr: its source address.
        lookup: our ufrag -> our ICE password for that session, or None.

    Returns:
        A ``BindingOutcome``, as ``answer_binding_untrusted``.
    """
    if message.message_method != Method.BINDING:
        return BindingOutcome(None, None, False, False, BindingReason.UNSUPPORTED_METHOD)
    if message.message_class == Class.INDICATION:
        return BindingOutcome(None, None, False, False, BindingReason.INDICATION)
    if message.message_class != Class.REQUEST:
        return BindingOutcome(None, None, False, False, BindingReason.UNEXPECTED_RESPONSE)
    transaction_id = message.transaction_id
    attributes = message.attributes
    username = attributes.get("USERNAME")
    if username is None:
        return _limit_reply(
            size,
            binding_error(message, StunErrorCode.BAD_REQUEST),
            ufrag=None,
            authenticated=False,
            use_candidate=False,
            reason=BindingReason.BAD_REQUEST,
            transaction_id=transaction_id,
        )
    ufrag, _, remote_ufrag = username.partition(":")
    password = lookup(ufrag)
    if password is None:
        return BindingOutcome(None, None, False, False, BindingReason.UNKNOWN_UFRAG, transaction_id)
    if "MESSAGE-INTEGRITY" not in attributes:
        return _limit_reply(
            size,
            binding_error(message, StunErrorCode.BAD_REQUEST),
            ufrag=ufrag,
            authenticated=False,
            use_candidate=False,
            reason=BindingReason.BAD_REQUEST,
            transaction_id=transaction_id,
        )
    if not message.check_message_integrity(password.encode("utf-8")):
        return _limit_reply(
            size,
            binding_error(message, StunErrorCode.UNAUTHORIZED),
            ufrag=ufrag,
            authenticated=False,
            use_candidate=False,
            reason=BindingReason.UNAUTHORIZED,
            transaction_id=transaction_id,
        )
    return _limit_reply(
        size,
        binding_success(message, addr, password),
        ufrag=ufrag,
        authenticated=True,
        use_candidate="USE-CANDIDATE" in attributes,
        reason=BindingReason.SUCCESS,
        transaction_id=transaction_id,
        remote_ufrag=remote_ufrag,
    )



class Sighting(IntEnum):
    """Whether a transaction id was used before (``TransactionLog.sighting``)."""

    NEW = 0
    RETRANSMISSION = 1  # used before, from the same source address (RFC 8489 §6.2.1)
    REPLAY = 2  # used before, from another address: a captured request sent from elsewhere


class TransactionLog:
    """The transaction ids a session's credentials have used, compact and bounded.

    A transaction id may change state (latch, move, refresh consent) at most
    once in the life of a session's credentials, so the relay must remember
    every id it accepted. Each is kept as one 64-bit word: 48 bits of a keyed
    hash of the id (Python's SipHash of ``bytes``, keyed at random per process,
    so nobody outside can aim for a collision) and 16 bits of a hash of the
    source address it came from, which tells a retransmission (same address)
    from a replay (another). A sorted ``array('Q')`` answers lookups by
    bisection and a ring of the same words in arrival order says which to
    forget: 16 bytes per id, ``capacity`` ids at most.

    What the compaction costs: two different ids collide on 48 bits with
    probability ``capacity / 2**48`` per new id (a legitimate request taken for a
    retransmission: answered, but changing nothing, about once in 10**11
    requests); a replay from an address whose 16-bit hash matches the
    original's is taken for a retransmission (answered, changing nothing).

    What the bound costs: after ``capacity`` newer ids, an id is forgotten, and
    the same bytes replayed later count as new. Everything that moves a session
    needs an answered check besides, so a forgotten id can at most refresh the
    consent of an address that is verified already (see ``IceLiteState``).
    """

    __slots__ = ("capacity", "_sorted", "_ring", "_next")

    def __init__(self, capacity: int = TRANSACTION_MEMORY) -> None:
        """Create an empty log.

        Args:
            capacity: how many ids to remember (the oldest are forgotten first).

        Raises:
            ValueError: ``capacity`` below 1.
        """
        if capacity < 1:
            raise ValueError(f"a transaction log holds at least one id, not {capacity}")
        self.capacity = capacity
        self._sorted = array("Q")
        self._ring = array("Q")
        self._next = 0

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def nbytes(self) -> int:
        """Bytes held by the two arrays' items (16 per id remembered)."""
        return (len(self._sorted) + len(self._ring)) * self._ring.itemsize

    @staticmethod
    def _word(transaction_id: bytes, addr: Hashable) -> int:
        return ((hash(transaction_id) & _HASH_48) << 16) | (hash(addr) & _HASH_16)

    def sighting(self, transaction_id: bytes, addr: Hashable) -> Sighting:
        """Whether ``transaction_id`` was added before, and from where.

        Args:
            transaction_id: the request's 12-byte transaction id.
            addr: its source address.

        Returns:
            ``NEW``, ``RETRANSMISSION`` (added from ``addr``) or ``REPLAY``
            (added from another address only).
        """
        word = self._word(transaction_id, addr)
        high = word >> 16
        words = self._sorted
        index = bisect_left(words, high << 16)
        seen = Sighting.NEW
        while index < len(words) and words[index] >> 16 == high:
            if words[index] == word:
                return Sighting.RETRANSMISSION
            seen = Sighting.REPLAY
            index += 1
        return seen

    def add(self, transaction_id: bytes, addr: Hashable) -> None:
        """Remember ``transaction_id`` from ``addr``, forgetting the oldest id if full.

        Args:
            transaction_id: a transaction id ``sighting`` called ``NEW``.
            addr: its source address.
        """
        word = self._word(transaction_id, addr)
        ring = self._ring
        if len(ring) < self.capacity:
            ring.append(word)
        else:
            oldest = ring[self._next]
            ring[self._next] = word
            self._next = (self._next + 1) % self.capacity
            words = self._sorted
            del words[bisect_left(words, oldest)]
        insort(self._sorted, word)


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """What one authenticated request, or one answered check, did to a peer.

    Attributes:
        selected: the selected (latched) address afterwards, or None.
        changed: ``selected`` differs from before: latch, move, or (consent had
            lapsed) unlatch.
        previous: the selected address before (None if there was none).
        verified: the source address has proven it receives: the caller may
            send it the success response (else it should send a check).
        fresh: the transaction id was new, and its intent counted (consent,
            selection, nomination).
        retransmission: the id was seen before from this address: answered
            like the original, but it changed nothing.
        replayed: the id was seen before from another address: a captured
            request sent from elsewhere; ignored, not answered.
        rate_limited: over the peer's request rate; ignored, not answered.
    """

    selected: Hashable | None
    changed: bool
    previous: Hashable | None
    verified: bool = False
    fresh: bool = False
    retransmission: bool = False
    replayed: bool = False
    rate_limited: bool = False


class CheckResult(StrEnum):
    """What an answer to one of our checks did (``IceLiteState.on_check_success``); a counter name."""

    VERIFIED = "check_verified"
    WRONG_ADDRESS = "check_failed"  # the right answer from another address proves nothing about ours
    EXPIRED = "check_timeout"
    UNKNOWN = "stun_unexpected_response"


class IceLiteState:
    """One peer's verified addresses, selection, consent, checks and replay memory (sans-IO).

    Feed it every *authenticated* Binding request of the peer (a
    ``BindingOutcome`` with ``authenticated=True``) with ``on_valid_request``,
    and every authenticated success answering one of our checks with
    ``on_check_success``. It never sees anything unauthenticated.

    Rules:

    * **Rate.** At most ``request_rate`` requests a second per peer (a token
      bucket of ``request_burst``); beyond, ``rate_limited`` and nothing else.
    * **At most once.** A transaction id seen before from another address is a
      replay (ignored); from the same address a retransmission (answered,
      changing nothing). Only a new id refreshes consent, selects or
      nominates. The ``TransactionLog`` survives ``reset`` (consent expiry).
    * **Verification.** An address is verified when it answers one of our
      checks (``add_check`` then ``on_check_success`` from that address). A
      request from an unverified address changes nothing at once: the caller
      sends a check, and the answer does what the request asked.
    * **Selection.** ``nominate_on="any"`` (bots, which never send
      USE-CANDIDATE): a bot has one address; a verified answer selects it, and
      the previous one stops being verified, so every move takes a check.
      ``nominate_on="use_candidate"`` (browsers, RFC 8445 §8.2 regular
      nomination): a new request with USE-CANDIDATE selects its address if
      verified; from an unverified address the nomination waits for its check.
      A browser's other verified addresses (its other candidate pairs) stay
      verified while they keep checking.
    * **Consent** (RFC 7675 §5.1): the peer expires ``consent_timeout``
      seconds after the last new request from, or answered check of, the
      selected address (of any verified address while none is selected). A
      verified address goes stale the same time after its last one.

    What a forgotten transaction id (older than the log's capacity) can do:
    replayed from the address it first came from while that address is
    verified, refresh its consent once more, or, for a browser, renominate one
    of its other addresses verified within ``consent_timeout``. It can never
    make a bot's session move, nor verify an address.

    Addresses are opaque hashables (``(host, port)`` tuples in practice).
    """

    __slots__ = (
        "_burst",
        "_checks",
        "_consent_timeout",
        "_last_consent",
        "_last_unknown_source_check",
        "_max_candidates",
        "_nominate_on",
        "_nomination",
        "_rate",
        "_selected",
        "_tokens",
        "_tokens_at",
        "_verified",
        "log",
    )

    def __init__(
        self,
        *,
        nominate_on: NominateOn,
        consent_timeout: float = DEFAULT_CONSENT_TIMEOUT,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        transaction_memory: int = TRANSACTION_MEMORY,
        request_rate: float = REQUEST_RATE,
        request_burst: int = REQUEST_BURST,
    ) -> None:
        """Create the state of one peer.

        Args:
            nominate_on: ``"any"`` (bots) or ``"use_candidate"`` (browsers).
            consent_timeout: seconds without a new request before expiry.
            max_candidates: verified addresses to remember, at least 2 (least
                recently refreshed forgotten first; never the selected one).
            transaction_memory: the ``TransactionLog``'s capacity.
            request_rate: authenticated requests per second beyond the burst.
            request_burst: the token bucket's size.

        Raises:
            ValueError: an unknown ``nominate_on`` or a limit out of range.
        """
        if nominate_on not in ("any", "use_candidate"):
            raise ValueError(f"nominate_on must be 'any' or 'use_candidate', not {nominate_on!r}")
        if consent_timeout <= 0 or request_rate <= 0 or request_burst < 1:
            raise ValueError("consent_timeout, request_rate and request_burst must be positive")
        if max_candidates < 2:
            # Room for the selected address and a newcomer.
            raise ValueError(f"max_candidates must be at least 2, not {max_candidates}")
        self._nominate_on = nominate_on
        self._consent_timeout = consent_timeout
        self._max_candidates = max_candidates
        self._rate = request_rate
        self._burst = float(request_burst)
        self._tokens = float(request_burst)
        self._tokens_at: float | None = None
        self.log = TransactionLog(transaction_memory)
        # Address -> time of its last new request or answered check.
        self._verified: OrderedDict[Hashable, float] = OrderedDict()
        # Our outstanding checks: transaction id -> (address, time sent), oldest first.
        self._checks: OrderedDict[bytes, tuple[Hashable, float]] = OrderedDict()
        self._last_unknown_source_check = float("-inf")
        self._nomination: Hashable | None = None
        self._selected: Hashable | None = None
        self._last_consent: float | None = None

    # --- what the relay reads --------------------------------------------------------

    @property
    def selected(self) -> Hashable | None:
        """The selected (latched) address, or None."""
        return self._selected

    @property
    def candidates(self) -> tuple[Hashable, ...]:
        """Verified addresses, least recently refreshed first."""
        return tuple(self._verified)

    @property
    def pending_checks(self) -> dict[bytes, Hashable]:
        """Our outstanding checks: transaction id -> the address it went to."""
        return {transaction_id: addr for transaction_id, (addr, _) in self._checks.items()}

    def is_verified(self, addr: Hashable, now: float) -> bool:
        """Whether ``addr`` answered a check and has not gone stale since.

        Args:
            addr: an address.
            now: the current monotonic time in seconds.

        Returns:
            True if it is verified now.
        """
        last = self._verified.get(addr)
        return last is not None and now - last < self._consent_timeout

    def deadline(self) -> float | None:
        """When consent expires without another new request or answered check.

        Returns:
            ``last consent + consent_timeout``, or None before the first.
        """
        if self._last_consent is None:
            return None
        return self._last_consent + self._consent_timeout

    def expired(self, now: float) -> bool:
        """Whether consent has expired (the caller should unlatch the peer).

        Args:
            now: the current monotonic time in seconds.

        Returns:
            True once ``now`` reaches ``deadline()``; False before any consent.
        """
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    # --- changes -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the addresses: verified, selected, nominated, and consent.

        The transaction log, the rate limit and our outstanding checks stay: an
        id used before consent expired is still used, and a check's answer still
        proves its address.
        """
        self._verified.clear()
        self._selected = None
        self._nomination = None
        self._last_consent = None

    def inherit(self, older: IceLiteState) -> None:
        """Take over the transaction log and rate limit of an older state of the same credentials.

        A browser's renegotiation replaces its peer, not its session's ICE
        credentials: what those credentials used stays used.

        Args:
            older: the state being replaced.
        """
        self.log = older.log
        self._tokens = older._tokens
        self._tokens_at = older._tokens_at

    def drop_stale(self, now: float) -> list[Hashable]:
        """Forget verified addresses other than the selected one that went stale.

        Args:
            now: the current monotonic time in seconds.

        Returns:
            The addresses forgotten (the caller stops accepting DTLS/SRTP from them).
        """
        stale = [addr for addr, last in self._verified.items() if addr != self._selected and now - last >= self._consent_timeout]
        for addr in stale:
            del self._verified[addr]
        return stale

    def _take_token(self, now: float) -> bool:
        tokens = self._tokens
        if self._tokens_at is not None and now > self._tokens_at:
            tokens = min(self._burst, tokens + (now - self._tokens_at) * self._rate)
        self._tokens_at = now if self._tokens_at is None else max(now, self._tokens_at)
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def on_valid_request(
        self,
        addr: Hashable,
        use_candidate: bool,
        now: float,
        *,
        transaction_id: bytes,
    ) -> PeerUpdate:
        """Record one authenticated Binding request from the peer.

        Args:
            addr: its source address.
            use_candidate: it carried USE-CANDIDATE.
            now: the current monotonic time in seconds.
            transaction_id: its transaction ID.

        Returns:
            A ``PeerUpdate``: whether to answer with a success (``verified``) or
            a check, and whether the selected address changed.
        """
        previous = self._selected
        if not self._take_token(now):
            return PeerUpdate(previous, False, previous, rate_limited=True)
        sighting = self.log.sighting(transaction_id, addr)
        if sighting is Sighting.REPLAY:
            return PeerUpdate(previous, False, previous, replayed=True)
        if self.expired(now):
            self.reset()
        verified = self.is_verified(addr, now)
        if sighting is Sighting.RETRANSMISSION:
            return PeerUpdate(self._selected, self._selected != previous, previous, verified=verified, retransmission=True)
        self.log.add(transaction_id, addr)
        if verified:
            self._refresh(addr, now)
            if use_candidate or self._nominate_on == "any":
                self._select(addr)
            if self._selected is None or self._selected == addr:
                self._last_consent = now
        elif use_candidate:
            # RFC 8445 §7.3.1.5 lets a lite agent nominate on USE-CANDIDATE; we
            # do once the address proves it receives.
            self._nomination = addr
        return PeerUpdate(self._selected, self._selected != previous, previous, verified=verified, fresh=True)

    def check_allowed(self, addr: Hashable, now: float, *, unknown_source: bool = False) -> bool:
        """Whether a check to ``addr`` may go now (the rate limits on our checks).

        Args:
            addr: where it would go.
            now: the current monotonic time in seconds.
            unknown_source: it would answer RTP/RTCP from an unknown address
                (at most one per ``UNKNOWN_SOURCE_CHECK_INTERVAL`` per peer).

        Returns:
            False if a check to ``addr`` went less than ``CHECK_INTERVAL`` ago
            (or, for ``unknown_source``, any such check went too recently).
        """
        if unknown_source and now - self._last_unknown_source_check < UNKNOWN_SOURCE_CHECK_INTERVAL:
            return False
        for check_addr, sent in self._checks.values():
            if check_addr == addr and now - sent < CHECK_INTERVAL:
                return False
        return True

    def add_check(self, transaction_id: bytes, addr: Hashable, now: float, *, unknown_source: bool = False) -> list[tuple[bytes, Hashable]]:
        """Record a check the caller is sending to ``addr``.

        Args:
            transaction_id: its random transaction id.
            addr: where it goes.
            now: the current monotonic time in seconds.
            unknown_source: it answers RTP/RTCP from an unknown address.

        Returns:
            The checks given up on to make room, ``(transaction id, address)``:
            expired ones and, beyond ``MAX_PENDING_CHECKS``, the oldest.
        """
        dropped = self.expire_checks(now)
        checks = self._checks
        while len(checks) >= MAX_PENDING_CHECKS:
            oldest, (oldest_addr, _) = checks.popitem(last=False)
            dropped.append((oldest, oldest_addr))
        checks[transaction_id] = (addr, now)
        if unknown_source:
            self._last_unknown_source_check = now
        return dropped

    def has_check_to(self, addr: Hashable) -> bool:
        """Whether one of our checks to ``addr`` is outstanding."""
        return any(check_addr == addr for check_addr, _ in self._checks.values())

    def expire_checks(self, now: float) -> list[tuple[bytes, Hashable]]:
        """Give up on checks older than ``CHECK_TIMEOUT``.

        Args:
            now: the current monotonic time in seconds.

        Returns:
            The checks given up on, ``(transaction id, address)``.
        """
        expired = [(transaction_id, addr) for transaction_id, (addr, sent) in self._checks.items() if now - sent >= CHECK_TIMEOUT]
        for transaction_id, _ in expired:
            del self._checks[transaction_id]
        return expired

    def on_check_success(self, transaction_id: bytes, addr: Hashable, now: float) -> tuple[CheckResult, PeerUpdate | None]:
        """Record an authenticated success answering one of our checks.

        The caller has checked its MESSAGE-INTEGRITY with the key the check was
        signed with. A check is used once: verified or expired, it is gone; an
        answer from another address leaves it outstanding (the right one may
        still come).

        Args:
            transaction_id: the response's transaction id.
            addr: the address it came from.
            now: the current monotonic time in seconds.

        Returns:
            ``(CheckResult, update)``; ``update`` is not None only for
            ``VERIFIED``: the address is verified, and selected for a bot or a
            browser that nominated it.
        """
        entry = self._checks.get(transaction_id)
        if entry is None:
            return CheckResult.UNKNOWN, None
        check_addr, sent = entry
        if check_addr != addr:
            return CheckResult.WRONG_ADDRESS, None
        del self._checks[transaction_id]
        if now - sent >= CHECK_TIMEOUT:
            return CheckResult.EXPIRED, None
        previous = self._selected
        if self.expired(now):
            self.reset()
        self._refresh(addr, now)
        if self._nominate_on == "any" or self._nomination == addr:
            self._select(addr)
        if self._selected is None or self._selected == addr:
            self._last_consent = now
        return CheckResult.VERIFIED, PeerUpdate(self._selected, self._selected != previous, previous, verified=True, fresh=True)

    def _select(self, addr: Hashable) -> None:
        old = self._selected
        self._selected = addr
        if self._nomination == addr:
            self._nomination = None
        if self._nominate_on == "any" and old is not None and old != addr:
            # A bot has one address: the one it left must prove itself again.
            self._verified.pop(old, None)

    def _refresh(self, addr: Hashable, now: float) -> None:
        verified = self._verified
        verified[addr] = now
        verified.move_to_end(addr)
        if len(verified) > self._max_candidates:
            # At most two entries are protected and the limit is at least two,
            # so the least recently refreshed unprotected one always exists.
            for old in verified:
                if old != self._selected and old != addr:
                    del verified[old]
                    break
