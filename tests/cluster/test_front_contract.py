"""The routing front's own answers match the published OpenAPI document: its
``/v1/cluster/workers`` (marked front-only there) and the ``410 room_closed``
with a ``reason`` it gives for a lost worker's or node's rooms."""

from __future__ import annotations

from botcall.auth.attestation import ReplayCache
from botcall.cluster.directory import Directory, Lost
from botcall.cluster.router import Front, lost_answer
from botcall.config import Config
from botcall.signaling import api_schema
from tests.signaling.test_contract import Contract

NOW = 1_800_000_000.0


def front_with_workers() -> Front:
    directory = Directory(2, max_rooms=10, max_sessions=10, max_lost=10, lost_for=60.0)
    directory.worker_started(0, http_port=4000, media_port=40000, now=NOW)
    directory.worker_report(0, rooms=1, sessions=2, packets=100, now=NOW + 1)
    return Front(directory, Config(), ReplayCache(10), clock=lambda: NOW)


async def test_the_workers_table_and_lost_rooms_match_the_document():
    contract = Contract()
    front = front_with_workers()
    route = await front.route("GET", "/v1/cluster/workers", b"")
    assert route.answer is not None
    status, body, _ = route.answer
    assert status == 200 and [w["running"] for w in body["workers"]] == [True, False]
    schema = contract.openapi["paths"]["/v1/cluster/workers"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    contract.check(schema, body)
    assert api_schema.openapi_document()["paths"]["/v1/cluster/workers"]["get"][api_schema.FRONT_ONLY] is True
    for reason in ("worker_lost", "node_lost"):
        status, body, _ = lost_answer("r", Lost(reason, NOW))
        assert status == 410 and body["error"]["reason"] == reason
        contract.check({"$ref": "urn:openapi#/components/schemas/Error"}, body)
