"""A pytest plugin that soaks every Hypothesis test with many examples.

Usage (from the repository root)::

    HYPOTHESIS_SOAK_EXAMPLES=2000 PYTHONPATH=. .venv/bin/python -m pytest \\
        -p tests.kit.hypothesis_soak --hypothesis-seed=1 tests bench/tests sdk/python/tests

It keeps only the ``@given`` tests (everything else is deselected) and gives
each one ``max_examples`` = ``$HYPOTHESIS_SOAK_EXAMPLES`` (2000 when unset)
and ``deadline=None``, *overriding* a test's own ``@settings(max_examples=...)``,
which a profile (``HYPOTHESIS_PROFILE=thorough``) cannot do. Run it with a few
``--hypothesis-seed`` values to look for rare cases before CI meets them.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings


def _hypothesis_test(item: pytest.Item) -> object | None:
    function = getattr(item, "obj", None)
    if function is None or not hasattr(function, "hypothesis"):
        return None
    return function


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    examples = int(os.environ.get("HYPOTHESIS_SOAK_EXAMPLES", "2000"))
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        function = _hypothesis_test(item)
        if function is None:
            deselected.append(item)
            continue
        current = getattr(function, "_hypothesis_internal_use_settings")
        setattr(
            function,
            "_hypothesis_internal_use_settings",
            settings(current, max_examples=examples, deadline=None),
        )
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept
