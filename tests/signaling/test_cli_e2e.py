"""End to end, as the README shows it: ``botcall serve`` as a real process on a
free port, ``TOKEN=$(botcall token ...)``, then curl creates a room and joins it.

The startup timeout is a safety net against a hung process, not a speed
requirement.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from botcall.auth.keys import parse_jwks_untrusted

pytestmark = pytest.mark.e2e

BOTCALL = Path(sys.executable).parent / "botcall"
LISTENING = re.compile(r"listening on (http://\S+)")


class ServeProcess:
    """``botcall serve`` in a subprocess; stderr is collected line by line."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.env = {**os.environ, "BOTCALL_DATA_DIR": str(data_dir)}
        self.process = subprocess.Popen(
            [str(BOTCALL), "serve", "--port", "0", "--media-port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {pattern.pattern!r} in {self.log}") from None
            self.log.append(line)
            match = pattern.search(line)
            if match:
                return match

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        return code


def botcall_token(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BOTCALL), "token", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    serve = ServeProcess(data_dir)
    try:
        serve.base_url = serve.wait_for(LISTENING).group(1)
        yield serve
    finally:
        assert serve.stop() == 0, serve.log


def test_serve_says_it_trusts_the_dev_issuer_and_creates_its_key(served):
    assert any("dev issuer 'botcall-dev' trusted" in line for line in served.log), served.log
    data_dir = Path(served.env["BOTCALL_DATA_DIR"])
    assert (data_dir / "dev-issuer-key.pem").stat().st_mode & 0o777 == 0o600
    assert parse_jwks_untrusted((data_dir / "dev-issuer-jwks.json").read_bytes(), allowed_algorithms={"EdDSA"}, max_keys=1)


def test_token_prints_only_the_jwt(served):
    result = botcall_token(served.env, "--agent", "orion#8f3a", "--controller", "gopi")
    assert result.returncode == 0 and result.stderr == ""
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n", result.stdout)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_walkthrough_with_curl(served, tmp_path):
    script = r"""
set -eu
TOKEN=$(botcall token --agent 'orion#8f3a' --controller gopi --scope "call:create call:voice")
curl -sS -f -X POST "$BOTCALL_URL/v1/rooms/create" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"max_human_participants": 1, "expires_in": 3600}' > room.json
ROOM=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])' < room.json)
curl -sS -f -X POST "$BOTCALL_URL/v1/join" -H 'Content-Type: application/json' -d @- > join.json <<EOF
{"agent_id": "orion#8f3a", "room_id": "$ROOM",
 "attestation": {"token": "$TOKEN"},
 "capabilities": {"audio_in": true, "audio_out": true, "video": false, "text_chat": true},
 "media": {"transport": "udp"}}
EOF
curl -sS -f "$BOTCALL_URL/v1/rooms/$ROOM" -H "Authorization: Bearer $TOKEN" > info.json
"""
    env = {**served.env, "BOTCALL_URL": served.base_url, "PATH": f"{BOTCALL.parent}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    room = json.loads((tmp_path / "room.json").read_text())
    join = json.loads((tmp_path / "join.json").read_text())
    info = json.loads((tmp_path / "info.json").read_text())
    assert room["invite_url"].startswith(f"{served.base_url}/join/{room['room_id']}#invite=")
    assert (room["expires_in"], room["max_human_participants"]) == (3600, 1)
    assert join["session_id"].startswith("sess-") and join["media"]["transport"] == "udp"
    assert join["media"]["port"] > 0  # the UDP port the relay actually bound (--media-port 0)
    assert (join["media"]["payload_type"], join["media"]["clock_rate"]) == (111, 48000)
    assert join["websocket_url"] == served.base_url.replace("http://", "ws://") + f"/v1/stream/{join['session_id']}"
    assert [p["agent_id"] for p in info["participants"]] == ["orion#8f3a"]
    assert info["participants"][0]["controller"] == "gopi"


def test_the_same_flow_with_urllib(served):
    token = botcall_token(served.env, "--agent", "vega#0002", "--controller", "gopi", "--scope", "call:create call:voice").stdout.strip()

    def call(method: str, path: str, body: dict | None = None, bearer: str | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(served.base_url + path, method=method, data=None if body is None else json.dumps(body).encode())
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    status, room = call("POST", "/v1/rooms", {}, bearer=token)
    assert status == 201
    body = {"agent_id": "vega#0002", "room_id": room["room_id"], "attestation": {"token": token}}
    assert call("POST", "/v1/join", body)[0] == 200
    status, error = call("POST", "/v1/join", body)
    assert (status, error["error"]["code"]) == (401, "attestation_replayed")
    status, error = call("POST", "/v1/join", {**body, "room_id": "nope-nope-nope"})
    assert (status, error["error"]["code"]) == (401, "attestation_replayed")
    status, health = call("GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["sessions"] >= 1


def test_serve_refuses_unpaired_issuer_flags(tmp_path):
    result = subprocess.run(
        [str(BOTCALL), "serve", "--port", "0", "--issuer", "https://botauth.example"],
        capture_output=True, text=True, env={**os.environ, "BOTCALL_DATA_DIR": str(tmp_path)}, timeout=60,
    )
    assert result.returncode == 2 and "--jwks" in result.stderr


def test_serve_reports_a_port_in_use(served, tmp_path):
    port = served.base_url.rsplit(":", 1)[1]
    result = subprocess.run(
        [str(BOTCALL), "serve", "--port", port, "--media-port", "0"],
        capture_output=True, text=True, env={**os.environ, "BOTCALL_DATA_DIR": str(tmp_path)}, timeout=60,
    )
    assert result.returncode == 1 and "in use" in result.stderr


def test_serve_refuses_a_bad_environment_value_in_one_line(tmp_path):
    result = subprocess.run(
        [str(BOTCALL), "serve", "--port", "0"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "BOTCALL_DATA_DIR": str(tmp_path), "BOTCALL_PLAYOUT_MAX_AHEAD_S": "soon"},
    )
    assert result.returncode == 2
    assert result.stderr == "botcall serve: BOTCALL_PLAYOUT_MAX_AHEAD_S: expected a number, not 'soon'\n"


def test_serve_logs_json_lines_from_a_config_file(tmp_path):
    config = tmp_path / "botcall.toml"
    config.write_text('log_format = "json"\nnode_name = "node-a"\n')
    serve = ServeProcess(tmp_path / "data", "--config", str(config))
    try:
        base_url = serve.wait_for(LISTENING).group(1)
        with urllib.request.urlopen(base_url + "/readyz", timeout=30) as response:
            assert response.status == 200 and json.loads(response.read()) == {"status": "ready"}
        with urllib.request.urlopen(base_url + "/v1/version", timeout=30) as response:
            assert json.loads(response.read())["name"] == "botcall"
    finally:
        assert serve.stop() == 0, serve.log
    while not serve.lines.empty():
        serve.log.append(serve.lines.get())
    lines = [json.loads(line) for line in serve.log]
    assert lines and all({"time", "level", "logger", "event"} <= set(line) and line["node"] == "node-a" for line in lines)
    assert any(line["event"].startswith("listening on http://") and line["level"] == "INFO" for line in lines)
