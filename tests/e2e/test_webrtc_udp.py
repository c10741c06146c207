"""A simulated browser against the real server over real UDP: signaling, ICE-lite,
DTLS-SRTP, audio both ways — and a ClientHello flood that must not stall it.

The "browser" is our own DTLS endpoint in the client role with its own
certificate, speaking through the real /v1/signal WebSocket with an offer
captured from Chromium (its credentials and fingerprint replaced).
"""

import json
import re
import socket
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from botcall.demo.signals import dominant_frequency, tone
from botcall.client import connect
from botcall.errors import BadPacket
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.dtls.endpoint import DtlsEndpoint
from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall.wire.rtp import RtpPacket, parse_rtp_untrusted
from botcall.webrtc.srtp import SrtpContext
from botcall.wire.stun import answer_check_untrusted, binding_request
from tests.kit.server import running_server

pytestmark = pytest.mark.e2e

OFFER = (Path(__file__).parent.parent / "signaling" / "data" / "chrome156_mic.sdp").read_text()
OFFER_UFRAG, OFFER_PWD = "Lvk6", "MJmqww8YhsywZZuK2KigpCDG"  # the captured offer's ICE credentials


class SimulatedBrowser:
    """Signaling over the real WebSocket, media over a real UDP socket."""

    def __init__(self, srv, room_id, secret):
        self.srv, self.room_id, self.secret = srv, room_id, secret
        self.cert = DtlsCertificate.generate()
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.relay = ("127.0.0.1", srv.state.media_port)
        self.srtp = None
        self.participant_id = None

    async def signal(self, ws):
        await ws.send_message(json.dumps({"type": "hello", "invite": self.secret}))
        lobby = json.loads(await ws.get_message())
        assert lobby["type"] == "lobby"
        await ws.send_message(json.dumps({"type": "join", "display_name": "Sim"}))
        while True:
            event = json.loads(await ws.get_message())
            if event["type"] == "joined":
                self.participant_id = event["participant_id"]
                self.ssrc = event["you"]["ssrc"]
                break
        offer = re.sub(r"a=fingerprint:.*", f"a=fingerprint:{self.cert.fingerprint}", OFFER)
        await ws.send_message(json.dumps({"type": "offer", "sdp": offer}))
        while True:
            event = json.loads(await ws.get_message())
            if event["type"] == "answer":
                return event["sdp"]

    async def connect_media(self, answer):
        await self.sock.bind(("127.0.0.1", 0))
        ufrag = re.search(r"a=ice-ufrag:(\S+)", answer).group(1)
        pwd = re.search(r"a=ice-pwd:(\S+)", answer).group(1)
        fingerprint = re.search(r"a=fingerprint:(.*)\r\n", answer).group(1)
        await self.sock.sendto(binding_request(f"{ufrag}:{OFFER_UFRAG}", pwd, use_candidate=True, controlling=True, priority=2130706431), self.relay)
        with trio.fail_after(5):
            # First the relay's check of our address (answered as a browser
            # does, signed with the offer's ice-pwd), then its success.
            check, source = await self.sock.recvfrom(2048)
            await self.sock.sendto(answer_check_untrusted(check, source, username=f"{OFFER_UFRAG}:{ufrag}", password=OFFER_PWD), self.relay)
            reply, _ = await self.sock.recvfrom(2048)
        assert reply[:2] == b"\x01\x01"  # Binding success
        dtls = DtlsEndpoint(role="client", certificate=self.cert, remote_fingerprint=fingerprint)
        for datagram in dtls.start(trio.current_time()):
            await self.sock.sendto(datagram, self.relay)
        with trio.fail_after(10):
            while dtls.srtp_keys is None:
                with trio.move_on_after(0.2):
                    data, _ = await self.sock.recvfrom(4096)
                    for datagram in dtls.receive_untrusted(data, trio.current_time()):
                        await self.sock.sendto(datagram, self.relay)
                    continue
                for datagram in dtls.handle_timeout(trio.current_time() + 5):
                    await self.sock.sendto(datagram, self.relay)
        self.srtp = SrtpContext.from_keys(dtls.srtp_keys)
        self.answer_ssrc = int(re.search(r"a=ssrc:(\d+) cname", answer).group(1))

    async def send_tone(self, frequency, seconds):
        encoder = OpusEncoder()
        pcm = tone(frequency, seconds)
        start = trio.current_time()
        for i in range(len(pcm) // 1920):
            packet = bytes(RtpPacket(111, i, i * 960, 0xC0FFEE, payload=encoder.encode(pcm[i * 1920 : (i + 1) * 1920])))
            await self.sock.sendto(self.srtp.protect(packet), self.relay)
            await trio.sleep_until(start + (i + 1) * 0.02)

    async def hear(self, frames):
        decoder = OpusDecoder()
        pcm, ssrcs = [], set()
        while len(pcm) < frames:
            data, _ = await self.sock.recvfrom(4096)
            if data[0] < 128 or 192 <= data[1] <= 223:
                continue
            try:
                packet = parse_rtp_untrusted(self.srtp.unprotect_untrusted(data))
            except BadPacket:
                continue
            ssrcs.add(packet.ssrc)
            pcm.append(decoder.decode_untrusted(packet.payload))
        return b"".join(pcm), ssrcs


async def flood_client_hellos(relay_addr, count):
    """ClientHellos from many unvalidated ports (the CVE-2023-51443 race, at volume)."""
    hellos = []
    for _ in range(8):
        cert = DtlsCertificate.generate()
        hellos += DtlsEndpoint(role="client", certificate=cert, remote_fingerprint=str(cert.fingerprint)).start(0.0)
    socks = [trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    for sock in socks:
        await sock.bind(("127.0.0.1", 0))
    for i in range(count):
        await socks[i % len(socks)].sendto(hellos[i % len(hellos)], relay_addr)
        if i % 200 == 0:
            await trio.sleep(0)
    for sock in socks:
        sock.close()


async def test_browser_leg_over_real_udp_survives_a_client_hello_flood(tmp_path):
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        room_id, secret = created["room_id"], created["invite_url"].split("#invite=")[1]
        browser = SimulatedBrowser(srv, room_id, secret)
        ws_url = srv.url.replace("http://", "ws://") + f"/v1/signal/{room_id}"
        relay = srv.state.media.relay
        async with open_websocket_url(ws_url) as ws, connect(srv.url, room_id, srv.token(agent="bot#1")) as bot:
            with trio.fail_after(10):
                answer = await browser.signal(ws)
            async with trio.open_nursery() as nursery:
                # The flood starts before the handshake and goes on during the call.
                nursery.start_soon(flood_client_hellos, browser.relay, 5000)
                await browser.connect_media(answer)
                # Bot -> browser: 440 Hz arrives as SRTP under the answer's SSRC.
                nursery.start_soon(bot.say_pcm, tone(440, 2.0))
                with trio.fail_after(15):
                    heard, ssrcs = await browser.hear(60)
                assert ssrcs == {browser.answer_ssrc}
                assert abs(dominant_frequency(heard[len(heard) // 3 :], 48000) - 440) < 5
                # Browser -> bot: 660 Hz arrives under the human session's SSRC.
                nursery.start_soon(browser.send_tone, 660, 2.0)
                frames = []
                with trio.fail_after(15):
                    async for frame in bot.audio():
                        if frame.participant_id == browser.participant_id and not frame.concealed:
                            frames.append(frame.pcm)
                        if len(frames) >= 60:
                            break
                assert abs(dominant_frequency(b"".join(frames[20:]), 48000) - 660) < 5
                nursery.cancel_scope.cancel()
        assert relay.counters["dtls_unvalidated_source"] > 1000
        assert relay.counters["dtls_connected"] == 1
