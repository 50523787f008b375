"""The pair attention (``rmrun.model.pair_attention``): each shared-prompt pair's attention as two
causal attentions gathered out of the row, instead of one dense block mask.

It must compute what SDPA computes with the dense block mask, at every real position, for
one pair per row and packed rows, with grouped-query heads; leave padding at zero; and give
the standard forward's rewards, loss and gradients through a whole Llama or Qwen2 model.
A layout that lets the rejected response see its chosen one must be caught (the negative
control). On CUDA the same holds in fp32 and, within bf16 rounding, in bf16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rmrun.model.pair_attention as pair_attention
from rmrun.data.share import collate_shared, shared_prefix_lengths
from rmrun.model.pair_attention import ATTENTION, PairLayout, attach, pair_attention_forward, register
from tests.helpers import assert_equivalent, pairs_of, standard_and_shared, tiny_decoder, with_short_pairs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def toy_pairs() -> object:
    """Pairs of varied prompt and response lengths, one with no prompt beyond its first token."""
    rng = np.random.default_rng(0)
    chosen, rejected = [], []
    for prompt, c, r in [(9, 4, 6), (3, 7, 2), (1, 3, 3), (12, 1, 5), (5, 5, 5), (2, 9, 1)]:
        p = rng.integers(3, 90, prompt).tolist()
        chosen.append(p + rng.integers(3, 90, c).tolist())
        rejected.append(p + rng.integers(90, 99, r).tolist())  # differs from chosen at once
    return pairs_of(chosen, rejected)


class Heads(torch.nn.Module):
    num_key_value_groups = 2  # grouped-query attention: 4 query heads over 2 key/value heads


def attention_inputs(batch, *, device, dtype, seed=0):
    rows, length = batch["input_ids"].shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, 4, length, 8, generator=g)
    k, v = (torch.randn(rows, 2, length, 8, generator=g) for _ in range(2))
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]


def dense_and_pairs(batch, *, device, dtype):
    """(dense-mask SDPA output, pair-attention output, real-position mask), each (R, L, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = attention_inputs(batch, device=device, dtype=dtype)
    mask = batch["attention_mask"].to(device)
    dense, _ = sdpa_attention_forward(Heads(), q, k, v, mask, scaling=0.35)
    carrier = attach(mask.clone(), batch["pair_layout"].to(device))
    pairs, _ = pair_attention_forward(Heads(), q, k, v, carrier, scaling=0.35)
    rows, length = batch["input_ids"].shape
    real = torch.zeros(rows * length, dtype=torch.bool)
    real[batch["pair_layout"].head_to] = True
    real[batch["pair_layout"].tail_to] = True
    return dense, pairs, real.view(rows, length).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pack", [False, True], ids=["one-pair-per-row", "packed"])
def test_it_computes_the_dense_block_masks_attention_at_every_real_position(device, pack):
    tokenized = toy_pairs()
    batch = collate_shared(tokenized, np.arange(6), prefix=shared_prefix_lengths(tokenized), pad_token_id=0, pack=pack)
    if pack:
        assert len(batch["input_ids"]) < 6
    dense, pairs, real = dense_and_pairs(batch, device=device, dtype=torch.float32)
    assert real.sum() == int(batch["num_tokens"]) and not real.all()  # padding exists and is left out
    assert torch.allclose(pairs[real], dense[real], atol=1e-6, rtol=0), (pairs[real] - dense[real]).abs().max()
    assert (pairs[~real] == 0).all()  # padding: zeros, never NaN


def test_the_layout_gathers_each_pairs_head_and_tail():
    # pair 0: prompt [5 6 7], chosen [8 9], rejected [10]; pair 1: prompt [5], chosen [6], rejected [7 8]
    tokenized = pairs_of([[5, 6, 7, 8, 9], [5, 6]], [[5, 6, 7, 10], [5, 7, 8]])
    batch = collate_shared(tokenized, [0, 1], prefix=shared_prefix_lengths(tokenized), pad_token_id=0)
    layout, length = batch["pair_layout"], batch["input_ids"].shape[1]
    assert length == 6  # pair 0: 3 + 2 + 1
    assert layout.head.tolist() == [[0, 1, 2, 3, 4], [6, 7, 6, 6, 6]]  # row 1 starts at 6; padded with its start
    assert layout.head_to.tolist() == [0, 1, 2, 3, 4, 6, 7]
    assert layout.tail_query.tolist() == [[5, 0], [8, 9]]  # pair 0 has one rejected token: padded with its start
    assert layout.tail_key.tolist() == [[0, 1, 2, 5], [6, 8, 9, 6]]
    assert layout.tail_to.tolist() == [5, 8, 9]
    # pair 1's rejected tokens: the first sees the prompt and itself, the second also the first
    assert layout.tail_mask[1, 0].tolist() == [[True, True, False, False], [True, True, True, False]]


def test_a_layout_that_lets_the_rejected_response_see_the_chosen_one_is_caught():
    """Negative control: the comparison above notices a tail that reads the chosen response."""
    tokenized = toy_pairs()
    batch = collate_shared(tokenized, np.arange(6), prefix=shared_prefix_lengths(tokenized), pad_token_id=0)
    good = batch["pair_layout"]
    # the tail's keys shifted onto the chosen response (each pair's positions 1.. instead of its prompt)
    leaky = PairLayout(**{**good.__dict__, "tail_key": good.tail_key + (good.tail_key > good.head[:, :1]).long()})
    dense, pairs, real = dense_and_pairs(dict(batch, pair_layout=good), device="cpu", dtype=torch.float32)
    assert torch.allclose(pairs[real], dense[real], atol=1e-6, rtol=0)
    dense, pairs, real = dense_and_pairs(dict(batch, pair_layout=leaky), device="cpu", dtype=torch.float32)
    assert (pairs[real] - dense[real]).abs().max() > 1e-3


def test_a_mask_without_a_layout_runs_plain_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    tokenized = toy_pairs()
    batch = collate_shared(tokenized, np.arange(6), prefix=shared_prefix_lengths(tokenized), pad_token_id=0)
    q, k, v = attention_inputs(batch, device="cpu", dtype=torch.float32)
    mask = batch["attention_mask"]
    expected, _ = sdpa_attention_forward(Heads(), q, k, v, mask)
    got, _ = pair_attention_forward(Heads(), q, k, v, mask)
    assert torch.equal(got, expected)


def count_layout_reads(monkeypatch) -> list:
    calls: list = []
    real = pair_attention._attend

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pair_attention, "_attend", counting)
    return calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pack", [False, True], ids=["one-pair-per-row", "packed"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_model_built_with_it_gives_the_standard_forwards_rewards_and_gradients(
    quickstart_pairs,
    monkeypatch,
    family,
    pack,
    device,
):
    tokenized, tokenizer = quickstart_pairs
    if pack:
        tokenized = with_short_pairs(tokenized)
    register()
    net = tiny_decoder(family, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, attn=ATTENTION)
    net.eval().to(device)
    calls = count_layout_reads(monkeypatch)
    monkeypatch.setattr(pair_attention, "skips_masked_blocks", lambda device: True)  # on CPU too
    standard, shared = standard_and_shared(
        net, tokenized, np.arange(len(tokenized)), pad_token_id=tokenizer.pad_token_id, pack=pack, device=device
    )
    assert_equivalent(standard, shared)
    assert len(calls) == 2 * 2  # every layer (2) ran the pair attention's head and tail


def test_runs_use_it_on_cuda_and_the_dense_mask_on_cpu(quickstart_pairs, monkeypatch):
    tokenized, tokenizer = quickstart_pairs
    register()
    net = tiny_decoder("llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, attn=ATTENTION)
    calls = count_layout_reads(monkeypatch)
    standard_and_shared(net, tokenized, np.arange(4), pad_token_id=tokenizer.pad_token_id)
    assert calls == []
    assert pair_attention.skips_masked_blocks(torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pack", [False, True], ids=["one-pair-per-row", "packed"])
def test_in_bf16_on_cuda_it_matches_the_dense_mask_within_bf16_rounding(pack):
    tokenized = toy_pairs()
    batch = collate_shared(tokenized, np.arange(6), prefix=shared_prefix_lengths(tokenized), pad_token_id=0, pack=pack)
    dense, pairs, real = dense_and_pairs(batch, device="cuda", dtype=torch.bfloat16)
    assert torch.allclose(pairs[real].float(), dense[real].float(), atol=2e-2, rtol=2e-2)
    (pairs[real].float().square().sum()).backward()  # and its backward runs in bf16


def test_the_export_of_a_model_built_with_it_does_not_name_it(tmp_path):
    register()
    net = tiny_decoder("llama", vocab_size=64, pad_token_id=0, attn=ATTENTION)
    net.save_pretrained(tmp_path)
    assert ATTENTION not in (tmp_path / "config.json").read_text()


def test_under_gradient_checkpointing_the_recomputed_layers_run_it_too(quickstart_pairs, monkeypatch):
    """rmrun's gradient checkpointing (non-reentrant) hands the recomputation the very mask
    object, layout included: the backward recomputes the pair attention, not the dense one."""
    tokenized, tokenizer = quickstart_pairs
    register()
    net = tiny_decoder("llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, attn=ATTENTION)
    plain = standard_and_shared(net, tokenized, np.arange(6), pad_token_id=tokenizer.pad_token_id)
    net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    net.train()  # checkpointing runs in training mode only; the tiny config has no dropout
    calls = count_layout_reads(monkeypatch)
    monkeypatch.setattr(pair_attention, "skips_masked_blocks", lambda device: True)
    checkpointed = standard_and_shared(net, tokenized, np.arange(6), pad_token_id=tokenizer.pad_token_id)
    assert_equivalent(plain[0], checkpointed[1])
    assert len(calls) == 2 * 2 * 2  # 2 layers × (head, tail) × (forward, recomputation)


def test_on_cuda_its_attention_calls_leave_out_cudnns_per_shape_plans():
    """The gathered batches change shape with every batch; cuDNN's attention would plan each."""
    from rmrun.model.pair_attention import kernels_without_per_shape_plans

    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    with kernels_without_per_shape_plans(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == enabled
    with kernels_without_per_shape_plans(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == enabled
