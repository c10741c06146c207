"""A human for the Node SDK's barge-in test: the test kit's simulated browser
(tests/kit/browser_udp.py: real signaling, ICE, DTLS-SRTP over UDP) in a room.

    python sdk/js/test/human.py SERVER_URL ROOM_ID INVITE_SECRET MEDIA_PORT

It prints ``{"joined": participant_id}`` once its media flows, then sends
silence at real time; each ``speak`` line on stdin sends three seconds of a
speech-like signal (botcall.demo.signals.speech_like) and prints
``{"spoke": true}``. It leaves when stdin closes.
"""

from __future__ import annotations

import json
import sys

import trio
from trio_websocket import open_websocket_url

from botcall.audio.opus import OpusEncoder
from botcall.demo.signals import speech_like
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.wire.rtp import RtpPacket
from tests.kit.browser import Browser, browser_offer
from tests.kit.browser_udp import signal_browser, udp_browser

FRAME_BYTES = 1920  # 20 ms at 48 kHz, int16 mono


async def main(server: str, room_id: str, invite: str, media_port: int) -> None:
    ws_url = server.replace("http://", "ws://") + f"/v1/signal/{room_id}"
    certificate = DtlsCertificate.generate()
    async with open_websocket_url(ws_url) as ws:
        with trio.fail_after(20):
            signaled = await signal_browser(ws, invite, browser_offer(certificate), display_name="Human")
        async with udp_browser(Browser(signaled.answer, certificate, relay_addr=("127.0.0.1", media_port))) as browser:
            with trio.fail_after(20):
                await browser.connect()
            print(json.dumps({"joined": signaled.participant_id}), flush=True)
            encoder = OpusEncoder()
            speech = speech_like(3.0)
            pending: list[bytes] = []
            silence = bytes(FRAME_BYTES)

            async def read_commands() -> None:
                stdin = trio.wrap_file(sys.stdin)
                async for line in stdin:
                    if line.strip() == "speak":
                        pending.extend(speech[i : i + FRAME_BYTES] for i in range(0, len(speech) - FRAME_BYTES + 1, FRAME_BYTES))
                        pending.append(b"spoke")
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_commands)
                start = trio.current_time()
                index = 0
                while True:
                    frame = pending.pop(0) if pending else silence
                    if frame == b"spoke":
                        print(json.dumps({"spoke": True}), flush=True)
                        continue
                    packet = RtpPacket(111, index & 0xFFFF, (index * 960) & 0xFFFFFFFF, browser.core.send_ssrc, payload=encoder.encode(frame))
                    await browser.send_rtp(packet)
                    index += 1
                    await trio.sleep_until(start + index * 0.02)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
