"""The benchmarks' own tests: the same Hypothesis profiles as ``tests/``."""

from tests.kit.profiles import load_profile

load_profile()
