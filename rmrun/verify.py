"""``rmrun verify-resume``: prove on your own recipe that resume is exact.

Runs the recipe once uninterrupted, then again with N SIGKILLs at random optimizer
steps (each killed run is started again with the same command, as a spot fleet
would), and compares the two exports: every tensor bit for bit, and metrics.jsonl
byte for byte.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile


def _run(recipe: str, *, root: str, overrides, faults: str | None) -> int:
    env = dict(os.environ)
    env.pop("RMRUN_FAULTS", None)
    if faults:
        env["RMRUN_FAULTS"] = faults
    env.setdefault("PYTHONWARNINGS", "ignore")
    command = [sys.executable, "-m", "rmrun", "run", recipe, "--set", f"run.state={root}",
               "--set", f"output.dir={root}/export", "--set", "log.progress=off", *sum((["--set", o] for o in overrides), [])]
    return subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).returncode


def _tensors(path: str) -> dict:
    from safetensors.numpy import load_file

    return load_file(path)


def compare_exports(a: str, b: str) -> list[str]:
    """Differences between two export directories (empty when bit-identical)."""
    problems = []
    ta, tb = _tensors(os.path.join(a, "model.safetensors")), _tensors(os.path.join(b, "model.safetensors"))
    if set(ta) != set(tb):
        problems.append("the exports hold different tensor names")
    for name in sorted(set(ta) & set(tb)):
        if ta[name].dtype != tb[name].dtype or ta[name].shape != tb[name].shape or ta[name].tobytes() != tb[name].tobytes():
            problems.append(f"tensor {name} differs")
    with open(os.path.join(a, "metrics.jsonl"), "rb") as fa, open(os.path.join(b, "metrics.jsonl"), "rb") as fb:
        if fa.read() != fb.read():
            problems.append("metrics.jsonl differs")
    return problems


def verify_resume(recipe: str, *, kills: int, seed: int, workdir: str | None, overrides) -> int:
    workdir = workdir or tempfile.mkdtemp(prefix="rmrun-verify-")
    straight, killed = os.path.join(workdir, "uninterrupted"), os.path.join(workdir, "killed")
    print(f"verify-resume: uninterrupted run in {straight}", flush=True)
    if _run(recipe, root=straight, overrides=overrides, faults=None) != 0:
        print("verify-resume: the uninterrupted run failed; run it with `rmrun run` to see why", file=sys.stderr)
        return 1
    with open(os.path.join(straight, "export", "metrics.jsonl")) as f:
        total = sum(1 for _ in f)
    steps = sorted(random.Random(seed).sample(range(1, total + 1), min(kills, total)))
    for step in steps:
        code = _run(recipe, root=killed, overrides=overrides, faults=f"kill@step:{step}")
        print(f"verify-resume: SIGKILL at step {step} (exit {code})", flush=True)
    if _run(recipe, root=killed, overrides=overrides, faults=None) != 0:
        print("verify-resume: the resumed run failed", file=sys.stderr)
        return 1
    problems = compare_exports(os.path.join(straight, "export"), os.path.join(killed, "export"))
    if problems:
        for p in problems:
            print(f"verify-resume: NOT identical: {p}")
        return 1
    print(f"verify-resume: bit-identical after {len(steps)} kill(s) at steps {steps}: every tensor and "
          f"metrics.jsonl ({total} steps) match")
    return 0
