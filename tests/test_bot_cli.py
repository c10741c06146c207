"""``botcall bot`` against the real server: one bot plays a WAV, another records it."""

import argparse

import pytest
import trio

from botcall.audio.wav import read_wav, write_wav
from botcall.demo.signals import dominant_frequency, tone
from botcall.bot_cli import Recorder, run_bot
from tests.kit.server import running_server


def bot_args(**kwargs):
    defaults = dict(agent=None, play=None, record=None, transport="udp", encoding="opus", sample_rate=48000, seconds=3.0)
    return argparse.Namespace(**{**defaults, **kwargs})


@pytest.mark.e2e
async def test_a_played_wav_is_recorded_by_the_other_bot(tmp_path, capsys):
    source = tmp_path / "tone.wav"
    write_wav(source, tone(523, 1.5, sample_rate=16000), sample_rate=16000, channels=1)  # resampled on the way
    recorded = tmp_path / "heard.wav"
    async with running_server(tmp_path) as srv:
        room = (await srv.create_room(srv.token(agent="creator#0"))).json()["room_id"]
        listener = bot_args(server=srv.url, room=room, token=srv.token(agent="ear#1"), record=str(recorded), seconds=4.0)
        speaker = bot_args(server=srv.url, room=room, token=srv.token(agent="mouth#2"), play=str(source), seconds=2.5)
        results = []

        async def go(args):
            results.append(await run_bot(args))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(go, listener)
            nursery.start_soon(go, speaker)
    assert results.count(0) == 2
    pcm = read_wav(recorded)
    assert abs(dominant_frequency(pcm, 48000) - 523) < 5
    assert '"type": "participant_left"' in capsys.readouterr().out  # the speaker left first


def test_recorder_mixes_speakers_slot_by_slot():
    rec = Recorder(start=0.0, sample_rate=48000)
    one = bytes.fromhex("0100") * 960
    rec.add(one, 0.0)
    rec.add(one, 0.001)  # another speaker, same slot: summed
    rec.add(one, 0.040)  # two slots later; the gap is silence
    pcm = rec.pcm()
    assert len(pcm) == 3 * 1920
    assert pcm[:2] == bytes.fromhex("0200") and pcm[1920:1922] == b"\x00\x00" and pcm[3840:3842] == bytes.fromhex("0100")


async def test_play_checks_its_file_before_joining(tmp_path, capsys):
    missing = bot_args(server="http://127.0.0.1:9", room="r", token="t", play=str(tmp_path / "nope.wav"))
    assert await run_bot(missing) == 2
    not_wav = tmp_path / "notes.txt"
    not_wav.write_text("hello")
    assert await run_bot(bot_args(server="http://127.0.0.1:9", room="r", token="t", play=str(not_wav))) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("botcall bot: cannot play ") for line in errors), errors


async def test_a_server_url_without_a_scheme_is_one_clear_line(capsys):
    assert await run_bot(bot_args(server="127.0.0.1:8080", room="r", token="a.eyJzdWIiOiJ4In0.b")) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("botcall bot: the server URL must start with http:// or https://"), error
