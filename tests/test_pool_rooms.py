"""controller.pool's rooms: calls go one way, options.py needs only the scaling policy, the old
--max-runner-defunct spelling still works, and the pool keys functions by BRN text."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from controller.options import deprecated_options, parse_controller_options
from easyfaas.brn import function_of

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "controller" / "pool"

# Which pool modules each room may import: each only the rooms before it.
ALLOWED = {
    "records": set(),
    "groups": {"records"},
    "machine": {"records", "groups"},
    "reconcile": {"records", "machine"},
    "elastic": {"records", "machine", "reconcile"},
    "__init__": {"records", "machine", "reconcile", "elastic"},
}


def _pool_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if name == "controller.pool" or name.startswith("controller.pool."):
                found.add(name.removeprefix("controller.pool").lstrip(".") or "__init__")
    return found


def test_every_module_of_the_package_has_a_room() -> None:
    assert {p.stem for p in PACKAGE.glob("*.py")} == set(ALLOWED)


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_calls_go_one_way(module: str) -> None:
    assert _pool_imports(module) <= ALLOWED[module], f"controller.pool.{module} imports a room after it"


def test_options_do_not_import_the_pool() -> None:
    code = ("import sys, controller.options; "
            "print(sorted(m for m in sys.modules if m == 'controller.pool' or m.startswith('controller.pool.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_max_transition_time_and_its_old_spelling() -> None:
    assert parse_controller_options([]).max_transition_time == 90.0
    assert deprecated_options(parse_controller_options([])) == []
    new = parse_controller_options(["--max-transition-time", "5s"])
    assert new.max_transition_time == 5.0 and deprecated_options(new) == []
    old = parse_controller_options(["--max-runner-defunct", "3s"])
    assert old.max_transition_time == 3.0
    assert deprecated_options(old) == [("max-runner-defunct", "max-transition-time")]
    both = parse_controller_options(["--max-runner-defunct", "3s", "--max-transition-time", "7s"])
    assert both.max_transition_time == 7.0, "the new spelling wins"


@pytest.mark.parametrize("text, expected", [
    ("brn:cloud:faas:bj:acct:function:f:1", ("brn:cloud:faas:bj:acct:function:f", "f")),
    ("brn:cloud:faas:bj:acct:function:f", ("brn:cloud:faas:bj:acct:function:f", "f")),
    ("brn-A", ("brn-A", "brn-A")),
    ("", ("", "")),
    ("a:b:c:d:e:f:g:h", ("a:b:c:d:e:f:g:h", "a:b:c:d:e:f:g:h")),
])
def test_function_of(text: str, expected: tuple[str, str]) -> None:
    assert function_of(text) == expected
