"""Packets captured from real peers (Chromium, ffmpeg), kept as annotated hex in
``tests/wire/data/``."""

import pathlib
import re

DATA = pathlib.Path(__file__).resolve().parent.parent / "wire" / "data"


def load_hex(name: str) -> bytes:
    """One annotated packet: ``#`` starts a comment, whitespace is ignored."""
    text = re.sub(r"#.*", "", (DATA / name).read_text())
    return bytes.fromhex("".join(text.split()))


def load_hex_lines(name: str) -> list[bytes]:
    """A capture: one packet per line."""
    return [bytes.fromhex(line) for line in (DATA / name).read_text().split()]
