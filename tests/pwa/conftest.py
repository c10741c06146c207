import pytest

import botcall.server
from tests.pwa.harness import create_app_with_pwa


@pytest.fixture(autouse=True)
def pwa_app(monkeypatch):
    """Every server these tests start serves the PWA and the human signaling route."""
    monkeypatch.setattr(botcall.server, "create_app", create_app_with_pwa(botcall.server.create_app))
