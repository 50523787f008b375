"""Shared helpers for tests that run rmrun as users do: as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "recipes", "quickstart.toml")
# The exact-resume recipe: a tiny Llama with dropout on, so a lost RNG stream shows.
RESUME_RECIPE = os.path.join(REPO, "tests", "assets", "resume.toml")
TRAIN_DATA = os.path.join(REPO, "recipes", "data", "quickstart_train.jsonl")
EVAL_DATA = os.path.join(REPO, "recipes", "data", "quickstart_eval.jsonl")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("RMRUN_FAULTS", None)
    env.pop("RMRUN_TRACE_PAIRS", None)
    env["PYTHONWARNINGS"] = "ignore"
    # One intra-op thread in every rmrun the tests start: the tests compare runs started in
    # different processes bit for bit, and a threaded CPU kernel can still round differently
    # from one process to the next (rmrun sets MKL_CBWR=AUTO; README "Resume, exactly").
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def rmrun(*args: str, nproc: int = 1, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``rmrun ARGS`` (or ``torchrun --nproc_per_node=N -m rmrun ARGS``) with captured output."""
    if nproc == 1:
        command = [sys.executable, "-m", "rmrun", *args]
    else:
        command = [
            TORCHRUN,
            f"--nproc_per_node={nproc}",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=localhost:0",
            "-m",
            "rmrun",
            *args,
        ]
    return subprocess.run(command, env=env or child_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def head_lines(source: str, target: str, count: int) -> str:
    with open(source) as f, open(target, "w") as out:
        for _, line in zip(range(count), f):
            out.write(line)
    return target


def slice_recipe(
    tmp_path, *, base: str, train_pairs: int, eval_pairs: int, body: str = "", name: str = "recipe.toml"
) -> str:
    """A recipe extending ``base`` on the first pairs of the quickstart data, its state under
    tmp_path, then ``body`` (more TOML tables)."""
    train = head_lines(TRAIN_DATA, str(tmp_path / "train.jsonl"), train_pairs)
    evaluation = head_lines(EVAL_DATA, str(tmp_path / "eval.jsonl"), eval_pairs)
    path = tmp_path / name
    path.write_text(
        f'extends = "{base}"\n'
        f'[run]\nstate = "{tmp_path / "state"}"\n'
        f'[data]\ntrain = ["{train}"]\neval = ["{evaluation}"]\n'
        f"{body}"
    )
    return str(path)


def small_recipe(tmp_path, *, train_pairs: int = 64, eval_pairs: int = 16, extra: str = "") -> str:
    """A quickstart-based recipe on a slice of the data, state and export under tmp_path."""
    body = f'[log]\nprogress = "lines"\n{extra}'
    return slice_recipe(tmp_path, base=QUICKSTART, train_pairs=train_pairs, eval_pairs=eval_pairs, body=body)


def recipe_problems(path: str, *, overrides=()) -> list[str]:
    """The problem lines ``load_recipe`` refuses ``path`` with (fails the test if it loads)."""
    from rmrun.recipe import RecipeError, load_recipe

    try:
        load_recipe(path, overrides=overrides)
    except RecipeError as error:
        assert str(error) == "\n".join(error.problems)
        return error.problems
    raise AssertionError(f"{path} loaded without a problem")
