"""rmrun vs TRL's RewardTrainer, side by side: whole epochs over the same pairs, each system as its
users would tune it for speed, on the same model config, tokens, batch size and thread count.

    benchmarks/trl_venv.sh                                   # once: .venv-trl with TRL's current release
    .venv/bin/python -m benchmarks.trl_side_by_side [--profile long-tailed] [--size small] [--chunks 2] [--pairs 400]

Systems (batch 8, one intra-op thread, lr 5e-4, weight decay 0.01, clipping at 1.0, constant LR):

- ``trl-tuned``: TRL's RewardTrainer with length grouping (``train_sampling_strategy=
  "group_by_length"``, a ``length`` column holding each pair's longer side, since TRL's reward
  trainer cannot infer lengths itself, and ``remove_unused_columns=False`` so the column reaches
  the sampler), bf16 autocast (its default) and gradient checkpointing off (recomputation only
  costs time at this size);
- ``trl-defaults``: TRL's RewardConfig as it comes: random batches, bf16, gradient checkpointing;
- ``rmrun-bf16`` / ``shared-bf16``: rmrun's step (``Trainer.optimizer_step``, ddp) in bf16, its
  standard and its shared-prompt forward; ``rmrun-fp32`` / ``shared-fp32`` the same in fp32.
  The recipe defaults (``plugin.mixed_precision = "bf16"``, ``data.share_prompt = "auto"``) pick
  one of the bf16 rows, named in the output; on a CPU without bf16 kernels only fp32 runs.

TRL runs in its own virtualenv (its release needs a newer transformers than ColossalAI's pin), as
a subprocess (``benchmarks/trl_reward.py``); rmrun runs in a benchmark worker (``benchmarks.harness``,
the variants of one precision stepped round-robin). The systems alternate, chunk by chunk, so that
other work on the machine hits all alike. In every chunk each system starts from the same initial
weights (same seed) and trains **one whole epoch of the same pool of pairs**, each pair once (the
epoch's token total is checked equal across systems); the epoch's first step is its warm-up and is
not counted, so every figure is over the rest of the epoch. Both get the token ids rmrun's
tokenizer produced (TRL's ``chosen_ids``/``rejected_ids`` columns, so it tokenizes nothing).
Reported: pairs/s (wall and process CPU time), non-padding tokens/s, padding fraction, peak RSS.
Writes ``trl-side-by-side-<machine>-<profile>-<size>.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import machine
from benchmarks.data import TOKENIZER_DIR
from benchmarks.harness import WorkerPool, _dataset, _tokenizer, model_dir

ROOT = Path(__file__).resolve().parent.parent
# rmrun with the recipe defaults over TRL tuned for speed, non-padding tokens/s over whole epochs,
# small model, at least
GOALS = {"long-tailed": 1.3, "prompt-heavy": 1.6}
GOAL_SIZE = "small"
TRL_SYSTEMS = {
    "trl-tuned": {"sampling": "group_by_length", "bf16": True, "gradient_checkpointing": False},
    "trl-defaults": {"sampling": "random", "bf16": None, "gradient_checkpointing": None},
}
RMRUN_VARIANTS = {"rmrun": "standard", "shared": "shared-prompt"}
BATCH, MAX_LENGTH = 8, 512


def trl_job(data, tokenizer, *, size: str, steps: int, seed: int, settings: dict) -> dict:
    return {
        **settings,
        "model_dir": model_dir(size),
        "tokenizer_dir": str(TOKENIZER_DIR),
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "seed": seed,
        "threads": 1,
        "batch_size": BATCH,
        "steps": steps,
        "lr": 5e-4,
        "weight_decay": 0.01,
        "grad_clip": 1.0,
        "chosen": [data.chosen(i).tolist() for i in range(len(data))],
        "rejected": [data.rejected(i).tolist() for i in range(len(data))],
    }


def run_trl(python: str, job: dict, workdir: str) -> dict:
    source, target = os.path.join(workdir, "trl-in.json"), os.path.join(workdir, "trl-out.json")
    with open(source, "w") as f:
        json.dump(job, f)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    subprocess.run(
        [python, str(ROOT / "benchmarks" / "trl_reward.py"), source, target],
        check=True,
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    with open(target) as f:
        return json.load(f)


def summarize(steps: list[dict], *, peak_rss_mib: float) -> dict:
    """Throughput over the counted steps (each with seconds, cpu_seconds, tokens and padded positions)."""
    seconds = sum(s["seconds"] for s in steps)
    cpu = sum(s["cpu_seconds"] for s in steps)
    pairs = BATCH * len(steps)
    tokens = sum(s["tokens"] for s in steps)
    padded = sum(s["padded"] for s in steps)
    return {
        "steps": len(steps),
        "pairs_per_second": pairs / seconds,
        "pairs_per_cpu_second": pairs / cpu,
        "tokens_per_second": tokens / seconds,
        "padding_fraction": 1 - tokens / padded if padded else 0.0,
        "median_step_ms": 1000 * statistics.median(s["seconds"] for s in steps),
        "peak_rss_mib": peak_rss_mib,
    }


def default_rmrun_variant(precisions) -> tuple[str, str]:
    """(the variant key a recipe with rmrun's defaults runs, the forward's reason): the default
    precision (bf16, where this CPU runs it) and the forward ``data.share_prompt = "auto"`` picks."""
    from benchmarks.data import TINY_MODEL_DIR
    from rmrun.recipe.backbone import SHARED, choose_forward
    from rmrun.recipe.schema import DataSection, ModelSection, PluginSection

    default = PluginSection(name="ddp")
    precision = default.mixed_precision if default.mixed_precision in precisions else "fp32"
    plugin = dataclasses.replace(default, mixed_precision=precision)
    forward = choose_forward(
        DataSection(train=("x.jsonl",)), ModelSection(pretrain=str(TINY_MODEL_DIR)), plugin, cuda=False
    )
    return f"{'shared' if forward.name == SHARED else 'rmrun'}-{precision}", forward.reason


def run_rmrun(pool, *, precision: str, args, steps: int, seed: int) -> dict:
    [raw] = pool.run(
        "train",
        size=args.size,
        variants=tuple(RMRUN_VARIANTS),
        num_pairs=args.pairs,
        profile=args.profile,
        batch_size=BATCH,
        max_length=MAX_LENGTH,
        seed=seed,
        max_rounds=steps - 1,  # round 0 (the warm-up) takes the epoch's first step
        min_rounds=steps - 1,
        mixed_precision=precision,
    )
    assert raw["autocast"] == (None if precision == "fp32" else precision), raw["autocast"]
    return raw


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="long-tailed", choices=("long-tailed", "prompt-heavy"))
    parser.add_argument("--size", default="small", choices=("tiny", "small"))
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=400, help="the pool: one epoch, each pair once (a multiple of 8)")
    parser.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not os.path.exists(args.trl_python):
        print(f"trl_side_by_side: {args.trl_python} not found; run benchmarks/trl_venv.sh first", file=sys.stderr)
        return 2
    if args.pairs % BATCH:
        parser.error(f"--pairs must be a multiple of the batch size {BATCH}")
    from rmrun.runtime.machine import cpu_bf16_kernels

    precisions = ("bf16", "fp32") if cpu_bf16_kernels() else ("fp32",)
    seed, started = 0, time.time()
    data = _dataset(args.pairs, seed, MAX_LENGTH, args.profile)
    tokenizer = _tokenizer()
    steps = args.pairs // BATCH  # one epoch
    lengths = data.lengths()
    epoch_tokens = int(lengths.sum())
    trl_raw: dict = {name: [] for name in TRL_SYSTEMS}
    rmrun_raw: dict = {precision: [] for precision in precisions}
    with tempfile.TemporaryDirectory() as workdir, WorkerPool(1, threads_per_rank=1) as pool:
        for chunk in range(args.chunks):
            order = [*TRL_SYSTEMS, *precisions]
            shift = chunk % len(order)
            for name in order[shift:] + order[:shift]:
                if name in TRL_SYSTEMS:
                    job = trl_job(data, tokenizer, size=args.size, steps=steps, seed=seed, settings=TRL_SYSTEMS[name])
                    out = run_trl(args.trl_python, job, workdir)
                    total = sum(t for t, _ in out["batches"])
                    assert len(out["batches"]) == steps and total == epoch_tokens, (name, len(out["batches"]), total)
                    trl_raw[name].append(out)
                else:
                    raw = run_rmrun(pool, precision=name, args=args, steps=steps, seed=seed)
                    for variant in RMRUN_VARIANTS:
                        records = raw["records"][variant]
                        assert len(records) == steps and sum(r["tokens"] for r in records) == epoch_tokens, variant
                    rmrun_raw[name].append(raw)
    systems = {}
    for name, outs in trl_raw.items():
        counted = [
            {**step, "tokens": tokens, "padded": padded}
            for out in outs
            for step, (tokens, padded) in list(zip(out["steps"], out["batches"]))[1:]  # the first: warm-up
        ]
        systems[name] = summarize(counted, peak_rss_mib=max(out["peak_rss_mib"] for out in outs))
        systems[name]["settings"] = outs[0]["settings"]
    for precision, raws in rmrun_raw.items():
        for variant in RMRUN_VARIANTS:
            counted = [r for raw in raws for r in raw["records"][variant] if not r["warmup"]]
            key = f"{variant}-{precision}"
            systems[key] = summarize(
                counted, peak_rss_mib=max(raw["memory"][variant]["peak_rss_kib"] for raw in raws) / 1024
            )
            # the shared forward's padding is over the positions it runs (prompt once)
            systems[key]["padding_fraction"] = 1 - sum(r["positions"] for r in counted) / sum(
                r["padded"] for r in counted
            )
    default, reason = default_rmrun_variant(precisions)
    info = machine.info()
    result = {
        "machine": info,
        "profile": args.profile,
        "size": args.size,
        "chunks": args.chunks,
        "pairs": args.pairs,
        "steps_per_epoch": steps,
        "epoch_tokens": epoch_tokens,
        "trl_versions": next(iter(trl_raw.values()))[0]["versions"],
        "systems": systems,
        "default": default,
        "default_reason": reason,
        "seconds": time.time() - started,
        "sequence_lengths": {"mean": float(lengths.mean()), "max": int(lengths.max())},
        "note": os.environ.get("BENCH_NOTE", ""),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"trl-side-by-side-{info['label']}-{args.profile}-{args.size}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    m, s, v = result["machine"], result["systems"], result["trl_versions"]
    trl = f"TRL {v['trl']} (transformers {v['transformers']}, torch {v['torch']})"
    names = {
        "trl-tuned": f"{trl}, length grouping + bf16, no recomputation",
        "trl-defaults": f"{trl}, its defaults (random batches, bf16, gradient checkpointing)",
    }
    for key in s:
        if key not in names:
            variant, precision = key.rsplit("-", 1)
            names[key] = f"rmrun, {RMRUN_VARIANTS[variant]} forward, {precision}" + (
                " (the recipe defaults)" if key == result["default"] else ""
            )
    lines = [
        f"# rmrun vs TRL's RewardTrainer — `{m.get('label')}`, {result['profile']} data, {result['size']} model",
        "",
        f"`benchmarks/trl_side_by_side.py`. {m.get('cpu_model')}, {m.get('cores')} cores (bf16 kernels: "
        f"`{m.get('cpu_bf16_kernels')}`); rmrun with torch {m.get('torch')}, transformers {m.get('transformers')}. "
        f"Each system trains one whole epoch of the same {result['pairs']} pairs ({result['steps_per_epoch']} steps of "
        f"8 pairs, {result['epoch_tokens']:,} tokens, each pair once) from the same initial weights, {result['chunks']} "
        f"times, the systems' order rotating; the epoch's first step is a warm-up and is not counted. One thread, "
        f"lr 5e-4, constant LR; {result['seconds']:.0f} s in all."
        + (f" Conditions: {result['note']}." if result.get("note") else ""),
        "",
        "| system | pairs/s | pairs/CPU-s | non-padding tokens/s | padding | median step | peak RSS | steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(s, key=lambda k: -s[k]["tokens_per_second"]):
        r = s[key]
        lines.append(
            f"| {names[key]} | {r['pairs_per_second']:.1f} | {r['pairs_per_cpu_second']:.1f} | "
            f"{r['tokens_per_second']:.0f} | {r['padding_fraction']:.1%} | {r['median_step_ms']:.0f} ms | "
            f"{r['peak_rss_mib']:.0f} MiB | {r['steps']} |"
        )
    lines.append("")
    goal = GOALS[result["profile"]] if result["size"] == GOAL_SIZE else None
    best = s["trl-tuned"]["tokens_per_second"]
    for key in sorted(k for k in s if not k.startswith("trl")):
        ratio = s[key]["tokens_per_second"] / best
        cpu = s[key]["pairs_per_cpu_second"] / s["trl-tuned"]["pairs_per_cpu_second"]
        verdict = ""
        if key == result["default"] and goal is not None:
            verdict = f" (goal ≥ {goal}×: **{'MET' if ratio >= goal else 'MISSED'}**)"
        lines.append(f"- {names[key]} / TRL tuned: {ratio:.2f}× non-padding tokens/s, {cpu:.2f}× pairs/CPU-s{verdict}")
    defaults = s[result["default"]]["tokens_per_second"] / s["trl-defaults"]["tokens_per_second"]
    lines += [
        f"- {names[result['default']]} / TRL with its defaults: {defaults:.2f}× non-padding tokens/s",
        "",
        f"The recipe defaults' forward: {result['default_reason']}.",
        "",
        "Same pairs, so pairs/s and tokens/s tell the same story here; tokens/s is the goal's measure. "
        "Peak RSS: TRL's is its process's whole-run high-water mark; rmrun's the worker's during an untimed "
        "step on its largest batch (the worker holds both forwards of a precision). TRL's tokens and padding "
        "come from the batches its own collator built.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
