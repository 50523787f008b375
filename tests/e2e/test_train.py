"""Training end to end on CPU with the ddp plugin, run as users run it."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import QUICKSTART, child_env, rmrun, small_recipe


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    state = tmp_path_factory.mktemp("quickstart") / "state"
    result = rmrun(
        "run", QUICKSTART, "--set", f"run.state={state}", "--set", "log.progress=lines", "--set", "log.tensorboard=true"
    )
    return result, state


def test_quickstart_finishes_with_eval_accuracy_of_at_least_0_8(quickstart_run):
    result, state = quickstart_run
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step 250/250" in result.stdout  # progress lines
    evaluation = json.loads((state / "export" / "eval.json").read_text())
    assert evaluation["final"]["accuracy"] >= 0.8
    assert 0.3 < evaluation["final"]["longer_wins_accuracy"] < 0.7  # length does not give the answer away
    assert evaluation["final"]["accuracy_by_length"], "eval reports accuracy per length bucket"
    metrics = [json.loads(line) for line in (state / "export" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 251))
    assert list((state / "tensorboard").glob("events.out.tfevents.*")), "TensorBoard events when the recipe asks"


def test_the_quickstart_learns_over_the_whole_run_not_in_its_first_steps(quickstart_run):
    """A newcomer reads a learning curve: held-out accuracy below 0.75 at the first eval
    (step 50), at least 0.85 at the end, rising on the way; training accuracy over the
    first 25 steps well below that over the last 25."""
    result, state = quickstart_run
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = json.loads((state / "export" / "eval.json").read_text())
    curve = [(e["step"], e["accuracy"]) for e in evaluation["history"]]
    assert [step for step, _ in curve] == [50, 100, 125, 150, 200, 250]  # every 50 steps and each epoch's end
    first, last = curve[0][1], curve[-1][1]
    assert first < 0.75 and last >= 0.85 and evaluation["final"]["accuracy"] == last, curve
    assert max(accuracy for _, accuracy in curve[:2]) < min(accuracy for _, accuracy in curve[-2:]), curve
    metrics = [json.loads(line) for line in (state / "export" / "metrics.jsonl").read_text().splitlines()]
    early = sum(m["accuracy"] for m in metrics[:25]) / 25
    late = sum(m["accuracy"] for m in metrics[-25:]) / 25
    assert early < 0.7 and late >= 0.85, (early, late)
    (printed,) = re.findall(r"^eval step 50: loss \S+ accuracy ([0-9.]+)", result.stdout, flags=re.M)
    assert float(printed) == round(first, 3), printed


def test_quickstart_export_loads_with_transformers_and_gives_the_same_rewards(quickstart_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rmrun.data import load_chat_template, read_pairs, tokenize_pairs
    from rmrun.data.tokenize import collate
    from rmrun.model.model import RewardReader

    result, state = quickstart_run
    assert result.returncode == 0, result.stderr[-2000:]
    export = str(state / "export")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "recipe.toml", "plan.json", "metrics.jsonl"):
        assert os.path.exists(os.path.join(export, name)), name
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    pairs = list(
        read_pairs([os.path.join(os.path.dirname(QUICKSTART), "data", "quickstart_eval.jsonl")], format="colossalchat")
    )[:12]
    tokenized = tokenize_pairs(pairs, tokenizer, max_length=256, overflow="truncate", template=load_chat_template(None))
    batch = collate(tokenized, list(range(len(tokenized))), pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        hf_rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        rmrun_rewards = RewardReader(model)(model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(rmrun_rewards, hf_rewards, atol=1e-5, rtol=0)
    half = len(tokenized)
    assert (hf_rewards[:half] > hf_rewards[half:]).float().mean() >= 0.8


def test_a_finished_run_started_again_is_complete_at_once(quickstart_run):
    result, state = quickstart_run
    again = rmrun("run", QUICKSTART, "--set", f"run.state={state}")
    assert again.returncode == 0
    assert "is complete" in again.stdout
    assert "step 1/" not in again.stdout


def test_status_of_a_finished_run(quickstart_run):
    result, state = quickstart_run
    status = rmrun("status", str(state))
    assert status.returncode == 0, status.stderr
    assert "run: complete" in status.stdout
    assert "save             done" in status.stdout
    assert "latest checkpoint: ckpt-0000000250 (step 250, epoch 2" in status.stdout


def test_status_of_a_fresh_state(tmp_path):
    status = rmrun("status", str(tmp_path / "nothing"))
    assert status.returncode == 0
    assert "fresh" in status.stdout


def test_two_processes_see_every_pair_of_each_epoch_exactly_once(tmp_path):
    recipe = small_recipe(tmp_path, train_pairs=70, extra="[schedule]\nbatch_size = 4\nmax_epochs = 2\n")
    trace = str(tmp_path / "trace")
    result = rmrun("run", recipe, nproc=2, env=child_env(RMRUN_TRACE_PAIRS=trace))
    assert result.returncode == 0, result.stderr[-3000:]
    seen = {0: [], 1: []}
    for rank in (0, 1):
        for line in open(f"{trace}.rank{rank}"):
            record = json.loads(line)
            seen[record["epoch"]] += record["pairs"]
    for epoch in (0, 1):
        assert sorted(seen[epoch]) == list(range(70)), f"epoch {epoch}"
    # 70 pairs, 8 per optimizer step over two ranks: the last step is short and uneven.
    metrics = (tmp_path / "state" / "export" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 * 9


def _weights(state) -> dict:
    return load_file(str(state / "export" / "model.safetensors"))


def test_accumulation_matches_a_larger_batch(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    recipe_a = small_recipe(
        a, train_pairs=48, extra="[schedule]\nbatch_size = 2\naccumulation_steps = 4\nmax_epochs = 1\n"
    )
    recipe_b = small_recipe(
        b, train_pairs=48, extra="[schedule]\nbatch_size = 8\naccumulation_steps = 1\nmax_epochs = 1\n"
    )
    for recipe in (recipe_a, recipe_b):
        result = rmrun("run", recipe, "--set", "data.group_by_length=false")
        assert result.returncode == 0, result.stderr[-2000:]
    wa, wb = _weights(a / "state"), _weights(b / "state")
    assert wa.keys() == wb.keys()
    # Adam divides by sqrt(v): on rarely seen embedding rows, rounding differences from
    # the different padding of 2- and 8-pair batches grow to ~5e-5 after six steps.
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=2e-4, rtol=0, msg=name)
    ma = [json.loads(x) for x in (a / "state" / "export" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "state" / "export" / "metrics.jsonl").read_text().splitlines()]
    assert len(ma) == len(mb) == 6
    assert [m["loss"] for m in ma] == pytest.approx([m["loss"] for m in mb], rel=1e-5)
    # Adam is blind to a constant gradient scale, the gradient norm is not: a loss not
    # divided by the accumulation steps shows up here as a 4x norm.
    assert [m["grad_norm"] for m in ma] == pytest.approx([m["grad_norm"] for m in mb], rel=1e-4)


def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    recipe = small_recipe(tmp_path, extra="[checkpoint]\ninterval_steps = 1\n")
    result = rmrun(
        "run",
        recipe,
        "--set",
        "schedule.lr=1e20",
        "--set",
        "schedule.warmup_steps=0",
        "--set",
        "schedule.grad_clip=0.0",
    )
    assert result.returncode == 2  # the recipe diverges: a user error, never retried as is
    assert "the loss is not finite" in result.stderr
    assert "Traceback" not in result.stderr
    assert "step " in result.stderr
    status = rmrun("status", str(tmp_path / "state"))
    assert "latest checkpoint: ckpt-" in status.stdout


def test_lora_trains_the_score_head_and_exports_merged_weights(tmp_path):
    recipe = small_recipe(tmp_path, extra="[model.lora]\nr = 4\nalpha = 8.0\n[schedule]\nmax_epochs = 1\n")
    result = rmrun("run", recipe)
    assert result.returncode == 0, result.stderr[-2000:]
    weights = _weights(tmp_path / "state")
    assert not any("lora" in name for name in weights), "LoRA is merged into the export"
    from rmrun.model.model import build_reward_model, load_tokenizer
    from rmrun.recipe import load_recipe

    section = load_recipe(recipe).model
    initial = build_reward_model(dataclasses.replace(section, lora=None), tokenizer=load_tokenizer(section), seed=42)
    initial = {k: v.detach() for k, v in initial.state_dict().items()}
    # The head trains (ColossalChat's LoRA froze it at its random init) ...
    assert not torch.equal(weights["score.weight"], initial["score.weight"])
    # ... adapted projections changed through the merged adapters ...
    assert not torch.equal(
        weights["model.layers.0.self_attn.q_proj.weight"], initial["model.layers.0.self_attn.q_proj.weight"]
    )
    # ... and what LoRA does not target stayed frozen.
    assert torch.equal(weights["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])


def test_a_bad_data_row_and_a_missing_file_are_one_line_errors(tmp_path):
    recipe = small_recipe(tmp_path, train_pairs=5)
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write(
            '{"context": [{"from": "user", "content": "hi"}], "chosen": [{"from": "assistant", "content": ""}], '
            '"rejected": [{"from": "assistant", "content": "x"}]}\n'
        )
    bad_row = rmrun("run", recipe)
    assert bad_row.returncode == 2
    assert bad_row.stderr.strip().splitlines()[-1] == f'rmrun: {tmp_path / "train.jsonl"}:6: "chosen" is empty'
    assert "Traceback" not in bad_row.stderr
    missing = rmrun("run", recipe, "--set", f"data.train={tmp_path / 'nope.jsonl'}")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"rmrun: {recipe}: [data].train: file not found: {tmp_path / 'nope.jsonl'}"
