"""``Config`` validation, ``serve`` flags, and ``run_server`` set-up errors."""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import trio

from botcall.config import Config, IssuerConfig, RateLimit, default_data_dir
from botcall.errors import ConfigError, StartupError
from botcall.relay.addresses import is_local_address
from botcall.server import add_arguments, config_from_args, run_server
from botcall.signaling.rooms import RoomClosed
from tests.kit.server import FakeClock, make_config


@pytest.mark.parametrize(
    "overrides",
    [
        {"leeway_s": 61},
        {"leeway_s": -1},
        {"algorithms": ("EdDSA", "HS256")},
        {"algorithms": ("none",)},
        {"algorithms": ()},
        {"algorithms": ("ES256",)},  # the dev issuer signs with EdDSA
        {"issuers": (IssuerConfig("botcall-dev", "/x"),), "dev_issuer": True},
        {"trusted_proxies": ("not-an-address",)},
        {"header_timeout_s": 0},
        {"ws_max_message_bytes": 0},
        {"issuers": (IssuerConfig("a", "/x"), IssuerConfig("a", "/y"))},
        {"public_url": "ftp://call.example"},
        {"public_url": "https://call.example/?x=1"},
        {"http_port": 70000},
        {"audience": ""},
        {"room_default_expires_in": 100_000},
        {"room_default_max_humans": 20},
        {"max_body_bytes": 0},
        {"replay_cache_max": -5},
    ],
)
def test_config_refuses_values_that_cannot_work(overrides):
    with pytest.raises(ConfigError):
        Config(data_dir=Path("/x"), **overrides)


def test_rate_limit_validation():
    with pytest.raises(ConfigError):
        RateLimit(rate=0, burst=1)
    with pytest.raises(ConfigError):
        RateLimit(rate=1, burst=0)
    with pytest.raises(ConfigError):
        RateLimit(rate=float("inf"), burst=1)


def test_es256_only_works_without_the_dev_issuer():
    assert Config(data_dir=Path("/x"), algorithms=("ES256",), dev_issuer=False).algorithms == ("ES256",)


def test_base_url():
    config = Config(data_dir=Path("/x"))
    assert config.base_url(5555) == "http://127.0.0.1:5555"
    assert config.base_url() == "http://127.0.0.1:8080"
    assert replace(config, http_host="0.0.0.0").base_url(80) == "http://127.0.0.1:80"
    assert replace(config, http_host="::1").base_url(80) == "http://[::1]:80"
    assert replace(config, public_url="https://call.example/").base_url(80) == "https://call.example"
    assert replace(config, media_advertised_host="203.0.113.9").advertised_media_host == "203.0.113.9"
    assert config.advertised_media_host == "127.0.0.1"  # media on every interface; bots on loopback
    assert replace(config, media_advertised_host="203.0.113.9, 192.0.2.2").media_advertised_hosts == ("203.0.113.9", "192.0.2.2")
    with pytest.raises(ConfigError, match="empty entry"):
        replace(config, media_advertised_host="203.0.113.9,")


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("BOTCALL_DATA_DIR", "/srv/botcall")
    assert default_data_dir() == Path("/srv/botcall")
    monkeypatch.delenv("BOTCALL_DATA_DIR")
    assert default_data_dir() == Path.home() / ".local" / "share" / "botcall"


def parse_serve(*argv: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_serve_flags_map_onto_config():
    config = parse_serve(
        "--host", "0.0.0.0", "--port", "9000", "--media-host", "0.0.0.0", "--media-port", "40100",
        "--media-advertised-host", "198.51.100.4", "--public-url", "https://call.example",
        "--issuer", "https://botauth.example", "--jwks", "https://botauth.example/.well-known/jwks.json",
        "--issuer", "https://other.example", "--jwks", "/etc/botcall/other.json",
        "--audience", "https://call.example", "--no-dev-issuer", "--data-dir", "/var/lib/botcall",
    )
    assert (config.http_host, config.http_port, config.media_host, config.media_port) == ("0.0.0.0", 9000, "0.0.0.0", 40100)
    assert config.advertised_media_host == "198.51.100.4" and config.public_url == "https://call.example"
    assert config.issuers == (
        IssuerConfig("https://botauth.example", "https://botauth.example/.well-known/jwks.json"),
        IssuerConfig("https://other.example", "/etc/botcall/other.json"),
    )
    assert config.issuers[0].jwks_is_url and not config.issuers[1].jwks_is_url
    assert config.audience == "https://call.example" and not config.dev_issuer
    assert config.data_dir == Path("/var/lib/botcall")


def test_serve_defaults_are_the_config_defaults(monkeypatch):
    monkeypatch.setenv("BOTCALL_DATA_DIR", "/tmp/somewhere")
    config = parse_serve()
    assert config == Config()


def test_unpaired_issuer_flags():
    with pytest.raises(ConfigError):
        parse_serve("--issuer", "https://botauth.example")


async def test_a_missing_jwks_file_stops_start_up(tmp_path):
    config = make_config(tmp_path, issuers=(IssuerConfig("https://botauth.example", str(tmp_path / "absent.json")),))
    with pytest.raises(ConfigError, match="absent.json"):
        await run_server(config)


async def test_port_zero_reports_the_bound_port_and_two_servers_coexist(tmp_path):
    async with trio.open_nursery() as nursery:
        first = await nursery.start(run_server, make_config(tmp_path / "a"))
        second = await nursery.start(run_server, make_config(tmp_path / "b"))
        assert first.http_port != second.http_port and 0 not in (first.http_port, second.http_port)
        assert first.http_url == f"http://127.0.0.1:{first.http_port}" == first.base_url
        stream = await trio.open_tcp_stream("127.0.0.1", first.http_port)
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_housekeeping_runs_every_second_in_the_background(tmp_path, autojump_clock):
    # No HTTP traffic here, so the virtual clock may jump freely.
    clock = FakeClock()
    closed = []
    async with trio.open_nursery() as nursery:
        info = await nursery.start(partial(run_server, make_config(tmp_path, room_empty_timeout_s=60), clock=clock))
        registry = info.state.registry
        registry.add_listener(lambda event: closed.append(event.reason) if isinstance(event, RoomClosed) else None)
        room = registry.create_room(owner="gopi", created_by="orion#8f3a", now=clock())
        clock.advance(59)
        await trio.sleep(1.5)
        assert registry.live_rooms == 1
        clock.advance(1)
        await trio.sleep(1.0)
        assert registry.live_rooms == 0 and closed == ["empty"]
        assert registry.sessions_in_room(room.room_id) == ()
        nursery.cancel_scope.cancel()


def test_the_dev_issuer_is_on_only_without_another_issuer():
    partner = (IssuerConfig("https://botauth.example", "/x.json"),)
    assert Config(data_dir=Path("/x")).dev_issuer_enabled
    assert not Config(data_dir=Path("/x"), issuers=partner).dev_issuer_enabled
    assert Config(data_dir=Path("/x"), issuers=partner, dev_issuer=True).dev_issuer_enabled
    assert not Config(data_dir=Path("/x"), dev_issuer=False).dev_issuer_enabled
    assert parse_serve("--issuer", "https://botauth.example", "--jwks", "/x.json").dev_issuer_enabled is False
    assert parse_serve("--issuer", "https://botauth.example", "--jwks", "/x.json", "--dev-issuer").dev_issuer_enabled
    assert parse_serve("--no-dev-issuer").dev_issuer is False


def test_hardening_flags_map_onto_config():
    config = parse_serve(
        "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1", "--max-connections", "500",
        "--max-connections-per-ip", "16", "--header-timeout", "4", "--body-timeout", "9", "--http2",
        "--shutdown-grace", "2",
    )
    assert config.trusted_proxies == ("10.0.0.0/8", "::1")
    assert (config.max_connections, config.max_connections_per_ip) == (500, 16)
    assert (config.header_timeout_s, config.body_timeout_s, config.http2, config.shutdown_grace_s) == (4, 9, True, 2)


async def test_a_busy_port_is_a_startup_error_that_names_the_flag(tmp_path):
    async with trio.open_nursery() as nursery:
        first = await nursery.start(run_server, make_config(tmp_path / "a"))
        with pytest.raises(StartupError, match=f"port {first.http_port} .*--port"):
            await run_server(make_config(tmp_path / "b", http_port=first.http_port))
        with pytest.raises(StartupError, match=f"port {first.state.media_port} .*--media-port"):
            await run_server(make_config(tmp_path / "c", media_port=first.state.media_port))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("advertised", "named"),
    [
        ("198.51.100.77", "198.51.100.77"),  # a private (documentation) address on no interface
        ("127.0.0.1,198.51.100.78", "198.51.100.78"),
        ("no-such-host.invalid", "no-such-host.invalid"),
    ],
)
async def test_an_announced_address_not_on_this_machine_is_refused_by_name(tmp_path, advertised, named):
    with pytest.raises(StartupError, match=f"media address '?{re.escape(named)}'? .*--media-advertised-host"):
        await run_server(make_config(tmp_path, media_advertised_host=advertised))


async def test_a_media_bind_address_not_on_this_machine_is_refused_by_name(tmp_path):
    with pytest.raises(StartupError, match="198.51.100.77 is not an address of this machine.*--media-host"):
        await run_server(make_config(tmp_path, media_host="198.51.100.77"))


async def test_default_media_announces_every_local_address_loopback_last(tmp_path):
    async with trio.open_nursery() as nursery:
        info = await nursery.start(run_server, make_config(tmp_path))
        hosts = info.state.started_media().hosts
        assert hosts[-1] == "127.0.0.1" and len(set(hosts)) == len(hosts)
        assert all(is_local_address(host) for host in hosts)
        # HTTP on loopback: bots are on this machine and get loopback.
        assert info.state.media_host == "127.0.0.1"
        nursery.cancel_scope.cancel()


async def test_a_public_advertised_address_is_taken_as_a_nat_mapping(tmp_path):
    async with trio.open_nursery() as nursery:
        info = await nursery.start(run_server, make_config(tmp_path, media_advertised_host="1.2.3.4"))
        assert info.state.started_media().hosts == ("1.2.3.4",) and info.state.media_host == "1.2.3.4"
        nursery.cancel_scope.cancel()


async def test_an_unwritable_data_directory_names_the_path_and_flag(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StartupError, match="data directory .*--data-dir"):
        await run_server(make_config(blocker / "data"))


def test_commands_turn_start_up_problems_into_one_line(capsys):
    from botcall.server import run_command

    def busy() -> int:
        raise BaseExceptionGroup("nursery", [BaseExceptionGroup("inner", [StartupError("HTTP port 8080 on 127.0.0.1 is already in use; choose another with --port")])])

    def misconfigured() -> int:
        raise ConfigError("give exactly one --jwks for each --issuer")

    assert run_command("botcall serve", busy) == 1
    assert run_command("botcall demo", misconfigured) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "botcall serve: HTTP port 8080 on 127.0.0.1 is already in use; choose another with --port",
        "botcall demo: give exactly one --jwks for each --issuer",
    ]
    with pytest.raises(RuntimeError):
        run_command("botcall serve", lambda: (_ for _ in ()).throw(RuntimeError("a bug is not hidden")))
