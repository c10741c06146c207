from hypothesis import given, strategies as st

from botcall.wire.seq import extend_u16, extend_u32


def test_first_value_is_kept():
    assert extend_u16(None, 12345) == 12345


def test_forward_wrap():
    assert extend_u16(65535, 0) == 65536
    assert extend_u16(65534, 3) == 65539
    assert extend_u32(2**32 - 10, 5) == 2**32 + 5


def test_late_packet_from_before_the_wrap():
    assert extend_u16(65536, 65535) == 65535
    assert extend_u16(3 * 65536 + 5, 65530) == 2 * 65536 + 65530
    assert extend_u32(2**32 + 5, 2**32 - 10) == 2**32 - 10


def test_never_negative():
    # A value "before" the very first one cannot extend below zero.
    assert extend_u16(10, 65535) == 65535


@given(start=st.integers(0, 0xFFFF), steps=st.lists(st.integers(-1000, 1000), max_size=300))
def test_extension_recovers_true_value(start, steps):
    """A walk whose steps stay under half the range is recovered exactly, across wraps."""
    true = start
    prev = extend_u16(None, start)
    for step in steps:
        true = max(0, true + step)
        prev = extend_u16(prev, true & 0xFFFF)
        assert prev == true
