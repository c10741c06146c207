"""A simulated browser against the real server over real UDP: signaling, ICE-lite,
DTLS-SRTP, audio both ways — and a ClientHello flood that must not stall it.

The "browser" is the kit's (``tests/kit/browser.py``: our own DTLS endpoint in
the client role with its own certificate, offering what Chromium offered),
speaking through the real /v1/signal WebSocket and, on a Trio UDP socket,
to the real relay (``tests/kit/browser_udp.py``).
"""

import socket

import pytest
import trio
from trio_websocket import open_websocket_url

from botcall.demo.signals import dominant_frequency, tone
from botcall_sdk import connect
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.dtls.endpoint import DtlsEndpoint
from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall.wire.rtp import RtpPacket
from tests.kit.browser import Browser, browser_offer
from tests.kit.browser_udp import UdpBrowser, signal_browser, udp_browser
from tests.kit.server import running_server

pytestmark = pytest.mark.e2e


async def send_tone(browser: UdpBrowser, frequency, seconds):
    """``frequency`` Hz for ``seconds`` as Opus in 20 ms packets, paced at real time."""
    encoder = OpusEncoder()
    pcm = tone(frequency, seconds)
    start = trio.current_time()
    for i in range(len(pcm) // 1920):
        await browser.send_rtp(RtpPacket(111, i, i * 960, browser.core.send_ssrc, payload=encoder.encode(pcm[i * 1920 : (i + 1) * 1920])))
        await trio.sleep_until(start + (i + 1) * 0.02)


async def hear(browser: UdpBrowser, frames):
    """The first ``frames`` Opus frames from the relay, decoded, and the SSRCs they came under."""
    decoder = OpusDecoder()
    pcm, ssrcs = [], set()
    while len(pcm) < frames:
        packet = await browser.receive_rtp()
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
        ws_url = srv.url.replace("http://", "ws://") + f"/v1/signal/{room_id}"
        relay = srv.state.media.relay
        relay_addr = ("127.0.0.1", srv.state.media_port)
        certificate = DtlsCertificate.generate()
        async with open_websocket_url(ws_url) as ws, connect(srv.url, room_id, srv.token(agent="bot#1")) as bot:
            with trio.fail_after(10):
                signaled = await signal_browser(ws, secret, browser_offer(certificate), display_name="Sim")
            async with udp_browser(Browser(signaled.answer, certificate, relay_addr=relay_addr)) as browser, trio.open_nursery() as nursery:
                # The flood starts before the handshake and goes on during the call.
                nursery.start_soon(flood_client_hellos, relay_addr, 5000)
                await browser.connect()
                # Bot -> browser: 440 Hz arrives as SRTP under the answer's SSRC.
                await bot.say(tone(440, 2.0))
                with trio.fail_after(15):
                    heard, ssrcs = await hear(browser, 60)
                assert ssrcs == {browser.core.out_ssrc}
                assert abs(dominant_frequency(heard[len(heard) // 3 :], 48000) - 440) < 5
                # Browser -> bot: 660 Hz arrives under the human session's SSRC.
                nursery.start_soon(send_tone, browser, 660, 2.0)
                frames = []
                with trio.fail_after(15):
                    async for frame in bot.audio():
                        if frame.speaker == signaled.participant_id and not frame.concealed:
                            frames.append(frame.pcm)
                        if len(frames) >= 60:
                            break
                assert abs(dominant_frequency(b"".join(frames[20:]), 48000) - 660) < 5
                nursery.cancel_scope.cancel()
        assert relay.counters["dtls_unvalidated_source"] > 1000
        assert relay.counters["dtls_connected"] == 1
