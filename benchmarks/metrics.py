"""Turning raw per-rank, per-step records into the numbers the report shows (no torch here)."""

from __future__ import annotations

import statistics

from rmrun.bench.stats import bootstrap_median_ci, model_flops_utilization
from rmrun.bench.stats import quartiles as _quantiles

GOALS = {
    "rmrun_vs_hand": 0.97,  # rmrun pairs/s / hand-written pairs/s, at least
    "rmrun_vs_colossalchat": 2.0,  # rmrun pairs/s / ColossalChat-batching pairs/s, at least
    "checkpoint_overhead_pct": 3.0,  # % of training time lost at the default interval and upload mode, at most
    "resumed_vs_fresh": 1.5,  # resumed / fresh time to the first step, at most
    "background_vs_blocking_stall": 0.25,  # training time lost per checkpoint, background / blocking upload, at most
    # shared-prompt forward pairs/s / standard forward pairs/s, at least, per data profile
    "shared_vs_standard": {"long-tailed": 1.4, "prompt-heavy": 1.8},
    "packed_vs_standard": {"long-tailed": 1.5, "prompt-heavy": 1.9},  # shared + packed
}


def merge_ranks(rank_results: list[dict], variant: str) -> list[dict]:
    """One record per step over all ranks: the slowest rank's time (the step is synchronous),
    summed tokens and padded slots."""
    per_rank = [r["records"][variant] for r in rank_results]
    steps = []
    for recs in zip(*per_rank):
        steps.append(
            {
                "round": recs[0]["round"],
                "warmup": recs[0]["warmup"],
                "seconds": max(r["seconds"] for r in recs),
                "cpu_seconds": max(r.get("cpu_seconds", r["seconds"]) for r in recs),
                "pairs": recs[0]["pairs"],
                "tokens": sum(r["tokens"] for r in recs),
                "positions": sum(r.get("positions", r["tokens"]) for r in recs),
                "padded": sum(r["padded"] for r in recs),
                # rmrun reports the all-rank mean loss, the hand loop its rank's mean: with equal
                # per-rank batches the mean over ranks is the global mean for both.
                "loss": statistics.fmean(r["loss"] for r in recs),
            }
        )
    return steps


def variant_summary(steps: list[dict], memory: list[dict]) -> dict:
    """``memory``: each rank's probe of this variant (the largest of any one process is shown)."""
    timed = [s for s in steps if not s["warmup"]]
    seconds = sum(s["seconds"] for s in timed)
    pairs = sum(s["pairs"] for s in timed)
    tokens = sum(s["tokens"] for s in timed)
    positions = sum(s["positions"] for s in timed)  # what the forward ran: the shared prompt once
    padded = sum(s["padded"] for s in timed)
    cpu_seconds = sum(s["cpu_seconds"] for s in timed)
    step_times = [s["seconds"] for s in timed]
    return {
        "steps": len(timed),
        "seconds": seconds,
        "pairs": pairs,
        "pairs_per_second": pairs / seconds if seconds else 0.0,
        "pairs_per_cpu_second": pairs / cpu_seconds if cpu_seconds else 0.0,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "padding_fraction": 1 - positions / padded if padded else 0.0,
        "median_step_ms": 1000 * statistics.median(step_times) if step_times else 0.0,
        "mean_step_ms": 1000 * statistics.fmean(step_times) if step_times else 0.0,
        "peak_rss_mib": max(m["peak_rss_kib"] for m in memory) / 1024,
        "resident_before_step_mib": max(m["rss_before_kib"] for m in memory) / 1024,
        "memory_probe_padded_length": max(m["padded_length"] for m in memory),
        **(
            {
                "peak_gpu_mib": max(m["peak_gpu_bytes"] for m in memory) / 2**20,
                "peak_gpu_reserved_mib": max(m["peak_gpu_reserved_bytes"] for m in memory) / 2**20,
            }
            if all("peak_gpu_bytes" in m for m in memory)
            else {}
        ),
        "padded_tokens_per_second": padded / seconds if seconds else 0.0,
        "step_seconds": [round(s["seconds"], 5) for s in timed],
        "step_rounds": [s["round"] for s in timed],
    }


def summarize_train(rank_results: list[dict], *, checkpoint_interval: int, peak_flops: float | None = None) -> dict:
    """Per-variant throughput, the two side-by-side ratios, and checkpoint cost; MFU where the
    accelerator's peak is known (counted on non-padding tokens: the useful work)."""
    first = rank_results[0]
    merged = {v: merge_ranks(rank_results, v) for v in first["records"]}
    out = {
        "world_size": first["world_size"],
        "threads_per_rank": first["threads"],
        "num_params": first["num_params"],
        "sequence_lengths": first["sequence_lengths"],
        "peak_rss_reset_worked": bool(first["peak_reset"]),
        "measure_seconds": max(r["measure_seconds"] for r in rank_results),
        "variants": {v: variant_summary(steps, [r["memory"][v] for r in rank_results]) for v, steps in merged.items()},
    }
    variants = out["variants"]
    for v in variants.values():
        mfu = model_flops_utilization(
            num_params=out["num_params"],
            tokens_per_second=v["tokens_per_second"],
            world_size=out["world_size"],
            peak_flops=peak_flops,
        )
        if mfu is not None:
            v["mfu"] = mfu
            v["mfu_with_padding"] = model_flops_utilization(
                num_params=out["num_params"],
                tokens_per_second=v["padded_tokens_per_second"],
                world_size=out["world_size"],
                peak_flops=peak_flops,
            )
    if "rmrun" in merged and "hand" in merged:
        out["rmrun_vs_hand"] = _rmrun_vs_hand(merged, variants)
    for faster in ("dense", "shared", "packed"):
        if "rmrun" in merged and faster in merged:
            c = out[f"{faster}_vs_standard"] = _paired_speedup(merged["rmrun"], merged[faster])
            c["overall"] = variants[faster]["pairs_per_second"] / variants["rmrun"]["pairs_per_second"]
            c["overall_cpu"] = variants[faster]["pairs_per_cpu_second"] / variants["rmrun"]["pairs_per_cpu_second"]
            out["profile"] = first.get("profile", "long-tailed")
    if "rmrun" in variants and "colossalchat" in variants:
        cc = variants["colossalchat"]["pairs_per_second"]
        out["rmrun_vs_colossalchat"] = {
            "ratio": variants["rmrun"]["pairs_per_second"] / cc if cc else 0.0,
        }
    if "checkpoint" in first:
        out["checkpoint"] = _checkpoint_summary(
            rank_results, variants["rmrun"]["mean_step_ms"] / 1000, checkpoint_interval
        )
    return out


def default_async_upload() -> bool:
    """The recipe schema's default ``checkpoint.async_upload``: whether a run uploads in the background."""
    from rmrun.recipe.schema import CheckpointSection

    return CheckpointSection().async_upload


def _overhead_pct(lost: float, *, interval: int, step: float) -> float:
    """Share of training time lost to checkpoints taken every ``interval`` steps of ``step`` seconds."""
    return 100 * lost / (interval * step + lost) if step else 0.0


def _checkpoint_summary(rank_results: list[dict], step: float, interval: int) -> dict:
    """Blocking save, load and (where measured) background checkpoint timings, per round the slowest
    rank's; overheads at ``interval``. ``overhead_pct`` is the default upload mode's (the goal)."""

    def per_round(name: str) -> list[float]:
        return [max(values) for values in zip(*(r["checkpoint"][name] for r in rank_results))]

    saves, loads = per_round("save_seconds"), per_round("load_seconds")
    save = statistics.median(saves)
    out = {
        "save_seconds": saves,
        "load_seconds": loads,
        "save_median_s": save,
        "load_median_s": statistics.median(loads),
        "bytes": rank_results[0]["checkpoint"]["bytes"],
        "interval_steps": interval,
        "mean_step_s": step,
        "blocking_overhead_pct": _overhead_pct(save, interval=interval, step=step),
        "overhead_pct": _overhead_pct(save, interval=interval, step=step),
    }
    if not rank_results[0]["checkpoint"].get("stall_seconds"):
        return out  # (a worker that timed the blocking save only)
    snapshots, commits = per_round("snapshot_seconds"), per_round("commit_seconds")
    upload_waits, commit_waits = per_round("upload_wait_seconds"), per_round("commit_wait_seconds")
    stalls = [s + c for s, c in zip(snapshots, commits)]
    # The training thread waits for the snapshot, and for the commit at the first step boundary
    # after the upload is over; and, should the upload outlast the interval, the next checkpoint
    # waits for the rest of it.
    overrun = max(0.0, statistics.median(upload_waits) - interval * step)
    lost = statistics.median(stalls) + overrun
    out.update(
        {
            "snapshot_seconds": snapshots,
            "upload_wait_seconds": upload_waits,
            "commit_seconds": commits,
            "stall_seconds": stalls,
            "commit_wait_seconds": commit_waits,
            "snapshot_median_s": statistics.median(snapshots),
            "upload_wait_median_s": statistics.median(upload_waits),
            "commit_median_s": statistics.median(commits),
            "commit_wait_median_s": statistics.median(commit_waits),
            "stall_median_s": statistics.median(stalls),
            "upload_overrun_s": overrun,
            "background_lost_s": lost,
            "background_overhead_pct": _overhead_pct(lost, interval=interval, step=step),
            "async_upload": default_async_upload(),
        }
    )
    out["overhead_pct"] = out["background_overhead_pct" if out["async_upload"] else "blocking_overhead_pct"]
    return out


def _rmrun_vs_hand(merged: dict, variants: dict) -> dict:
    """rmrun against the hand-written loop: per-step time ratios, overall pairs/s, loss agreement."""
    # Same batches in the same round: paired per-step ratios are immune to slow phases
    # of the machine that hit a whole round.
    hand = {s["round"]: s for s in merged["hand"] if not s["warmup"]}
    pairs = [
        (hand[s["round"]]["seconds"], s["seconds"]) for s in merged["rmrun"] if not s["warmup"] and s["round"] in hand
    ]
    ratios = [h / r for h, r in pairs if r > 0]
    q1, median, q3 = _quantiles(ratios) if ratios else (0.0, 0.0, 0.0)
    low, high = bootstrap_median_ci(ratios)
    losses = [abs(a["loss"] - b["loss"]) for a, b in zip(merged["rmrun"], merged["hand"])]
    return {
        "paired_median": median,
        "paired_q1": q1,
        "paired_q3": q3,
        "steps": len(ratios),
        "paired_median_ci95": [low, high],
        "overall": variants["rmrun"]["pairs_per_second"] / variants["hand"]["pairs_per_second"]
        if variants["hand"]["pairs_per_second"]
        else 0.0,
        "median_overhead_ms": 1000 * statistics.median(r - h for h, r in pairs) if pairs else 0.0,
        "loss_max_abs_diff": max(losses) if losses else None,
    }


def _paired_speedup(baseline: list[dict], faster: list[dict]) -> dict:
    """Per-round ratios of pairs/s, faster over baseline, of two variants stepped in the same round
    (wall and process CPU time), their median with a bootstrap 95% CI."""
    other = {s["round"]: s for s in faster if not s["warmup"]}
    out = {}
    for clock in ("seconds", "cpu_seconds"):
        ratios = [
            (other[s["round"]]["pairs"] / other[s["round"]][clock]) / (s["pairs"] / s[clock])
            for s in baseline
            if not s["warmup"] and s["round"] in other and other[s["round"]][clock] > 0 and s[clock] > 0
        ]
        median = statistics.median(ratios) if ratios else 0.0
        key = "paired_median" if clock == "seconds" else "paired_median_cpu"
        out[key], out[f"{key}_ci95"] = median, list(bootstrap_median_ci(ratios))
        out["steps"] = len(ratios)
    return out


def summarize_startup(raw: dict) -> dict:
    fresh = [m["first_step"] for m in raw["fresh"]]
    resumed = [m["first_step"] for m in raw["resumed"]]
    fresh_median, resumed_median = statistics.median(fresh), statistics.median(resumed)

    def median_of(runs, key):
        values = [m[key] for m in runs if key in m]
        return statistics.median(values) if values else None

    return {
        "fresh_seconds": fresh,
        "resumed_seconds": resumed,
        "fresh_median_s": fresh_median,
        "resumed_median_s": resumed_median,
        "ratio": resumed_median / fresh_median if fresh_median else 0.0,
        "fresh_tokenized_median_s": median_of(raw["fresh"], "tokenized"),
        "resumed_checkpoint_loaded_median_s": median_of(raw["resumed"], "resumed"),
        "resumed_first_step_number": raw["resumed"][0].get("first_step_number"),
        "rounds": len(fresh),
        "threads": raw["threads"],
        "pairs": raw["pairs"],
    }


def summarize_stall(runs: dict[str, list[dict]], *, total_steps: int, interval: int, bytes_per_second: float) -> dict:
    """Training time lost per checkpoint, per variant of benchmarks.checkpoint_stall.

    ``stall``: time the training loop spent in the checkpoint hook over the measured steps,
    less what the hook costs on a step without a checkpoint (the run's own median hook time:
    most steps have none, and it follows the load of the machine during that run), per
    periodic checkpoint. ``end_to_end``: the loop's wall time less the ``none`` run's of the
    same round, per periodic checkpoint (it also counts a background upload competing with
    training for the CPU, and all the noise of a shared machine).
    """
    checkpoints = len(range(interval, total_steps, interval))
    out = {
        "total_steps": total_steps,
        "interval_steps": interval,
        "periodic_checkpoints": checkpoints,
        "bytes_per_second": bytes_per_second,
        "rounds": len(runs["none"]),
        "variants": {},
    }
    for variant, variant_runs in runs.items():
        idle = [statistics.median(r["hook_seconds"]) for r in variant_runs]
        stalls = [
            (sum(r["hook_seconds"]) - base * len(r["hook_seconds"])) / checkpoints
            for r, base in zip(variant_runs, idle)
        ]
        lost = [(r["loop_seconds"] - none["loop_seconds"]) / checkpoints for r, none in zip(variant_runs, runs["none"])]
        out["variants"][variant] = {
            "stall_per_checkpoint_s": statistics.mean(stalls),
            "idle_hook_seconds": statistics.mean(idle),
            "end_to_end_lost_per_checkpoint_s": statistics.mean(lost),
            "mean_step_s": statistics.mean(s for r in variant_runs for s in r["step_seconds"]),
            "loop_seconds": [r["loop_seconds"] for r in variant_runs],
            "checkpoints": [c for r in variant_runs for c in r["checkpoints"] if c["step"] < total_steps],
            "hook_seconds": [r["hook_seconds"] for r in variant_runs],
            "step_seconds": [r["step_seconds"] for r in variant_runs],
        }
    blocking = out["variants"]["blocking"]["stall_per_checkpoint_s"]
    background = out["variants"]["background"]["stall_per_checkpoint_s"]
    out["background_vs_blocking"] = background / blocking if blocking > 0 else None
    return out
