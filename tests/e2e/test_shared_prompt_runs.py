"""The shared-prompt forward (``data.share_prompt``) as users run it: ``rmrun check`` prints the forward
and why, a short quickstart run follows the standard forward's loss curve, and a killed-and-resumed
run with sharing on is bit-identical to an uninterrupted one while a resume that loses its data
position is not."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rmrun.recipe.backbone import SHARED, STANDARD
from tests.helpers import rmrun, small_recipe


def test_check_prints_the_forward_and_why(tmp_path):
    shared = rmrun("check", small_recipe(tmp_path))
    assert shared.returncode == 0, shared.stderr
    assert "forward: shared-prompt: prompt + chosen + rejected in one sequence" in shared.stdout
    assert json.loads(shared.stdout.split("plan: ", 1)[1])["forward"] == SHARED
    refused = rmrun("check", small_recipe(tmp_path), "--set", "data.share_prompt=on", "--set", "plugin.flash_attn=true")
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f'rmrun: {tmp_path / "recipe.toml"}: [data].share_prompt: "on" is not supported here: flash_attention_2 '
        '(plugin.flash_attn) takes no block attention mask; use "auto" (falls back) or "off"'
    ]


# ----------------------------------------------------------------- training with it


def losses_of(tmp_path, label: str, share: str) -> list[float]:
    run_dir = tmp_path / label
    run_dir.mkdir()
    recipe = small_recipe(run_dir, train_pairs=96, extra="")
    result = rmrun(
        "run",
        recipe,
        "--set",
        f"data.share_prompt={share}",
        "--set",
        "data.group_by_length=false",
        "--set",
        "schedule.batch_size=8",
        "--set",
        "schedule.max_steps=12",
        "--set",
        "eval.interval_steps=1000",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(run_dir / "state" / "export" / "plan.json") as f:
        assert json.load(f)["forward"] == (SHARED if share == "on" else STANDARD)
    with open(run_dir / "state" / "export" / "metrics.jsonl") as f:
        return [json.loads(line)["loss"] for line in f]


def test_quickstart_training_curve_matches_the_standard_forward(tmp_path):
    """Same batches (no length grouping, whose key is the row length of each forward), 12 steps."""
    shared, standard = losses_of(tmp_path, "shared", "on"), losses_of(tmp_path, "standard", "off")
    assert len(shared) == len(standard) == 12
    np.testing.assert_allclose(shared, standard, rtol=0, atol=2e-4)
    # 12 steps of 8 pairs are too few for the quickstart's data to show learning in the loss; the
    # comparison above means something only if the losses move at all
    assert np.ptp(standard) > 1e-3, "the runs train: the losses move"


# ----------------------------------------------------------------- exact resume with it


@pytest.mark.slow
def test_resume_with_the_shared_prompt_is_bit_identical_and_the_control_is_not(tmp_path):
    """tests/assets/resume.toml (dropout on) with share_prompt = "on": killed after step 6
    (checkpoint 4 committed) and resumed, against an uninterrupted run; then the same kill
    resumed without restoring the data position must differ."""
    from tests.resume_harness import (
        ONE_LOCAL,
        Harness,
        assert_identical,
        committed_checkpoints,
        differing_tensors,
        read_export,
    )

    sets = ["data.share_prompt=on"]
    h = Harness(tmp_path)
    reference_run = h.new_run(ONE_LOCAL, "reference")
    h.run(reference_run, sets=sets, expect=0)
    with open(os.path.join(reference_run.export, "plan.json")) as f:
        assert json.load(f)["forward"] == SHARED
    reference = read_export(reference_run.export)

    killed = h.new_run(ONE_LOCAL, "killed")
    h.run(killed, sets=sets, faults="kill@step:6", expect="killed")
    assert committed_checkpoints(killed) == [4]
    control = h.copy_run(killed, "control")

    result = h.run(killed, sets=sets, expect=0)
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    assert_identical(reference, read_export(killed.export))

    h.run(control, sets=sets, faults="no-restore=position", expect=0)
    got = read_export(control.export)
    assert differing_tensors(reference, got) and got.metrics != reference.metrics
