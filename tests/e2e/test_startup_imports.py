"""What each command imports before it does its work.

- The commands that do not train import no ColossalAI, peft or bitsandbytes (check, status
  and explain no torch either).
- A run, full or LoRA, keeps torch's inductor out of the process: bitsandbytes and
  ColossalAI call ``torch.compile`` at import, for kernels rmrun does not use, and those
  imports run with it off (``rmrun.model.thirdparty``); a compile after them is a real compile.
- A run prints no bitsandbytes notice about the optional ``kernels`` package.

Each command runs in a fresh interpreter, as users run it, which reports ``sys.modules``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from rmrun.model.thirdparty import DYNAMO_OFF
from tests.helpers import REPO, child_env, small_recipe

INDUCTOR = "torch._inductor.compile_fx"
WATCHED = ("torch", "transformers", "colossalai", "colossalai.booster", "peft", "bitsandbytes", INDUCTOR)
TRAINING_STACK = ("colossalai", "peft", "bitsandbytes")
HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None

PROBE = f"""
import json, os, sys
from rmrun.cli.main import main
code = main(sys.argv[1:])
sys.stdout.flush()
print("PROBE " + json.dumps({{"code": code, "modules": [m for m in {WATCHED!r} if m in sys.modules],
                             "dynamo_off": os.environ.get({DYNAMO_OFF!r})}}))
"""


def probe(*argv: str) -> tuple[dict, str]:
    """``rmrun ARGV`` in a fresh interpreter: what it returned and imported, and its output."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        cwd=REPO,
        env=child_env(CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE ") :]), done.stdout + done.stderr


def assert_trained_without_inductor(result: dict, output: str) -> None:
    assert result["code"] == 0, output[-3000:]
    assert "step 2/2" in output
    assert "colossalai.booster" in result["modules"]
    assert ("bitsandbytes" in result["modules"]) is HAS_BITSANDBYTES
    assert INDUCTOR not in result["modules"]
    assert result["dynamo_off"] is None, "the switch is put back after the imports"
    assert "kernels-community" not in output and "pip install kernels" not in output


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    recipe = small_recipe(root, extra="[schedule]\nmax_steps = 2\n")
    result, output = probe("run", recipe)
    return {"root": root, "result": result, "output": output}


def test_a_run_imports_no_inductor_and_prints_no_bitsandbytes_notice(ran):
    assert_trained_without_inductor(ran["result"], ran["output"])


def test_a_lora_run_imports_no_inductor_either(tmp_path):
    recipe = small_recipe(tmp_path, extra="[model.lora]\nr = 4\n[schedule]\nmax_steps = 2\n")
    result, output = probe("run", recipe)
    assert_trained_without_inductor(result, output)
    assert "peft" in result["modules"]
    assert os.path.isfile(tmp_path / "state" / "export" / "model.safetensors")


@pytest.mark.parametrize("command", ["check", "status", "explain", "score", "eval", "report"])
def test_a_command_that_does_not_train_imports_no_training_stack(ran, command):
    root = ran["root"]
    state, export, pairs = str(root / "state"), str(root / "state" / "export"), str(root / "eval.jsonl")
    argv = {
        "check": ["check", str(root / "recipe.toml")],
        "status": ["status", state],
        "explain": ["explain"],
        "score": ["score", export, pairs, "--out", str(root / "scores.jsonl")],
        "eval": ["eval", export, pairs, "--out", str(root / "eval-report.json")],
        "report": ["report", state, "--rewards", "no", "--out", str(root / "report")],
    }[command]
    result, output = probe(*argv)
    assert result["code"] == 0, output[-3000:]
    assert [m for m in TRAINING_STACK if m in result["modules"]] == []
    if command in ("check", "status", "explain"):
        assert "torch" not in result["modules"]


@pytest.mark.parametrize("sp_mode", ["split_gather", "ring_attn"])
def test_what_is_compiled_after_importing_the_booster(sp_mode):
    code = f"""
import sys
from types import SimpleNamespace
from rmrun.model.boost import _import_booster
_import_booster(SimpleNamespace(plugin_args={{"sequence_parallelism_mode": {sp_mode!r}}}))
from colossalai.quantization import fp8
from colossalai.shardformer.layer import attn
inductor = {INDUCTOR!r} in sys.modules
import torch
later = torch.compile(lambda x: x + 1)
compiled = lambda f: hasattr(f, "_torchdynamo_orig_callable")
print(inductor, compiled(attn._rescale_out_lse), compiled(fp8._linear_fp8), compiled(later))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=child_env(CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ring = sp_mode == "ring_attn"
    # inductor imported | ring-attention helper compiled | fp8 helper compiled | a later compile
    assert done.stdout.split() == [str(ring), str(ring), str(ring), "True"]
