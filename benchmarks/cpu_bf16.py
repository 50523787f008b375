"""ddp in bf16 on the CPU against fp32, rmrun's own step in both: the job a benchmark rank runs,
its summary and its Markdown table.

In one worker process (``benchmarks.harness.WorkerPool``, one rank), two trainers are built
through rmrun's own builders (``benchmarks.harness._build_rmrun_trainer``: ``boost`` with
TorchDDPPlugin, then ``build_trainer``) on copies of the same initial weights of the *small*
Llama reward model (hidden 256, 4 layers, 4 heads, intermediate 688): one from the recipe with
``plugin.mixed_precision = "fp32"``, one with ``"bf16"`` (its plan has ``autocast = "bf16"``, so
``Boosted.forward_context`` runs the forward under ``torch.autocast("cpu", torch.bfloat16)``;
weights, gradients and AdamW stay fp32). Both take the same length-grouped batches of the
long-tailed synthetic pairs, one ``Trainer.optimizer_step`` each per round, the order alternating
every round; round 0 is a warm-up. Then ``torch.profiler`` records one more step of each: the
top operators by self CPU time.

``python -m benchmarks.cpu_bf16 JSON [MD]`` writes the Markdown of a pytest-benchmark JSON.
"""

from __future__ import annotations

import copy
import gc
import json
import statistics
import sys
import time

VARIANTS = ("fp32", "bf16")
GOAL = 1.8  # bf16 pairs/s over fp32 pairs/s, at least (paired per-round median)
TOP_OPERATORS = 15


def precision_job(
    ranked, *, size: str, num_pairs: int, batch_size: int, max_length: int, rounds: int, seed: int = 0
) -> dict:
    """The raw records of ``rounds`` timed rounds (after a warm-up round) and a profile of each variant."""
    import dataclasses

    import torch

    from benchmarks.harness import _build_rmrun_trainer, _dataset, _sections, _tokenizer
    from rmrun.model.model import build_reward_model
    from rmrun.recipe.plan import make_plan
    from rmrun.runtime.machine import cpu_bf16_kernels

    data = _dataset(num_pairs, seed, max_length)
    base_recipe = _sections(
        size, plugin="ddp", batch_size=batch_size, max_length=max_length, group_by_length=True, seed=seed
    )
    base = build_reward_model(base_recipe.model, tokenizer=_tokenizer(), seed=seed)
    trainers, autocast = {}, {}
    for variant in VARIANTS:
        plugin = dataclasses.replace(base_recipe.plugin, mixed_precision=variant)
        recipe = dataclasses.replace(base_recipe, plugin=plugin)
        plan = make_plan(recipe, world_size=ranked.world_size, num_pairs=len(data), cuda=ranked.cuda)
        trainers[variant] = _build_rmrun_trainer(ranked, copy.deepcopy(base), recipe, plan, data)
        autocast[variant] = plan.autocast
    del base
    schedule = list(trainers["fp32"].steps_of_epoch(0))
    same = [list(s.micro_batches[0].indices) for s in schedule] == [
        list(s.micro_batches[0].indices) for s in trainers["bf16"].steps_of_epoch(0)
    ]
    assert same, "the two trainers would take different batches"
    lengths = data.lengths()

    records: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    gc.collect()
    gc.disable()  # no collector pauses inside timed steps
    try:
        for index in range(rounds + 1):
            step = schedule[index % len(schedule)]
            indices = step.micro_batches[0].indices
            for variant in VARIANTS if index % 2 == 0 else VARIANTS[::-1]:
                trainer = trainers[variant]
                started, cpu_started = time.perf_counter(), time.process_time()
                line = trainer.optimizer_step(step)
                seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
                trainer.advance(step, line)
                records[variant].append(
                    {
                        "round": index,
                        "warmup": index == 0,
                        "seconds": seconds,
                        "cpu_seconds": cpu_seconds,
                        "pairs": int(step.pairs),
                        "tokens": int(lengths[indices].sum()),
                        "padded_length": int(lengths[indices].max()),
                        "loss": float(line["loss"]),
                    }
                )
            gc.collect()
    finally:
        gc.enable()
    profile_step = schedule[(rounds + 1) % len(schedule)]
    profiles = {variant: _profile(trainers[variant], profile_step) for variant in VARIANTS}
    return {
        "records": records,
        "profiles": profiles,
        "autocast": autocast,
        "cpu_bf16_kernels": cpu_bf16_kernels(),
        "threads": torch.get_num_threads(),
        "num_params": sum(p.numel() for p in trainers["fp32"].boosted.model.parameters()),
        "weight_dtypes": sorted(
            {str(p.dtype) for trainer in trainers.values() for p in trainer.boosted.model.parameters()}
        ),
        "profile_step": {
            "pairs": int(profile_step.pairs),
            "padded_length": int(lengths[profile_step.micro_batches[0].indices].max()),
        },
    }


def _profile(trainer, step) -> dict:
    """One optimizer step under ``torch.profiler``: its wall time and the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        line = trainer.optimizer_step(step)
    seconds = time.perf_counter() - started
    trainer.advance(step, line)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self = sum(e.self_cpu_time_total for e in events)
    return {
        "step_ms": 1000 * seconds,
        "self_cpu_ms_total": total_self / 1000,
        "top": [
            {
                "op": e.key,
                "self_cpu_ms": e.self_cpu_time_total / 1000,
                "cpu_total_ms": e.cpu_time_total / 1000,
                "calls": e.count,
            }
            for e in events[:TOP_OPERATORS]
        ],
    }


# --------------------------------------------------------------------------- summary


def summarize(raw: dict) -> dict:
    from benchmarks.metrics import _paired_speedup

    variants = {}
    for variant in VARIANTS:
        timed = [r for r in raw["records"][variant] if not r["warmup"]]
        seconds = sum(r["seconds"] for r in timed)
        pairs = sum(r["pairs"] for r in timed)
        variants[variant] = {
            "steps": len(timed),
            "pairs_per_second": pairs / seconds if seconds else 0.0,
            "median_step_ms": 1000 * statistics.median(r["seconds"] for r in timed),
            "median_pairs_per_second": statistics.median(r["pairs"] / r["seconds"] for r in timed),
            "losses": [r["loss"] for r in raw["records"][variant]],
        }
    speedup = _paired_speedup(raw["records"]["fp32"], raw["records"]["bf16"])
    overall = variants["bf16"]["pairs_per_second"] / variants["fp32"]["pairs_per_second"]
    return {
        "variants": variants,
        "bf16_over_fp32": {**speedup, "overall": overall},
        "goal": GOAL,
        "goal_met": speedup["paired_median"] >= GOAL,
        "first_loss_abs_diff": abs(variants["fp32"]["losses"][0] - variants["bf16"]["losses"][0]),
    }


# --------------------------------------------------------------------------- table


def _profile_table(profile: dict) -> list[str]:
    lines = [
        f"One step: {profile['step_ms']:.0f} ms wall under the profiler, "
        f"{profile['self_cpu_ms_total']:.0f} ms self CPU time over all operators.",
        "",
        "| # | operator | self CPU ms | % of self CPU | CPU total ms | calls |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(profile["top"], 1):
        share = 100 * row["self_cpu_ms"] / profile["self_cpu_ms_total"] if profile["self_cpu_ms_total"] else 0.0
        lines.append(
            f"| {i} | `{row['op']}` | {row['self_cpu_ms']:.1f} | {share:.1f} | {row['cpu_total_ms']:.1f} | "
            f"{row['calls']} |"
        )
    return lines


def markdown(doc: dict) -> str:
    [entry] = [b["extra_info"] for b in doc["benchmarks"] if b.get("extra_info", {}).get("kind") == "cpu_bf16"]
    summary, machine = entry["summary"], entry["machine"]
    fp32, bf16 = summary["variants"]["fp32"], summary["variants"]["bf16"]
    ratio = summary["bf16_over_fp32"]
    low, high = ratio["paired_median_ci95"]
    verdict = "MET" if summary["goal_met"] else "MISSED"
    lines = [
        "# ddp on the CPU: bf16 autocast against fp32, pairs/s",
        "",
        "`benchmarks/test_cpu_bf16.py` (`benchmarks/cpu_bf16.py`): rmrun's own optimizer step "
        "(`Trainer.optimizer_step` on a ddp-boosted model, built by rmrun's builders) of the small Llama "
        f"reward model ({entry['num_params'] / 1e6:.1f}M parameters: hidden 256, 4 layers) in fp32 and in bf16 "
        "(`plugin.mixed_precision`; the plan's `autocast` is "
        f"{entry['autocast']['bf16']!r} for bf16 and {entry['autocast']['fp32']!r} for fp32), side by side in one "
        f"process, same initial weights and the same length-grouped batches ({entry['batch_size']} pairs, "
        f"long-tailed synthetic data, max_length {entry['max_length']}), the order alternating every round, "
        f"{fp32['steps']} timed rounds after a warm-up round, {entry['threads']} intra-op thread(s). "
        f"Weights stay {', '.join(entry['weight_dtypes'])} in both.",
        "",
        f"Machine: {machine['label']} ({machine['cpu_model']}; {machine['cores']} cores, GPU: {machine['gpu']}; "
        f"bf16 kernels: `{entry['cpu_bf16_kernels']}`), torch {machine['torch']}, colossalai "
        f"{machine['colossalai']}, {machine['date']}.",
    ]
    if entry.get("note"):
        lines += ["", f"Conditions: {entry['note']}"]
    lines += [
        "",
        "| precision | pairs/s (all timed steps) | median pairs/s per step | median ms per step |",
        "|---|---|---|---|",
        f"| fp32 | {fp32['pairs_per_second']:.2f} | {fp32['median_pairs_per_second']:.2f} | "
        f"{fp32['median_step_ms']:.0f} |",
        f"| bf16 | {bf16['pairs_per_second']:.2f} | {bf16['median_pairs_per_second']:.2f} | "
        f"{bf16['median_step_ms']:.0f} |",
        "",
        f"**bf16 / fp32 pairs/s: {ratio['paired_median']:.2f}x** (median of the {ratio['steps']} paired per-round "
        f"ratios, bootstrap 95% CI {low:.2f}-{high:.2f}; process CPU time: "
        f"{ratio['paired_median_cpu']:.2f}x; all steps together: {ratio['overall']:.2f}x). "
        f"Goal >= {summary['goal']}x: **{verdict}**.",
        "",
        f"First-step loss: fp32 {fp32['losses'][0]:.6f}, bf16 {bf16['losses'][0]:.6f} "
        "(same weights and batch: the difference is bf16 rounding in the forward).",
        "",
        f"## torch.profiler: one rmrun step, top {TOP_OPERATORS} operators by self CPU time",
        "",
        f"The same batch for both ({entry['profile_step']['pairs']} pairs, padded to "
        f"{entry['profile_step']['padded_length']} tokens).",
        "",
        "### fp32",
        "",
        *_profile_table(entry["profiles"]["fp32"]),
        "",
        "### bf16",
        "",
        *_profile_table(entry["profiles"]["bf16"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    source = argv[0]
    target = argv[1] if len(argv) > 1 else source.removesuffix(".json") + ".md"
    with open(source) as f:
        doc = json.load(f)
    with open(target, "w") as f:
        f.write(markdown(doc))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
