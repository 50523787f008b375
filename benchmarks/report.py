"""pytest-benchmark JSON -> ``<machine>.md`` (tables, goals MET / MISSED) and ``<machine>.png``
(pairs/s per plugin and config).

    python -m benchmarks.report benchmarks/results/<machine>.json [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchmarks.metrics import GOALS

VARIANT_NAMES = {
    "rmrun": "rmrun (Trainer step, standard forward, length-grouped, pad to longest)",
    "hand": "hand-written PyTorch loop (same batches)",
    "colossalchat": "ColossalChat batching (random, pad to max_length)",
    "dense": "the shared-prompt forward with its dense block mask through SDPA (the pair attention off)",
    "shared": "rmrun with the shared-prompt forward (one sequence per pair, its own length-grouped batches; "
    "the pair attention on CUDA)",
    "packed": "the shared-prompt forward with several pairs per row (data.pack_pairs)",
}
SHORT_NAMES = {
    "rmrun": "rmrun",
    "hand": "hand-written",
    "colossalchat": "ColossalChat batching",
    "dense": "rmrun shared-prompt, dense mask",
    "shared": "rmrun shared-prompt",
    "packed": "rmrun shared-prompt + packed",
}
MODEL_ORDER = {"tiny": 0, "small": 1, "medium": 2}


def _load(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _entries(doc: dict, kind: str) -> list[dict]:
    out = [b["extra_info"] for b in doc.get("benchmarks", []) if b.get("extra_info", {}).get("kind") == kind]
    return sorted(out, key=lambda e: (e.get("plugin", ""), e.get("nproc", 0), MODEL_ORDER.get(e.get("model"), 9)))


def _status(ok: bool) -> str:
    return "**MET**" if ok else "**MISSED**"


def _model_label(entry: dict) -> str:
    params = entry.get("num_params")
    return f"{entry['model']} ({params / 1e6:.2f}M)" if params else entry["model"]


def _config(entry: dict) -> str:
    return f"{entry['plugin']} × {entry['nproc']} proc, {entry['model']}"


# --------------------------------------------------------------------------- why (when missed)


def _why_hand(entry: dict) -> str:
    cmp = entry["rmrun_vs_hand"]
    hand_ms = entry["variants"]["hand"]["median_step_ms"]
    why = f"~{cmp['median_overhead_ms']:.1f} ms/step more on a {hand_ms:.0f} ms step: "
    if cmp["steps"] < 5:
        why += "too few paired steps to tell"
    elif entry["nproc"] == 1:
        why += (
            "~2/3 DDP wrapping a 1-process model (buffer broadcast, reducer, find_unused_parameters), "
            "~1/3 Trainer bookkeeping (metric sums and all-reduces); see benchmarks/README.md"
        )
    else:
        why += (
            "find_unused_parameters=True and two metric all-reduces per step (cross-process syncs) that "
            "the hand loop's DDP does not do; see benchmarks/README.md"
        )
    high = cmp["paired_median_ci95"][1]
    if high >= GOALS["rmrun_vs_hand"]:
        why += f"; not significant (CI reaches {high:.3f})"
    return why


def _why_colossalchat(entry: dict) -> str:
    r, c = entry["variants"]["rmrun"], entry["variants"]["colossalchat"]
    return (
        f"padding {r['padding_fraction']:.0%} vs {c['padding_fraction']:.0%}, but rmrun's non-padding "
        f"tokens/s ({r['tokens_per_second']:.0f}) is lower than ColossalChat's ({c['tokens_per_second']:.0f}): "
        "per-step fixed costs, not tokens, dominate at this size"
    )


def _why_shared(entry: dict, faster: str) -> str:
    r, s = entry["variants"]["rmrun"], entry["variants"][faster]
    saved = 1 - s["padded_tokens_per_second"] / s["pairs_per_second"] / (
        r["padded_tokens_per_second"] / r["pairs_per_second"]
    )
    return (
        f"it runs {saved:.0%} fewer (padded) positions per pair than the standard forward, which bounds the "
        "gain of the layers; attention over a dense block mask still scores every query-key pair of a row, "
        "and the optimizer step costs the same"
    )


def _why_checkpoint(entry: dict) -> str:
    ck = entry["checkpoint"]
    size = f"{ck['bytes'] / 1e6:.0f} MB" if ck.get("bytes") else "the checkpoint"
    step = f"a {1000 * ck['mean_step_s']:.0f} ms mean step"
    if not ck.get("async_upload"):  # blocking uploads (or a result from before the background timings)
        return (
            f"one save takes {ck['save_median_s']:.2f} s vs {step}: "
            f"{size} written, sha256-hashed and committed through the store each time"
        )
    why = (
        f"the training thread waits {ck['stall_median_s']:.2f} s per checkpoint vs {step}: the snapshot "
        f"({ck['snapshot_median_s']:.2f} s, {size} written to local scratch through the Booster) and, once "
        f"the upload is over, the commit ({ck['commit_median_s']:.2f} s: manifest, COMMIT, retention)"
    )
    if ck.get("upload_overrun_s"):
        why += (
            f"; the upload ({ck['upload_wait_median_s']:.2f} s) outlasts the interval, and the next "
            f"checkpoint waits {ck['upload_overrun_s']:.2f} s for it"
        )
    return why


def _why_startup(entry: dict) -> str:
    loaded = entry.get("resumed_checkpoint_loaded_median_s")
    tokenized = entry.get("fresh_tokenized_median_s")
    bits = []
    if loaded is not None:
        bits.append(f"the resumed run has loaded its checkpoint only at {loaded:.1f} s")
    if tokenized is not None:
        bits.append(f"the fresh run has tokenized its data at {tokenized:.1f} s")
    return "; ".join(bits) or "see the run logs"


# --------------------------------------------------------------------------- markdown


def _header(doc: dict) -> list[str]:
    meta = doc.get("rmrun_bench", {})
    m = meta.get("machine", {})
    lines = [
        f"# rmrun throughput benchmarks — `{m.get('label', 'unknown')}`",
        "",
        f"**Machine:** {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, GPU: {m.get('gpu', '?')} · "
        f"torch {m.get('torch', '?')} · colossalai {m.get('colossalai', '?')} · transformers "
        f"{m.get('transformers', '?')} · Python {m.get('python', '?')} · {m.get('date', '?')}",
        "",
    ]
    mode = (
        "**SMOKE** (one short iteration of each benchmark; numbers are not meaningful)" if meta.get("smoke") else "full"
    )
    train = _entries(doc, "train")
    lengths = train[0]["sequence_lengths"] if train else None
    data = ""
    if lengths:
        data = (
            f" Training data: {lengths.get('pairs', '?')} synthetic preference pairs with log-normal lengths "
            f"(tokens per sequence: mean {lengths['mean']:.0f}, median {lengths['p50']:.0f}, "
            f"p90 {lengths['p90']:.0f}, max {lengths['max']}; {lengths['truncated']} pairs truncated to "
            f"max_length)."
        )
    shape = (
        f"batch {meta.get('batch_size', '?')} pairs per rank per step; max_length {meta.get('max_length', '?')}; "
        if train
        else ""
    )  # (the throughput benchmarks' settings; the stall benchmark says its own)
    lines += [
        f"**Run:** {mode}; `benchmarks/run.sh`; {meta.get('threads_per_rank', '?')} intra-op thread per rank; "
        f"{shape}{'bf16 (every plugin)' if m.get('gpu', 'none') != 'none' else 'fp32'}; pytest wall time "
        f"{meta.get('pytest_seconds', 0):.0f} s.{data}",
        "",
    ]
    if meta.get("note"):
        lines += [f"**Note:** {meta['note']}", ""]
    return lines


def _goal_rows(doc: dict) -> list[tuple]:
    """(goal, config, measured, target, met, why when missed) for every goal check in ``doc``."""
    rows = []
    train = _entries(doc, "train")
    for e in train:
        if "rmrun_vs_hand" not in e:
            continue
        c = e["rmrun_vs_hand"]
        ok = c["paired_median"] >= GOALS["rmrun_vs_hand"]
        rows.append(
            (
                "1. rmrun step / hand-written loop, pairs/s",
                _config(e),
                f"{c['paired_median']:.3f} (95% CI {c['paired_median_ci95'][0]:.3f}–"
                f"{c['paired_median_ci95'][1]:.3f}, {c['steps']} paired steps; whole-run {c['overall']:.3f})",
                f"≥ {GOALS['rmrun_vs_hand']}",
                ok,
                "" if ok else _why_hand(e),
            )
        )
    for e in train:
        if "rmrun_vs_colossalchat" not in e:
            continue
        ratio = e["rmrun_vs_colossalchat"]["ratio"]
        ok = ratio >= GOALS["rmrun_vs_colossalchat"]
        rows.append(
            (
                "2. rmrun batching / ColossalChat batching, pairs/s",
                _config(e),
                f"{ratio:.2f}×",
                f"≥ {GOALS['rmrun_vs_colossalchat']:g}×",
                ok,
                "" if ok else _why_colossalchat(e),
            )
        )
    for e in train:
        if "checkpoint" not in e:
            continue
        ck = e["checkpoint"]
        ok = ck["overhead_pct"] <= GOALS["checkpoint_overhead_pct"]
        measured = f"{ck['overhead_pct']:.2f} %"
        if "async_upload" in ck:  # (results from before the background timings: the blocking save only)
            mode = "background upload" if ck["async_upload"] else "blocking upload"
            measured += (
                f" ({mode}; blocking save: {ck['blocking_overhead_pct']:.2f} %)"
                if ck["async_upload"]
                else f" ({mode}; background upload: {ck['background_overhead_pct']:.2f} %)"
            )
        rows.append(
            (
                f"3. checkpoint overhead every {ck['interval_steps']} steps (default)",
                _config(e),
                measured,
                f"≤ {GOALS['checkpoint_overhead_pct']:g} %",
                ok,
                "" if ok else _why_checkpoint(e),
            )
        )
    for e in _entries(doc, "startup"):
        ok = e["ratio"] <= GOALS["resumed_vs_fresh"]
        rows.append(
            (
                "4. resumed / fresh time to first optimizer step",
                f"ddp × 1 proc, {e['model']}",
                f"{e['ratio']:.2f}× ({e['resumed_median_s']:.1f} s / {e['fresh_median_s']:.1f} s)",
                f"≤ {GOALS['resumed_vs_fresh']:g}×",
                ok,
                "" if ok else _why_startup(e),
            )
        )
    for e in _entries(doc, "checkpoint_stall"):
        ratio = e.get("background_vs_blocking")
        ok = ratio is not None and ratio <= GOALS["background_vs_blocking_stall"]
        v = e["variants"]
        rows.append(
            (
                "5. training time lost per checkpoint, background / blocking upload",
                f"ddp × 1 proc, tiny, store at {e['bytes_per_second'] / 2**20:g} MiB/s",
                f"{100 * ratio:.1f} % ({1000 * v['background']['stall_per_checkpoint_s']:.0f} ms / "
                f"{1000 * v['blocking']['stall_per_checkpoint_s']:.0f} ms)"
                if ratio is not None
                else "—",
                f"≤ {100 * GOALS['background_vs_blocking_stall']:g} %",
                ok,
                "" if ok else "the snapshot or the commit on the training thread is as slow as the upload",
            )
        )
    for e in _entries(doc, "shared_prompt"):
        for faster, what in (("shared", "shared-prompt"), ("packed", "shared-prompt + packed")):
            if f"{faster}_vs_standard" not in e:
                continue
            c, target = e[f"{faster}_vs_standard"], GOALS[f"{faster}_vs_standard"][e["profile"]]
            ok = c["paired_median"] >= target
            rows.append(
                (
                    f"6. {what} / standard forward, pairs/s ({e['profile']} data)",
                    _config(e),
                    f"{c['paired_median']:.2f}× (95% CI {c['paired_median_ci95'][0]:.2f}–"
                    f"{c['paired_median_ci95'][1]:.2f}, {c['steps']} rounds; CPU time "
                    f"{c['paired_median_cpu']:.2f}×; whole-run {c['overall']:.2f}×)",
                    f"≥ {target:g}×",
                    ok,
                    "" if ok else _why_shared(e, faster),
                )
            )
    return rows


def _goals(doc: dict) -> list[str]:
    rows = _goal_rows(doc)
    train = _entries(doc, "train")
    lines = [
        "## Goals",
        "",
        "| goal | config | measured | target | status | why (when missed) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {g} | {c} | {m} | {t} | {_status(ok)} | {w} |" for g, c, m, t, ok, w in rows]
    diffs = [e["rmrun_vs_hand"]["loss_max_abs_diff"] for e in train if "rmrun_vs_hand" in e]
    if diffs:
        lines += [
            "",
            f"rmrun and the hand-written loop trained the same trajectory: largest per-step loss "
            f"difference {max(diffs):.1e} (the check fails above 1e-5).",
        ]
    if not rows:
        lines.append("| (no goal measured) | | | | | |")
    met = sum(1 for r in rows if r[4])
    lines += ["", f"{met} of {len(rows)} goal checks met.", ""]
    return lines


def _throughput(doc: dict) -> list[str]:
    lines = [
        "## Throughput per plugin and config",
        "",
        "| plugin | procs | model | variant | pairs/s | non-padding tokens/s | padding | median step | "
        "peak memory per process @ padded length | MFU | steps |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in _entries(doc, "train"):
        for name, v in e["variants"].items():
            memory = f"{v['peak_rss_mib']:.0f} MiB RSS"
            if "peak_gpu_mib" in v:
                memory = f"{v['peak_gpu_mib']:.0f} MiB GPU, {memory}"
            mfu = f"{v['mfu']:.1%}" if v.get("mfu") is not None else "—"
            lines.append(
                f"| {e['plugin']} | {e['nproc']} | {_model_label(e)} | {SHORT_NAMES.get(name, name)} | "
                f"{v['pairs_per_second']:.1f} | {v['tokens_per_second']:.0f} | {v['padding_fraction']:.1%} | "
                f"{v['median_step_ms']:.0f} ms | {memory} @ {v['memory_probe_padded_length']} | {mfu} | "
                f"{v['steps']} |"
            )
    skipped = {}  # (plugin, procs, reason) -> models, in order
    for s in doc.get("rmrun_bench", {}).get("skipped", []):
        name = s["name"]
        if name.startswith("test_train["):
            plugin, procs, model = name[len("test_train[") : -1].split("-")
            skipped.setdefault((plugin, procs.removesuffix("proc"), s["reason"]), []).append(model)
    for (plugin, procs, reason), models in skipped.items():
        lines.append(f"| {plugin} | {procs} | {', '.join(models)} | — | skipped: {reason} | | | | | | |")
    lines += [
        "",
        "MFU: 6 × parameters × non-padding tokens/s over the GPU's dense bf16 peak "
        f"({(doc.get('rmrun_bench', {}).get('machine', {}).get('peak_bf16_flops_per_gpu') or 0) / 1e12:.0f} "
        "TFLOP/s here); attention's quadratic term is not counted. Peak GPU memory: "
        "torch.cuda.max_memory_allocated of the worker during the untimed probe step.",
        "",
        "Variants: " + "; ".join(f"**{SHORT_NAMES[k]}** = {v}" for k, v in VARIANT_NAMES.items()) + ".",
        "Peak RSS: the kernel's high-water mark (VmHWM) of one worker process during an extra, untimed "
        "step of that variant on its largest batch of the epoch (freed heap pages returned to the OS "
        "and the mark reset just before); the variants share the process, so it includes all of their "
        "models and optimizer states. With long-tailed data rmrun's largest length-grouped batch is "
        "max_length long as well, so its peak is ColossalChat's; the saving is in the typical batch "
        "(see the padding column).",
        "",
    ]
    return lines


def _shared_prompt(doc: dict) -> list[str]:
    entries = _entries(doc, "shared_prompt")
    if not entries:
        return []
    gpu = doc.get("rmrun_bench", {}).get("machine", {}).get("gpu", "none") != "none"
    precision = "bf16 on CUDA; the pair attention in the shared variants" if gpu else "fp32"
    lines = [
        f"## Shared-prompt forward vs standard forward (ddp × 1 proc, {precision})",
        "",
        "| data | model | variant | pairs/s | pairs/CPU-s | non-padding tokens/s | padding | median step | "
        "peak RSS @ padded length | steps |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in sorted(entries, key=lambda e: (e["profile"], MODEL_ORDER.get(e["model"], 9))):
        lengths = e["sequence_lengths"]
        for name, v in e["variants"].items():
            lines.append(
                f"| {e['profile']} (mean {lengths['mean']:.0f} tokens/side) | {_model_label(e)} | "
                f"{SHORT_NAMES.get(name, name)} | {v['pairs_per_second']:.1f} | {v['pairs_per_cpu_second']:.1f} | "
                f"{v['tokens_per_second']:.0f} | {v['padding_fraction']:.1%} | {v['median_step_ms']:.0f} ms | "
                f"{v['peak_rss_mib']:.0f} MiB @ {v['memory_probe_padded_length']} | {v['steps']} |"
            )
    lines += [
        "",
        "Same initial weights, interleaved step by step. rmrun and the hand-written loop take the same "
        "batches; the shared-prompt variants take their own (grouped by the shared sequence's length, as a "
        "run with data.share_prompt does) from the same seed, so round k of every variant draws on the same "
        "mega-chunk of pairs; goal 5 is the median over rounds of the per-round pairs/s ratio, the whole-run "
        "ratio beside it. Non-padding tokens are the pairs' own tokens (both sides, the prompt counted in "
        "each) for every variant, so tokens/s compares like pairs/s; padding is the share of padded "
        "positions the forward ran (a shared row is prompt + chosen + rejected; packed rows hold several "
        "pairs). pairs/CPU-s divides by the worker's process CPU time (one intra-op thread), which time "
        "spent descheduled by other work (the machine is shared) does not inflate. Rewards, losses and gradients of the shared "
        "and packed forwards equal the standard forward's within fp32 rounding, and within bf16 rounding on CUDA "
        "(tests/unit/test_shared_prompt.py, tests/unit/test_pair_attention.py).",
        "",
    ]
    return lines


def _checkpoint(doc: dict) -> list[str]:
    entries = [e for e in _entries(doc, "train") if e.get("checkpoint")]
    if not any("stall_median_s" in e["checkpoint"] for e in entries):
        return _checkpoint_blocking_only(entries)
    default = next(e["checkpoint"]["async_upload"] for e in entries if "async_upload" in e["checkpoint"])
    background, blocking = (
        ("background upload (default)", "blocking save")
        if default
        else (
            "background upload",
            "blocking save (default)",
        )
    )
    lines = [
        "## Checkpoint save / load (rmrun.train.checkpoint, local state store)",
        "",
        f"| plugin | procs | model | checkpoint size | mean rmrun step | {background}: training waits (median) | "
        f"overhead | upload, in the background (median) | {blocking} (median) | overhead | load (median) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        ck = e["checkpoint"]
        size = f"{ck['bytes'] / 1e6:.1f} MB" if ck.get("bytes") else "?"
        if "stall_median_s" in ck:
            stall = (
                f"{1000 * ck['stall_median_s']:.0f} ms (snapshot {1000 * ck['snapshot_median_s']:.0f} + "
                f"commit {1000 * ck['commit_median_s']:.0f})"
            )
            if ck.get("upload_overrun_s"):
                stall += f" + {1000 * ck['upload_overrun_s']:.0f} ms waiting for the upload"
            stall_overhead = f"{ck['background_overhead_pct']:.2f} %"
            upload = f"{1000 * ck['upload_wait_median_s']:.0f} ms"
        else:
            stall = stall_overhead = upload = "—"
        lines.append(
            f"| {e['plugin']} | {e['nproc']} | {e['model']} | {size} | {1000 * ck['mean_step_s']:.0f} ms | "
            f"{stall} | {stall_overhead} | {upload} | {1000 * ck['save_median_s']:.0f} ms | "
            f"{ck.get('blocking_overhead_pct', ck['overhead_pct']):.2f} % | {1000 * ck['load_median_s']:.0f} ms |"
        )
    interval = entries[0]["checkpoint"]["interval_steps"]
    lines += [
        "",
        f"Overhead at the default interval ({interval} steps) = time the training loop loses per checkpoint / "
        f"({interval} × mean step + that time); `checkpoint.async_upload` defaults to "
        f"{'true' if default else 'false'}, the goal is judged on the "
        f"{'background' if default else 'blocking'} figure. Blocking save: `save_checkpoint`, the whole commit "
        "(model, optimizer and scheduler through the Booster, RNG states, trainer state, upload with manifest "
        "hashes, COMMIT, retention of older checkpoints) on the training thread. Background upload, as the "
        "checkpoint hook does it: the training thread waits for `start_checkpoint` (the snapshot into "
        "node-local scratch) and, at the first step boundary after every rank's upload is over, for "
        "`PendingCheckpoint.finish` (file lists gathered, manifest, COMMIT, retention); the upload between "
        "them runs in a background thread while training goes on (should it outlast the interval, the next "
        "checkpoint waits for the rest, counted in). What the upload thread takes from the training steps "
        "it overlaps is not counted here; the checkpoint-stall benchmark measures it end to end.",
        "",
    ]
    return lines


def _checkpoint_blocking_only(entries: list[dict]) -> list[str]:
    """The table of results from before the background timings: the blocking save only."""
    lines = [
        "## Checkpoint save / load (rmrun.train.checkpoint, local state store)",
        "",
        "| plugin | procs | model | checkpoint size | save (median) | load (median) | mean rmrun step | "
        "overhead at the default interval |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        ck = e["checkpoint"]
        size = f"{ck['bytes'] / 1e6:.1f} MB" if ck.get("bytes") else "?"
        lines.append(
            f"| {e['plugin']} | {e['nproc']} | {e['model']} | {size} | {1000 * ck['save_median_s']:.0f} ms | "
            f"{1000 * ck['load_median_s']:.0f} ms | {1000 * ck['mean_step_s']:.0f} ms | "
            f"{ck['overhead_pct']:.2f} % (every {ck['interval_steps']} steps) |"
        )
    lines += [
        "",
        "Overhead = save / (interval × mean step + save). A save here is the whole commit: "
        "model, optimizer and scheduler through the Booster, RNG states, trainer state, manifest "
        "hashes, COMMIT and retention of older checkpoints.",
        "",
    ]
    return lines


def _startup(doc: dict) -> list[str]:
    lines = [
        "## Process start to first optimizer step (`rmrun run` subprocesses)",
        "",
        "| model | fresh (median) | resumed (median) | resumed / fresh | fresh: data tokenized at | "
        "resumed: checkpoint loaded at | runs each |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in _entries(doc, "startup"):
        tok = e.get("fresh_tokenized_median_s")
        loaded = e.get("resumed_checkpoint_loaded_median_s")
        lines.append(
            f"| {e['model']} | {e['fresh_median_s']:.2f} s | {e['resumed_median_s']:.2f} s | "
            f"{e['ratio']:.2f}× | {f'{tok:.2f} s' if tok is not None else '—'} | "
            f"{f'{loaded:.2f} s' if loaded is not None else '—'} | {e['rounds']} |"
        )
    if not _entries(doc, "startup"):
        lines.append("| (not measured) | | | | | | |")
    lines += [
        "",
        "Fresh: empty state root (tokenize, boost, train). Resumed: the same command after the fresh "
        "run was stopped with SIGTERM (checkpoint committed, exit 75). Times are from process creation "
        "to the first `step N/M` log line (`--set log.interval_steps=1`).",
        "",
    ]
    return lines


def _median_text(xs: list[float]) -> str:
    return f"{sorted(xs)[len(xs) // 2]:.3f} s" if xs else "—"


def _checkpoint_stall(doc: dict) -> list[str]:
    entries = _entries(doc, "checkpoint_stall")
    if not entries:
        return []
    lines = []
    for e in entries:
        lines += [
            f"## Training time lost per checkpoint, store throttled to {e['bytes_per_second'] / 2**20:g} MiB/s",
            "",
            f"Quickstart recipe (tiny Llama, ddp, 1 process), {e['total_steps']} steps, a checkpoint every "
            f"{e['interval_steps']} steps ({e['periodic_checkpoints']} measured per run, the last step's "
            f"blocking final checkpoint left out), {e['rounds']} round(s) of each variant, in turn.",
            "",
            "| uploads | lost per checkpoint (hook time) | lost per checkpoint (end to end) | mean step | "
            "snapshot (median) | upload (median) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, v in e["variants"].items():
            snaps = [c["snapshot_seconds"] for c in v["checkpoints"] if c.get("snapshot_seconds") is not None]
            uploads = [c["upload_seconds"] for c in v["checkpoints"] if c.get("upload_seconds") is not None]
            lost = f"{v['stall_per_checkpoint_s']:.3f} s" + (" (noise floor)" if name == "none" else "")
            e2e = "—" if name == "none" else f"{v['end_to_end_lost_per_checkpoint_s']:.3f} s"
            lines.append(
                f"| {name} | {lost} | {e2e} | {1000 * v['mean_step_s']:.0f} ms | {_median_text(snaps)} | "
                f"{_median_text(uploads)} |"
            )
        lines += ["", "Per checkpoint (step: snapshot s / upload s):", ""]
        for name in ("blocking", "background"):
            cells = ", ".join(
                f"{c['step']}: {c['snapshot_seconds']:.3f} / {c['upload_seconds']:.3f}"
                for c in e["variants"][name]["checkpoints"]
            )
            lines.append(f"- {name}: {cells}")
        lines += [
            "",
            "Hook time: the time the training loop spent in the checkpoint hook (snapshot; with blocking "
            "uploads also the upload and commit; with background ones the commit at a later step boundary "
            "and any wait for an upload still running), less the hook's cost on a step without a "
            "checkpoint (each run's median hook time: "
            + ", ".join(f"{n} {1000 * v['idle_hook_seconds']:.1f} ms" for n, v in e["variants"].items())
            + "). End to end: the loop's wall time less the no-checkpoint run's of the same round, per "
            "checkpoint; it also counts the upload thread competing for the CPU, and every other process "
            "on the machine: on a shared machine it is mostly noise (compare the no-checkpoint runs' loop "
            "times: " + ", ".join(f"{t:.1f} s" for t in e["variants"]["none"]["loop_seconds"]) + ").",
            "",
        ]
    return lines


def _tokenize(doc: dict) -> list[str]:
    lines = [
        "## Tokenize (rmrun.data.tokenize_pairs)",
        "",
        "| pairs | rounds | pairs/s | tokens/s |",
        "|---:|---:|---:|---:|",
    ]
    for b in doc.get("benchmarks", []):
        e = b.get("extra_info", {})
        if e.get("kind") == "tokenize":
            lines.append(
                f"| {e['pairs']} | {b['stats']['rounds']} | {e['pairs_per_second']:.0f} | "
                f"{e['tokens_per_second']:.0f} |"
            )
    if not any(b.get("extra_info", {}).get("kind") == "tokenize" for b in doc.get("benchmarks", [])):
        lines.append("| (not measured) | | | |")
    lines += [
        "",
        "Median over rounds; both sides of each pair rendered with the chat template and tokenized "
        "with the shipped tiny tokenizer (fast, batched).",
        "",
    ]
    return lines


def _token_memory(doc: dict) -> list[str]:
    entries = _entries(doc, "token_memory")
    if not entries:
        return []
    lines = [
        "## Token arrays in memory (loaded against mapped)",
        "",
        "| pairs | file MiB | variant | RssAnon growth MiB | RssFile growth MiB |",
        "|---:|---:|---|---:|---:|",
    ]
    for e in entries:
        for variant, grown in e["grown_mib"].items():
            lines.append(
                f"| {e['pairs']} | {e['file_mib']:.0f} | {variant} | {grown['RssAnon']:.0f} | {grown['RssFile']:.0f} |"
            )
    lines += [
        "",
        "One fresh process per variant: the sampler's lengths, then 512 batches collated across the whole "
        "file. RssAnon is private to the rank; RssFile is clean page cache, shared by a node's ranks and "
        "dropped under memory pressure.",
        "",
    ]
    return lines


def _method() -> list[str]:
    return [
        "## How it was measured",
        "",
        "- Variants run **side by side in the same worker processes, interleaved step by step** (one "
        "optimizer step of each per round, the order rotating every round; ColossalChat batching, whose steps "
        "all cost about the same, joins every few rounds). The first round is a warm-up and is not counted.",
        "- rmrun and the hand-written loop start from the same weights and take exactly the same batches "
        "(rmrun's sampler), so their per-step times are paired; goal 1 uses the median of the paired ratios "
        "(hand time / rmrun time, with a bootstrap 95% confidence interval), which shrugs off other work on "
        "the machine; the whole-run pairs/s ratio is shown beside it. Their losses are checked equal.",
        "- 2 processes: torch.multiprocessing spawn, gloo, a port chosen by the OS; a step's time is the "
        "slowest rank's; pairs and tokens are summed over ranks.",
        "- Raw per-step times are in the JSON next to this file (`extra_info.variants.*.step_seconds`).",
        "",
    ]


def markdown(doc: dict) -> str:
    # A run of one benchmark alone (-k test_checkpoint_stall, -k test_shared_prompt) leaves the
    # other sections out.
    throughput = bool(_entries(doc, "train"))
    lines = _header(doc) + _goals(doc)
    if throughput:
        lines += _throughput(doc)
    lines += _shared_prompt(doc)
    if throughput:
        lines += _checkpoint(doc)
    lines += _checkpoint_stall(doc)
    if throughput or _entries(doc, "startup"):
        lines += _startup(doc)
    if throughput or any(b.get("extra_info", {}).get("kind") == "tokenize" for b in doc.get("benchmarks", [])):
        lines += _tokenize(doc)
    lines += _token_memory(doc)
    if throughput:
        lines += _method()
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = _entries(doc, "train")
    meta = doc.get("rmrun_bench", {})
    m = meta.get("machine", {})
    models = sorted({e["model"] for e in train}, key=lambda s: MODEL_ORDER.get(s, 9)) or ["tiny"]
    variants = [v for v in ("rmrun", "hand", "colossalchat") if any(v in e["variants"] for e in train)]
    colors = {"rmrun": "#1f77b4", "hand": "#7f7f7f", "colossalchat": "#ff7f0e"}
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 5.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        entries = [e for e in train if e["model"] == model]
        configs = [f"{e['plugin']}\n× {e['nproc']} proc" for e in entries]
        width = 0.8 / max(1, len(variants))
        for j, v in enumerate(variants):
            xs, ys = [], []
            for i, e in enumerate(entries):
                if v in e["variants"]:
                    xs.append(i + (j - (len(variants) - 1) / 2) * width)
                    ys.append(e["variants"][v]["pairs_per_second"])
            bars = ax.bar(xs, ys, width, label=SHORT_NAMES[v], color=colors[v])
            ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
        ax.set_xticks(range(len(entries)), configs)
        ax.set_title(f"{model} Llama reward model")
        ax.set_ylabel("pairs / s (higher is better)")
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    skipped = sorted(
        {
            s["name"][len("test_train[") :].split("-")[0]
            for s in meta.get("skipped", [])
            if s["name"].startswith("test_train[")
        }
    )
    note = f"skipped (needs CUDA): {', '.join(skipped)}" if skipped else ""
    title = (
        f"rmrun pairs/s — {m.get('label', '?')}: {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, "
        f"GPU {m.get('gpu', '?')}; torch {m.get('torch', '?')}, colossalai {m.get('colossalai', '?')}; "
        f"{m.get('date', '?')}" + (" [SMOKE]" if meta.get("smoke") else "")
    )
    fig.suptitle(title, fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if labels:  # (a run of the checkpoint-stall benchmark alone has no throughput bars)
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=len(labels),
            fontsize=9,
            bbox_to_anchor=(0.5, 0.035),
            frameon=False,
        )
    if note:
        fig.text(0.5, 0.01, note, ha="center", fontsize=8, style="italic")
    fig.tight_layout(rect=(0, 0.09, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(json_path: Path, out_dir: Path | None = None, label: str | None = None) -> tuple[Path, Path | None]:
    """The markdown, and the plot when there are per-plugin throughput entries (a run of
    ``-k test_shared_prompt`` alone has none)."""
    doc = _load(json_path)
    label = label or doc.get("rmrun_bench", {}).get("machine", {}).get("label") or json_path.stem
    out_dir = out_dir or json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, png_path = out_dir / f"{label}.md", out_dir / f"{label}.png"
    md_path.write_text(markdown(doc) + "\n")
    if not _entries(doc, "train"):
        return md_path, None
    plot(doc, png_path)
    return md_path, png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: the JSON's directory")
    parser.add_argument("--label", default=None, help="file name stem; default: the machine label")
    args = parser.parse_args(argv)
    md_path, png_path = write_report(args.json, args.out_dir, args.label)
    print(f"wrote {os.path.relpath(md_path)}" + (f" and {os.path.relpath(png_path)}" if png_path else ""))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
