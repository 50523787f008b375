"""Accuracy per group of pairs: best-of-N over a row's pairs, and accuracy per subset and per
source of a mixture, from each pair's correctness (the eval sums' ``correct``)."""

from __future__ import annotations

from typing import Any

import numpy as np


def group_metrics(correct: np.ndarray, data) -> dict:
    """Best-of-N accuracy and accuracy per subset and per source from each pair's correctness.

    ``best_of_n_accuracy``, where some row gave several pairs (one chosen against several
    rejected: RewardBench 2's best-of-4): the share of rows whose chosen response beat every
    rejected one (a pair that is not numbered is a row of its own); with ``groups`` the number
    of rows. ``subsets``: per subset name (``data.stats["subsets"]``), its pairs and accuracy,
    and its rows and best-of-N accuracy where it has grouped rows. ``sources``: the same per
    source of a mixture (``data.stats["sources"]``)."""
    out: dict[str, Any] = {}
    group = np.asarray(data.group, dtype=np.int64)
    # Pairs not numbered (-1) are rows of their own: ids below every row number.
    group = np.where(group < 0, -2 - np.arange(len(group), dtype=np.int64), group)
    stats = data.stats or {}

    def rows(mask: np.ndarray) -> dict:
        ids, inverse = np.unique(group[mask], return_inverse=True)
        wrong = np.bincount(inverse, weights=(~correct[mask]).astype(np.float64), minlength=len(ids))
        return {"groups": len(ids), "best_of_n_accuracy": float((wrong == 0).mean()) if len(ids) else None}

    grouped = len(np.unique(group)) < len(group)
    if grouped:
        out.update(rows(np.ones(len(group), dtype=bool)))

    def table(ids: np.ndarray, names: dict) -> dict:
        entries = {}
        for key, name in names.items():
            mask = ids == int(key)
            if mask.any():
                entry: dict[str, Any] = {"pairs": int(mask.sum()), "accuracy": float(correct[mask].mean())}
                if grouped:
                    entry.update(rows(mask))
                entries[name] = entry
        return entries

    if stats.get("subsets"):
        out["subsets"] = table(np.asarray(data.subset_id), stats["subsets"])
    if stats.get("sources"):
        out["sources"] = table(np.asarray(data.source_id), stats["sources"])
    return out
