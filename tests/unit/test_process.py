"""Process-wide settings are made where a process starts (rmrun.runtime.process.configure_process,
called by the CLI's entry and by rmrun.runtime.dist.start), never as a side effect of an import.
What a fresh interpreter sees is checked in tests/e2e/test_process_settings.py."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from rmrun.runtime.process import MKL_CBWR, WEIGHTS_ONLY, configure_process

REPO = Path(__file__).resolve().parents[2]


def _writes_process_state(node: ast.stmt) -> bool:
    """A module-level statement that sets an environment variable, a warnings filter or torch's
    safe globals."""
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Assign, ast.AugAssign)):
            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
            if any(
                isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute) and t.value.attr == "environ"
                for t in targets
            ):
                return True
        if (
            isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Attribute)
            and sub.func.attr
            in ("filterwarnings", "simplefilter", "add_safe_globals", "putenv", "setdefault", "update")
        ):
            owner = sub.func.value
            if sub.func.attr in ("setdefault", "update") and not (
                isinstance(owner, ast.Attribute) and owner.attr == "environ"
            ):
                continue
            return True
    return False


def test_no_module_sets_process_state_when_imported():
    offenders = []
    for path in sorted((REPO / "rmrun").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _writes_process_state(
                node
            ):
                offenders.append(f"{path.relative_to(REPO).as_posix()}:{node.lineno}")
    assert offenders == []


def test_the_check_itself():
    for source, found in (
        ('import os\nos.environ["X"] = "1"', True),
        ("import warnings\nwarnings.simplefilter('ignore')", True),
        ('import os\nos.environ.update({"X": "1"})', True),
        ("d = {}\nd.update(x=1)", False),
        ('import os\ndef f():\n    os.environ["X"] = "1"', False),
    ):
        tree = ast.parse(source)
        hits = [n for n in tree.body if not isinstance(n, ast.FunctionDef) and _writes_process_state(n)]
        assert bool(hits) is found, source


def test_configure_process_forces_weights_only_loads(monkeypatch):
    monkeypatch.delenv(WEIGHTS_ONLY, raising=False)
    configure_process()
    assert os.environ[WEIGHTS_ONLY] == "1"


def test_configure_process_sets_mkl_reproducible_mode(monkeypatch):
    monkeypatch.delenv(MKL_CBWR, raising=False)
    configure_process()
    assert os.environ[MKL_CBWR] == "AUTO"
    monkeypatch.setenv(MKL_CBWR, "COMPATIBLE")  # a mode the user chose is kept
    configure_process()
    assert os.environ[MKL_CBWR] == "COMPATIBLE"


def test_the_entry_points_configure_the_process():
    for relative, function in (("rmrun/cli/main.py", "entry"), ("rmrun/runtime/dist.py", "start")):
        tree = ast.parse((REPO / relative).read_text())
        body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
        calls = {n.func.id for n in ast.walk(body) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "configure_process" in calls, relative
