"""The shared-prompt forward (``data.share_prompt``) against the standard one.

One sequence per pair (prompt + chosen + rejected, block attention mask, position ids
restarting after the prompt) must give the standard forward's rewards, losses and
gradients up to fp32 rounding, for Llama and Qwen2 with sdpa and eager attention, one pair
per row and packed (several pairs per row, block-diagonal mask), with truncated pairs and
padded rows in the batch, and under LoRA. Where the forward cannot run, "auto" falls back
(the plan says why) and "on" is refused at check in one line. The runs with it are in
tests/e2e/test_shared_prompt_runs.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from rmrun.data.share import additive_mask, collate_shared, pack_rows, shared_lengths, shared_prefix_lengths
from rmrun.recipe import RecipeError, load_recipe
from rmrun.recipe.backbone import SHARED, STANDARD, choose_forward
from rmrun.recipe.schema import DataSection, ModelSection, PluginSection
from tests.helpers import (
    REPO,
    TINY_LLAMA,
    TINY_TOKENIZER,
    assert_equivalent,
    pairs_of,
    small_recipe,
    standard_and_shared,
    tiny_decoder,
    with_short_pairs,
)

QUICKSTART = os.path.join(REPO, "recipes", "quickstart.toml")


# ----------------------------------------------------------------- the batch itself


def test_shared_prefix_is_the_common_token_prefix_leaving_each_side_a_token():
    pairs = pairs_of(
        chosen=[[1, 5, 6, 7, 9], [1, 5, 6], [1, 5, 6], [2, 5]],
        rejected=[[1, 5, 6, 8], [1, 5, 6], [1, 5, 6, 7], [3, 5]],
    )
    # differing at 3; identical (capped at 2); one side a prefix of the other (capped); nothing shared
    assert shared_prefix_lengths(pairs).tolist() == [3, 2, 2, 0]
    assert shared_lengths(pairs, shared_prefix_lengths(pairs)).tolist() == [6, 4, 5, 4]


def _prefix_one_pair_at_a_time(pairs) -> list[int]:
    """The definition, pair by pair: the reference the vectorized, stored prefixes must equal."""
    out = []
    for i in range(len(pairs)):
        chosen, rejected = pairs.chosen(i).tolist(), pairs.rejected(i).tolist()
        n = min(len(chosen), len(rejected))
        common = next((k for k in range(n) if chosen[k] != rejected[k]), n)
        out.append(min(common, n - 1))
    return out


def test_stored_prefixes_equal_the_definition_across_chunks_and_survive_files_and_subsets(monkeypatch, tmp_path):
    from safetensors.numpy import load_file, save_file

    import rmrun.data.arrays as prefix_module
    from rmrun.data.arrays import TokenizedPairs

    rng = np.random.default_rng(0)
    chosen, rejected = [], []
    for _ in range(203):
        prompt = rng.integers(1, 4, size=int(rng.integers(0, 6))).tolist()
        chosen.append(prompt + rng.integers(1, 4, size=int(rng.integers(0 if prompt else 1, 5))).tolist())
        rejected.append(prompt + rng.integers(1, 4, size=int(rng.integers(0 if prompt else 1, 5))).tolist())
    monkeypatch.setattr(prefix_module, "PREFIX_CHUNK", 16)  # many chunks, with pairs of one token on their edges
    pairs = pairs_of(chosen=chosen, rejected=rejected)
    expected = _prefix_one_pair_at_a_time(pairs)
    assert pairs.shared_prefix.dtype == np.int32 and pairs.shared_prefix.tolist() == expected
    assert 0 in expected and max(expected) >= 5, "the sample covers nothing shared and long prompts"

    indices = rng.permutation(len(pairs))[:50]
    assert pairs.subset(indices).shared_prefix.tolist() == [expected[i] for i in indices]
    save_file(pairs.to_arrays(), str(tmp_path / "t.safetensors"))
    arrays = load_file(str(tmp_path / "t.safetensors"))
    assert TokenizedPairs.from_arrays(arrays, {}).shared_prefix.tolist() == expected
    # data tokenized before the prefixes were stored: computed on load, the same values
    del arrays["shared_prefix"]
    assert TokenizedPairs.from_arrays(arrays, {}).shared_prefix.tolist() == expected
    # what is stored is what is used (no token is read again): a wrong stored value shows through
    wrong = pairs.to_arrays()
    wrong["shared_prefix"] = np.zeros(len(pairs), dtype=np.int32)
    assert shared_prefix_lengths(TokenizedPairs.from_arrays(wrong, {})).tolist() != expected
    with pytest.raises(ValueError, match="shared_prefix must have 203 entries"):
        TokenizedPairs.from_arrays({**wrong, "shared_prefix": np.zeros(3, dtype=np.int32)}, {})


def test_collate_shared_builds_the_block_mask_and_positions():
    pairs = pairs_of(chosen=[[1, 5, 6, 7], [1, 4]], rejected=[[1, 5, 8, 9, 10], [1, 3]])
    prefix = shared_prefix_lengths(pairs)
    batch = collate_shared(pairs, [0, 1], prefix=prefix, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 8, 9, 10], [1, 4, 3, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 3, 4], [0, 1, 1, 0, 0, 0, 0]]
    assert batch["chosen_end"].tolist() == [3, 1] and batch["rejected_end"].tolist() == [6, 2]
    assert batch["num_tokens"] == 7 + 3
    allowed = batch["attention_mask"][:, 0]
    assert allowed.dtype == torch.bool and allowed.shape == (2, 7, 7)
    # pair 0: prompt [1, 5], chosen [6, 7], rejected [8, 9, 10]
    assert allowed[0, 4].tolist() == [True, True, False, False, True, False, False]  # 8 sees prompt and itself
    assert allowed[0, 3].tolist() == [True, True, True, True, False, False, False]  # 7: causal over prompt+chosen
    assert allowed[0, 6].tolist() == [True, True, False, False, True, True, True]
    # pair 1: no real token attends to padding; padding rows are never fully masked (NaN in fused kernels)
    assert not allowed[1, :3, 3:].any() and allowed.any(dim=-1).all()
    additive = additive_mask(batch["attention_mask"], torch.float32)
    assert ((additive == 0) == batch["attention_mask"]).all() and additive.min() == torch.finfo(torch.float32).min


def test_packing_puts_pairs_in_blocks_of_their_own():
    pairs = pairs_of(chosen=[[1, 5, 6, 7, 11, 12], [1, 4], [1, 8, 9]], rejected=[[1, 5, 8, 9], [1, 3], [1, 8, 2]])
    prefix = shared_prefix_lengths(pairs)  # rows of 8, 3 and 4 tokens
    assert pack_rows([8, 3, 4], capacity=8) == [[0], [2, 1]]
    assert pack_rows([2, 2, 3, 1], capacity=4) == [[2, 3], [0, 1]]  # longest first, ties in order
    batch = collate_shared(pairs, [0, 1, 2], prefix=prefix, pad_token_id=0, pack=True)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 11, 12, 8, 9], [1, 8, 9, 2, 1, 4, 3, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 2, 3], [0, 1, 2, 2, 0, 1, 1, 0]]
    assert batch["reward_rows"].tolist() == [0, 1, 1]
    assert batch["chosen_end"].tolist() == [5, 5, 2] and batch["rejected_end"].tolist() == [7, 6, 3]
    allowed = batch["attention_mask"][1, 0]
    assert not allowed[4:, :4].any() and not allowed[:4, 4:].any()  # nothing across the two pairs
    assert allowed[6].tolist() == [False] * 4 + [True, False, True, False]  # 3 sees its prompt [1], not 4
    assert allowed[7].tolist() == [False] * 7 + [True]  # padding: itself


# ----------------------------------------------------------------- equivalence with the standard forward


@pytest.mark.parametrize("pack", [False, True], ids=["one-pair-per-row", "packed"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_rewards_loss_and_gradients_match_the_standard_forward(quickstart_pairs, family, attn, pack):
    tokenized, tokenizer = quickstart_pairs
    net = tiny_decoder(family, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, attn=attn)
    net.eval()  # no dropout in either forward; the comparison is of the arithmetic
    indices = np.arange(len(tokenized))
    prefix = shared_prefix_lengths(tokenized)
    whole = tokenized.lengths().max(axis=1) < 48
    # A whole pair shares its rendered prompt; a truncated one may share no more than the bos.
    assert (prefix[whole] > 1).all() and whole.any() and not whole.all()
    # the shared forward is cheaper: fewer token positions than the two sequences of the standard forward
    assert shared_lengths(tokenized, prefix).sum() < tokenized.lengths().sum()
    if pack:  # with short pairs beside the long ones, so that several share a row
        tokenized = with_short_pairs(tokenized)
        indices = np.arange(len(tokenized))
        batch = collate_shared(
            tokenized, indices, prefix=shared_prefix_lengths(tokenized), pad_token_id=tokenizer.pad_token_id, pack=True
        )
        assert len(batch["input_ids"]) < len(indices) - 4
    standard, shared = standard_and_shared(net, tokenized, indices, pad_token_id=tokenizer.pad_token_id, pack=pack)
    assert_equivalent(standard, shared)


def test_a_lora_reward_model_passes_the_positions_through(quickstart_pairs):
    from rmrun.model.model import build_reward_model
    from rmrun.recipe.schema import LoraSection

    tokenized, tokenizer = quickstart_pairs
    model = ModelSection(pretrain=TINY_LLAMA, tokenizer=TINY_TOKENIZER, init="random", lora=LoraSection(r=4))
    net = build_reward_model(model, tokenizer=tokenizer, seed=0)
    net.eval()
    standard, shared = standard_and_shared(net, tokenized, np.arange(6), pad_token_id=tokenizer.pad_token_id, pack=True)
    assert_equivalent(standard, shared)


# ----------------------------------------------------------------- which forward runs


def decide(**changes):
    data = DataSection(train=("x.jsonl",), share_prompt=changes.pop("share_prompt", "auto"))
    model = ModelSection(pretrain=changes.pop("pretrain", TINY_LLAMA))
    cuda = changes.pop("cuda", True)
    return choose_forward(data, model, PluginSection(**{"mixed_precision": "fp32", **changes}), cuda=cuda)


def test_auto_shares_where_supported_and_says_why_not_elsewhere(tmp_path):
    assert decide().name == SHARED
    # in bf16/fp16 on CUDA "auto" keeps the standard forward (the shared one was measured faster there
    # only in fp32); "on" shares. ddp's bf16 autocast on a CPU shares (measured 1.27-1.46x there).
    assert decide(name="zero2", mixed_precision="bf16").name == STANDARD
    assert "measured faster there only in fp32" in decide(name="zero2", mixed_precision="bf16").reason
    assert decide(mixed_precision="bf16").name == STANDARD
    assert decide(mixed_precision="bf16", cuda=False).name == SHARED
    assert decide(mixed_precision="fp32", cuda=False).name == SHARED
    assert decide(name="zero2", mixed_precision="bf16", share_prompt="on").name == SHARED
    assert decide(share_prompt="off").name == STANDARD
    for changes, why in (
        ({"name": "gemini"}, "shardformer"),
        ({"name": "3d", "sp": 2, "tp": 2}, "shardformer"),
        ({"flash_attn": True}, "flash_attention_2"),
        ({"pretrain": "some-org/some-model"}, "not a local model directory"),
    ):
        forward = decide(**changes)
        assert forward.name == STANDARD and why in forward.reason, (changes, forward)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "encoder" in decide(pretrain=str(tmp_path)).reason
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert 'model type "gpt2" is not one checked' in decide(pretrain=str(tmp_path)).reason
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "use_sliding_window": True}))
    assert "sliding-window" in decide(pretrain=str(tmp_path)).reason


def test_on_where_unsupported_is_refused_in_one_line(tmp_path):
    from rmrun.recipe.validate import World
    from rmrun.run.preflight import preflight

    recipe = small_recipe(tmp_path, extra="[plugin]\nflash_attn = true\n")
    with pytest.raises(
        RecipeError,
        match=r'recipe\.toml: \[data\]\.share_prompt: "on" is not supported here: '
        r"flash_attention_2 .*; use \"auto\"",
    ):
        preflight(recipe, overrides=["data.share_prompt=on"], world=World(size=1, cuda=False))
    assert load_recipe(recipe, overrides=["data.share_prompt=off", "plugin.flash_attn=false"])
    with pytest.raises(RecipeError, match=r"\[data\]\.share_prompt: 'yes' is not one of 'auto', 'on', 'off'"):
        load_recipe(recipe, overrides=["data.share_prompt=yes"])
