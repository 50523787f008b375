"""The first minutes of a user: a quickstart-shaped run and ``rmrun check`` without
PYTHONWARNINGS print rmrun's own lines only; DDP looks for unused parameters only where the
model has some, and a model with such a part still trains."""

from __future__ import annotations

import json

from tests.helpers import child_env, llama_with_unused_part, rmrun, small_recipe

NOISE = ("Warning", "warn(", "[W", "UserWarning", "FutureWarning")


def _plain_env() -> dict:
    env = child_env()
    env.pop("PYTHONWARNINGS")  # as a user runs it
    return env


def _noise(done) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if any(mark in line for mark in NOISE)]


def _export_plan(tmp_path) -> dict:
    return json.loads((tmp_path / "state" / "export" / "plan.json").read_text())


def test_a_quickstart_run_and_its_check_print_only_rmrun_lines(tmp_path):
    recipe = small_recipe(tmp_path, train_pairs=32, eval_pairs=8)
    checked = rmrun("check", recipe, env=_plain_env())
    assert checked.returncode == 0, checked.stderr
    assert _noise(checked) == []
    done = rmrun("run", recipe, env=_plain_env())
    assert done.returncode == 0, done.stderr
    assert _noise(done) == [], done.stdout + done.stderr
    assert "find_unused_parameters" not in done.stdout  # off, as planned: nothing revised it
    lines = done.stdout.splitlines()
    assert (
        lines[-3].startswith("final eval: held-out accuracy ")
        and " on 8 pairs (the longer response wins: " in lines[-3]
    )
    assert lines[-2] == f"exported the reward model to {tmp_path / 'state' / 'export'}"
    assert lines[-1].startswith(f"next: rmrun report {tmp_path / 'state'} ")
    plan = _export_plan(tmp_path)
    assert plan["plugin_args"]["find_unused_parameters"] is False


def test_a_model_with_a_part_the_reward_never_uses_trains_with_find_unused_on(tmp_path):
    directory = llama_with_unused_part(tmp_path / "spare")
    extra = f'[model]\npretrain = "{directory}"\ntrust_remote_code = true\n[schedule]\nbatch_size = 8\n'
    recipe = small_recipe(tmp_path, train_pairs=32, eval_pairs=8, extra=extra)
    done = rmrun("run", recipe)
    # Off, DDP would stop at the second step: "Expected to have finished reduction in the prior iteration".
    assert done.returncode == 0, done.stderr
    reason = "2 trainable parameter(s) get no gradient from the reward: model.spare.weight, model.spare.bias"
    assert f"find_unused_parameters=True: {reason}" in done.stdout
    plan = _export_plan(tmp_path)
    assert plan["plugin_args"]["find_unused_parameters"] is True and plan["find_unused_reason"] == reason
