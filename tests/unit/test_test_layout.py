"""How the tests are laid out (docs/architecture.md, "Tests"): a unit test starts no process, and no
test module imports another (shared fixtures live in a conftest.py, helpers in tests/helpers.py)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PROCESS_MODULES = {"subprocess", "multiprocessing", "torch.multiprocessing"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _test_modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("test_*.py"))


def test_unit_tests_start_no_process():
    offenders = {p.name: sorted(_imports(p) & PROCESS_MODULES) for p in _test_modules(TESTS / "unit")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_no_test_module_imports_another():
    offenders = {
        p.relative_to(TESTS).as_posix(): sorted(n for n in _imports(p) if n.split(".")[-1].startswith("test_"))
        for p in _test_modules(TESTS)
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_checks_see_a_planted_offender(tmp_path):
    planted = tmp_path / "test_planted.py"
    planted.write_text("import subprocess\nfrom tests.unit.test_loss import pair_sums\n")
    assert "subprocess" in _imports(planted) and "tests.unit.test_loss" in _imports(planted)
