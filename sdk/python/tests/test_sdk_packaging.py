"""The SDK stands apart from the server: what it imports is what it declares.

The SDK ships on its own (``pip install botcall-sdk``), without the server's
packages; in this repository both share one virtualenv, so a test run alone
would not notice the SDK leaning on one of the server's dependencies. Two
checks close that gap:

* a fresh interpreter, with an import hook that refuses the server's packages
  (and Trio: an asyncio bot must not need it), imports ``botcall_sdk`` and
  runs a little of it offline, on asyncio;
* every third-party module the SDK's source imports is provided by a
  distribution its ``pyproject.toml`` declares (the optional Pipecat module's
  ``pipecat`` by the ``pipecat`` extra).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SDK_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = SDK_ROOT / "botcall_sdk"
# The server's own package and the dependencies only it has (pyproject.toml at
# the repository's root), and Trio, which anyio loads only for trio.run.
SERVER_ONLY = ["botcall", "quart", "quart_trio", "hypercorn", "OpenSSL", "pylibsrtp", "prometheus_client", "trio"]

ALONE = r"""
import importlib.abc
import json
import sys

FORBIDDEN = set(json.loads(sys.argv[1]))
refused = []


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in FORBIDDEN:
            refused.append(name)
            raise ModuleNotFoundError(f"{name} is not the SDK's to import", name=name)
        return None


def loaded():
    return sorted(FORBIDDEN & {name.partition(".")[0] for name in sys.modules})


assert not loaded(), f"loaded before the SDK: {loaded()}"
sys.meta_path.insert(0, Refuse())

import asyncio

import botcall_sdk
from botcall_sdk import _audio, _events, _wire

# Offline: frame and encode a tone, build and parse a packet, parse an event,
# and one HTTP request on asyncio (to a closed port).
pcm = _audio.to_int16(bytes(range(256)) * 188)
frames = _audio.Framer(24000, 48000).push(pcm)
assert frames and all(len(frame) == 1920 for frame in frames)
payload = _audio.OpusEncoder().encode(frames[0])
packet = _wire.parse_rtp_untrusted(_wire.build_rtp(111, 1, 960, 1234, payload))
assert packet.payload == payload
event = _events.parse_event_untrusted({"type": "chat", "participant_id": "p-1", "text": "hi", "seq": 3})
assert isinstance(event, botcall_sdk.Chat) and event.text == "hi"


async def unreachable():
    try:
        await botcall_sdk.create_room("http://127.0.0.1:9", "token")
    except botcall_sdk.Unreachable:
        return
    raise AssertionError("a closed port answered")


asyncio.run(unreachable())
print(json.dumps({"sdk": botcall_sdk.__file__, "refused": refused, "loaded": loaded()}))
"""


def test_the_sdk_runs_without_the_servers_packages(tmp_path: Path) -> None:
    # Only the SDK on the path, run from an empty directory (not the repository's root).
    env = {**os.environ, "PYTHONPATH": str(SDK_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", ALONE, json.dumps(SERVER_ONLY)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    print(report)
    assert Path(report["sdk"]).resolve().parent == PACKAGE
    # Refused imports may appear in "refused" when a library only tries them
    # (httpcore tries ``import trio`` for its optional Trio backend); none loaded.
    assert report["loaded"] == []


def imported_top_levels(path: Path) -> set[str]:
    """The top-level names of the absolute imports in ``path``, lazy ones (inside functions) included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.add(node.module.partition(".")[0])
    return names


def declared(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    project = tomllib.loads((SDK_ROOT / "pyproject.toml").read_text())["project"]
    required = declared(project["dependencies"])
    pipecat_extra = declared(project["optional-dependencies"]["pipecat"])
    providers = importlib.metadata.packages_distributions()
    undeclared: dict[str, list[str]] = {}
    checked: set[str] = set()
    for path in sorted(PACKAGE.glob("*.py")):
        for module in imported_top_levels(path) - set(sys.stdlib_module_names) - {"botcall_sdk"}:
            allowed = pipecat_extra if path.name == "pipecat.py" and module == "pipecat" else required
            dists = [canonicalize_name(name) for name in providers.get(module, [])]
            checked.add(module)
            if not allowed & set(dists):
                undeclared.setdefault(module, []).append(f"{path.name} (installed from {dists or 'nothing'})")
    print("third-party modules the SDK imports:", sorted(checked))
    assert "wsproto" in checked and "numpy" in checked  # the scan sees direct and dotted imports
    assert undeclared == {}, undeclared
