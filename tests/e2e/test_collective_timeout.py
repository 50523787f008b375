"""run.collective_timeout_minutes reaches the process group: a rank waiting in a barrier
while rank 0 alone is slow gives up after that long, not after torch's default (30
minutes for gloo), and a timeout longer than the rank-0 phase lets the run finish."""

from __future__ import annotations

import json

from tests.helpers import child_env, rmrun, small_recipe

# Rank 0 sleeps 15 s with the tokenized data staged; rank 1 waits for it in a barrier.
SLOW_TOKENIZE = "slow@tokenize_commit=15"


def _run(tmp_path, *sets: str):
    recipe = small_recipe(tmp_path, train_pairs=16, eval_pairs=8, extra="[schedule]\nbatch_size = 4\nmax_epochs = 1\n")
    args = [a for s in sets for a in ("--set", s)]
    return rmrun("run", recipe, *args, nproc=2, env=child_env(RMRUN_FAULTS=SLOW_TOKENIZE), timeout=120)


def test_negative_control_a_timeout_shorter_than_the_rank0_phase_fails_the_job(tmp_path):
    done = _run(tmp_path, "run.collective_timeout_minutes=0.1")
    assert done.returncode != 0
    # gloo's own words, with the 6 s the recipe asked for.
    assert "Timed out waiting 6000ms" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "state" / "export").exists()


def test_a_timeout_longer_than_the_rank0_phase_lets_the_run_finish(tmp_path):
    # Also the sampled reward statistics on two ranks: 10 of the 16 pairs, 5 per rank.
    done = _run(tmp_path, "run.collective_timeout_minutes=1", "output.reward_stats_pairs=10")
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((tmp_path / "state" / "export" / "rmrun.json").read_text())["reward_stats"]
    assert (stats["pairs"], stats["of"]) == (10, 16)
