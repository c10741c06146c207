"""Extending 16-bit RTP sequence numbers and 32-bit timestamps past wrap-around.

RFC 3550 §A.1 keeps a cycle count; str0m's ``extend_u16`` does the same without
state by picking, of the three candidates in the rollover window around the
previous extended value, the one closest to it. We do the same for both widths.
"""

from __future__ import annotations

from typing import NewType

SeqNo = NewType("SeqNo", int)
"""An extended (64-bit, never wrapping) RTP sequence number."""


def _extend(prev_extended: int | None, value: int, bits: int) -> int:
    size = 1 << bits
    if prev_extended is None:
        return value
    half = size >> 1
    # Candidate in the same cycle as prev; move it one cycle back or forth when
    # that lands closer to prev (a wrap forward or a late packet from before a wrap).
    candidate = (prev_extended & ~(size - 1)) | value
    if candidate - prev_extended > half and candidate >= size:
        candidate -= size
    elif prev_extended - candidate > half:
        candidate += size
    return candidate


def extend_u16(prev_extended: int | None, value: int) -> int:
    """Extend a 16-bit sequence number relative to the previous extended one.

    Args:
        prev_extended: the last extended value seen, or ``None`` for the first.
        value: the 16-bit value from the wire (0..65535).

    Returns:
        The extended value closest to ``prev_extended`` whose low 16 bits equal ``value``.
    """
    return _extend(prev_extended, value, 16)


def extend_u32(prev_extended: int | None, value: int) -> int:
    """Extend a 32-bit RTP timestamp relative to the previous extended one (see ``extend_u16``)."""
    return _extend(prev_extended, value, 32)
