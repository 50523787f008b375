"""What ``rmrun report`` shows, read from a run's state store alone (local or any fsspec URL).

Everything comes through :class:`~rmrun.store.StateStore` and is only read:

- the per-step metric lines and the evaluations from the append-only ``history-<step>``
  pieces (never deleted by retention); each piece's manifest also says when it was committed
  and by which lease generation, which gives the wall-clock throughput between checkpoints;
- where each start of the run took up training from the ``starts/<generation>`` records (a
  start that loaded a checkpoint is a resume); a state written before those records existed
  has its resumes inferred from the generations of the history pieces;
- the final evaluation (``eval-final``), the export record, the plan and recipe records, the
  run identity (the resolved result-changing recipe keys), quarantine notes;
- the tokenized eval pairs (``tokenize-*``), whose token lengths give the longer-response-wins
  baseline per length bucket, and which the final model can score for the reward histograms
  and the calibration curve (:func:`score_eval_pairs`).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field

import numpy as np

from rmrun.store.keys import (
    CHECKPOINT_PREFIX,
    EVAL_FINAL_KEY,
    EXPORT_KEY,
    IDENTITY_KEY,
    PLAN_RECORD,
    QUARANTINED_RECORDS,
    RECIPE_RECORD,
    START_RECORDS,
    TOKENIZE_PREFIX,
)


class ReportError(ValueError):
    """A user error in ``rmrun report``: one line, exit code 2."""


@dataclass
class Resume:
    generation: int
    step: int  # the step training took up from (the checkpoint's step; 0: started over)
    checkpoint: str | None
    time: float | None
    world_size: int | None
    inferred: bool = False


@dataclass
class RunRecord:
    source: str
    name: str
    plan: dict | None = None
    recipe_text: str | None = None
    recipe_path: str | None = None
    recipe_keys: dict | None = None
    metrics: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    final: dict | None = None
    resumes: list = field(default_factory=list)  # Resume, in generation order; the first start is not one
    first_start: Resume | None = None
    num_starts: int = 0  # lease generations taken (every start of `rmrun run`, done or not)
    throughput: list = field(default_factory=list)  # {step, pairs_per_second, tokens_per_second}
    checkpoints: list = field(default_factory=list)  # committed checkpoint steps
    quarantined: list = field(default_factory=list)
    export_url: str | None = None
    complete: bool = False
    eval_lengths: np.ndarray | None = None  # (n, 2) chosen/rejected token counts of the eval pairs
    notes: list = field(default_factory=list)

    @property
    def epoch_ends(self) -> list[int]:
        """Steps that ended an epoch (the last step before a line of the next epoch, and the last step)."""
        ends = [a["step"] for a, b in zip(self.metrics, self.metrics[1:]) if b["epoch"] != a["epoch"]]
        if self.metrics and self.complete:
            ends.append(self.metrics[-1]["step"])
        return ends


def _time(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def _json(state, name: str):
    return json.loads(state.read_bytes(name))


def read_history(store) -> tuple[dict, dict, list[dict]]:
    """Metric lines and evals by step (the first committed copy of each step wins: a resumed run
    recomputes the same lines), and each piece's {end, since, generation, time}."""
    from rmrun.train.history import committed_history

    metrics: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    pieces: list[dict] = []
    for _, state, piece in committed_history(store):
        for line in piece["metrics"]:
            metrics.setdefault(line["step"], line)
        for result in piece["evals"]:
            evals.setdefault(result["step"], result)
        meta = state.manifest["meta"]
        pieces.append(
            {
                "end": meta["step"],
                "since": meta["since"],
                "generation": state.manifest["generation"],
                "time": _time(state.manifest["time"]),
            }
        )
    return metrics, evals, sorted(pieces, key=lambda p: (p["end"], p["time"]))


def read_starts(store, pieces: list[dict]) -> list[Resume]:
    """Every start that took up training, oldest first: the ``starts/`` records, else inferred
    from the generations of the history pieces."""
    records = store.read_records(START_RECORDS)
    if records:
        return [
            Resume(
                generation=r["generation"],
                step=r["step"],
                checkpoint=r.get("checkpoint"),
                time=r.get("time"),
                world_size=r.get("world_size"),
            )
            for r in sorted(records.values(), key=lambda r: r["generation"])
        ]
    starts, seen = [], set()
    for piece in sorted(pieces, key=lambda p: p["time"]):
        if piece["generation"] not in seen:
            seen.add(piece["generation"])
            starts.append(
                Resume(
                    generation=piece["generation"],
                    step=piece["since"],
                    checkpoint=None,
                    time=None,
                    world_size=None,
                    inferred=True,
                )
            )
    return starts


def pairs_per_step(metrics: list[dict]) -> dict[int, int]:
    """Pairs each optimizer step trained on, from the epoch's running pair count."""
    out, previous = {}, None
    for line in metrics:
        before = previous["pairs_consumed"] if previous is not None and previous["epoch"] == line["epoch"] else 0
        out[line["step"]] = line["pairs_consumed"] - before
        previous = line
    return out


def throughput(metrics: dict, pieces: list[dict], starts: list[Resume]) -> list[dict]:
    """Pairs and tokens per second of wall-clock time between consecutive commits of one process
    (history pieces; a start's record for the first), evaluation and checkpoint time included."""
    pairs = pairs_per_step([metrics[s] for s in sorted(metrics)])
    start_time = {s.generation: (s.step, s.time) for s in starts if s.time is not None}
    points: list[dict] = []
    last: dict[int, tuple[int, float]] = {}  # generation: (step, time) of its latest commit
    for piece in sorted(pieces, key=lambda p: p["time"]):
        generation, since = piece["generation"], piece["since"]
        reference = last.get(generation)
        if reference is None or reference[0] != since:
            reference = start_time.get(generation)
        last[generation] = (piece["end"], piece["time"])
        if reference is None or reference[0] != since or piece["time"] <= reference[1]:
            continue
        steps = [s for s in range(since + 1, piece["end"] + 1) if s in metrics]
        seconds = piece["time"] - reference[1]
        points.append(
            {
                "step": piece["end"],
                "since": since,
                "seconds": seconds,
                "pairs_per_second": sum(pairs[s] for s in steps) / seconds,
                "tokens_per_second": sum(metrics[s].get("tokens") or 0 for s in steps) / seconds,
            }
        )
    return points


def eval_lengths(store) -> np.ndarray | None:
    """Token lengths of the tokenized eval pairs (the newest tokenize state that has them)."""
    tokenized = newest_tokenized_eval(store)
    return tokenized.lengths() if tokenized is not None else None


def newest_tokenized_eval(store):
    from safetensors.numpy import load

    from rmrun.data import TokenizedPairs

    candidates = [
        s
        for s in (store.open_unverified(k) for k in store.committed_keys(TOKENIZE_PREFIX))
        if s is not None and "eval.safetensors" in s.files
    ]
    if not candidates:
        return None
    state = max(candidates, key=lambda s: s.manifest["time"])
    return TokenizedPairs.from_arrays(load(state.read_bytes("eval.safetensors")), _json(state, "stats.json")["eval"])


def read_state(store) -> RunRecord:
    """Everything the report shows that the state holds (no model is loaded)."""

    identity = store.open_unverified(IDENTITY_KEY)
    recipe_record = store.read_record(RECIPE_RECORD)
    metrics, evals, pieces = read_history(store)
    if identity is None and not metrics and recipe_record is None:
        raise ReportError(f"{store.root}: nothing recorded in this state yet (no run has trained there)")
    keys = _json(identity, "identity.json")["keys"] if identity is not None else None
    name = (recipe_record or {}).get("name") or store.root.rstrip("/").split("/")[-1]
    record = RunRecord(source=store.root, name=name)
    record.plan = store.read_record(PLAN_RECORD)
    if recipe_record is not None:
        record.recipe_text, record.recipe_path = recipe_record["text"], recipe_record["path"]
    record.recipe_keys = keys
    record.metrics = [metrics[s] for s in sorted(metrics)]
    final_state = store.open_unverified(EVAL_FINAL_KEY)
    final = _json(final_state, "eval.json") if final_state is not None else None
    if final is not None:
        record.final = final["final"]
        for result in final["history"]:
            evals.setdefault(result["step"], result)
    record.evals = [evals[s] for s in sorted(evals)]
    starts = read_starts(store, pieces)
    if starts:
        record.first_start, record.resumes = starts[0], starts[1:]
    record.num_starts = store.current_generation()
    record.throughput = throughput(metrics, pieces, starts)
    checkpoints = (store.open_unverified(k) for k in store.committed_keys(CHECKPOINT_PREFIX))
    record.checkpoints = [c.manifest["meta"]["step"] for c in checkpoints if c is not None]
    record.quarantined = store.quarantined() + list(store.read_records(QUARANTINED_RECORDS).values())
    export = store.open_unverified(EXPORT_KEY)
    record.export_url = export.manifest["meta"].get("url") if export is not None else None
    record.complete = export is not None
    record.eval_lengths = eval_lengths(store)
    if record.eval_lengths is not None and record.final and record.final["pairs"] != len(record.eval_lengths):
        record.notes.append(
            f"the tokenized eval set holds {len(record.eval_lengths)} pairs, the final evaluation "
            f"{record.final['pairs']}"
        )
    return record


def read_export_files(url: str) -> RunRecord:
    """A report from an export directory alone (its state is gone): curves, final evaluation,
    recipe and plan; resumes, throughput and the eval pairs live only in the state."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)

    def text(name: str) -> str | None:
        full = f"{path.rstrip('/')}/{name}"
        return fs.cat_file(full).decode() if fs.exists(full) else None

    plan = json.loads(text("plan.json") or "null")
    record = RunRecord(
        source=url,
        name=url.rstrip("/").split("/")[-1],
        plan=plan,
        recipe_text=text("recipe.toml"),
        recipe_path=f"{url.rstrip('/')}/recipe.toml",
        export_url=url,
        complete=True,
    )
    record.metrics = [json.loads(line) for line in (text("metrics.jsonl") or "").splitlines() if line.strip()]
    evaluation = json.loads(text("eval.json") or "null")
    if evaluation is not None:
        record.final, record.evals = evaluation["final"], evaluation["history"]
    record.notes.append(
        f"made from the export alone: its state ({(plan or {}).get('state', '?')}) was not found, "
        "so resumes, throughput, reward histograms and calibration are not shown"
    )
    return record


# ------------------------------------------------------------------ what the final model gives


@dataclass
class Scored:
    rewards: np.ndarray  # (n, 2) chosen, rejected
    model: str  # what scored them, in words
    calibration: dict  # rmrun.serve.scoring.calibration(...)


def score_eval_pairs(store, record: RunRecord, *, device=None) -> Scored | None:
    """Rewards of the tokenized eval pairs under the final model: the export when the run
    published one, else its newest checkpoint; None when there is neither or no eval set."""
    from rmrun.serve.scoring import calibration, score_tokenized
    from rmrun.serve.snapshot import newest_checkpoint, open_checkpoint
    from rmrun.serve.source import open_export

    tokenized = newest_tokenized_eval(store)
    if tokenized is None:
        return None
    if record.export_url is not None:
        model, what = open_export(record.export_url, device=device), f"the export ({record.export_url})"
    else:
        state = newest_checkpoint(store)
        if state is None:
            return None
        model = open_checkpoint(store, state, device=device)
        what = f"the newest checkpoint ({state.key}, step {state.manifest['meta']['step']}; no export yet)"
    rewards = score_tokenized(model, tokenized, batch_size=16)
    return Scored(rewards=rewards, model=what, calibration=calibration(rewards[:, 0] - rewards[:, 1]))


def model_weight_bytes(store) -> int | None:
    """Size of the final model's weights as stored (to decide whether scoring is cheap)."""
    from rmrun.serve.snapshot import newest_checkpoint

    export = store.open_unverified(EXPORT_KEY)
    if export is not None:
        files = _json(export, "export.json")["files"]
        return sum(
            f["size"] for name, f in files.items() if name.endswith(".safetensors") and "colossalchat" not in name
        )
    state = newest_checkpoint(store)
    if state is None:
        return None
    return sum(e["size"] for e in state.manifest["files"] if e["path"].startswith("model"))


def length_baseline(lengths: np.ndarray) -> list[dict]:
    """Longer-response-wins accuracy per length bucket (the training-time evaluation's buckets)."""
    from rmrun.train.trainer import accuracy_by_length, length_bucket_counts

    diff = lengths[:, 0].astype(np.int64) - lengths[:, 1]
    credit = (diff > 0) + 0.5 * (diff == 0)
    return accuracy_by_length(length_bucket_counts(lengths, credit))
