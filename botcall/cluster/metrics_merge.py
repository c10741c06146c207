"""One Prometheus exposition from every worker's, each series labelled by
``node`` and ``worker`` (sans-IO).

The workers' texts share their families (same names, help and types); the
merged text has each family's ``# HELP``/``# TYPE`` once, followed by the
samples of every worker, so a scraper of the front's ``/metrics`` sees one
valid exposition.
"""

from __future__ import annotations

import re

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{)?")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_sample(line: str, labels: str) -> str:
    """``line`` (one sample) with ``labels`` (``a="b",c="d"``) first in its label set."""
    match = _SAMPLE.match(line)
    if match is None:
        return line
    name = match.group(1)
    if match.group(2):
        rest = line[match.end():]
        return f"{name}{{{labels}{'' if rest.startswith('}') else ','}{rest}"
    return f"{name}{{{labels}}}{line[match.end():]}"


def merge_expositions(parts: list[tuple[dict[str, str], str]]) -> str:
    """Merge ``(labels, exposition text)`` pairs (see the module docstring)."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for labels, text in parts:
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                words = line.split(None, 3)
                if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                    family = words[2]
                    known = headers.setdefault(family, [])
                    samples.setdefault(family, [])
                    if line not in known:
                        known.append(line)
                continue
            samples.setdefault(family, []).append(label_sample(line, label_text))
            headers.setdefault(family, [])
    out: list[str] = []
    for family, lines in headers.items():
        out += lines
        out += samples.get(family, [])
    return "\n".join(out) + "\n"
