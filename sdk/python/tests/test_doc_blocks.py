"""Every code block in the README and the docs runs, or is checked, as written.

Each fenced block of ``README.md``, ``sdk/python/README.md``,
``sdk/js/README.md`` and ``docs/*.md`` gets exactly one of these
(``test_every_doc_block_is_run_checked_or_excused`` fails on any other):

* ```` ```python ```` is a whole program and is run: it may use the names
  ``SERVER``, ``ROOM`` and ``TOKEN`` (defined before the block: a live server's
  URL, a room, a bot token), or the environment variables
  ``BOTCALL_SERVER``/``BOTCALL_ROOM``/``BOTCALL_TOKEN`` (set too); it runs in
  ``examples/``, so ``hello.wav`` (the sample WAV) is there; another bot in the
  room says hello.wav every couple of seconds, so a block that waits for
  someone to speak gets its speech; it must exit 0 within ``BLOCK_TIMEOUT``
  and print something.
* ```` ```sh ```` (or ``bash``) is run by bash with ``set -e`` against a live
  server, in a scratch directory standing in for the repository root (every
  top-level entry of the checkout is linked there, so ``.venv/bin/botcall`` and
  ``examples/hello.wav`` are where the docs say; what a block writes stays in
  the scratch directory). ``SERVER``, ``ROOM`` and ``TOKEN`` are set, and
  ``SUBSTITUTIONS`` puts the live server and room where the docs show
  ``http://127.0.0.1:8080`` and the README's example room. ``botcall token``
  signs with the live server's dev issuer (``BOTCALL_DATA_DIR``). The test's
  server stands in for ``botcall serve`` and ``botcall demo``: each such
  command runs as ``botcall config show`` with the same flags, environment and
  ``--config`` file, so a renamed flag, an unknown setting or a bad value
  fails. The room's owner closes the room once another participant has
  spoken, so ``botcall bot`` leaves when its WAV has been heard. A comment
  ``# 201 {"room_id":…,…}`` (continued on ``#`` lines) shows the output of
  the command above it: each such shape must be matched, in order, by a JSON
  document the block prints (the members shown, of the types shown; ``…``
  elides).
* ```` ```json ```` must be a documented HTTP request or response body or a
  WebSocket message of the served contract (``tests/signaling/test_contract.py``'s
  validator, with closed objects); a fragment of members (``"media": {…}``)
  must match those members' schemas where the contract defines them.
* ```` ```text ```` is not code: a diagram, a layout or a program's output.
* Anything else, or a block that cannot run here (it installs packages,
  starts a long-running service or runs a benchmark: ``UNRUNNABLE``, never
  run), is preceded by ``<!-- not-run: why -->``; the ``botcall serve``/
  ``botcall demo`` lines of such a shell block are still checked as above.
* ``<!-- checked-by: PATH -->`` (or ``<!-- stun-example: NAME -->``, checked by
  ``tests/wire/test_stun_doc_example.py``) names the test that runs it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema
import pytest

import botcall_sdk
from conftest import ServerThread
from tests.signaling.test_contract import Contract

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent
BLOCK_TIMEOUT = 60.0
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*(?P<kind>[\w-]+):(?P<text>.*?)-->")
RUN_LANGUAGES = {"python", "sh", "bash"}
# Markers of blocks another test checks, and that test.
CHECKED_ELSEWHERE = {"stun-example": "tests/wire/test_stun_doc_example.py"}
# What the docs show → what the test has.
SUBSTITUTIONS = (
    (re.compile(r"http://127\.0\.0\.1:8080"), "{server}"),  # the default server
    (re.compile(r"ds2u-p71i-uxd6"), "{room}"),  # the README's example room
    (re.compile(r"\.venv/bin/botcall\b"), "botcall"),  # through PRELUDE's botcall
    (re.compile(r"(?<=\s)…(?=\s)"), ""),  # "botcall serve … --turn-uri": the flags shown above
)
# Runs before a shell block: the live server stands in for serve and demo.
PRELUDE = """\
botcall() {
  case "$1" in
    serve|demo) shift; command botcall config show "$@" >/dev/null ;;
    *) command botcall "$@" ;;
  esac
}
"""
SERVE_LINE = re.compile(r"\bbotcall (?:serve|demo)\b")
# Commands a test must not run (they install packages, start services or take minutes): a shell block
# with one needs <!-- not-run: why -->, and is never run without it.
UNRUNNABLE = re.compile(
    r"^\s*(?:sudo\s+)?(?:\w+=\S*\s+)*(?:\S*/)?(?:make|apt-get|apt|systemctl|caddy|nginx|pip|ffmpeg|redis-server|turnserver)\b"
    r"|\bpython3?\s+-m\s+(?:bench|pytest)\b|\bbotcall drain\b", re.M)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    marker: str  # "kind: text" of an HTML comment on the last line before the fence, or ""

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def marker_kind(self) -> str:
        return self.marker.split(":", 1)[0]

    @property
    def marker_text(self) -> str:
        return self.marker.split(":", 1)[1].strip() if ":" in self.marker else ""

    @property
    def run(self) -> bool:
        return disposition(self) == "run"


def doc_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "sdk" / "python" / "README.md", REPO / "sdk" / "js" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [path for path in files if path.exists()]


def blocks() -> list[Block]:
    found = []
    for path in doc_files():
        text = path.read_text()
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
            marker = MARKER.fullmatch(before)
            found.append(Block(
                path, text.count("\n", 0, match.start()) + 1, match["lang"], match["code"],
                f"{marker['kind']}: {marker['text'].strip()}" if marker else "",
            ))
    return found


def disposition(block: Block) -> str | None:
    """What is done with ``block``, or None when nothing is (the policy test fails)."""
    kind, text = block.marker_kind, block.marker_text
    if kind == "not-run":
        return f"not run: {text}" if text else None
    if kind in CHECKED_ELSEWHERE:
        return f"checked by {CHECKED_ELSEWHERE[kind]}"
    if kind == "checked-by":
        return f"checked by {text}" if text else None
    if block.lang in ("sh", "bash") and UNRUNNABLE.search(re.sub(r"#.*", "", block.code)):
        return None
    if block.lang in RUN_LANGUAGES:
        return "run"
    if block.lang == "json":
        return "checked against the contract"
    if block.lang == "text":
        return "text"
    return None


def test_the_extractor_finds_the_blocks() -> None:
    found = blocks()
    by_lang = {lang: sum(block.lang == lang and block.run for block in found) for lang in ("python", "sh")}
    assert by_lang["python"] >= 2 and by_lang["sh"] >= 4, by_lang
    assert sum(block.lang == "json" for block in found) >= 6
    # A marker must say why the block is a fragment.
    for path in doc_files():
        for marker in re.findall(r"<!--\s*not-run.*?-->", path.read_text()):
            assert MARKER.fullmatch(marker) and MARKER.fullmatch(marker)["text"].strip(), f"{path}: {marker} gives no reason"


def test_every_doc_block_is_run_checked_or_excused() -> None:
    unhandled = [f"{block.name} ```{block.lang} {block.marker!r}" for block in blocks() if disposition(block) is None]
    assert not unhandled, "neither run, checked nor excused with <!-- not-run: why -->:\n" + "\n".join(unhandled)
    for block in blocks():
        checker = CHECKED_ELSEWHERE.get(block.marker_kind) or (block.marker_text if block.marker_kind == "checked-by" else None)
        if checker is not None:
            source = (REPO / checker).read_text()
            assert block.path.name in source or block.marker_kind in source, f"{block.name}: {checker} does not read it"


# --- python blocks ------------------------------------------------------------------------------


async def talk_in(server: ServerThread, room: str, stop: anyio.Event) -> None:
    """A bot in the room saying hello.wav, with pauses, until ``stop``."""
    async with botcall_sdk.connect(server.url, room, server.token(agent="partner#1")) as partner:
        while not stop.is_set():
            await (await partner.say(EXAMPLES / "hello.wav")).done()
            with anyio.move_on_after(1.0):
                await stop.wait()


def python_path() -> str:
    return os.pathsep.join(filter(None, (str(REPO / "sdk" / "python"), os.environ.get("PYTHONPATH"))))


@pytest.mark.e2e
@pytest.mark.parametrize("block", [block for block in blocks() if block.run and block.lang == "python"], ids=lambda block: block.name)
def test_a_doc_block_runs_as_written(server: ServerThread, block: Block, tmp_path: Path) -> None:
    token = server.token(agent="reader#1")
    result: dict[str, object] = {}

    async def scenario() -> None:
        room = (await botcall_sdk.create_room(server.url, server.token(agent="creator#1"))).room_id
        program = tmp_path / "block.py"
        program.write_text(f"SERVER, ROOM, TOKEN = {server.url!r}, {room!r}, {token!r}\n{block.code}")
        env = {**os.environ, "PYTHONPATH": python_path(), "BOTCALL_SERVER": server.url, "BOTCALL_ROOM": room, "BOTCALL_TOKEN": token}
        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(talk_in, server, room, stop)
            with anyio.fail_after(BLOCK_TIMEOUT):
                done = await anyio.run_process([sys.executable, str(program)], env=env, cwd=str(EXAMPLES), check=False)
            stop.set()
        result["done"] = done

    anyio.run(scenario)
    done = result["done"]
    assert done.returncode == 0, f"{block.name} failed:\n{done.stderr.decode()}"  # type: ignore[attr-defined]
    assert done.stdout.strip(), f"{block.name} printed nothing"  # type: ignore[attr-defined]


# --- shell blocks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server for every shell block, on the wall clock: ``botcall token`` signs with ``time.time()``."""
    thread = ServerThread(tmp_path_factory.mktemp("server"), clock=time.time).start()
    try:
        yield thread
    finally:
        thread.stop()


def substituted(code: str, server: str, room: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        code = pattern.sub(replacement.format(server=server, room=room), code)
    return code


def shell_env(server: ServerThread, room: str, token: str) -> dict[str, str]:
    assert server.live is not None
    env = {name: value for name, value in os.environ.items() if not name.startswith("BOTCALL_")}
    return {
        **env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "PYTHONPATH": python_path(),
        "BOTCALL_DATA_DIR": str(server.live.config.data_dir), "SERVER": server.url, "ROOM": room, "TOKEN": token,
    }


def repository_stand_in(tmp_path: Path) -> Path:
    """A directory whose entries are links to the checkout's: the docs' commands run "from the repository root"."""
    root = tmp_path / "repo"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name != ".git":
            (root / entry.name).symlink_to(entry)
    return root


def expected_outputs(code: str) -> list[Any]:
    """The JSON shapes of ``# 200 {…}`` comments, ``…`` elisions as None (any value) or dropped."""
    shapes, lines = [], code.splitlines()
    for index, line in enumerate(lines):
        start = re.match(r"#\s*\d{3} (\{.*)", line.strip())
        if start is None:
            continue
        body = start[1]
        for more in lines[index + 1 :]:
            if not re.match(r"#\s{2,}", more.strip()):
                break
            body += more.strip()[1:].strip()
        body = re.sub(r",\s*…\s*(?=[}\]])", "", body)
        shapes.append(json.loads(re.sub(r":\s*…", ": null", body)))
    return shapes


def json_documents(text: str) -> list[Any]:
    decoder, documents, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


def assert_shape(shape: Any, actual: Any, where: str) -> None:
    if shape is None:
        return
    if isinstance(shape, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, value in shape.items():
            assert key in actual, f"{where}: no {key!r} in {actual!r}"
            assert_shape(value, actual[key], f"{where}.{key}")
    elif isinstance(shape, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        for item in actual if shape else ():
            assert_shape(shape[0], item, f"{where}[]")
    else:
        kinds = (int, float) if isinstance(shape, (int, float)) and not isinstance(shape, bool) else type(shape)
        assert isinstance(actual, kinds) and not (isinstance(actual, bool) and not isinstance(shape, bool)), (
            f"{where}: {actual!r} is not like {shape!r}")


async def close_room(server: ServerThread, room: str) -> None:
    """The owner closes ``room`` (if it is still open)."""
    async with httpx.AsyncClient() as http:
        answer = await http.delete(f"{server.url}/v1/rooms/{room}", headers={"Authorization": f"Bearer {server.token(agent='creator#1')}"})
    assert answer.status_code in (200, 410), answer.text


async def close_after_speech(server: ServerThread, room: str) -> None:
    """The room's owner, in the room: closes it once someone else has spoken (``botcall bot`` then leaves)."""
    async with botcall_sdk.connect(server.url, room, server.token(agent="closer#1")) as closer:
        async for event in closer.events():
            if isinstance(event, botcall_sdk.SpeechStopped) and event.participant_id != closer.participant_id:
                await close_room(server, room)
                return


def run_shell(server: ServerThread, script: str, cwd: Path) -> Any:
    """``script`` run by bash with ``PRELUDE`` and ``SUBSTITUTIONS``, in a room of its own, closed after."""
    result: dict[str, Any] = {}

    async def scenario() -> None:
        room = (await botcall_sdk.create_room(server.url, server.token(agent="creator#1"))).room_id
        env = shell_env(server, room, server.token(agent="reader#1"))
        program = PRELUDE + substituted(script, server.url, room)
        async with anyio.create_task_group() as group:
            group.start_soon(close_after_speech, server, room)
            with anyio.fail_after(BLOCK_TIMEOUT):
                result["done"] = await anyio.run_process(["bash", "-e", "-o", "pipefail", "-c", program], env=env, cwd=str(cwd), check=False)
            group.cancel_scope.cancel()
        await close_room(server, room)  # a controller may hold only 10 live rooms

    anyio.run(scenario)
    return result["done"]


@pytest.mark.e2e
@pytest.mark.parametrize("block", [block for block in blocks() if block.run and block.lang in ("sh", "bash")], ids=lambda block: block.name)
def test_a_shell_block_runs_as_written(live_server: ServerThread, block: Block, tmp_path: Path) -> None:
    if re.search(r"\bcurl\b", block.code) and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    done = run_shell(live_server, block.code, repository_stand_in(tmp_path))
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"{block.name} exited {done.returncode}:\n{stderr}"
    shapes = expected_outputs(block.code)
    if shapes:
        printed = json_documents(stdout)
        assert len(printed) >= len(shapes), f"{block.name} printed {stdout!r}, the block shows {len(shapes)} answers"
        for number, (shape, document) in enumerate(zip(shapes, printed), 1):
            assert_shape(shape, document, f"{block.name} answer {number}")


def serve_lines(code: str) -> list[str]:
    """The ``botcall serve``/``botcall demo`` commands of a shell block, continuation lines joined."""
    return [line.strip() for line in code.replace("\\\n", " ").splitlines() if SERVE_LINE.search(line.split("#", 1)[0])]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "block", [block for block in blocks() if block.lang in ("sh", "bash") and not block.run and serve_lines(block.code)], ids=lambda block: block.name)
def test_the_serve_flags_of_an_unrun_block_load(live_server: ServerThread, block: Block, tmp_path: Path) -> None:
    done = run_shell(live_server, "\n".join(serve_lines(block.code)), repository_stand_in(tmp_path))
    assert done.returncode == 0, f"{block.name}: {done.stderr.decode()}"


@pytest.mark.e2e
def test_a_renamed_flag_or_unknown_setting_fails_a_shell_block(live_server: ServerThread, tmp_path: Path) -> None:
    """The stand-in for ``botcall serve`` is a real check, not a no-op."""
    cwd = repository_stand_in(tmp_path)
    assert run_shell(live_server, "botcall serve --port 8081 --media-prot 40000", cwd).returncode == 2
    (tmp_path / "bad.toml").write_text('http_hots = "0.0.0.0"\n')
    done = run_shell(live_server, f".venv/bin/botcall serve --config {tmp_path / 'bad.toml'}", cwd)
    assert done.returncode == 2 and "unknown setting 'http_hots'" in done.stderr.decode()
    assert run_shell(live_server, "BOTCALL_PLAYOUT_MAX_AHEAD_S=soon botcall serve", cwd).returncode == 2


def test_a_block_that_would_install_or_start_a_service_needs_a_marker() -> None:
    def shell(code: str, marker: str = "") -> Block:
        return Block(REPO / "README.md", 1, "sh", code, marker)

    for code in ("make run\n", "sudo apt-get install -y nginx\n", ".venv/bin/python -m bench.compare --quick\n",
                 "X=1 ffmpeg -i a.wav out.ogg\n", "botcall drain --redis redis://r node-a\n"):
        assert disposition(shell(code)) is None, code
        assert disposition(shell(code, "not-run: why")) == "not run: why"
    assert disposition(shell("curl -s http://127.0.0.1:8080/healthz   # make run first\n")) == "run"


def test_an_answer_of_another_shape_fails() -> None:
    [shape] = expected_outputs('curl …\n# 200 {"session_id":"sess-…","media":{"port":40000,…},\n#      "ice_servers":[],…}\n')
    assert_shape(shape, {"session_id": "s", "media": {"port": 1, "ssrc": 2}, "ice_servers": []}, "ok")
    for wrong in ({"session_id": "s", "ice_servers": []}, {"session_id": "s", "media": {"port": "1"}, "ice_servers": []},
                  {"error": {"code": "room_not_found"}}):
        with pytest.raises(AssertionError):
            assert_shape(shape, wrong, "wrong")


# --- json blocks --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract()


def message_schemas(contract: Contract) -> dict[str, Any]:
    """Every JSON body of the OpenAPI document (requests, 2xx answers) and both WebSocket message unions,
    less those that take any object (``/v1/openapi.json`` serves a document of any shape)."""
    schemas: dict[str, Any] = {
        "a client message": {"$ref": "urn:ws#/$defs/ClientMessage"},
        "a server event": {"$ref": "urn:ws#/$defs/ServerEvent"},
    }
    for path, operations in contract.openapi["paths"].items():
        for method, operation in operations.items():
            request = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if request:
                schemas[f"{method.upper()} {path} request"] = request["schema"]
            for status, response in operation["responses"].items():
                body = response.get("content", {}).get("application/json")
                if body and status.startswith("2"):
                    schemas[f"{method.upper()} {path} {status}"] = body["schema"]
    return {name: schema for name, schema in schemas.items() if not accepts(contract, schema, {"x-not-a-member": 0})}


def member_schemas(contract: Contract, member: str) -> list[str]:
    """``$ref``s to every schema either document gives an object's ``member``."""
    refs = []

    def walk(node: Any, base: str, pointer: str) -> None:
        if isinstance(node, dict):
            if member in node.get("properties", {}):
                refs.append(f"{base}#{pointer}/properties/{member}")
            for key, value in node.items():
                walk(value, base, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, base, f"{pointer}/{index}")

    walk(contract.openapi, "urn:openapi", "")
    walk(contract.ws, "urn:ws", "")
    return refs


def accepts(contract: Contract, schema: Any, instance: Any) -> bool:
    try:
        contract.check(schema, copy.deepcopy(instance))
    except jsonschema.ValidationError:
        return False
    return True


def explain(error: jsonschema.ValidationError) -> str:
    """What is wrong, inside the ``oneOf`` branch that came nearest."""
    if not error.context:
        return f"{error.message[:200]} at {list(error.absolute_path)}"
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for inner in error.context:
        branches.setdefault(inner.relative_schema_path[0], []).append(inner)
    return "; ".join(explain(inner) for inner in min(branches.values(), key=len))


def contract_errors(contract: Contract, code: str) -> list[str]:
    """Why the JSON block ``code`` is no documented message (empty: it is one)."""
    try:
        document = json.loads(code)
    except ValueError as not_json:
        try:
            members = json.loads("{" + code + "}")
        except ValueError:
            return [f"not JSON (nor JSON members): {not_json}"]
        errors = []
        for member, value in members.items():
            refs = member_schemas(contract, member)
            if not any(accepts(contract, {"$ref": ref}, value) for ref in refs):
                errors.append(f"{member!r} matches none of {refs or 'the schemas (none defines it)'}")
        return errors
    schemas = message_schemas(contract)
    if any(accepts(contract, schema, document) for schema in schemas.values()):
        return []
    # The three nearest misses, by how many errors each schema finds.
    misses = []
    for name, schema in schemas.items():
        validator = jsonschema.Draft202012Validator(schema, registry=contract.registry, format_checker=jsonschema.FormatChecker())
        found = list(validator.iter_errors(copy.deepcopy(document)))
        misses.append((len(found), name, "; ".join(explain(error) for error in found[:3])))
    return [f"{name}: {why}" for _, name, why in sorted(misses)[:3]]


@pytest.mark.parametrize("block", [block for block in blocks() if block.lang == "json" and disposition(block) == "checked against the contract"],
                         ids=lambda block: block.name)
def test_a_json_block_is_a_documented_message(contract: Contract, block: Block) -> None:
    errors = contract_errors(contract, block.code)
    assert not errors, f"{block.name} is no documented message:\n" + "\n".join(errors)


def test_a_json_block_of_another_shape_fails(contract: Contract) -> None:
    assert contract_errors(contract, '{"max_human_participants": 1, "expires_in": 3600}') == []
    assert contract_errors(contract, '"media": {"transport": "udp"}') == []
    assert contract_errors(contract, '{"max_human_participants": 1, "expires_in": 3600, "colour": "red"}')
    assert contract_errors(contract, '"media": {"transport": "carrier pigeon"}')
    assert contract_errors(contract, '{"room_id": "x",}')
