"""Process-wide settings as a fresh interpreter sees them: importing the checkpoint code leaves
torch.load alone, and configure_process puts MKL in its reproducible mode (each in a child
process; the static checks are in tests/unit/test_process.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rmrun.runtime.process import MKL_CBWR, WEIGHTS_ONLY

REPO = Path(__file__).resolve().parents[2]


def test_importing_the_checkpoint_code_leaves_torch_load_alone():
    code = f"import os, rmrun.model.boost, rmrun.train.checkpoint; print(os.environ.get({WEIGHTS_ONLY!r}))"
    env = {k: v for k, v in os.environ.items() if k != WEIGHTS_ONLY}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "None"


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
