"""The TLS and TURN settings: flags, environment, file, their checks, and redaction."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from botcall import cli, settings
from botcall.config import Config
from botcall.errors import ConfigError
from botcall.settings import Origin, Source


def load(environ=None, *argv: str) -> settings.Loaded:
    parser = argparse.ArgumentParser()
    settings.add_flags(parser)
    return settings.load_from_args(parser.parse_args(list(argv)), environ or {})


def test_flags_set_tls_and_repeatable_turn_uris(tmp_path):
    loaded = load(
        {}, "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem"),
        "--turn-uri", "turn:turn.example:3478?transport=udp", "--turn-uri", "turns:turn.example:5349?transport=tcp",
        "--turn-secret", "north-wind",
    )
    config = loaded.config
    assert (config.tls_cert, config.tls_key, config.tls_enabled) == (tmp_path / "c.pem", tmp_path / "k.pem", True)
    assert config.turn_uris == ("turn:turn.example:3478?transport=udp", "turns:turn.example:5349?transport=tcp")
    assert config.turn_secret == "north-wind"
    assert loaded.origins["turn_uris"] == Origin(Source.FLAG, "--turn-uri")
    assert loaded.origins["tls_cert"] == Origin(Source.FLAG, "--tls-cert")
    # With TLS the default public URL is https (invite and WebSocket URLs follow it).
    assert config.base_url(8443) == "https://127.0.0.1:8443"
    assert load({}, "--tls-self-signed").config.base_url(8443) == "https://127.0.0.1:8443"
    assert Config().base_url(8080) == "http://127.0.0.1:8080"


def test_environment_and_file(tmp_path):
    environ = {
        "BOTCALL_TLS_SELF_SIGNED": "yes",
        "BOTCALL_TURN_URIS": "turn:10.0.0.5:3478?transport=udp, turn:[2001:db8::5]:3478?transport=tcp",
        "BOTCALL_TURN_SECRET": "north-wind",
    }
    config = load(environ).config
    assert config.tls_self_signed and config.turn_uris == ("turn:10.0.0.5:3478?transport=udp", "turn:[2001:db8::5]:3478?transport=tcp")
    path = tmp_path / "botcall.toml"
    path.write_text('tls_cert = "/etc/botcall/cert.pem"\ntls_key = "/etc/botcall/key.pem"\nturn_uris = ["turn:t.example"]\nturn_secret = "x"\n')
    config = load({}, "--config", str(path)).config
    assert config.tls_cert == Path("/etc/botcall/cert.pem") and config.turn_uris == ("turn:t.example",)
    # An empty variable means unset.
    assert load({"BOTCALL_TLS_CERT": "", "BOTCALL_TLS_KEY": ""}).config.tls_cert is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--tls-cert", "c.pem"), "tls_cert and tls_key go together"),
        (("--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-self-signed"), "tls_self_signed and tls_cert exclude each other"),
        (("--turn-uri", "turn:t.example:3478"), "turn_uris and turn_secret go together"),
        (("--turn-secret", "s"), "turn_uris and turn_secret go together"),
        (("--turn-uri", "stun:t.example:3478", "--turn-secret", "s"), "'stun:t.example:3478' is not a TURN URI"),
        (("--turn-uri", "turn:t.example:3478?transport=sctp", "--turn-secret", "s"), "is not a TURN URI"),
        (("--turn-uri", "turn://t.example", "--turn-secret", "s"), "is not a TURN URI"),
    ],
)
def test_bad_combinations_are_one_line_naming_the_flag(argv, expected):
    with pytest.raises(ConfigError) as caught:
        load({}, *argv)
    assert expected in str(caught.value) and "(set by --" in str(caught.value) and "\n" not in str(caught.value)


def test_show_redacts_the_turn_secret(monkeypatch, capsys):
    monkeypatch.setenv("BOTCALL_TURN_URIS", "turn:t.example:3478")
    monkeypatch.setenv("BOTCALL_TURN_SECRET", "north-wind-secret")
    assert cli.main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "north-wind-secret" not in out
    assert 'turn_secret = "[redacted]"' in out and 'turn_uris = ["turn:t.example:3478"]' in out
