"""Pairwise ranking losses and reward-model metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_sig_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: float = 0.0) -> torch.Tensor:
    """Per-pair ``-logsigmoid(r_c - r_r - margin)``."""
    return -F.logsigmoid(chosen - rejected - margin)


def log_exp_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: float = 0.0) -> torch.Tensor:
    """Per-pair ``log(1 + exp(r_r - r_c + margin))``, as softplus so large margins cannot overflow."""
    return F.softplus(rejected - chosen + margin)


LOSSES = {"log_sig": log_sig_loss, "log_exp": log_exp_loss}


def pair_losses(name: str, chosen: torch.Tensor, rejected: torch.Tensor, *, margin: float) -> torch.Tensor:
    """Per-pair losses, computed in fp32 whatever the model's precision."""
    return LOSSES[name](chosen.float(), rejected.float(), margin=margin)


def pair_sums(chosen: torch.Tensor, rejected: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """Sums over a batch that metrics are built from; they add up across batches and ranks.

    Order: count, loss, correct, margin, chosen, rejected, reward², reward count.
    """
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    rewards = torch.cat([chosen, rejected])
    return torch.stack(
        [
            torch.tensor(float(chosen.numel()), device=chosen.device),
            losses.detach().float().sum(),
            (chosen > rejected).float().sum(),
            (chosen - rejected).sum(),
            chosen.sum(),
            rejected.sum(),
            rewards.pow(2).sum(),
            torch.tensor(float(rewards.numel()), device=rewards.device),
        ]
    )


def metrics_from_sums(sums) -> dict[str, float]:
    """loss, accuracy, mean margin, mean chosen/rejected reward and reward std."""
    count, loss, correct, margin, chosen, rejected, square, num_rewards = (float(v) for v in sums)
    if count == 0:
        return {}
    mean_reward = (chosen + rejected) / num_rewards
    variance = max(square / num_rewards - mean_reward**2, 0.0)
    return {
        "loss": loss / count,
        "accuracy": correct / count,
        "margin": margin / count,
        "chosen_reward": chosen / count,
        "rejected_reward": rejected / count,
        "reward_std": variance**0.5,
    }
