"""ddp in bf16 on the CPU, run as users run it: the forward under torch.autocast on the CPU's
bf16 matrix units (fp32 weights and optimizer), killed and resumed bit-identically, with a
negative control that drops the RNG streams and must be seen."""

from __future__ import annotations

import json

import pytest

from rmrun.runtime.machine import cpu_bf16_units
from tests.helpers import RESUME_RECIPE, child_env, rmrun, slice_recipe

pytestmark = pytest.mark.skipif(cpu_bf16_units() is None, reason="this CPU has no bf16 matrix units")

BF16 = '[plugin]\nmixed_precision = "bf16"\n'


def _recipe(tmp_path, body: str) -> str:
    return slice_recipe(tmp_path, base=RESUME_RECIPE, train_pairs=48, eval_pairs=8, body=body)


def test_check_says_how_bf16_runs_on_this_cpu(tmp_path):
    done = rmrun("check", _recipe(tmp_path, BF16))
    assert done.returncode == 0, done.stderr
    assert (
        f"precision: the forward under torch.autocast(bf16) on the CPU, its matmuls on {cpu_bf16_units()}"
        in done.stdout
    )
    assert '"autocast": "bf16"' in done.stdout


def test_a_bf16_run_killed_twice_resumes_bit_identical_and_a_sabotaged_one_does_not(tmp_path):
    recipe = _recipe(tmp_path, BF16)
    done = rmrun("verify-resume", recipe, "--kills", "2", "--seed", "3", "--workdir", str(tmp_path / "verify"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "bit-identical after 2 kill(s)" in done.stdout

    sabotaged = rmrun(
        "verify-resume",
        recipe,
        "--kills",
        "2",
        "--seed",
        "3",
        "--workdir",
        str(tmp_path / "sabotaged"),
        env=child_env(RMRUN_FAULTS="no-restore=rng"),
    )
    assert sabotaged.returncode == 1 and "NOT identical" in sabotaged.stdout, sabotaged.stdout[-2000:]


def test_bf16_really_runs_the_forward_in_bf16(tmp_path):
    """The same recipe in fp32 and bf16: the first step's loss differs (by bf16 rounding, not much)."""
    losses = {}
    for precision in ("fp32", "bf16"):
        folder = tmp_path / precision
        folder.mkdir()
        recipe = _recipe(folder, f'[plugin]\nmixed_precision = "{precision}"\n[schedule]\nmax_steps = 1\n')
        done = rmrun("run", recipe)
        assert done.returncode == 0, done.stderr[-2000:]
        first = json.loads((folder / "state" / "export" / "metrics.jsonl").read_text().splitlines()[0])
        losses[precision] = first["loss"]
    assert losses["fp32"] != losses["bf16"] and abs(losses["fp32"] - losses["bf16"]) < 0.05, losses
