"""``rmrun verify-resume``: prove on your own recipe that resume is exact.

Runs the recipe once uninterrupted, then again with SIGKILLs (each killed run is
started again with the same command, as a spot fleet would), and compares the two
exports: every tensor bit for bit, and metrics.jsonl byte for byte.

The kills are either N random optimizer steps (``--kills N``) or fault points
(``--points all``, or a comma-separated list of :data:`rmrun.runtime.faults.FAULT_POINTS`,
each optionally ``POINT:STEP``): one killed run per point, in run order, on the same
state, so every crash point of the graph (tokenize commit, checkpoint I/O, epoch
markers, the final evaluation, the export upload and its record) is survived in turn.
A point the recipe never reaches (no eval files: no evaluation) is reported and fails
the verification.

``no-restore=PIECE`` directives in this process's ``RMRUN_FAULTS`` are passed to the
resumed runs only: a sabotaged resume that verify-resume must report as different.
"""

from __future__ import annotations

import os
import posixpath
import random
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

from rmrun.runtime.faults import CONDITIONAL_POINTS, FAULT_POINTS

if TYPE_CHECKING:
    from rmrun.recipe.schema import Recipe


def _sabotage() -> list[str]:
    return [d.strip() for d in os.environ.get("RMRUN_FAULTS", "").split(",") if d.strip().startswith("no-restore=")]


def _run(recipe: str, *, state: str, export: str, overrides, faults: list[str]) -> int:
    env = dict(os.environ)
    env.pop("RMRUN_FAULTS", None)
    if faults:
        env["RMRUN_FAULTS"] = ",".join(faults)
    env.setdefault("PYTHONWARNINGS", "ignore")
    command = [
        sys.executable,
        "-m",
        "rmrun",
        "run",
        recipe,
        *sum((["--set", o] for o in overrides), []),
        "--set",
        f"run.state={state}",
        "--set",
        f"output.dir={export}",
        "--set",
        "log.progress=off",
    ]
    return subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).returncode


def _tensors(path: str) -> dict:
    from safetensors.numpy import load_file

    return load_file(path)


def differing_tensors(a: dict, b: dict) -> list[str]:
    """Names of the tensors that differ between ``a`` and ``b`` (name → numpy array or torch
    tensor) in dtype, shape or a single bit, sorted; a name only one side holds differs too.
    The one tensor comparison of exports: ``rmrun verify-resume`` and the resume tests use it."""
    return sorted(n for n in set(a) | set(b) if n not in a or n not in b or not _same_bits(a[n], b[n]))


def _same_bits(x, y) -> bool:
    return x.dtype == y.dtype and tuple(x.shape) == tuple(y.shape) and _bits(x) == _bits(y)


def _bits(x) -> bytes:
    if hasattr(x, "tobytes"):  # numpy
        return x.tobytes()
    import torch  # a torch tensor, any dtype (bfloat16 has no numpy twin): its bytes

    return x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def compare_exports(a: str, b: str) -> list[str]:
    """Differences between two export directories (empty when bit-identical)."""
    problems = []
    ta, tb = _tensors(os.path.join(a, "model.safetensors")), _tensors(os.path.join(b, "model.safetensors"))
    if set(ta) != set(tb):
        problems.append("the exports hold different tensor names")
    problems += [f"tensor {name} differs" for name in differing_tensors(ta, tb) if name in ta and name in tb]
    with open(os.path.join(a, "metrics.jsonl"), "rb") as fa, open(os.path.join(b, "metrics.jsonl"), "rb") as fb:
        if fa.read() != fb.read():
            problems.append("metrics.jsonl differs")
    return problems


def _reaches(recipe: Recipe, point: str) -> bool:
    key = CONDITIONAL_POINTS.get(point)
    if key is None:
        return True
    section, name = key.split(".")
    return bool(getattr(getattr(recipe, section), name))


def parse_points(text: str, *, recipe: Recipe | None = None) -> list[str]:
    """``all`` or ``P[:STEP],...`` → kill directives' specs, in run order for ``all`` (without
    the points ``recipe`` never reaches: the trackers' where it names none)."""
    if text == "all":
        return [p for p in FAULT_POINTS if recipe is None or _reaches(recipe, p)]
    specs = [p.strip() for p in text.split(",") if p.strip()]
    for spec in specs:
        if spec.split(":")[0] not in FAULT_POINTS:
            raise ValueError(f"--points: unknown fault point {spec.split(':')[0]!r}; known: {', '.join(FAULT_POINTS)}")
    return specs


def verify_resume(
    recipe: str,
    *,
    kills: int,
    seed: int,
    workdir: str | None,
    overrides,
    points: str | None = None,
    state_root: str | None = None,
) -> int:
    from rmrun.errors import EXIT_UNUSABLE, EXIT_USAGE
    from rmrun.recipe import RecipeError, load_recipe

    loaded = load_recipe(recipe, overrides=overrides)  # a recipe mistake is the user's (2), before any run starts
    try:
        specs = parse_points(points, recipe=loaded) if points else None
    except ValueError as e:
        raise RecipeError([str(e)]) from None
    workdir = workdir or tempfile.mkdtemp(prefix="rmrun-verify-")
    state_root = (state_root or workdir).rstrip("/")
    runs = {
        name: (
            posixpath.join(state_root, name, "state")
            if "://" in state_root
            else os.path.join(state_root, name, "state"),
            os.path.join(workdir, name, "export"),
        )
        for name in ("uninterrupted", "killed")
    }
    print(f"verify-resume: uninterrupted run, state {runs['uninterrupted'][0]}", flush=True)
    state, export = runs["uninterrupted"]
    code = _run(recipe, state=state, export=export, overrides=overrides, faults=[])
    if code != 0:
        print(
            f"verify-resume: the uninterrupted run failed (exit {code}); run it with `rmrun run` to see why",
            file=sys.stderr,
        )
        return code if code in (EXIT_USAGE, EXIT_UNUSABLE) else 1
    with open(os.path.join(export, "metrics.jsonl")) as f:
        total = sum(1 for _ in f)
    state, export = runs["killed"]
    sabotage = _sabotage()
    not_reached = []
    if specs is None:
        steps = sorted(random.Random(seed).sample(range(1, total + 1), min(kills, total)))
        specs = [f"step:{step}" for step in steps]
    for spec in specs:
        code = _run(recipe, state=state, export=export, overrides=overrides, faults=[f"kill@{spec}", *sabotage])
        print(f"verify-resume: SIGKILL at {spec} (exit {code})", flush=True)
        if code != -9:
            not_reached.append(f"{spec} (exit {code})")
    if _run(recipe, state=state, export=export, overrides=overrides, faults=sabotage) != 0:
        print("verify-resume: the resumed run failed", file=sys.stderr)
        return 1
    problems = compare_exports(runs["uninterrupted"][1], export)
    for p in problems:
        print(f"verify-resume: NOT identical: {p}")
    for p in not_reached:
        print(f"verify-resume: fault point {p} was never reached: this recipe does not test it")
    if problems or not_reached:
        return 1
    print(
        f"verify-resume: bit-identical after {len(specs)} kill(s) at {', '.join(specs)}: every tensor and "
        f"metrics.jsonl ({total} steps) match"
    )
    return 0
