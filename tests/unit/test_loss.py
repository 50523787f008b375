"""Losses and metrics against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from rmrun.train.loss import log_exp_loss, log_sig_loss, metrics_from_sums, pair_losses, pair_sums


def test_log_sig_matches_hand_computed_values():
    chosen = torch.tensor([2.0, 0.0, -1.0])
    rejected = torch.tensor([1.0, 0.0, 1.0])
    expected = [math.log(1 + math.exp(-1.0)), math.log(2.0), math.log(1 + math.exp(2.0))]
    assert log_sig_loss(chosen, rejected).tolist() == pytest.approx(expected, rel=1e-6)


def test_margin_shifts_the_difference():
    chosen, rejected = torch.tensor([2.0]), torch.tensor([1.0])
    # -logsigmoid(2 - 1 - 0.5) = log(1 + e^-0.5)
    assert log_sig_loss(chosen, rejected, margin=0.5).item() == pytest.approx(math.log(1 + math.exp(-0.5)), rel=1e-6)
    # log(1 + exp(1 - 2 + 0.5))
    assert log_exp_loss(chosen, rejected, margin=0.5).item() == pytest.approx(math.log(1 + math.exp(-0.5)), rel=1e-6)


def test_log_exp_matches_hand_computed_values():
    chosen = torch.tensor([3.0, -2.0])
    rejected = torch.tensor([1.0, 2.0])
    expected = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(4.0))]
    assert log_exp_loss(chosen, rejected).tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["log_sig", "log_exp"])
@pytest.mark.parametrize("margin", [80.0, -80.0])
def test_large_margins_stay_finite_in_half_precision(dtype, name, margin):
    chosen = torch.tensor([0.0, 80.0, -80.0], dtype=dtype)
    rejected = torch.tensor([0.0, -80.0, 80.0], dtype=dtype)
    losses = pair_losses(name, chosen, rejected, margin=margin)
    assert torch.isfinite(losses).all(), losses
    # loss(d) = softplus(margin - d) with d = r_c - r_r; check each against float64.
    d = torch.tensor([0.0, 160.0, -160.0], dtype=torch.float64)
    expected = torch.nn.functional.softplus(margin - d)
    torch.testing.assert_close(losses.double(), expected, rtol=1e-3, atol=1e-3)


def test_naive_exp_would_overflow_in_fp16():
    # The reason for softplus: ColossalChat's log(1 + exp(x)) is inf here.
    x = torch.tensor([80.0], dtype=torch.float16)
    assert torch.isinf(torch.log(1 + torch.exp(x))).all()
    assert torch.isfinite(log_exp_loss(torch.tensor([0.0], dtype=torch.float16), x.float())).all()


def test_metrics_from_sums():
    chosen = torch.tensor([1.0, 3.0])
    rejected = torch.tensor([2.0, 0.0])
    losses = log_sig_loss(chosen, rejected)
    m = metrics_from_sums(pair_sums(chosen, rejected, losses))
    assert m["accuracy"] == 0.5
    assert m["margin"] == pytest.approx(((1 - 2) + (3 - 0)) / 2)
    assert m["chosen_reward"] == pytest.approx(2.0)
    assert m["rejected_reward"] == pytest.approx(1.0)
    assert m["loss"] == pytest.approx(losses.mean().item())
    assert m["reward_std"] == pytest.approx(torch.tensor([1.0, 3.0, 2.0, 0.0]).std(unbiased=False).item(), rel=1e-5)


def test_sums_add_up_across_batches():
    c1, r1, c2, r2 = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])
    c, r = torch.cat([c1, c2]), torch.cat([r1, r2])
    whole = metrics_from_sums(pair_sums(c, r, log_sig_loss(c, r)))
    parts = metrics_from_sums(pair_sums(c1, r1, log_sig_loss(c1, r1)) + pair_sums(c2, r2, log_sig_loss(c2, r2)))
    assert whole == pytest.approx(parts)


def test_pair_sums_has_one_sum_per_named_field():
    from rmrun.train.loss import SUM_FIELDS
    from rmrun.train.trainer import LOSS_SUM, STEP_SUM_FIELDS, TOKENS_SUM

    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    sums = pair_sums(chosen, rejected, log_sig_loss(chosen, rejected))
    assert sums.shape == (len(SUM_FIELDS),)
    assert sums[SUM_FIELDS.index("count")] == 2 and sums[SUM_FIELDS.index("correct")] == 1
    assert STEP_SUM_FIELDS[LOSS_SUM] == "loss" and TOKENS_SUM == len(SUM_FIELDS)
