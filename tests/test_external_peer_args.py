"""The independent peers take an invite secret that starts with "-".

An invite secret is url-safe base64, so one in 64 starts with "-". Passed as
``--invite SECRET`` both argparse and node's ``parseArgs`` take it for an
option and the peer exits before it connects (CI hit this once). The peers
here are pointed at a closed port: they must get as far as connecting and
fail there, not at their command line.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.kit.peers.external import AIORTC, WERIFT, PeerKind


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("kind", [AIORTC, WERIFT], ids=lambda kind: kind.name)
def test_an_invite_starting_with_a_dash_reaches_the_connect(kind: PeerKind, tmp_path) -> None:
    if not kind.installed():
        pytest.skip(f"{kind.name} is not installed (scripts/setup.sh test installs it)")
    url = f"ws://127.0.0.1:{_closed_port()}/v1/signal"
    command = kind.command(url, "-Xk3_dash-first", 440.0, tmp_path / "heard.raw")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said  # nothing listens there
    assert "ECONNREFUSED" in said or "Connect call failed" in said or "ConnectionRefused" in said, said
    assert "ambiguous" not in said and "expected one argument" not in said, said
