"""The README's quick start runs as written: extracted, filled in with a live server, room and token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import botcall_sdk
from conftest import ServerThread

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.e2e


def quick_start() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Add voice to your AI in five lines") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_the_quick_start_runs_under_asyncio_and_prints(server: ServerThread) -> None:
    code = quick_start()
    assert "asyncio.run(main())" in code  # it calls main(), so it does something
    room = anyio.run(lambda: botcall_sdk.create_room(server.url, server.token(agent="creator#1"))).room_id
    filled = f"SERVER, ROOM, TOKEN = {server.url!r}, {room!r}, {server.token(agent='readme#1')!r}\n" + code
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO / "sdk" / "python"), os.environ.get("PYTHONPATH"))))}
    result = subprocess.run([sys.executable, "-c", filled], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"joined as p-\w+ with 0 others\n", result.stdout), result.stdout
