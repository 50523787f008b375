"""Using a trained reward model: ``rmrun score`` and ``rmrun eval`` on an export.

Text is rendered exactly as in training: the export's ``rmrun.json`` holds the chat
template, ``max_length`` and overflow rule it was trained with, the tokenizer is the one
saved beside the weights, and rewards are read by the same :class:`~rmrun.model.model.RewardReader`
as the training-time evaluation. The metrics are the training-time evaluation's formulas
(:func:`rmrun.train.loss.pair_sums`, the same length buckets), plus calibration and per-subset
accuracy.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import numpy as np

from rmrun.serve.exported import Export, ScoreError
from rmrun.serve.rows import BAD_ROW_POLICIES, Row, read_rows  # noqa: F401  (scoring's API)
from rmrun.serve.source import open_export

CALIBRATION_BINS = 10


# ------------------------------------------------------------------ scoring


def _shard(count: int, *, rank: int, world_size: int) -> np.ndarray:
    return np.arange(rank, count, world_size)


def score_rows(
    export: Export, rows: list[Row], *, batch_size: int = 16, rank: int = 0, world_size: int = 1, progress: bool = False
) -> dict[int, tuple[float, float, int, int]]:
    """``{row index: (chosen reward, rejected reward, chosen tokens, rejected tokens)}`` for this
    rank's shard of the rows; rows the overflow rule drops are absent."""
    from rmrun.data import tokenize_pairs

    data = export.contract["data"]
    shard = _shard(len(rows), rank=rank, world_size=world_size)
    mine = np.array([i for i in shard if rows[i].pair is not None], dtype=np.int64)  # bad rows have no pair
    tokenized = tokenize_pairs(
        [rows[i].pair for i in mine],
        export.tokenizer,
        max_length=data["max_length"],
        overflow=data["overflow"],
        template=export.template,
        family=export.family,
    )
    rewards = score_tokenized(export, tokenized, batch_size=batch_size, progress=progress)
    lengths = tokenized.lengths()
    return {
        int(mine[tokenized.pair_index[i]]): (
            float(rewards[i, 0]),
            float(rewards[i, 1]),
            int(lengths[i, 0]),
            int(lengths[i, 1]),
        )
        for i in range(len(rewards))
    }


def score_tokenized(export: Export, tokenized, *, batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """``(n, 2)`` float64 (chosen, rejected) rewards of tokenized pairs, batched longest first."""
    import torch

    from rmrun.data import collate
    from rmrun.model.model import RewardReader

    lengths = tokenized.lengths()
    order = np.argsort(-lengths.max(axis=1), kind="stable")  # longest first: batches of like lengths
    pad = export.tokenizer.pad_token_id if export.tokenizer.pad_token_id is not None else 0
    reader = RewardReader(export.net)
    out = np.zeros((len(order), 2))
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, unit="batch", file=sys.stderr, dynamic_ncols=True)
    with torch.no_grad():
        for start in batches:
            indices = order[start : start + batch_size]
            batch = collate(tokenized, indices, pad_token_id=pad)
            ids, mask = batch["input_ids"].to(export.device), batch["attention_mask"].to(export.device)
            rewards = reader(export.net, ids, mask).float().cpu().numpy()
            out[indices, 0], out[indices, 1] = rewards[: len(indices)], rewards[len(indices) :]
    return out


def score_lines(rows: list[Row], scores: dict) -> list[dict]:
    """One JSON-able record per input row, in input order. A row with several chosen or rejected
    responses has ``pairs``, a record per pair, and ``chosen_beats_all``."""
    lines = []
    for number, members in _input_rows(rows):
        row = rows[members[0]]
        record: dict[str, Any] = {"row": number, "source": row.source}
        if row.row_id is not None:
            record["id"] = row.row_id
        if row.subset is not None:
            record["subset"] = row.subset
        if len(members) > 1:
            record["pairs"] = [_pair_record(rows[i], i, scores) for i in members]
            scored = [p for p in record["pairs"] if "margin" in p]
            if scored:
                record["chosen_beats_all"] = all(p["margin"] > 0 for p in scored)
        else:
            record.update(_pair_record(row, members[0], scores))
        lines.append(record)
    return lines


def _input_rows(rows: list[Row]) -> list[tuple[int, list[int]]]:
    """``(input row number, indices of its Rows)`` in input order."""
    out: list[tuple[int, list[int]]] = []
    for i, row in enumerate(rows):
        if out and row.number >= 0 and rows[out[-1][1][0]].number == row.number:
            out[-1][1].append(i)
        else:
            out.append((row.number if row.number >= 0 else i, [i]))
    return out


def _pair_record(row: Row, i: int, scores: dict) -> dict:
    if row.error is not None:
        return {"error": row.error}
    if i not in scores:
        return {"dropped": 'longer than max_length (overflow = "drop")'}
    if row.single:
        return {"reward": scores[i][0]}
    chosen, rejected = scores[i][0], scores[i][1]
    return {"chosen": chosen, "rejected": rejected, "margin": chosen - rejected}


# ------------------------------------------------------------------ evaluation


def evaluate_scores(rows: list[Row], scores: dict, *, loss: dict) -> dict:
    """The training-time evaluation's report on scored pairs, plus ties, calibration of
    sigmoid(r_chosen - r_rejected) (ECE, Brier), per-subset accuracy and reward statistics."""
    import torch

    from rmrun.train.loss import metrics_from_sums, pair_losses, pair_sums
    from rmrun.train.trainer import accuracy_by_length, length_bucket_counts, longer_wins_credit

    kept = [i for i, row in enumerate(rows) if i in scores and not row.single]
    if not kept:
        raise ScoreError("no preference pairs to evaluate (rows need chosen and rejected)")
    chosen = torch.tensor([scores[i][0] for i in kept], dtype=torch.float32)
    rejected = torch.tensor([scores[i][1] for i in kept], dtype=torch.float32)
    lengths = np.array([[scores[i][2], scores[i][3]] for i in kept], dtype=np.int64)
    # The training objective: loss.margin, plus each pair's own margin scaled where the run used
    # data.margins, and the centering term.
    margin: float | torch.Tensor = loss["margin"]
    if loss.get("margins", "none") != "none":
        own = torch.tensor([getattr(rows[i].pair, "margin", 0.0) for i in kept], dtype=torch.float32)
        margin = loss["margin"] + loss.get("margin_scale", 1.0) * own
    center_coef = loss.get("center_coef", 0.0)
    losses = pair_losses(loss["name"], chosen, rejected, margin=margin, center_coef=center_coef)
    report: dict[str, Any] = {
        "pairs": len(kept),
        "dropped": sum(1 for i, r in enumerate(rows) if i not in scores and r.error is None),
        **metrics_from_sums(pair_sums(chosen, rejected, losses), center=center_coef > 0),
    }
    report["ties"] = int((chosen == rejected).sum())
    report["longer_wins_accuracy"] = longer_wins_credit(lengths) / len(kept)
    correct = (chosen > rejected).numpy()
    report["accuracy_by_length"] = accuracy_by_length(length_bucket_counts(lengths, correct))
    report.update(calibration(chosen.numpy().astype(np.float64) - rejected.numpy().astype(np.float64)))
    report.update(_groups_and_subsets(rows, kept, correct))
    both = np.concatenate([chosen.numpy(), rejected.numpy()]).astype(np.float64)
    report["reward_stats"] = {"mean": float(both.mean()), "std": float(both.std()), "pairs": len(kept)}
    return report


def _groups_and_subsets(rows: list[Row], kept: list[int], correct: np.ndarray) -> dict:
    """The training-time eval's ``group_metrics`` on the scored pairs: accuracy per subset where
    rows carry one, and where some input row gave several pairs (one chosen against several
    rejected) the share of input rows whose every scored pair is right, overall and per subset."""
    from types import SimpleNamespace

    from rmrun.data.arrays import subset_id_of, subset_names
    from rmrun.train.groups import group_metrics

    names = {name for name in (rows[i].subset for i in kept) if name}
    pairs = SimpleNamespace(  # what group_metrics reads of a data set
        group=np.array([rows[i].number for i in kept], dtype=np.int64),
        subset_id=np.array([subset_id_of(rows[i].subset or "") for i in kept], dtype=np.int32),
        stats={"subsets": subset_names([{str(subset_id_of(name)): name for name in names}])},
    )
    return group_metrics(correct, pairs)


def calibration(margins: np.ndarray, *, bins: int = CALIBRATION_BINS) -> dict:
    """Calibration of p = sigmoid(margin) as the probability that chosen is preferred.

    Each pair is counted both ways, (p, 1) and (1 - p, 0), so the reliability diagram covers
    [0, 1] whatever the order the pairs were written in. ECE: the pairs-weighted mean gap
    between confidence and accuracy over equal-width bins; Brier: mean (p - 1)^2.
    """
    p = 1.0 / (1.0 + np.exp(-margins))
    probs = np.concatenate([p, 1 - p])
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    which = np.minimum((probs * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        confidence, accuracy = float(probs[inside].mean()), float(labels[inside].mean())
        ece += inside.sum() / len(probs) * abs(confidence - accuracy)
        table.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": int(inside.sum()),
                "confidence": confidence,
                "accuracy": accuracy,
            }
        )
    return {"ece": float(ece), "brier": float(np.mean((p - 1.0) ** 2)), "calibration": table}


def report_table(report: dict) -> str:
    """The report as a few aligned lines for the terminal."""
    lines = [
        f"pairs {report['pairs']} (dropped {report['dropped']}, ties {report['ties']})",
        f"accuracy {report['accuracy']:.4f}   loss {report['loss']:.4f}   margin {report['margin']:.4f}   "
        f"longer-wins baseline {report['longer_wins_accuracy']:.4f}",
        f"calibration: ECE {report['ece']:.4f}   Brier {report['brier']:.4f}",
        f"rewards: mean {report['reward_stats']['mean']:.4f}   std {report['reward_stats']['std']:.4f}",
        "accuracy by length (longest side, tokens):",
    ]
    for b in report["accuracy_by_length"]:
        high = b["max_tokens"] if b["max_tokens"] is not None else "∞"
        lines.append(f"  [{b['min_tokens']}, {high}) {b['pairs']:>7} pairs  {b['accuracy']:.4f}")
    if "subsets" in report:
        width = max(len(name) for name in report["subsets"])
        lines.append("per subset:")
        for name, s in report["subsets"].items():
            lines.append(f"  {name:<{width}} {s['pairs']:>7} pairs  {s['accuracy']:.4f}")
    if "best_of_n_accuracy" in report:
        lines.append(
            f"best of N (the chosen response beats every rejected one): {report['best_of_n_accuracy']:.4f} "
            f"on {report['groups']} rows"
        )
        by_subset = {name: s for name, s in report.get("subsets", {}).items() if "best_of_n_accuracy" in s}
        width = max((len(name) for name in by_subset), default=0)
        for name, s in by_subset.items():
            lines.append(f"  {name:<{width}} {s['groups']:>7} rows   {s['best_of_n_accuracy']:.4f}")
    return "\n".join(lines)


# ------------------------------------------------------------------ commands


def _world():
    """(rank, world size, device): standalone, or the process group under torchrun."""
    import torch

    from rmrun.runtime import dist

    if dist.world_from_env().size <= 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ranked = dist.start(seed=0)
    device = torch.device("cuda", ranked.local_rank) if ranked.cuda else torch.device("cpu")
    return ranked.rank, ranked.world_size, device


def _gather(scores: dict, world_size: int) -> dict | None:
    """Every rank's scores on rank 0 (None elsewhere)."""
    if world_size == 1:
        return scores
    import torch.distributed as tdist

    # gather_object fills the placeholders with every rank's dict.
    parts: list[Any] | None = [None] * world_size if tdist.get_rank() == 0 else None
    tdist.gather_object(scores, parts, dst=0)
    if parts is None:
        return None
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return merged


def _write(text: str, out: str | None) -> None:
    if out in (None, "-"):
        sys.stdout.write(text)
        return
    import fsspec

    with fsspec.open(out, "w") as f:
        f.write(text)


def _finish(world_size: int) -> None:
    if world_size > 1:
        from rmrun.runtime import dist

        dist.stop()


def _score_everything(model: str, data: list[str], *, batch_size: int, bad_rows: str, then) -> int:
    """Open the export, score this rank's shard of the rows, and call ``then(export, rows,
    scores)`` on rank 0 with every rank's scores; the process group is closed on every path.
    Rank 0 names each skipped bad row on stderr, one line each."""
    rank, world_size, device = _world()
    try:
        export = open_export(model, device=device)
        rows = read_rows(
            data, format=export.contract["data"]["format"], bad_rows=bad_rows, rated=export.contract["data"]
        )
        if rank == 0:
            for row in rows:
                if row.error is not None:
                    print(f"{row.source}: {row.error} (skipped)", file=sys.stderr)
        scores = score_rows(
            export,
            rows,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            progress=rank == 0 and sys.stderr.isatty(),
        )
        merged = _gather(scores, world_size)
        if merged is not None:
            then(export, rows, merged)
    finally:
        _finish(world_size)
    return 0


def score(model: str, data: list[str], *, out: str | None, batch_size: int, bad_rows: str = "skip") -> int:
    """One JSON line per input row; a bad row is named on stderr and, with ``bad_rows="skip"``,
    written as a line with its ``error`` instead of rewards (``"error"``: the first one stops it)."""

    def write_lines(export, rows, scores):
        lines = list(score_lines(rows, scores))
        _write("".join(json.dumps(line) + "\n" for line in lines), out)
        if out not in (None, "-"):
            skipped = sum(1 for row in rows if row.error is not None)
            bad = f", skipped {skipped} bad" if skipped else ""
            if len(lines) == len(rows):
                print(f"scored {len(scores)} of {len(rows)} rows{bad}; wrote {out}", file=sys.stderr)
            else:  # rows of several pairs (best of N, rated responses): a line per input row
                print(
                    f"scored {len(scores)} pairs{bad}; wrote {len(lines)} lines, one per input row, to {out}",
                    file=sys.stderr,
                )

    return _score_everything(model, data, batch_size=batch_size, bad_rows=bad_rows, then=write_lines)


def evaluate(model: str, data: list[str], *, out: str | None, batch_size: int) -> int:
    def write_report(export, rows, scores):
        report = evaluate_scores(rows, scores, loss=export.contract["loss"])
        report["model"], report["data"] = model, list(data)
        print(report_table(report))
        if out is not None:
            _write(json.dumps(report, indent=2, default=_json_default) + "\n", out)

    return _score_everything(model, data, batch_size=batch_size, bad_rows="error", then=write_report)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(type(value).__name__)
