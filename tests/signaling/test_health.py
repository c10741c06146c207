"""``/healthz``, ``/readyz`` and ``/v1/version``: alive, accepting rooms, which build."""

from __future__ import annotations

from functools import partial

import trio
from prometheus_client.parser import text_string_to_metric_families

import botcall
from botcall.server import run_server
from tests.kit.server import FakeClock, make_config, running_server


async def test_readyz_is_200_while_accepting_then_503_draining(tmp_path):
    async with running_server(tmp_path) as srv:
        ready = await srv.get("/readyz")
        assert ready.status == 200 and ready.json() == {"status": "ready"}
        srv.state.draining = True  # what drain() sets first
        refused = await srv.get("/readyz")
        assert refused.status == 503 and refused.error_code == "draining"
        alive = await srv.get("/healthz")
        assert alive.status == 200 and alive.json()["status"] == "ok"
        # A probe is not a rejection.
        assert "draining" not in (await srv.get("/metrics")).body.decode()


async def test_graceful_shutdown_marks_the_server_draining(tmp_path):
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        info = await nursery.start(partial(run_server, make_config(tmp_path), clock=FakeClock(), shutdown=shutdown))
        assert info.state.not_ready() is None
        shutdown.set()
    assert info.state.draining and info.state.not_ready() == ("draining", "the server is shutting down")


async def test_readyz_is_503_when_the_room_budget_is_full(tmp_path):
    async with running_server(tmp_path, max_rooms_total=1, max_live_rooms_per_controller=1) as srv:
        assert (await srv.get("/readyz")).status == 200
        assert (await srv.create_room(srv.token())).status == 201
        full = await srv.get("/readyz")
        assert full.status == 503 and full.error_code == "server_full" and "rooms" in full.json()["error"]["message"]


async def test_readyz_is_503_when_the_session_budget_is_full(tmp_path):
    async with running_server(tmp_path, max_sessions_total=1) as srv:
        room = (await srv.create_room(srv.token())).json()
        assert (await srv.get("/readyz")).status == 200
        assert (await srv.join(srv.token(), room["room_id"])).status == 200
        full = await srv.get("/readyz")
        assert full.status == 503 and full.error_code == "server_full" and "sessions" in full.json()["error"]["message"]


async def test_version(tmp_path):
    async with running_server(tmp_path) as srv:
        response = await srv.get("/v1/version")
        assert response.status == 200 and response.json() == {"name": "botcall", "version": botcall.__version__}


async def test_join_latency_histogram_and_no_created_series(tmp_path):
    async with running_server(tmp_path) as srv:
        room = (await srv.create_room(srv.token())).json()
        assert (await srv.join(srv.token(), room["room_id"])).status == 200
        assert (await srv.join("not-a-token", room["room_id"])).status == 401
        text = (await srv.get("/metrics")).body.decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("botcall_join_duration_seconds_count", (("outcome", "joined"),))] == 1
    assert samples[("botcall_join_duration_seconds_count", (("outcome", "refused"),))] == 1
    assert samples[("botcall_join_duration_seconds_bucket", (("le", "+Inf"), ("outcome", "joined")))] == 1
    assert 0 < samples[("botcall_join_duration_seconds_sum", (("outcome", "joined"),))] < 10
    names = {name for name, _ in samples}
    assert "botcall_rooms_created_total" in names
    assert not [name for name in names if name.endswith("_created")], "prometheus-client's _created samples are off"
    assert not [line for line in text.splitlines() if "_created_created" in line]
