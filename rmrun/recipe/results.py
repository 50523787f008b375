"""Which recipe keys change what a run computes: the run identity (``rmrun/run/fingerprint.py``)
is made of the others, so a stop and a resume may differ only in these."""

from __future__ import annotations

# Keys whose values do not change what the run computes: they are left out of the
# run fingerprint, so that changing them between a stop and a resume is allowed.
# A key here may decide whether something is written (output.reward_stats,
# output.colossalchat), never what a written number is: output.reward_stats_pairs picks
# the pairs the statistics are taken over, so it is a result key.
NON_RESULT_KEYS = frozenset(
    {
        "run.name",
        "run.state",
        "run.store_retry_seconds",
        "run.preempted_exit_code",
        "run.collective_timeout_minutes",
        "data.tokenize_workers",
        "checkpoint.interval_steps",
        "checkpoint.interval_seconds",
        "checkpoint.keep",
        "checkpoint.async_upload",
        "checkpoint.stop_budget_seconds",
        "eval.interval_steps",
        "eval.batch_size",
        "log.interval_steps",
        "log.tensorboard",
        "log.progress",
        "log.trackers",
        "log.wandb.project",
        "log.wandb.entity",
        "log.wandb.name",
        "log.wandb.tags",
        "log.wandb.mode",
        "log.wandb.dir",
        "log.mlflow.tracking_uri",
        "log.mlflow.experiment",
        "log.mlflow.run_name",
        "log.mlflow.tags",
        "output.dir",
        "output.reward_stats",
        "output.colossalchat",
        "model.trust_remote_code",
    }
)


# Result keys added after runs were first stored: at these values (their defaults, which give
# what the runs before them computed) they are left out, so such a run keeps its identity.
LATER_KEYS = {
    "data.margins": "none",
    "data.margin_scale": 1.0,
    "loss.center_coef": 0.0,
    "data.eval_split": None,
    "data.eval_split_seed": 0,
    "data.pair_rule": "best_vs_worst",
    "data.rating": None,
    "data.pair_seed": 0,
    "data.sources": [],
    "data.epoch_pairs": None,
}
