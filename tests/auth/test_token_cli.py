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
