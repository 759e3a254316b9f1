"""Which way imports go between the repository's top-level parts: the benchmarks and the daemons
never import the tests, and no test module imports another one (what tests share is in
tests/fakes/, the tests/*_harness.py modules and tests/conftest.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ("easyfaas", "controller", "funclet", "runner", "stubs", "httptrigger")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (absolute names)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def python_files(*parts: str) -> list[Path]:
    return sorted(p for part in parts for p in (ROOT / part).rglob("*.py"))


def importers_of(files: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {str(path.relative_to(ROOT)): hits for path in files
            if (hits := sorted(m for m in imported_modules(path) if m.split(".")[0] in forbidden))}


def test_imported_modules_sees_every_kind_of_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import tests.pod_harness as h\nfrom tests import fakes\n"
                     "def f():\n    from tests.test_pool import x\n")
    assert {"tests.pod_harness", "tests", "tests.fakes", "tests.test_pool", "tests.test_pool.x"} \
        <= imported_modules(probe)


def test_bench_does_not_import_tests() -> None:
    assert python_files("bench"), "no bench modules found"
    assert importers_of(python_files("bench"), ("tests",)) == {}


@pytest.mark.parametrize("package", SOURCE_PACKAGES)
def test_source_packages_import_neither_tests_nor_bench(package: str) -> None:
    assert importers_of(python_files(package), ("tests", "bench")) == {}


def test_no_test_module_imports_another() -> None:
    """Test modules import only shared helpers, never a test module (nor conftest, which pytest
    loads itself)."""
    files = python_files("tests")
    found = {}
    for path in files:
        hits = sorted(m for m in imported_modules(path)
                      if m.startswith(("tests.test_", "tests.conftest", "test_", "conftest")))
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert found == {}


def test_the_cli_starts_without_the_servers_libraries() -> None:
    """The CLI is started for every command: it imports the invoke vocabulary from the stdlib-only
    easyfaas/http_vocabulary.py, not aiohttp (a third of a second at each start)."""
    probe = "import sys, cli.app; print(sorted(m for m in ('aiohttp', 'structlog') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
