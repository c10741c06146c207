"""What import-linter does not say about the layout (docs/architecture.md).

* The benchmarks share only ``tests.kit`` with the tests: a ``bench`` module
  imports no other part of ``tests``, and ``tests.kit`` imports no test module.
* The benchmarks run as ``python -m bench.<name>`` from the repository root:
  nothing under ``bench/`` touches ``sys.path``.
* ``tests/`` mirrors the packages: no flat folder of another layer's tests.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = ("tests.kit",)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (absolute imports only)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def outside_shared(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if (m == "tests" or m.startswith("tests.")) and not any(m == s or m.startswith(s + ".") for s in SHARED))


def test_bench_imports_only_the_test_kit():
    wrong = {str(path.relative_to(REPO)): outside_shared(imported_modules(path)) for path in (REPO / "bench").rglob("*.py")}
    assert {path: modules for path, modules in wrong.items() if modules} == {}


def test_the_test_kit_imports_no_test_module():
    wrong = {str(path.relative_to(REPO)): outside_shared(imported_modules(path)) for path in (REPO / "tests" / "kit").rglob("*.py")}
    assert {path: modules for path, modules in wrong.items() if modules} == {}


def test_no_benchmark_edits_sys_path():
    assert [str(path.relative_to(REPO)) for path in (REPO / "bench").rglob("*.py") if "sys.path" in path.read_text()] == []


def test_tests_mirror_the_media_packages():
    for package in ("wire", "audio", "webrtc", "relay"):
        assert (REPO / "tests" / package / "__init__.py").exists(), package
    assert not (REPO / "tests" / "rtp").exists()
