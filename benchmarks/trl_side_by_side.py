"""rmrun vs TRL's RewardTrainer, side by side, on the same model config, tokens, batch size and
thread count.

    benchmarks/trl_venv.sh                                   # once: .venv-trl with TRL's current release
    .venv/bin/python -m benchmarks.trl_side_by_side [--profile long-tailed] [--size tiny] [--chunks 3] [--steps 24]

TRL runs in its own virtualenv (its release needs a newer transformers than ColossalAI's pin), as
a subprocess (``benchmarks/trl_reward.py``); rmrun runs in a benchmark worker
(``benchmarks.harness``: its standard and its shared-prompt forward, stepped round-robin). The two
alternate, chunk by chunk, so that other work on the machine hits both alike. Every chunk starts
from the same initial weights (same seed) and the first steps of the epoch; the first step of
each chunk is a warm-up and is not counted. Both get the token ids rmrun's tokenizer produced
(TRL's ``chosen_ids``/``rejected_ids`` columns, so it tokenizes nothing), batch 8, fp32, one
intra-op thread, lr 5e-4, weight decay 0.01, clipping at 1.0; TRL with its bf16 and gradient
checkpointing defaults turned off (rmrun runs fp32 without recomputation here); TRL batches at
random (its default), rmrun by length. Reported: pairs/s (wall and process CPU time), non-padding tokens/s, padding
fraction, peak RSS. Writes ``trl-side-by-side-<machine>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
GOAL = 2.5  # rmrun pairs/s over TRL RewardTrainer pairs/s, long-tailed profile, at least


def trl_job(data, tokenizer, *, size: str, steps: int, seed: int) -> dict:
    return {
        "model_dir": model_dir(size),
        "tokenizer_dir": str(TOKENIZER_DIR),
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "seed": seed,
        "threads": 1,
        "batch_size": 8,
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


def summarize(steps: list[dict], *, pairs_per_step: int, tokens: int, padded: int, peak_rss_mib: float) -> dict:
    seconds = sum(s["seconds"] for s in steps)
    cpu = sum(s["cpu_seconds"] for s in steps)
    pairs = pairs_per_step * len(steps)
    return {
        "steps": len(steps),
        "pairs_per_second": pairs / seconds,
        "pairs_per_cpu_second": pairs / cpu,
        "tokens_per_second": tokens / seconds,
        "padding_fraction": 1 - tokens / padded if padded else 0.0,
        "median_step_ms": 1000 * statistics.median(s["seconds"] for s in steps),
        "peak_rss_mib": peak_rss_mib,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="long-tailed", choices=("long-tailed", "prompt-heavy"))
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per chunk and system")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not os.path.exists(args.trl_python):
        print(f"trl_side_by_side: {args.trl_python} not found; run benchmarks/trl_venv.sh first", file=sys.stderr)
        return 2
    seed, started = 0, time.time()
    data = _dataset(args.pairs, seed, 512, args.profile)
    tokenizer = _tokenizer()
    job = trl_job(data, tokenizer, size=args.size, steps=args.steps + 1, seed=seed)
    lengths = data.lengths()
    trl_steps, trl_batches, trl_versions, rmrun_raw = [], [], None, []
    with tempfile.TemporaryDirectory() as workdir, WorkerPool(1, threads_per_rank=1) as pool:
        for _ in range(args.chunks):
            out = run_trl(args.trl_python, job, workdir)
            trl_steps += out["steps"][1:]  # the first step of a chunk is its warm-up
            trl_batches += out["batches"]
            trl_versions = out["versions"]
            rmrun_raw.append(
                pool.run(
                    "train",
                    size=args.size,
                    variants=("rmrun", "shared"),
                    num_pairs=args.pairs,
                    profile=args.profile,
                    batch_size=8,
                    max_length=512,
                    seed=seed,
                    max_rounds=args.steps,
                    min_rounds=args.steps,
                )[0]
            )
    trl_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    batch_tokens = sum(t for t, _ in trl_batches) / len(trl_batches)
    batch_padded = sum(p for _, p in trl_batches) / len(trl_batches)
    systems = {
        "trl": summarize(
            trl_steps,
            pairs_per_step=8,
            tokens=batch_tokens * len(trl_steps),
            padded=batch_padded * len(trl_steps),
            peak_rss_mib=trl_peak,
        )
    }
    for variant in ("rmrun", "shared"):
        steps = [s for raw in rmrun_raw for s in raw["records"][variant] if not s["warmup"]]
        systems[variant] = summarize(
            steps,
            pairs_per_step=8,
            tokens=sum(s["tokens"] for s in steps),
            padded=sum(s["padded"] for s in steps),
            peak_rss_mib=max(raw["memory"][variant]["peak_rss_kib"] for raw in rmrun_raw) / 1024,
        )
        # the shared forward's padding is over the positions it runs (prompt once)
        positions = sum(s["positions"] for s in steps)
        systems[variant]["padding_fraction"] = 1 - positions / sum(s["padded"] for s in steps)
    info = machine.info()
    result = {
        "machine": info,
        "profile": args.profile,
        "size": args.size,
        "chunks": args.chunks,
        "steps_per_chunk": args.steps,
        "trl_versions": trl_versions,
        "systems": systems,
        "seconds": time.time() - started,
        "sequence_lengths": {"mean": float(lengths.mean()), "max": int(lengths.max())},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"trl-side-by-side-{info['label']}-{args.profile}-{args.size}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    m, s = result["machine"], result["systems"]
    names = {
        "rmrun": "rmrun, standard forward",
        "shared": "rmrun, shared-prompt forward (the default)",
        "trl": f"TRL {result['trl_versions']['trl']} RewardTrainer (transformers "
        f"{result['trl_versions']['transformers']}, torch {result['trl_versions']['torch']})",
    }
    lines = [
        f"# rmrun vs TRL's RewardTrainer — `{m.get('label')}`, {result['profile']} data, {result['size']} model",
        "",
        f"{m.get('cpu_model')}, {m.get('cores')} cores; rmrun with torch {m.get('torch')}, transformers "
        f"{m.get('transformers')}; {result['chunks']} alternating chunks of {result['steps_per_chunk']} timed "
        f"steps each, batch 8, fp32, one thread; {result['seconds']:.0f} s. Other processes shared the machine.",
        "",
        "| system | pairs/s | pairs/CPU-s | non-padding tokens/s | padding | median step | peak RSS | steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("trl", "rmrun", "shared"):
        v = s[key]
        lines.append(
            f"| {names[key]} | {v['pairs_per_second']:.1f} | {v['pairs_per_cpu_second']:.1f} | "
            f"{v['tokens_per_second']:.0f} | {v['padding_fraction']:.1%} | {v['median_step_ms']:.0f} ms | "
            f"{v['peak_rss_mib']:.0f} MiB | {v['steps']} |"
        )
    lines.append("")
    for key in ("rmrun", "shared"):
        wall = s[key]["pairs_per_second"] / s["trl"]["pairs_per_second"]
        cpu = s[key]["pairs_per_cpu_second"] / s["trl"]["pairs_per_cpu_second"]
        goal = (
            f" (goal ≥ {GOAL}× on long-tailed data: {'MET' if cpu >= GOAL else 'MISSED'}, judged on CPU time)"
            if result["profile"] == "long-tailed"
            else ""
        )
        lines.append(f"- {names[key]} / TRL: {wall:.2f}× pairs/s, {cpu:.2f}× pairs/CPU-s{goal}")
    lines += [
        "",
        "Peak RSS: TRL's is its process's whole-run high-water mark (ru_maxrss); rmrun's the worker's "
        "during an untimed step on its largest batch (the worker holds both rmrun variants). TRL's tokens "
        "and padding come from the batches its own collator built.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
