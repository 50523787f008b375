"""Pairwise ranking losses and reward-model metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_sig_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Per-pair ``-logsigmoid(r_c - r_r - margin)``."""
    return -F.logsigmoid(chosen - rejected - margin)


def log_exp_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Per-pair ``log(1 + exp(r_r - r_c + margin))``, as softplus so large margins cannot overflow."""
    return F.softplus(rejected - chosen + margin)


LOSSES = {"log_sig": log_sig_loss, "log_exp": log_exp_loss}


def pair_losses(
    name: str,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    margin: float | torch.Tensor,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Per-pair losses, computed in fp32 whatever the model's precision. ``margin``: one for
    every pair, or each pair's own; ``center_coef``: reward centering (arXiv 2312.09244),
    ``center_coef * (r_c + r_r)^2`` added to each pair's loss, so the mean loss gains
    ``center_coef * mean((r_c + r_r)^2)``, TRL's ``center_rewards_coefficient`` term."""
    chosen, rejected = chosen.float(), rejected.float()
    losses = LOSSES[name](chosen, rejected, margin=margin)
    if center_coef:
        losses = losses + center_coef * (chosen + rejected).pow(2)
    return losses


# What pair_sums returns, in this order; sums of a batch, so they add up across batches and ranks.
# Code that keeps more in the same tensor (the trainer's token count) indexes it through these names.
SUM_FIELDS = ("count", "loss", "correct", "margin", "chosen", "rejected", "reward_square", "num_rewards", "center")
NUM_SUMS = len(SUM_FIELDS)


def pair_sums(chosen: torch.Tensor, rejected: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """Sums over a batch that metrics are built from, one per name in ``SUM_FIELDS``."""
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    rewards = torch.cat([chosen, rejected])
    sums = {
        "count": torch.tensor(float(chosen.numel()), device=chosen.device),
        "loss": losses.detach().float().sum(),
        "correct": (chosen > rejected).float().sum(),
        "margin": (chosen - rejected).sum(),
        "chosen": chosen.sum(),
        "rejected": rejected.sum(),
        "reward_square": rewards.pow(2).sum(),
        "num_rewards": torch.tensor(float(rewards.numel()), device=rewards.device),
        "center": (chosen + rejected).pow(2).sum(),
    }
    return torch.stack([sums[name] for name in SUM_FIELDS])


def metrics_from_sums(sums, *, center: bool = False) -> dict[str, float]:
    """loss, accuracy, mean margin, mean chosen/rejected reward and reward std, from
    :func:`pair_sums` (summed); with ``center`` (reward centering on), ``center_loss``:
    ``mean((r_c + r_r)^2)``, the term ``loss`` includes ``center_coef`` times."""
    s = dict(zip(SUM_FIELDS, (float(v) for v in sums), strict=True))
    count, num_rewards = s["count"], s["num_rewards"]
    if count == 0:
        return {}
    mean_reward = (s["chosen"] + s["rejected"]) / num_rewards
    variance = max(s["reward_square"] / num_rewards - mean_reward**2, 0.0)
    return {
        "loss": s["loss"] / count,
        "accuracy": s["correct"] / count,
        "margin": s["margin"] / count,
        "chosen_reward": s["chosen"] / count,
        "rejected_reward": s["rejected"] / count,
        "reward_std": variance**0.5,
        **({"center_loss": s["center"] / count} if center else {}),
    }
