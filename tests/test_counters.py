"""The counter catalogue (botcall/counters.py) covers every name the media path counts,
and /metrics exports each with its help text."""

import ast
import collections
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from botcall import counters
from botcall.errors import BadPacket
from botcall.metrics import Metrics
from botcall.relay.core import MediaRelay
from botcall.webrtc import ice_lite
from tests.kit.relay import Wire

ROOT = Path(__file__).resolve().parent.parent / "botcall"
# The SDK keeps its own client-side counters: they are not the relay's metrics.
SKIP = {ROOT / "client"}


def _counted_literals() -> dict[str, list[str]]:
    """Every string literal the source uses as a counter name, with where."""
    found: dict[str, list[str]] = collections.defaultdict(list)
    for path in ROOT.rglob("*.py"):
        if any(skip in path.parents for skip in SKIP):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT.parent)}:{getattr(node, 'lineno', 0)}"
            names: list[ast.expr] = []
            if isinstance(node, ast.Subscript):
                target = node.value
                base = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                if base in ("counters", "drops"):
                    names.append(node.slice)
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "drop" and len(node.args) == 2:
                    names.append(node.args[1])
                names += [kw.value for kw in node.keywords if kw.arg == "counter"]
            elif isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "counter" for t in stmt.targets
                    ):
                        names.append(stmt.value)
            for name in names:
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    found[name.value].append(where)
                elif isinstance(name, ast.JoinedStr) and isinstance(name.values[0], ast.Constant):
                    found[f"{name.values[0].value}<dynamic>"].append(where)
    return found


def test_every_counted_literal_is_catalogued():
    found = _counted_literals()
    assert len(found) > 50  # the scan really sees the relay's counters
    missing = {name: where for name, where in found.items() if counters.describe(name) is None}
    assert missing == {}


def test_enum_counter_names_and_error_defaults_are_catalogued():
    names = [member.value for member in ice_lite.BindingReason] + [member.value for member in ice_lite.CheckResult]

    def subclasses(cls: type) -> list[type]:
        return [cls] + [sub for direct in cls.__subclasses__() for sub in subclasses(direct)]

    # The relay's own errors (a benchmark's peer may define more, loaded in the same run).
    names += [cls.counter for cls in subclasses(BadPacket) if cls.__module__.startswith("botcall.")]
    assert list(counters.uncatalogued(names)) == []


def test_help_texts_are_sentences_and_names_are_metric_safe():
    for name, entry in counters.CATALOGUE.items():
        assert name.isidentifier() and name == name.lower(), name
        assert entry.help.endswith(".") and len(entry.help) > 10, name


def test_metrics_export_each_name_with_its_help():
    relay = MediaRelay(Wire())
    udp = type("Udp", (), {"counters": collections.Counter({"send_error_EAGAIN": 3, "oversized": 1})})()
    metrics = Metrics(live_rooms=lambda: 0, live_sessions=lambda: 0)
    metrics.attach_media(relay, udp)
    relay.counters["unknown_source"] += 4
    relay.counters["not_in_the_catalogue"] += 1
    families = {family.name: family for family in text_string_to_metric_families(metrics.render()[0].decode())}
    unknown = families["botcall_media_unknown_source"]
    assert unknown.documentation == "RTP/RTCP from an address no session has latched. (drop)"
    assert unknown.samples[0].value == 4
    assert families["botcall_media_latched"].samples[0].value == 0  # exported before it is first counted
    errors = families["botcall_media_send_errors"]
    assert [(s.labels, s.value) for s in errors.samples] == [({"errno": "EAGAIN"}, 3)]
    stray = families["botcall_media_uncatalogued"]
    assert [(s.labels, s.value) for s in stray.samples] == [({"event": "not_in_the_catalogue"}, 1)]
    assert all(name.replace("botcall_media_", "") in counters.CATALOGUE or name in (
        "botcall_media_events", "botcall_media_send_errors", "botcall_media_recv_errors",
        "botcall_media_uncatalogued", "botcall_media_received_packets", "botcall_media_sent_packets",
        "botcall_media_peers") for name in families if name.startswith("botcall_media_"))
