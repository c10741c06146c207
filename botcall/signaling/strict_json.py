"""The one strict JSON-object parser, for HTTP bodies and WebSocket messages alike (sans-IO).

Strict RFC 8259: UTF-8 only, no ``NaN``/``Infinity``, no duplicate member
names — so no two parsers (ours, a proxy's, a client library's) can read the
same bytes differently — and the value must be one object. Each boundary turns
``JsonObjectError`` into its own error (``400 malformed_json`` over HTTP,
``error bad_message`` on a WebSocket).
"""

from __future__ import annotations

import json
from typing import Any

from botcall.errors import BotCallError

JsonObject = dict[str, Any]


class JsonObjectError(BotCallError, ValueError):
    """The input is not exactly one strict JSON object."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> JsonObject:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object_untrusted(data: bytes | str, *, allow_empty: bool = False) -> JsonObject:
    """Decode input that must be one JSON object.

    Args:
        data: the raw bytes (UTF-8) or text.
        allow_empty: treat empty (or all-whitespace) input as ``{}``.

    Returns:
        The object.

    Raises:
        JsonObjectError: not UTF-8, not JSON, duplicate names, NaN/Infinity,
            too deeply nested, or not an object.
    """
    if allow_empty and not data.strip():
        return {}
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JsonObjectError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise JsonObjectError("must be a JSON object")
    return value


__all__ = ["JsonObject", "JsonObjectError", "parse_json_object_untrusted"]
