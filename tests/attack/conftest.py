"""Live attacks on a real ``botcall serve`` process (see ``tests/attack/kit.py``)."""

from __future__ import annotations

import pytest

from tests.attack.kit import Lab


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attack: live attacks on a real `botcall serve` process, with a concurrent call beside them")


@pytest.fixture
def lab(tmp_path):
    """A :class:`~tests.attack.kit.Lab` in ``tmp_path``; its server and call are stopped
    at the end (SIGTERM, then SIGKILL), whatever the test did."""
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
