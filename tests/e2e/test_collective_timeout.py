"""No rank waits for another in a collective it can time out of: while some ranks tokenize
(or rank 0 alone assembles and commits), the others wait on the board of
``rmrun.runtime.board``, where every working rank beats. A tokenize phase longer than
``run.collective_timeout_minutes`` therefore finishes; a rank that stops beating (``no-heartbeat``,
as a frozen rank would) ends the wait after that timeout with one line and the requeue code;
and the timeout itself reaches the process group's collectives."""

from __future__ import annotations

import json
import re

from tests.helpers import child_env, rmrun, small_recipe

# Rank 1 is slow with its first piece (rank 0 waits for it), then rank 0 with the assembled
# data staged (rank 1 waits for that): together longer than the one-minute timeout.
SLOW_TOKENIZE = "slow@tokenize_piece:0:rank1=35,slow@tokenize_commit=35"


def _run(tmp_path, *sets: str, faults: str):
    recipe = small_recipe(tmp_path, train_pairs=16, eval_pairs=8, extra="[schedule]\nbatch_size = 4\nmax_epochs = 1\n")
    args = [a for s in sets for a in ("--set", s)]
    return rmrun("run", recipe, *args, nproc=2, env=child_env(RMRUN_FAULTS=faults), timeout=240)


def test_a_tokenize_longer_than_the_collective_timeout_finishes(tmp_path):
    # Also the sampled reward statistics on two ranks: 10 of the 16 pairs, 5 per rank.
    done = _run(tmp_path, "run.collective_timeout_minutes=1", "output.reward_stats_pairs=10", faults=SLOW_TOKENIZE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 ranks share the 4 missing" in done.stdout + done.stderr
    stats = json.loads((tmp_path / "state" / "export" / "rmrun.json").read_text())["reward_stats"]
    assert (stats["pairs"], stats["of"]) == (10, 16)


def test_negative_control_a_silent_rank_ends_the_wait_after_the_timeout_with_one_line(tmp_path):
    done = _run(tmp_path, "run.collective_timeout_minutes=0.1", faults=f"no-heartbeat,{SLOW_TOKENIZE}")
    assert done.returncode != 0
    assert re.search(
        r"rank [01] waited 0\.1 minutes \(run\.collective_timeout_minutes\) for .* without a sign of life from the "
        r"other ranks; exit 75: run the same command again to resume",
        done.stderr,
    ), done.stderr[-3000:]
    # torchrun prints its own traceback for a failed worker; rmrun's ranks print none.
    assert not re.search(r'File ".*/rmrun/', done.stderr), done.stderr[-3000:]
    assert not (tmp_path / "state" / "export").exists()


def test_the_collective_timeout_reaches_the_process_group(tmp_path):
    # Rank 0 sleeps 20 s once the tokenized data is loaded; rank 1 goes on to the boost step
    # and waits for rank 0 in its first collective, which gives up after the recipe's 6 s.
    done = _run(tmp_path, "run.collective_timeout_minutes=0.1", faults="slow@tokenized=20")
    assert done.returncode != 0
    assert "Timed out waiting 6000ms" in done.stderr, done.stderr[-3000:]
