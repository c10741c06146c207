"""A relay driven by hand in tests: a wire that records what it sends, bots, latching, RTP."""

from botcall.rtp.packet import RtpPacket
from botcall.rtp.relay import MediaPeer, UdpSink
from botcall.rtp.stun import binding_request


class Wire:
    """Collects what the relay transmits."""

    def __init__(self):
        self.sent: list[tuple[bytes, tuple]] = []

    def __call__(self, data, addr):
        self.sent.append((data, addr))

    def to(self, addr):
        return [data for data, dest in self.sent if dest == addr]

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


def latch(relay, wire, peer, addr, now=0.0, password=None):
    request = binding_request(f"{peer.ice_ufrag}:bot", password or peer.ice_pwd)
    relay.handle_datagram(request, addr, now)
    return request


def rtp(ssrc, seq=1, pt=111, payload=b"\xfc\x01\x02"):
    return bytes(RtpPacket(payload_type=pt, sequence_number=seq, timestamp=seq * 960, ssrc=ssrc, payload=payload))
