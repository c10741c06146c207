"""``botcall token`` in-process: stdout is exactly one JWT the dev JWKS verifies."""

from __future__ import annotations

import argparse
import json
import time

import jwt
import pytest

from botcall.auth import token_cli
from botcall.auth.keys import DEV_JWKS_FILE, parse_jwks_untrusted


def run_token(capsys, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    token_cli.add_arguments(parser)
    code = token_cli.run(parser.parse_args(list(argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def verify(data_dir, token: str, audience: str = "botcall") -> dict:
    keys = parse_jwks_untrusted((data_dir / DEV_JWKS_FILE).read_bytes(), allowed_algorithms={"EdDSA"}, max_keys=4)
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(token, keys[kid].key, algorithms=["EdDSA"], audience=audience)


def test_prints_only_a_verifiable_jwt(tmp_path, capsys):
    before = int(time.time())
    code, out, err = run_token(
        capsys, "--agent", "orion#8f3a", "--controller", "gopi", "--scope", "call:create call:voice",
        "--ttl", "120", "--room", "abcd-efgh-ijkl", "--data-dir", str(tmp_path),
    )
    assert code == 0 and err == "" and out.endswith("\n") and out.count("\n") == 1
    claims = verify(tmp_path, out.strip())
    assert claims["iss"] == "botcall-dev" and claims["sub"] == "orion#8f3a" and claims["ctl"] == "gopi"
    assert claims["scope"] == "call:create call:voice" and claims["room"] == "abcd-efgh-ijkl"
    assert claims["exp"] - claims["iat"] == 120 and before <= claims["iat"] <= int(time.time())
    assert len(claims["jti"]) >= 16


def test_defaults_and_a_fresh_jti_each_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BOTCALL_DATA_DIR", str(tmp_path))
    first = run_token(capsys, "--agent", "a#1", "--controller", "gopi")[1].strip()
    second = run_token(capsys, "--agent", "a#1", "--controller", "gopi", "--audience", "https://call.example")[1].strip()
    one, two = verify(tmp_path, first), verify(tmp_path, second, audience="https://call.example")
    assert one["scope"] == "call:create call:voice call:receive" and one["exp"] - one["iat"] == 3600
    assert "room" not in one and one["jti"] != two["jti"]
    # Both signed by the one key created on first use.
    assert len(json.loads((tmp_path / DEV_JWKS_FILE).read_text())["keys"]) == 1


def test_bad_ttl_and_unwritable_data_dir(tmp_path, capsys):
    assert run_token(capsys, "--agent", "a", "--controller", "b", "--ttl", "0", "--data-dir", str(tmp_path))[0] == 2
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, out, err = run_token(capsys, "--agent", "a", "--controller", "b", "--data-dir", str(blocker / "sub"))
    assert code == 1 and out == "" and "botcall token" in err


def test_required_flags(capsys):
    with pytest.raises(SystemExit):
        run_token(capsys, "--agent", "a")


def test_a_ttl_over_the_servers_cap_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    args = ("--agent", "a#1", "--controller", "gopi", "--data-dir", str(tmp_path))
    code, out, err = run_token(capsys, *args, "--ttl", "3601")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("botcall token: --ttl 3601 is over the server's maximum token lifetime of 3600 s")
    assert run_token(capsys, *args, "--ttl", "3600")[0] == 0
    # The cap is the server's as configured (environment, or the --config file).
    monkeypatch.setenv("BOTCALL_MAX_TOKEN_LIFETIME_S", "600")
    code, _, err = run_token(capsys, *args, "--ttl", "601")
    assert code == 2 and "600 s" in err and "BOTCALL_MAX_TOKEN_LIFETIME_S" in err
    code, out, _ = run_token(capsys, *args)
    claims = verify(tmp_path, out.strip())
    assert code == 0 and claims["exp"] - claims["iat"] == 600, "the default TTL is the configured cap"
    monkeypatch.delenv("BOTCALL_MAX_TOKEN_LIFETIME_S")
    config = tmp_path / "botcall.toml"
    config.write_text("max_token_lifetime_s = 120\n")
    code, _, err = run_token(capsys, *args, "--ttl", "121", "--config", str(config))
    assert code == 2 and "120 s" in err and str(config) in err


def test_unknown_scopes_are_refused_in_one_line(tmp_path, capsys):
    args = ("--agent", "a#1", "--controller", "gopi", "--data-dir", str(tmp_path))
    code, out, err = run_token(capsys, *args, "--scope", "call:voice call:admin")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert "call:admin" in err and "call:create call:voice call:receive" in err
    assert run_token(capsys, *args, "--scope", " ")[0] == 2
    assert run_token(capsys, *args, "--scope", "call:receive")[0] == 0


def test_the_command_line_prints_no_traceback(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run(
        [sys.executable, "-m", "botcall.cli", "token", "--agent", "a", "--controller", "b", "--ttl", "999999",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "."},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and "999999" in result.stderr
