"""Issue item 7: errors produced by the HTTP stack itself (bad Content-Length, no
Host, 431, ...) had empty bodies, although every error is JSON
``{"error": {"code", "message"}}`` with ``Content-Type: application/json``."""

from __future__ import annotations

import pytest

from tests.kit.attack import attacks
from tests.kit.attack.lab import RSS_BOUND

pytestmark = pytest.mark.attack


async def test_errors_of_the_http_stack_are_json(lab):
    lab.start()
    async with lab.window("requests the HTTP stack refuses") as window:
        exchanges = await attacks.http_stack_errors(lab.target)
    wrong = []
    for name, exchange in exchanges.items():
        if not exchange.responses:
            wrong.append(f"{name}: no response ({exchange.error or 'closed'}; got {exchange.received[:80]!r})")
            continue
        response = exchange.responses[0]
        if not 400 <= response.status < 500:
            wrong.append(f"{name}: status {response.status}")
        if response.json_error() is None:
            wrong.append(f"{name}: {response.status} with body {response.body[:80]!r}")
        elif not response.headers.get("content-type", "").startswith("application/json"):
            wrong.append(f"{name}: Content-Type {response.headers.get('content-type')!r}")
    window.impact.assert_harmless(rss_bound=RSS_BOUND, checks=[(not wrong, "; ".join(wrong))])
