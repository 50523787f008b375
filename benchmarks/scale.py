"""How a run's costs outside the training loop grow with the data set: N training pairs, 1 and 2 ranks.

For each (N, ranks) the benchmark writes N synthetic ColossalChat rows of the long-tailed
profile (``benchmarks.data``: ~110 tokens a side; shorter than real multi-turn data, so that
1M pairs fit in about an hour on 2 cores) plus a fixed 1,000-pair eval file, and runs
``rmrun run`` on the quickstart's tiny Llama twice on one state:

1. a first start, SIGKILLed at step 3 (``kill@step:3``, after checkpoint 2): it tokenizes
   (``data.tokenize_workers = 1``: each rank tokenizes alone, so 2 ranks against 1 is the
   ranks' own speed-up, not a pool's), builds the model and trains;
2. the resume: from checkpoint 2 to step 4, the final eval, the reward statistics (the default
   10,000-pair sample) and the export.

Measured per run, from outside: the peak resident memory of the largest process (``ru_maxrss``
of the run's process tree, read by a wrapper process, so every rank counts; torchrun itself is
smaller than a rank); on the resume, the wall time from the command's start to its first step
line (``step 3/4``) and the ``save`` step's (from the ``final eval`` line to the ``exported``
line); from the state: the tokenize rate rmrun recorded (pairs/s over the whole tokenize step),
the sha256 of the assembled token arrays (1 and 2 ranks must agree) and the state's bytes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.data import ROOT, TINY_MODEL_DIR, TOKENIZER_DIR, make_rows

EVAL_PAIRS = 1000
CHUNK_ROWS = 50_000  # rows generated at a time: the generator's memory stays flat too
FIRST_STEP = re.compile(r"^step (\d+)/")
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "print('SCALE_MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
    "sys.exit(rc)\n"
)


def write_rows(path: Path, n: int, *, seed: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for chunk, start in enumerate(range(0, n, CHUNK_ROWS)):
            for row in make_rows(min(CHUNK_ROWS, n - start), seed=seed * 100_003 + chunk):
                f.write(json.dumps(row) + "\n")


def write_recipe(directory: Path, *, train: Path, eval_file: Path) -> Path:
    recipe = directory / "scale.toml"
    recipe.write_text(
        f"""[run]
name = "scale"
state = "{directory / "state"}"
seed = 0

[data]
train = ["{train}"]
eval = ["{eval_file}"]
format = "colossalchat"
max_length = 512
tokenize_workers = 1

[model]
pretrain = "{TINY_MODEL_DIR}"
tokenizer = "{TOKENIZER_DIR}"
init = "random"

[plugin]
name = "ddp"
mixed_precision = "fp32"  # the tiny model: the benchmark is about what is outside the loop, on any CPU

[schedule]
max_epochs = 1
max_steps = 4
batch_size = 8

[checkpoint]
interval_steps = 2
async_upload = false

[eval]
interval_steps = 1000

[log]
progress = "lines"
tensorboard = false
"""
    )
    return recipe


def _command(recipe: Path, ranks: int) -> list[str]:
    if ranks == 1:
        rmrun = [sys.executable, "-m", "rmrun", "run", str(recipe)]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        rmrun = [torchrun, f"--nproc_per_node={ranks}", "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0"]
        rmrun += ["-m", "rmrun", "run", str(recipe)]
    return [sys.executable, "-c", _WRAPPER, *rmrun]


def _timed_run(recipe: Path, ranks: int, *, faults: str = "") -> dict:
    """Run it; every output line with the seconds since the start, the exit code and peak RSS."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    env["RMRUN_FAULTS"] = faults
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    started = time.perf_counter()
    proc = subprocess.Popen(
        _command(recipe, ranks), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - started, line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    returncode = proc.wait()
    reader.join()
    maxrss = next((int(text.split()[1]) for _, text in lines if text.startswith("SCALE_MAXRSS_KB")), 0)
    return {
        "returncode": returncode,
        "lines": lines,
        "seconds": time.perf_counter() - started,
        "maxrss_mb": maxrss / 1024,
    }


def _at(lines, pattern: str) -> float | None:
    return next((t for t, text in lines if re.search(pattern, text)), None)


def _state_facts(state: Path) -> dict:
    from rmrun.store import StateStore

    tokenized = StateStore(str(state)).latest("tokenize-", hash_files=False)
    assert tokenized is not None, f"no tokenized data in {state}"
    stats = json.loads(tokenized.read_bytes("stats.json"))
    sha = {e["path"]: e["sha256"] for e in tokenized.manifest["files"]}
    size = sum(f.stat().st_size for f in state.rglob("*") if f.is_file())
    return {"tokenize": stats["train"], "train_sha256": sha["train.safetensors"], "state_bytes": size}


def measure(directory: Path, *, pairs: int, ranks: int, data: Path | None = None) -> dict:
    """One (N, ranks) point, in ``directory`` (``data``: a train file already written for N)."""
    directory.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = directory / "train.jsonl"
        write_rows(data, pairs, seed=1)
    eval_file = directory / "eval.jsonl"
    write_rows(eval_file, EVAL_PAIRS, seed=2)
    recipe = write_recipe(directory, train=data, eval_file=eval_file)
    first = _timed_run(recipe, ranks, faults="kill@step:3")
    if first["returncode"] == 0:
        raise RuntimeError(f"the first start was to be killed at step 3: {first['lines'][-20:]}")
    resumed = _timed_run(recipe, ranks)
    if resumed["returncode"] != 0:
        raise RuntimeError(f"the resume failed: {[t for _, t in resumed['lines'][-30:]]}")
    first_step = _at(resumed["lines"], FIRST_STEP.pattern)
    final_eval, exported = _at(resumed["lines"], r"final eval:"), _at(resumed["lines"], r"exported the reward model")
    facts = _state_facts(directory / "state")
    return {
        "pairs": pairs,
        "ranks": ranks,
        "tokenize_pairs_per_second": facts["tokenize"]["pairs_per_second"],
        "tokenize_seconds": facts["tokenize"]["seconds"],
        "tokens": facts["tokenize"]["tokens"],
        "peak_rss_mb_first": first["maxrss_mb"],
        "peak_rss_mb_resume": resumed["maxrss_mb"],
        "resume_to_first_step_seconds": first_step,
        "save_seconds": exported - final_eval if final_eval is not None and exported is not None else None,
        "resume_seconds": resumed["seconds"],
        "first_seconds": first["seconds"],
        "state_bytes": facts["state_bytes"],
        "train_sha256": facts["train_sha256"],
        "data_bytes": data.stat().st_size,
    }


def summarize(points: list[dict]) -> dict:
    """The acceptance ratios: 2 ranks / 1 rank tokenize rate at the largest N measured with both;
    largest N / smallest N peak RSS, resume start-to-first-step and save step (on the largest rank
    count measured at both)."""
    by = {(p["pairs"], p["ranks"]): p for p in points}
    sizes = sorted({p["pairs"] for p in points})
    out: dict = {"sizes": sizes}
    both = [n for n in sizes if (n, 1) in by and (n, 2) in by]
    if both:
        middle = both[-1]
        one, two = by[(middle, 1)], by[(middle, 2)]
        out["tokenize_2_over_1"] = {
            "pairs": middle,
            "ratio": two["tokenize_pairs_per_second"] / one["tokenize_pairs_per_second"],
        }
        out["identical_arrays"] = one["train_sha256"] == two["train_sha256"]
    small, large = sizes[0], sizes[-1]
    ranks = max(r for r in (1, 2) if (small, r) in by and (large, r) in by)
    a, b = by[(small, ranks)], by[(large, ranks)]
    out["growth"] = {
        "ranks": ranks,
        "from": small,
        "to": large,
        "peak_rss": max(b["peak_rss_mb_first"], b["peak_rss_mb_resume"])
        / max(a["peak_rss_mb_first"], a["peak_rss_mb_resume"]),
        "resume_to_first_step": b["resume_to_first_step_seconds"] / a["resume_to_first_step_seconds"],
        "save": b["save_seconds"] / a["save_seconds"],
    }
    return out


GOALS = {"tokenize_2_over_1": 1.7, "peak_rss": 1.2, "resume_to_first_step": 1.2, "save": 1.5}


def markdown(doc: dict) -> str:
    meta = doc["machine"]
    lines = [
        f"# rmrun at scale: {meta['cpu_model']}, {meta['cores']} cores, {doc['date']}",
        "",
        "`benchmarks/test_scale.py` (`BENCH_SCALE=1 benchmarks/run.sh -- -k test_scale`). Long-tailed synthetic rows "
        "(~110 tokens a side, max_length 512), the quickstart's tiny Llama, 1 thread per rank, "
        "`data.tokenize_workers = 1`; a start killed at step 3, then the resume to step 4 and the export.",
        "",
        "| pairs | ranks | tokenize pairs/s | peak RSS first (MB) | peak RSS resume (MB) | resume start to first step (s) "
        "| save step (s) | state (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in doc["points"]:
        lines.append(
            f"| {p['pairs']:,} | {p['ranks']} | {p['tokenize_pairs_per_second']:,.0f} | {p['peak_rss_mb_first']:,.0f} "
            f"| {p['peak_rss_mb_resume']:,.0f} | {p['resume_to_first_step_seconds']:.1f} | {p['save_seconds']:.1f} "
            f"| {p['state_bytes'] / 2**20:,.0f} |"
        )
    s = doc["summary"]
    lines += ["", "| goal | measured | target | |", "|---|---:|---:|---|"]
    if "tokenize_2_over_1" in s:
        r = s["tokenize_2_over_1"]["ratio"]
        verdict = "MET" if r >= GOALS["tokenize_2_over_1"] else "MISSED"
        lines.append(
            f"| tokenize, 2 ranks / 1 rank at {s['tokenize_2_over_1']['pairs']:,} pairs | {r:.2f}x | >= 1.7x | {verdict} |"
        )
        lines.append(
            f"| token arrays identical, 1 and 2 ranks | {s['identical_arrays']} | True | {'MET' if s['identical_arrays'] else 'MISSED'} |"
        )
    g = s["growth"]
    for name, label in (
        ("peak_rss", "peak RSS per rank"),
        ("resume_to_first_step", "resume start to first step"),
        ("save", "save step"),
    ):
        verdict = "MET" if g[name] <= GOALS[name] else "MISSED"
        lines.append(
            f"| {label}, {g['to']:,} / {g['from']:,} pairs ({g['ranks']} ranks) | {g[name]:.2f}x | <= {GOALS[name]}x | {verdict} |"
        )
    return "\n".join(lines) + "\n"
