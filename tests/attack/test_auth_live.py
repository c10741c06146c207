"""Attestation attacks, issue item 6: the dev issuer trusted beside a configured
issuer, and a used token joining again after a restart. Each against a live
server with a concurrent call (after the restart: on the restarted server)."""

from __future__ import annotations

import pytest

from tests.kit.attack.lab import RSS_BOUND, create_room, dev_signer, join, other_signer, request

pytestmark = pytest.mark.attack

PRODUCTION_ISSUER = "https://botauth.example"


def error_code(response) -> str | None:
    try:
        return response.error_code
    except (AssertionError, ValueError):
        return None


async def test_a_used_token_is_refused_after_a_restart(lab):
    # The issue: a restart forgot the replay cache, so a used token joined again.
    lab.start(call=False)
    token = lab.token("replayer", "gopi")
    room = await create_room(lab.target, lab.token("host", "gopi"))
    first = await join(lab.target, token, room["room_id"], "replayer", transport="websocket")
    assert first.status == 200, (first.status, first.body)
    again = await join(lab.target, token, room["room_id"], "replayer", transport="websocket")
    assert (again.status, error_code(again)) == (401, "attestation_replayed"), (again.status, again.body)

    lab.start()  # SIGTERM, then the same data directory again, with the concurrent call
    async with lab.window("a used token after a restart") as window:
        fresh_room = await create_room(lab.target, lab.token("host-2", "gopi"))
        replayed = await join(lab.target, token, fresh_room["room_id"], "replayer", transport="websocket")
    window.impact.assert_harmless(
        rss_bound=RSS_BOUND,
        checks=[
            (
                (replayed.status, error_code(replayed)) == (401, "attestation_replayed"),
                f"the used token was answered {replayed.status} {replayed.body[:200]!r} after the restart",
            )
        ],
    )


async def test_the_dev_issuer_is_not_trusted_beside_a_configured_issuer(lab, tmp_path):
    # The issue: the dev issuer stayed trusted when --issuer/--jwks were given.
    production = other_signer(tmp_path / "production-issuer", PRODUCTION_ISSUER)
    lab.start(flags=["--issuer", PRODUCTION_ISSUER, "--jwks", str(production.issuer.jwks_path)], signer=production)
    # Whoever can mint with the data directory's dev key (a developer's
    # `botcall token`, a copied data directory) is not the production issuer.
    dev = dev_signer(lab.data_dir)
    async with lab.window("a dev-issuer token against a server with a configured issuer") as window:
        refused = await request(lab.target, "POST", "/v1/rooms/create", bearer=dev.token("intruder", "gopi"), json_body={})
        accepted = await request(lab.target, "POST", "/v1/rooms/create", bearer=production.token("orion", "gopi"), json_body={})
    window.impact.assert_harmless(
        rss_bound=RSS_BOUND,
        checks=[
            (refused.status == 401, f"a dev-issuer token was answered {refused.status} {refused.body[:200]!r}"),
            (accepted.status == 201, f"the configured issuer's token was answered {accepted.status} {accepted.body[:200]!r}"),
        ],
    )
