"""The quality benchmark runs, and its comparisons mean what its docstring says."""

from __future__ import annotations

from tests.kit.jitter_quality import average, run_cell, table


def test_adaptive_beats_a_fixed_buffer_where_jitter_is_high_and_waits_less_where_it_is_low():
    high = run_cell(0.050, 0.05, seed=3, duration=30.0)
    # Fixed 60 ms loses about a quarter of the packets at 50 ms mean jitter.
    assert high.fixed_late > 0.15
    assert high.adaptive_late < 0.03
    assert high.optimum_late < 0.01
    low = run_cell(0.005, 0.0, seed=3, duration=30.0)
    # At 5 ms the adaptive buffer plays sooner than the fixed 60 ms one.
    assert low.adaptive_delay < low.fixed_delay
    # The hindsight optimum is on the tick grid, never below the grid-free 99th percentile.
    for cell in (high, low):
        assert cell.optimum_delay >= cell.p99 - 1e-9
        assert cell.optimum_delay - cell.p99 < 0.020 + 1e-9


def test_table_has_one_row_per_cell():
    cells = [average([run_cell(j, 0.0, seed=s, duration=5.0) for s in (1, 2)]) for j in (0.005, 0.05)]
    rendered = table(cells).splitlines()
    assert len(rendered) == 2 + 2
    assert rendered[2].startswith("| 5 ms | 0 % |") and rendered[3].startswith("| 50 ms | 0 % |")
