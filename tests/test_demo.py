"""``botcall demo``: the echo bot, the whole thing run with its self-test, and its
``https://`` invite link with ``--tls-self-signed``."""

import re
import ssl

import trio

from botcall.demo.signals import tone
from botcall.demo.echo import EchoTurn, chime, run_demo
from botcall.signaling import tls
from tests.kit.server import http_request, make_config


def frames(pcm):
    return [pcm[i : i + 1920] for i in range(0, len(pcm), 1920)]


def test_an_utterance_is_returned_after_the_pause():
    turn = EchoTurn()
    speech = frames(tone(300, 1.0))
    silence = frames(bytes(1920 * 40))
    out = [turn.push(f) for f in speech + silence]
    finished = [o for o in out if o is not None]
    assert len(finished) == 1
    assert abs(len(finished[0]) - len(tone(300, 1.0))) <= 1920 * 6  # the speech plus a short tail


def test_a_click_is_not_an_utterance_and_silence_is_ignored():
    turn = EchoTurn()
    assert all(turn.push(f) is None for f in frames(bytes(1920 * 50)))
    click = frames(tone(300, 0.1))
    assert all(turn.push(f) is None for f in click + frames(bytes(1920 * 50)))


def test_the_chime_is_audible_and_short():
    pcm = chime()
    assert 0.5 < len(pcm) / 96000 < 1.5


async def test_demo_self_test_hears_its_echo(tmp_path):
    lines = []
    status = await run_demo(make_config(tmp_path), self_test_frequency=660.0, out=lines.append)
    assert status == 0, lines
    assert any("/join/" in line and "#invite=" in line for line in lines)
    assert any("self-test" in line and "OK" in line for line in lines)


async def test_demo_with_a_self_signed_certificate_prints_an_https_invite_that_opens(tmp_path):
    # botcall demo --tls-self-signed: the banner's link must be https:// (a browser
    # gives a microphone only to a secure context) and open with the dev CA trusted.
    # The self-test keeps the server up until it ends on its own (cancelling the demo
    # while its bot joins fails the join), and checks the bots' HTTPS and WSS too.
    lines = []
    shown = trio.Event()
    status = None

    def out(line):
        lines.append(line)
        if "#invite=" in line:
            shown.set()

    async def demo():
        nonlocal status
        status = await run_demo(make_config(tmp_path, tls_self_signed=True), self_test_frequency=660.0, out=out)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(demo)
        with trio.fail_after(30):  # a safety net, not a speed requirement
            await shown.wait()
        [invite] = re.findall(r"https://\S+/join/\S+#invite=\S+", "\n".join(lines))
        trusting_the_dev_ca = ssl.create_default_context(cafile=str(tmp_path / tls.CA_FILE))
        page = await http_request(invite.split("#", 1)[0], ssl_context=trusting_the_dev_ca)
    assert page.status == 200, page.body
    assert page.headers["content-type"].startswith("text/html")
    assert b"<html" in page.body.lower()
    assert status == 0, lines
