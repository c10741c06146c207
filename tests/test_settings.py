"""Settings from flags, ``BOTCALL_*`` variables, a TOML file and defaults, and ``botcall config show``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from botcall import cli, settings
from botcall.config import Config, IssuerConfig, RateLimit
from botcall.errors import ConfigError
from botcall.settings import Origin, Source


def parse_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_flags(parser)
    return parser.parse_args(list(argv))


def load(environ=None, *argv: str) -> settings.Loaded:
    return settings.load_from_args(parse_flags(*argv), environ or {})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "botcall.toml"
    path.write_text(text)
    return path


def test_nothing_given_is_the_defaults():
    loaded = load()
    assert loaded.config == Config()
    assert set(loaded.origins) == {f.name for f in dataclasses.fields(Config)}
    assert all(origin == Origin(Source.DEFAULT) for origin in loaded.origins.values())


def test_flags_over_env_over_file_over_defaults(tmp_path):
    path = write(tmp_path, "http_port = 7000\nmedia_port = 41000\nplayout_max_ahead_s = 30\nleeway_s = 10\n")
    environ = {"BOTCALL_HTTP_PORT": "7100", "BOTCALL_MEDIA_PORT": "41100", "BOTCALL_CONFIG": "/ignored/with/--config"}
    loaded = load(environ, "--config", str(path), "--port", "7200")
    config = loaded.config
    assert (config.http_port, config.media_port, config.playout_max_ahead_s, config.leeway_s) == (7200, 41100, 30.0, 10.0)
    assert loaded.origins["http_port"] == Origin(Source.FLAG, "--port")
    assert loaded.origins["media_port"] == Origin(Source.ENV, "BOTCALL_MEDIA_PORT")
    assert loaded.origins["playout_max_ahead_s"] == Origin(Source.FILE, str(path))
    assert loaded.origins["audience"] == Origin(Source.DEFAULT)


def test_the_file_may_come_from_botcall_config(tmp_path):
    path = write(tmp_path, 'audience = "https://call.example"\n')
    loaded = load({"BOTCALL_CONFIG": str(path)})
    assert loaded.config.audience == "https://call.example"
    assert loaded.origins["audience"] == Origin(Source.FILE, str(path))


def test_every_field_is_settable_from_the_environment(tmp_path):
    environ = {
        "BOTCALL_PLAYOUT_MAX_AHEAD_S": "60",
        "BOTCALL_MAX_ROOMS_TOTAL": "5",
        "BOTCALL_HTTP2": "yes",
        "BOTCALL_DEV_ISSUER": "auto",
        "BOTCALL_PUBLIC_URL": "",
        "BOTCALL_MEDIA_ADVERTISED_HOST": "203.0.113.9",
        "BOTCALL_DATA_DIR": str(tmp_path),
        "BOTCALL_JOIN_LIMIT_PER_IP": "rate=0.5, burst=3",
        "BOTCALL_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
        "BOTCALL_ALGORITHMS": "EdDSA",
        "BOTCALL_ISSUERS": "https://a.example=https://a.example/jwks.json  https://b.example=/etc/b.json",
        "BOTCALL_LOG_FORMAT": "json",
        "BOTCALL_UNRELATED": "the SDK's own variables are not settings",
    }
    config = load(environ).config
    assert config.playout_max_ahead_s == 60.0 and config.max_rooms_total == 5 and config.http2
    assert config.dev_issuer is None and config.public_url is None
    assert config.advertised_media_host == "203.0.113.9" and config.data_dir == tmp_path
    assert config.join_limit_per_ip == RateLimit(rate=0.5, burst=3)
    assert config.trusted_proxies == ("10.0.0.0/8", "192.168.0.0/16") and config.algorithms == ("EdDSA",)
    assert config.issuers == (IssuerConfig("https://a.example", "https://a.example/jwks.json"), IssuerConfig("https://b.example", "/etc/b.json"))
    assert config.log_format == "json"


def test_a_toml_file_uses_tables_for_structured_settings(tmp_path):
    path = write(tmp_path, """
join_limit_per_ip = { rate = 2, burst = 20 }
create_limit_per_agent = "rate=0.1,burst=2"
trusted_proxies = ["127.0.0.1"]
dev_issuer = false
algorithms = ["ES256"]
data_dir = "/srv/botcall"

[[issuers]]
issuer = "https://botauth.example"
jwks = "https://botauth.example/.well-known/jwks.json"
""")
    config = load({}, "--config", str(path)).config
    assert config.join_limit_per_ip == RateLimit(2.0, 20) and config.create_limit_per_agent == RateLimit(0.1, 2)
    assert config.trusted_proxies == ("127.0.0.1",) and config.dev_issuer is False and config.algorithms == ("ES256",)
    assert config.data_dir == Path("/srv/botcall")
    assert config.issuers == (IssuerConfig("https://botauth.example", "https://botauth.example/.well-known/jwks.json"),)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"BOTCALL_PLAYOUT_MAX_AHEAD_S": "soon"}, "BOTCALL_PLAYOUT_MAX_AHEAD_S: expected a number, not 'soon'"),
        ({"BOTCALL_HTTP_PORT": "80.5"}, "BOTCALL_HTTP_PORT: expected an integer"),
        ({"BOTCALL_HTTP2": "maybe"}, "BOTCALL_HTTP2: expected true or false"),
        ({"BOTCALL_LEEWAY_S": "nan"}, "BOTCALL_LEEWAY_S: expected a finite number"),
        ({"BOTCALL_JOIN_LIMIT_PER_IP": "2/20"}, "BOTCALL_JOIN_LIMIT_PER_IP: expected 'rate=R,burst=B'"),
        ({"BOTCALL_JOIN_LIMIT_PER_IP": "rate=2,burst=0"}, "BOTCALL_JOIN_LIMIT_PER_IP: burst must be at least 1"),
        ({"BOTCALL_ISSUERS": "https://a.example"}, "BOTCALL_ISSUERS: expected ISSUER=JWKS pairs"),
        # Config's own checks, with where the value was set.
        ({"BOTCALL_LEEWAY_S": "99"}, "leeway_s must be 0-60, not 99.0 (set by BOTCALL_LEEWAY_S)"),
        ({"BOTCALL_MAX_ROOMS_TOTAL": "0"}, "max_rooms_total must be positive, not 0 (set by BOTCALL_MAX_ROOMS_TOTAL)"),
        ({"BOTCALL_LOG_LEVEL": "LOUD"}, "log_level must be one of DEBUG, INFO, WARNING, ERROR, not 'LOUD' (set by BOTCALL_LOG_LEVEL)"),
    ],
)
def test_a_bad_environment_value_is_one_line_naming_the_setting(environ, expected):
    with pytest.raises(ConfigError) as caught:
        load(environ)
    message = str(caught.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http_port = \"eighty\"\n", "http_port: expected an integer, not 'eighty'"),
        ("http_port = 8.5\n", "http_port: expected an integer, not 8.5"),
        ("http2 = 1\n", "http2: expected true or false, not 1"),
        ("join_limit_per_ip = { rate = 2 }\n", "join_limit_per_ip: expected a table { rate = R, burst = B }"),
        ("port = 80\n", "unknown setting 'port'"),
        ("http_port = \n", "not valid TOML"),
        ("[[issuers]]\nissuer = \"x\"\n", "issuers: expected [[issuers]] tables with issuer and jwks strings"),
    ],
)
def test_a_bad_file_value_is_one_line_naming_the_file_and_setting(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load({}, "--config", str(path))
    assert str(path) in str(caught.value) and expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load({}, "--config", str(tmp_path / "absent.toml"))


def test_flag_errors_name_the_flag():
    with pytest.raises(ConfigError, match=r"\(set by --port\)"):
        load({}, "--port", "70000")
    with pytest.raises(ConfigError, match="--connection-rate-per-ip: rate must be a positive number"):
        load({}, "--connection-rate-per-ip", "0")
    with pytest.raises(ConfigError, match="one --jwks for each --issuer"):
        load({}, "--issuer", "https://a.example")


def test_show_lists_every_setting_with_its_source_and_reads_back(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "leeway_s = 10\n")
    monkeypatch.setenv("BOTCALL_PLAYOUT_MAX_AHEAD_S", "60")
    monkeypatch.setenv("BOTCALL_DATA_DIR", str(tmp_path))
    assert cli.main(["config", "show", "--config", str(path), "--port", "9000", "--trusted-proxy", "10.0.0.0/8"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(" = ")[0]: line for line in out.splitlines()}
    assert set(lines) == {f.name for f in dataclasses.fields(Config)}
    assert lines["http_port"].startswith("http_port = 9000 ") and lines["http_port"].endswith("# flag --port")
    assert lines["playout_max_ahead_s"].endswith("# env BOTCALL_PLAYOUT_MAX_AHEAD_S")
    assert lines["leeway_s"].endswith(f"# file {path}")
    assert lines["trusted_proxies"].endswith("# flag --trusted-proxy")
    assert lines["audience"].endswith("# default")
    assert "join_limit_per_ip = { rate = 2.0, burst = 20 }" in out
    # The output is a settings file: read back, it gives the same configuration.
    shown = write(tmp_path, out)
    monkeypatch.delenv("BOTCALL_PLAYOUT_MAX_AHEAD_S")
    assert load({}, "--config", str(shown)).config == load(
        {"BOTCALL_PLAYOUT_MAX_AHEAD_S": "60"}, "--config", str(path), "--port", "9000", "--trusted-proxy", "10.0.0.0/8"
    ).config


def test_show_redacts_credentials(monkeypatch, capsys):
    monkeypatch.setenv("BOTCALL_ISSUERS", "https://a.example=https://user:hunter2@a.example/jwks.json")
    assert cli.main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "https://[redacted]@a.example/jwks.json" in out
    # A text field whose name says credential is never printed; a limit with such a name is.
    assert settings.is_secret("admin_token", "s3cret") and settings.is_secret("redis_password", "pw")
    assert not settings.is_secret("max_token_bytes", 8192) and not settings.is_secret("jwks_max_keys", 64)
    assert settings.show_value("api_key", "k3y-material") == '"[redacted]"'
    # Any text that looks like a credential is redacted wherever it appears.
    assert settings.show_value("http_host", "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJvcmlvbiJ9.c2lnbmF0dXJl") == '"[redacted-jwt]"'


def test_show_refuses_a_bad_value_with_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("BOTCALL_PLAYOUT_MAX_AHEAD_S", "soon")
    assert cli.main(["config", "show"]) == 2
    err = capsys.readouterr().err
    assert err == "botcall config: BOTCALL_PLAYOUT_MAX_AHEAD_S: expected a number, not 'soon'\n"
