"""The numbers of recipes/minilm-rated-docstrings.toml's runs, with and without margins, as a
Markdown table (benchmarks/results/rated-docstrings-<machine>.md).

For each run (``state/<name>``, trained as the results file says) it reads the final eval of
``export/eval.json`` and scores the eval file with the export (``rmrun score``) to split the
accuracy by the kind of pair: own summary over a sibling's (gap 1), own over another module's
(gap 2), sibling over another module's (gap 1). ``top-1`` is the share of questions whose own
summary gets the highest reward of the three, ``all 3`` the share with all three pairs right
(rmrun's best-of-N on these rows). ``BT loss`` is -log sigmoid(r_chosen - r_rejected) with no
margin, so that the runs with and without margins compare (the eval's own loss includes each
pair's margin where the run trains with them). A run's wall time is read from its log's
``WALL <seconds> s`` line (``/usr/bin/time -f "WALL %e s"``), where there is one.

    python benchmarks/rated_docstrings.py --logs /tmp/rruns minilm-rated-docstrings-scores-s42 ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL = os.path.join(REPO, "recipes", "data", "rated_docstrings_eval.jsonl")
KINDS = {(3, 2): "own > sibling", (3, 1): "own > other module", (2, 1): "sibling > other module"}


def all_pairs_scores(row: dict) -> list[tuple[int, int]]:
    """(chosen rating, rejected rating) of each pair, in rmrun's all_pairs order."""
    scores = [r["score"] for r in row["responses"]]
    return [
        (max(scores[i], scores[j]), min(scores[i], scores[j]))
        for i in range(len(scores))
        for j in range(i + 1, len(scores))
        if scores[i] != scores[j]
    ]


def scored(export: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "scores.jsonl")
        command = [sys.executable, "-m", "rmrun", "score", os.path.abspath(export), EVAL, "--out", out]
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        with open(out) as f:
            return [json.loads(line) for line in f]


def summary(state: str, log: str | None) -> dict:
    final = json.load(open(os.path.join(state, "export", "eval.json")))["final"]
    with open(EVAL) as f:
        rows = [json.loads(line) for line in f]
    right = {kind: [] for kind in KINDS.values()}
    top1, bt = [], []
    for row, result in zip(rows, scored(os.path.join(state, "export"))):
        rewards = {}
        for (hi, lo), pair in zip(all_pairs_scores(row), result["pairs"]):
            right[KINDS[hi, lo]].append(pair["chosen"] > pair["rejected"])
            bt.append(math.log1p(math.exp(-(pair["chosen"] - pair["rejected"]))))
            rewards[hi], rewards[lo] = pair["chosen"], pair["rejected"]
        top1.append(rewards[3] > max(rewards[2], rewards[1]))
    wall = None
    if log and os.path.exists(log):
        found = re.findall(r"^WALL ([\d.]+) s$", open(log).read(), flags=re.M)
        wall = float(found[-1]) if found else None
    return {
        "pairs": final["pairs"],
        "accuracy": final["accuracy"],
        "all3": final.get("best_of_n_accuracy"),
        "groups": final.get("groups"),
        "eval_loss": final["loss"],
        "bt_loss": sum(bt) / len(bt),
        "top1": sum(top1) / len(top1),
        **{kind: sum(v) / len(v) for kind, v in right.items()},
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run names (state/<name>)")
    parser.add_argument("--state-root", default=os.path.join(REPO, "state"))
    parser.add_argument("--logs", help="folder of <name>.log files with the WALL line")
    args = parser.parse_args()
    print(
        "| run | eval pairs | accuracy | own > sibling | own > other module | sibling > other module "
        "| top-1 | all 3 right (best-of-N) | eval loss | BT loss | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.runs:
        log = os.path.join(args.logs, f"{name}.log") if args.logs else None
        s = summary(os.path.join(args.state_root, name), log)
        wall = f"{s['wall']:.0f}" if s["wall"] is not None else "-"
        print(
            f"| {name} | {s['pairs']} | {s['accuracy']:.4f} | {s['own > sibling']:.3f} | {s['own > other module']:.3f} "
            f"| {s['sibling > other module']:.3f} | {s['top1']:.3f} | {s['all3']:.4f} | {s['eval_loss']:.4f} "
            f"| {s['bt_loss']:.4f} | {wall} |"
        )


if __name__ == "__main__":
    main()
