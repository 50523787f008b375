"""Process-wide settings are made where a process starts (rmrun.runtime.process.configure_process,
called by the CLI's entry and by rmrun.runtime.dist.start), never as a side effect of an import."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_importing_the_checkpoint_code_leaves_torch_load_alone():
    code = f"import os, rmrun.model.boost, rmrun.train.checkpoint; print(os.environ.get({WEIGHTS_ONLY!r}))"
    env = {k: v for k, v in os.environ.items() if k != WEIGHTS_ONLY}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "None"


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


# MKL's mode as MKL itself reports it after a torch matmul (mkl_cbwr_get(MKL_CBWR_ALL)):
# 1 is MKL_CBWR_BRANCH_OFF (no reproducibility mode), 2 is MKL_CBWR_AUTO.
_MKL_MODE = """
import ctypes, os, sys
if sys.argv[1] == "configure":
    from rmrun.runtime.process import configure_process
    configure_process()
import torch
if not torch.backends.mkl.is_available():
    print("no-mkl")
    raise SystemExit
a = torch.ones(64, 64)
(a @ a).sum()
lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
get = getattr(lib, "mkl_serv_cbwr_get", None)
if get is None:
    print("no-symbol")
    raise SystemExit
get.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
print(get(-1))
"""


def test_mkl_runs_in_its_reproducible_mode_after_configure_process():
    env = {k: v for k, v in os.environ.items() if k != MKL_CBWR}
    env["PYTHONPATH"] = str(REPO)
    modes = {}
    for how in ("configure", "plain"):
        done = subprocess.run(
            [sys.executable, "-c", _MKL_MODE, how], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        modes[how] = done.stdout.strip()
    if modes["configure"] in ("no-mkl", "no-symbol"):
        pytest.skip(f"torch without MKL's mode query ({modes['configure']})")
    assert modes == {"configure": "2", "plain": "1"}  # the plain process is the negative control


def test_the_entry_points_configure_the_process():
    for relative, function in (("rmrun/cli/main.py", "entry"), ("rmrun/runtime/dist.py", "start")):
        tree = ast.parse((REPO / relative).read_text())
        body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
        calls = {n.func.id for n in ast.walk(body) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "configure_process" in calls, relative
