"""``rmrun bench`` results: the numbers per combination, the ranking and recommendation, and
the three files (``bench.json`` with every raw number, ``bench.md``, ``bench.png``)."""

from __future__ import annotations

import json
import os
import statistics

from rmrun.bench.stats import bootstrap_median_ci, model_flops_utilization

FILES = ("bench.json", "bench.md", "bench.png")


def _median_ci(values: list[float]) -> dict:
    low, high = bootstrap_median_ci(values)
    return {"median": statistics.median(values), "ci95": [low, high]}


def _steps(results: list[list[dict]]) -> list[dict]:
    """One record per timed step over all rounds: the slowest rank's time (the step is
    synchronous), the global pair and token counts, every rank's padded slots summed."""
    steps = []
    for r, rank_results in enumerate(results):
        for records in zip(*(x["records"] for x in rank_results)):
            steps.append(
                {
                    "round": r,
                    "seconds": max(rec["seconds"] for rec in records),
                    "pairs": records[0]["pairs"],
                    "tokens": records[0]["tokens"],
                    "padded": sum(rec["padded"] for rec in records),
                }
            )
    return steps


def combination_summary(results: list[list[dict]], *, peak_flops: float | None) -> dict:
    steps = _steps(results)
    every = [x for rank_results in results for x in rank_results]
    seconds = sum(s["seconds"] for s in steps)
    tokens, padded = sum(s["tokens"] for s in steps), sum(s["padded"] for s in steps)
    out = {
        "timed_steps": len(steps),
        "pairs_per_second": _median_ci([s["pairs"] / s["seconds"] for s in steps]),
        "tokens_per_second": _median_ci([s["tokens"] / s["seconds"] for s in steps]),
        "overall_pairs_per_second": sum(s["pairs"] for s in steps) / seconds,
        "padding_fraction": 1 - tokens / padded if padded else 0.0,
        "peak_rss_mib_per_process": max(x["peak_rss_mib"] for x in every),
        "time_to_first_step_s": statistics.median(max(x["first_step_s"] for x in rr) for rr in results),
        "num_params": every[0]["num_params"],
        "threads_per_process": every[0].get("threads"),
        "step_seconds": [s["seconds"] for s in steps],
        "step_rounds": [s["round"] for s in steps],
        "raw": results,
    }
    if all("peak_gpu_mib" in x for x in every):
        out["peak_gpu_mib_per_process"] = max(x["peak_gpu_mib"] for x in every)
    checkpoints = [rr for rr in results if all("checkpoint" in x for x in rr)]
    if checkpoints:
        saves = [max(s for x in rr for s in x["checkpoint"]["save_seconds"]) for rr in checkpoints]
        loads = [max(s for x in rr for s in x["checkpoint"]["load_seconds"]) for rr in checkpoints]
        out["checkpoint"] = {
            "save_s": statistics.median(saves),
            "load_s": statistics.median(loads),
            "bytes": checkpoints[0][0]["checkpoint"]["bytes"],
        }
    out["mfu"] = model_flops_utilization(
        num_params=out["num_params"],
        tokens_per_second=out["tokens_per_second"]["median"],
        world_size=len(results[0]),
        peak_flops=peak_flops,
    )
    return out


def _memory_mib(s: dict) -> float:
    return s.get("peak_gpu_mib_per_process", s["peak_rss_mib_per_process"])


def recommendation(ranked: list[dict]) -> str:
    if not ranked:
        return "no combination ran here; see the reasons above"
    best = ranked[0]
    text = f"fastest that fits: {best['label']} ({best['summary']['pairs_per_second']['median']:.1f} pairs/s)"
    if len(ranked) > 1:
        second = ranked[1]
        a, b = best["summary"]["pairs_per_second"], second["summary"]["pairs_per_second"]
        overlap = b["ci95"][1] >= a["ci95"][0]
        text += (
            f"; runner-up: {second['label']} ({b['median']:.1f} pairs/s, "
            f"{100 * (1 - b['median'] / a['median']):.0f}% slower"
            f"{', within the noise: the 95% CIs overlap' if overlap else ''})"
        )
    return text


def summarize(
    recipe_path: str, combos, *, samples: dict, world_size: int, steps: int, rounds: int, sets, sweeps
) -> dict:
    from rmrun.runtime.machine import info

    machine = info()
    peak = machine["peak_bf16_flops_per_gpu"]
    entries = []
    for c in combos:
        entry = {"label": c.label, "settings": dict(c.settings), "status": c.status, "reason": c.reason}
        if c.status == "ok":
            # MFU against the bf16/fp16 peak only where the run used it.
            mixed = c.recipe.plugin.mixed_precision in ("bf16", "fp16")
            entry["summary"] = combination_summary(c.results, peak_flops=peak if mixed else None)
        entries.append(entry)
    ranked = sorted(
        (e for e in entries if e["status"] == "ok"), key=lambda e: -e["summary"]["pairs_per_second"]["median"]
    )
    for i, e in enumerate(ranked):
        e["rank"] = i + 1
    report = {
        "recipe": recipe_path,
        "sets": list(sets),
        "sweeps": [{"key": k, "values": v} for k, v in sweeps],
        "world_size": world_size,
        "rounds": rounds,
        "timed_steps_per_round": steps,
        "sample": [{k: v for k, v in s.items() if k not in ("data", "data_stats")} for s in samples.values()],
        "machine": machine,
        "combinations": entries,
        "ranking": [e["label"] for e in ranked],
        "recommendation": recommendation(ranked),
    }
    report["terminal"] = terminal_table(report)
    return report


def _rows(report: dict) -> list[list[str]]:
    rows = []
    ranked = sorted(report["combinations"], key=lambda e: e.get("rank", 10**6))
    for e in ranked:
        if e["status"] != "ok":
            continue
        s = e["summary"]
        p, t = s["pairs_per_second"], s["tokens_per_second"]
        ckpt = s.get("checkpoint", {})
        rows.append(
            [
                str(e["rank"]),
                e["label"],
                f"{p['median']:.1f} [{p['ci95'][0]:.1f}, {p['ci95'][1]:.1f}]",
                f"{t['median']:.0f}",
                f"{100 * s['padding_fraction']:.0f}%",
                f"{_memory_mib(s):.0f}" + (" GPU" if "peak_gpu_mib_per_process" in s else " RSS"),
                f"{ckpt['save_s']:.2f} / {ckpt['load_s']:.2f}" if ckpt else "-",
                f"{s['time_to_first_step_s']:.1f}",
                f"{100 * s['mfu']:.1f}%" if s["mfu"] is not None else "-",
            ]
        )
    return rows


HEADER = [
    "#",
    "combination",
    "pairs/s (95% CI)",
    "tokens/s",
    "padding",
    "peak MiB/proc",
    "ckpt save/load s",
    "first step s",
    "MFU",
]


def terminal_table(report: dict) -> str:
    rows = _rows(report)
    lines = []
    if rows:
        widths = [max(len(r[i]) for r in rows + [HEADER]) for i in range(len(HEADER))]
        for r in [HEADER] + rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    for e in report["combinations"]:
        if e["status"] != "ok":
            lines.append(f"{e['status']}: {e['label']}: {e['reason']}")
    lines.append("recommendation: " + report["recommendation"])
    return "\n".join(lines)


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [
        f"# rmrun bench: {report['recipe']}",
        "",
        f"{m['cpu_model']}, {m['cores']} cores, GPU: {m['gpu']}; torch {m['torch']}, colossalai {m['colossalai']}, "
        f"transformers {m['transformers']}; {m['date']}. {report['world_size']} process(es); {report['rounds']} "
        f"round(s) of 1 warm-up + {report['timed_steps_per_round']} timed steps per combination, combinations "
        f"alternating. Medians of per-step rates with bootstrap 95% CIs; non-padding tokens.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    out += ["| " + " | ".join(r) + " |" for r in _rows(report)]
    others = [e for e in report["combinations"] if e["status"] != "ok"]
    if others:
        out += ["", "| combination | status | reason |", "|---|---|---|"]
        out += [f"| {e['label']} | {e['status']} | {e['reason']} |" for e in others]
    out += ["", f"**Recommendation:** {report['recommendation']}", ""]
    return "\n".join(out)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sorted((e for e in report["combinations"] if e["status"] == "ok"), key=lambda e: e["rank"], reverse=True)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * max(1, len(ok))))
    if ok:
        medians = [e["summary"]["pairs_per_second"]["median"] for e in ok]
        lows = [m - e["summary"]["pairs_per_second"]["ci95"][0] for m, e in zip(medians, ok)]
        highs = [e["summary"]["pairs_per_second"]["ci95"][1] - m for m, e in zip(medians, ok)]
        ax.barh([e["label"] for e in ok], medians, xerr=[lows, highs], color="#4c72b0", capsize=3)
    else:
        ax.text(0.5, 0.5, "no combination ran on this machine", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("pairs/s (median per step, 95% CI)")
    ax.set_title(f"rmrun bench {os.path.basename(report['recipe'])} - {report['machine']['label']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out: str) -> list[str]:
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, name) for name in FILES]
    with open(paths[0], "w") as f:
        json.dump({k: v for k, v in report.items() if k != "terminal"}, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(markdown(report))
    plot(report, paths[2])
    return paths
