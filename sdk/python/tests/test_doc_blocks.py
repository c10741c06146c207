"""Every Python code block in the README and the docs runs as written.

The convention (docs/architecture.md, "Tests"):

* every fenced ```` ```python ```` block of ``README.md``,
  ``sdk/python/README.md`` and ``docs/*.md`` is a whole program and is run;
* it may use the names ``SERVER``, ``ROOM`` and ``TOKEN`` (defined before the
  block: the live server's URL, a room, a bot token), or the environment
  variables ``BOTCALL_SERVER``/``BOTCALL_ROOM``/``BOTCALL_TOKEN`` (set too);
* it runs in ``examples/``, so ``hello.wav`` (the sample WAV) is there;
* another bot in the room says hello.wav every couple of seconds, so a block
  that waits for someone to speak gets its speech;
* it must exit 0 within ``BLOCK_TIMEOUT`` and print something;
* a fragment that cannot run alone is preceded by ``<!-- not-run: why -->``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import botcall_sdk
from conftest import ServerThread

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
BLOCK_TIMEOUT = 60.0
NOT_RUN = re.compile(r"<!--\s*not-run:\s*\S.*?-->")
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    code: str
    run: bool

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def doc_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "sdk" / "python" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [path for path in files if path.exists()]


def blocks() -> list[Block]:
    found = []
    for path in doc_files():
        text = path.read_text()
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
            found.append(Block(path, text.count("\n", 0, match.start()) + 1, match.group(1), not NOT_RUN.fullmatch(before.strip())))
    return found


def test_the_extractor_finds_the_blocks() -> None:
    found = blocks()
    assert sum(block.run for block in found) >= 2, [block.name for block in found]
    # A marker must say why the block is a fragment.
    for path in doc_files():
        for marker in re.findall(r"<!--\s*not-run.*?-->", path.read_text()):
            assert NOT_RUN.fullmatch(marker), f"{path}: {marker} gives no reason"


async def talk_in(server: ServerThread, room: str, stop: anyio.Event) -> None:
    """A bot in the room saying hello.wav, with pauses, until ``stop``."""
    async with botcall_sdk.connect(server.url, room, server.token(agent="partner#1")) as partner:
        while not stop.is_set():
            await (await partner.say(EXAMPLES / "hello.wav")).done()
            with anyio.move_on_after(1.0):
                await stop.wait()


@pytest.mark.e2e
@pytest.mark.parametrize("block", [block for block in blocks() if block.run], ids=lambda block: block.name)
def test_a_doc_block_runs_as_written(server: ServerThread, block: Block, tmp_path: Path) -> None:
    token = server.token(agent="reader#1")
    result: dict[str, object] = {}

    async def scenario() -> None:
        room = (await botcall_sdk.create_room(server.url, server.token(agent="creator#1"))).room_id
        program = tmp_path / "block.py"
        program.write_text(f"SERVER, ROOM, TOKEN = {server.url!r}, {room!r}, {token!r}\n{block.code}")
        path = os.pathsep.join(filter(None, (str(REPO / "sdk" / "python"), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "PYTHONPATH": path, "BOTCALL_SERVER": server.url, "BOTCALL_ROOM": room, "BOTCALL_TOKEN": token}
        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(talk_in, server, room, stop)
            with anyio.fail_after(BLOCK_TIMEOUT):
                done = await anyio.run_process([sys.executable, str(program)], env=env, cwd=str(EXAMPLES), check=False)
            stop.set()
        result["done"] = done

    anyio.run(scenario)
    done = result["done"]
    assert done.returncode == 0, f"{block.name} failed:\n{done.stderr.decode()}"  # type: ignore[attr-defined]
    assert done.stdout.strip(), f"{block.name} printed nothing"  # type: ignore[attr-defined]
