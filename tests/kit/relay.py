"""A relay driven by hand in tests: a wire that records what it sends, bots, sessions, latching and RTP."""

from botcall.errors import BadPacket
from botcall.wire.rtp import RtpPacket
from botcall.relay.core import MediaPeer, UdpSink
from botcall.signaling.rooms import Capabilities, Identity, MediaSpec, Session
from botcall.wire.stun import answer_check_untrusted, binding_request

BOT_UFRAG = "botufrag"


class Wire:
    """The one fake wire: the relay's ``transmit``, recording what it sends, in order."""

    def __init__(self):
        self.sent: list[tuple[bytes, tuple]] = []

    def transmit(self, data, addr):
        """Record one datagram (a bound method: the benchmarks' relay calls it per packet)."""
        self.sent.append((data, addr))

    __call__ = transmit

    def to(self, addr):
        """What was sent to ``addr`` so far (kept)."""
        return [data for data, dest in self.sent if dest == addr]

    def take(self, addr):
        """What was sent to ``addr`` so far, removed from the record."""
        mine = [data for data, dest in self.sent if dest == addr]
        self.sent = [(data, dest) for data, dest in self.sent if dest != addr]
        return mine

    def clear(self):
        self.sent.clear()


def make_bot(relay, wire, name, ssrc, room="room-1"):
    peer = MediaPeer(
        session_id=f"sess-{name}",
        participant_id=f"p-{name}",
        room_id=room,
        ssrc=ssrc,
        payload_type=111,
        sink=UdpSink(wire),
        ice_ufrag=f"ufrag{name}",
        ice_pwd=f"password-of-{name}-0123456789",
    )
    return relay.add_peer(peer)


def make_session(name, kind, transport, ssrc, room_id="room", controller="c", issuer="i"):
    """A signaling session for ``name`` (a ``bot`` or a ``human``), as the room registry would make it."""
    return Session(
        session_id=f"sess-{name}",
        room_id=room_id,
        participant_id=f"p-{name}",
        kind=kind,
        identity=Identity.human(name) if kind == "human" else Identity.bot(agent_id=name, controller=controller, issuer=issuer, scopes=("call:voice",)),
        media=MediaSpec(transport=transport),
        capabilities=Capabilities(),
        ssrc=ssrc,
        ice_ufrag=f"uf{name}xx",
        ice_pwd=f"pwd{name}0123456789abcdefghij",
        created_at=0.0,
        expires_at=1e12,
    )


def is_check(data):
    """A Binding request (the relay's check), as opposed to a response or media."""
    return data[:2] == b"\x00\x01"


def answer_checks(relay, wire, peer, addr, now, *, since=0, bot_ufrag=BOT_UFRAG, answer_from=None):
    """Answer, as the bot at ``addr`` does, the relay's checks sent there (from ``wire.sent[since:]``).

    Returns:
        How many checks were answered.
    """
    answered = 0
    for data, dest in list(wire.sent[since:]):
        if dest != addr or not is_check(data):
            continue
        try:
            answer = answer_check_untrusted(data, ("192.0.2.99", 3478), username=f"{bot_ufrag}:{peer.ice_ufrag}", password=peer.ice_pwd)
        except BadPacket:
            continue
        relay.handle_datagram(answer, answer_from or addr, now)
        answered += 1
    return answered


def latch(relay, wire, peer, addr, now=0.0, password=None, bot_ufrag=BOT_UFRAG):
    """Latch as the SDK does: a Binding request; if the relay checks the address,
    answer the check and retransmit the request (which then gets the success).

    Returns:
        The request.
    """
    request = binding_request(f"{peer.ice_ufrag}:{bot_ufrag}", password or peer.ice_pwd)
    since = len(wire.sent)
    relay.handle_datagram(request, addr, now)
    if answer_checks(relay, wire, peer, addr, now, since=since, bot_ufrag=bot_ufrag):
        relay.handle_datagram(request, addr, now)
    return request


def rtp(ssrc, seq=1, pt=111, payload=b"\xfc\x01\x02"):
    return bytes(RtpPacket(payload_type=pt, sequence_number=seq, timestamp=seq * 960, ssrc=ssrc, payload=payload))


def record_python(relay) -> list[bytes]:
    """Every datagram that reaches ``relay``'s Python from now on (what a fast path handed back), in order."""
    seen: list[bytes] = []
    handle = relay.handle_datagram

    def count_python(data, addr, now):
        seen.append(data)
        handle(data, addr, now)

    relay.handle_datagram = count_python
    return seen
