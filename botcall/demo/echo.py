"""``botcall demo``: the server on embedded defaults plus a demo bot in a room.

What ``make run`` starts. The demo bot creates a room (its attestation comes
from the local dev issuer), prints the invite link, greets whoever joins with a
short chime, then echoes back what it hears: speak, pause, and you hear
yourself through the relay. ``--self-test`` adds a stand-in human (a second
bot) that plays a tone and checks the echo, then exits — proof that the whole
path works on this machine without a browser.
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
import time
from collections.abc import Callable

import numpy as np
import trio

from botcall.demo.signals import dominant_frequency, rms_dbfs, tone
from botcall_sdk import Call, ParticipantJoined, SpeechStopped, connect, create_room
from botcall.config import Config
from botcall.server import ServerInfo, config_from_args, configure_logging, run_command, run_server
from botcall.server import add_arguments as add_server_arguments
from botcall.signaling import tls

log = logging.getLogger("botcall.demo.echo")

DEMO_AGENT = "botcall-demo#0001"
DEMO_OWNER = "demo-owner"
SAMPLE_RATE = 48000
IDLE_TICK = 0.1  # no frame this long: each speaker's turn hears 100 ms of quiet
SILENT_FRAME = bytes(1920)


class EchoTurn:
    """Cuts one speaker's audio into utterances (sans-IO).

    Args:
        threshold_dbfs: frames louder than this are voice.
        min_voice: seconds of voice an utterance needs.
        end_silence: seconds of quiet that end it.
        max_length: longest utterance kept (older audio is dropped).
    """

    def __init__(self, *, threshold_dbfs: float = -45.0, min_voice: float = 0.3, end_silence: float = 0.6, max_length: float = 8.0) -> None:
        self.threshold = threshold_dbfs
        self.min_voice_frames = round(min_voice / 0.02)
        self.end_frames = round(end_silence / 0.02)
        self.max_frames = round(max_length / 0.02)
        self._frames: list[bytes] = []
        self._voiced = 0
        self._quiet = 0

    def push(self, pcm: bytes) -> bytes | None:
        """Add one 20 ms frame; returns a finished utterance, or None."""
        loud = rms_dbfs(pcm) > self.threshold
        if not self._frames and not loud:
            return None
        self._frames.append(pcm)
        if len(self._frames) > self.max_frames:
            self._frames.pop(0)
        if loud:
            self._voiced += 1
            self._quiet = 0
            return None
        self._quiet += 1
        if self._quiet < self.end_frames:
            return None
        utterance = b"".join(self._frames[: len(self._frames) - self._quiet + 5])
        enough = self._voiced >= self.min_voice_frames
        self._frames, self._voiced, self._quiet = [], 0, 0
        return utterance if enough else None


def chime(seconds_per_note: float = 0.18) -> bytes:
    """A short rising arpeggio with soft edges: the greeting."""
    notes = []
    for frequency in (523.25, 659.25, 783.99, 1046.5):
        note = np.frombuffer(tone(frequency, seconds_per_note, amplitude=0.25), dtype="<i2").astype(np.float64)
        ramp = np.minimum(1.0, np.arange(note.size) / 480.0) * np.minimum(1.0, np.arange(note.size)[::-1] / 2400.0)
        notes.append(note * ramp)
    return np.concatenate(notes).astype("<i2").tobytes()


async def echo_bot(call: Call, *, greet: bool = True) -> None:
    """Greet each newcomer, then echo back each utterance heard."""
    turns: dict[str, EchoTurn] = {}
    playing = trio.Lock()

    async def greet_newcomers() -> None:
        async for event in call.events():
            if isinstance(event, ParticipantJoined) and greet:
                who = event.participant
                log.info("%s joined (%s)", who.display_name, who.kind)
                async with playing:
                    await (await call.say(chime())).done()

    def heard(speaker: str, pcm: bytes) -> None:
        utterance = turns.setdefault(speaker, EchoTurn()).push(pcm)
        if utterance is not None:
            nursery.start_soon(_play, call, playing, utterance)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(greet_newcomers)
        frames = call.audio()
        while True:
            # A speaker who stops talking stops sending frames: the quiet that
            # ends an utterance is the time without them.
            with trio.move_on_after(IDLE_TICK) as idle:
                try:
                    frame = await frames.__anext__()
                except StopAsyncIteration:
                    break
            if idle.cancelled_caught:
                for speaker in list(turns):
                    for _ in range(round(IDLE_TICK / 0.02)):
                        heard(speaker, SILENT_FRAME)
                continue
            if not playing.locked() and frame.speaker is not None:
                heard(frame.speaker, frame.pcm)
        nursery.cancel_scope.cancel()


async def _play(call: Call, lock: trio.Lock, pcm: bytes) -> None:
    async with lock:
        await (await call.say(pcm)).done()


async def self_test(
    server_url: str, room_id: str, token: str, *, frequency: float = 660.0, ssl_context: ssl.SSLContext | None = None
) -> float:
    """A stand-in human: play a tone, listen for the demo bot's echo, return its frequency."""
    async with connect(server_url, room_id, token, ssl_context=ssl_context) as human:
        # Speak after the greeting, as a person would (the bot does not listen while it chimes).
        with trio.move_on_after(3):
            async for event in human.events():
                if isinstance(event, SpeechStopped) and event.participant_id != human.participant_id:
                    break
        await (await human.say(tone(frequency, 1.0, amplitude=0.3))).done()
        said = time.time()  # what came before (the greeting chime) is not the echo
        heard = []
        with trio.fail_after(10):
            async for frame in human.audio():
                if frame.time > said and not frame.concealed and rms_dbfs(frame.pcm) > -40:
                    heard.append(frame.pcm)
                if len(heard) >= 30:
                    break
        return dominant_frequency(b"".join(heard), SAMPLE_RATE)


def banner(invite_url: str, http_url: str) -> str:
    line = "=" * 72
    return (
        f"\n{line}\n  BotCall is running at {http_url}\n\n"
        f"  Talk to the demo bot: open this invite link in a browser\n\n    {invite_url}\n\n"
        f"  It chimes when you join, then echoes what you say after each pause.\n"
        f"  Ctrl-C stops everything.\n{line}\n"
    )


async def run_demo(config: Config, *, self_test_frequency: float | None = None, out: Callable[[str], None] = print) -> int:
    """Serve, create a room, run the echo bot; with a self-test, check and return.

    Returns:
        The exit status (0, or 1 when the self-test did not hear its echo).
    """
    async with trio.open_nursery() as nursery:
        info = await nursery.start(run_server, config)
        status = await _demo_rooms(info, config, self_test_frequency, out)
        nursery.cancel_scope.cancel()
    return status


async def _demo_rooms(info: ServerInfo, config: Config, self_test_frequency: float | None, out: Callable[[str], None]) -> int:
    issuer = info.state.dev_issuer
    if issuer is None:
        out("botcall demo needs the dev issuer (drop --no-dev-issuer)")
        return 2

    def mint(agent: str) -> str:
        return issuer.mint(
            agent=agent,
            controller=DEMO_OWNER,
            audience=config.audience,
            scopes=("call:create", "call:voice", "call:receive"),
            ttl=config.max_token_lifetime_s,
            now=time.time(),
        )

    # The bots talk to this server on loopback (not on a wildcard address, which no
    # certificate names); over TLS they trust its certificate.
    local_url = info.http_url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    client_ssl = tls.loopback_client_context(config.tls_cert, config.data_dir) if config.tls_enabled else None
    while True:
        room = await create_room(
            local_url, mint(DEMO_AGENT), max_human_participants=config.room_default_max_humans, ssl_context=client_ssl
        )
        out(banner(room.invite_url, info.http_url))
        async with connect(local_url, room.room_id, mint(DEMO_AGENT), ssl_context=client_ssl) as call:
            if self_test_frequency is None:
                await echo_bot(call)
            else:
                async with trio.open_nursery() as bots:
                    bots.start_soon(echo_bot, call)
                    heard = await self_test(
                        local_url, room.room_id, mint("stand-in-human#0002"), frequency=self_test_frequency, ssl_context=client_ssl
                    )
                    bots.cancel_scope.cancel()
        if self_test_frequency is not None:
            ok = abs(heard - self_test_frequency) < 10
            out(f"self-test: sent {self_test_frequency:.0f} Hz, heard the echo at {heard:.1f} Hz: {'OK' if ok else 'FAILED'}")
            return 0 if ok else 1
        out(f"the demo call ended ({call.close_reason}); starting a new room")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)
    parser.add_argument("--self-test", action="store_true", help="add a stand-in human that checks the echo, then exit")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``botcall demo``: Ctrl-C (or SIGTERM) stops it with one line."""

    def demo() -> int:
        config = config_from_args(args)
        configure_logging(config.log_level, config.log_format, node=config.node_name)
        logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
        return trio.run(_run_until_signalled, config, 660.0 if args.self_test else None)

    return run_command("botcall demo", demo)


async def _run_until_signalled(config: Config, self_test_frequency: float | None) -> int:
    status = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    print("\nbotcall demo: stopped", file=sys.stderr, flush=True)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            status = await run_demo(config, self_test_frequency=self_test_frequency, out=lambda s: print(s, flush=True))
            nursery.cancel_scope.cancel()
    return status
