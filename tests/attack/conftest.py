"""Live attacks on a real ``botcall serve`` process (see ``tests/kit/attack/lab.py``).

``BOTCALL_ATTACK_SERVER_ROOT=/path/to/checkout`` runs the server from another
checkout (its ``PYTHONPATH``); the clients, the concurrent call and the tests
stay this checkout's. Handy to try a fix branch without merging it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.kit.attack.lab import Lab


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attack: live attacks on a real `botcall serve` process, with a concurrent call beside them")


@pytest.fixture
def lab(tmp_path):
    """A :class:`~tests.kit.attack.lab.Lab` in ``tmp_path``; its server and call are stopped
    at the end (SIGTERM, then SIGKILL), whatever the test did."""
    root = os.environ.get("BOTCALL_ATTACK_SERVER_ROOT")
    lab = Lab(tmp_path, code_root=Path(root).resolve() if root else None)
    try:
        yield lab
    finally:
        lab.close()
