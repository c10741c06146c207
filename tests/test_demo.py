"""``botcall demo``: the echo bot, and the whole thing run with its self-test."""

from botcall.demo.signals import tone
from botcall.demo.echo import EchoTurn, chime, run_demo
from tests.kit.server import make_config


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
