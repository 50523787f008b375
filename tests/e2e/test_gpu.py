"""Each ColossalAI plugin trains a few steps on CUDA and resumes exactly.

Marked ``gpu``: skipped, with the reason, on machines without CUDA GPUs.
Run on a GPU machine with ``python -m pytest -m gpu tests/e2e/test_gpu.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import child_env, rmrun, small_recipe

pytestmark = pytest.mark.gpu

NUM_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_cuda = pytest.mark.skipif(NUM_GPUS == 0, reason="needs CUDA GPUs; this machine has none")

# (plugin, precision, extra settings, GPUs needed). On one GPU, 3d runs with tp=1 (its ZeRO
# stages and its precision handling are still the plugin's own); tp=2 needs two GPUs.
# In bf16/fp16 "auto" keeps the standard forward; the "on" rows run the shared-prompt forward
# (with the pair attention on CUDA) on the plugins that take it.
PLUGINS = [
    ("ddp", "bf16", {}, 1),
    ("ddp", "bf16", {"data.share_prompt": "on"}, 1),
    ("zero2", "fp16", {"data.share_prompt": "on"}, 1),
    ("zero2_cpu", "bf16", {"data.share_prompt": "on"}, 1),
    ("zero2", "bf16", {"data.share_prompt": "on", "data.pack_pairs": "true"}, 1),
    ("ddp", "fp16", {}, 1),
    ("zero2", "bf16", {}, 1),
    ("zero2", "fp16", {}, 1),
    ("zero2_cpu", "bf16", {}, 1),
    ("zero2_cpu", "fp16", {}, 1),
    ("gemini", "bf16", {}, 1),
    ("gemini", "fp16", {}, 1),
    ("gemini_auto", "bf16", {}, 1),
    ("3d", "bf16", {"plugin.tp": "1", "plugin.zero_stage": "1"}, 1),
    ("3d", "fp16", {"plugin.tp": "1", "plugin.zero_stage": "1"}, 1),
    ("3d", "bf16", {"plugin.tp": "1", "plugin.zero_stage": "2", "plugin.grad_checkpoint": "true"}, 1),
    ("3d", "bf16", {"plugin.tp": "2"}, 2),
    ("3d", "bf16", {"plugin.tp": "2", "plugin.zero_stage": "1", "plugin.grad_checkpoint": "true"}, 2),
]


def _sets(values: dict) -> list[str]:
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


@needs_cuda
@pytest.mark.parametrize("name,precision,extra,min_gpus", PLUGINS, ids=lambda v: str(v))
def test_plugin_trains_and_resumes_exactly(tmp_path, name, precision, extra, min_gpus):
    if NUM_GPUS < min_gpus:
        pytest.skip(f"needs {min_gpus} GPUs, this machine has {NUM_GPUS}")
    nproc = max(min_gpus, 1)
    settings = {
        "plugin.name": name,
        "plugin.mixed_precision": precision,
        "schedule.max_epochs": "1",
        "schedule.batch_size": "4",
        "checkpoint.interval_steps": "3",
        **extra,
    }
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    recipe_a, recipe_b = small_recipe(a), small_recipe(b)
    checked = rmrun("check", recipe_a, *_sets(settings), nproc=nproc)
    shares = extra.get("data.share_prompt") == "on"
    assert ("forward: shared-prompt" in checked.stdout) == shares, checked.stdout
    straight = rmrun("run", recipe_a, *_sets(settings), nproc=nproc)
    assert straight.returncode == 0, straight.stderr[-3000:]
    # a uploads its checkpoints in the background (the default), b blocks (so that checkpoint 3 is
    # committed before the kill at step 5): the exports must still be bit-identical.
    settings_b = {**settings, "checkpoint.async_upload": "false"}
    killed = rmrun("run", recipe_b, *_sets(settings_b), nproc=nproc, env=child_env(RMRUN_FAULTS="kill@step:5"))
    assert killed.returncode != 0
    if precision == "fp16" and name != "ddp":
        # ZeRO/Gemini/3d keep their dynamic loss scale out of the optimizer state: rmrun saves it.
        saved = sorted((b / "state").rglob("loss_scale.json"))
        assert saved, "no loss_scale.json in the checkpoint of an fp16 run"
        assert json.loads(saved[-1].read_text()), saved[-1]
    resumed = rmrun("run", recipe_b, *_sets(settings_b), nproc=nproc)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from ckpt-0000000003" in resumed.stdout
    ma = (a / "state" / "export" / "metrics.jsonl").read_text()
    mb = (b / "state" / "export" / "metrics.jsonl").read_text()
    assert ma == mb
    assert all(json.loads(line)["loss"] == json.loads(line)["loss"] for line in ma.splitlines())  # no NaN

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(a / "state" / "export"))
    assert model.config.num_labels == 1
