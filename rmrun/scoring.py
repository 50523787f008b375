"""Using a trained reward model: ``rmrun score`` and ``rmrun eval`` on an export.

Text is rendered exactly as in training: the export's ``rmrun.json`` holds the chat
template, ``max_length`` and overflow rule it was trained with, the tokenizer is the one
saved beside the weights, and rewards are read by the same :class:`~rmrun.model.RewardReader`
as the training-time evaluation. The metrics are the training-time evaluation's formulas
(:func:`rmrun.loss.pair_sums`, the same length buckets), plus calibration and per-subset
accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

CONTRACT_FILE = "rmrun.json"
CONTRACT_VERSION = 1
SUBSET_KEYS = ("subset", "category")
CALIBRATION_BINS = 10


class ScoreError(ValueError):
    """A user error in ``rmrun score`` / ``rmrun eval``: one line, exit code 2."""


# ------------------------------------------------------------------ the export's contract


def write_contract(directory: str, *, data, loss, family: str, reward_stats: dict | None) -> None:
    """``rmrun.json`` (how text becomes tokens and rewards for this model) and, with
    ``reward_stats``, ``mean``/``std``/``normalize_reward`` in ``config.json``."""
    contract = contract_for(data=data, loss=loss, family=family, reward_stats=reward_stats)
    with open(os.path.join(directory, CONTRACT_FILE), "w") as f:
        json.dump(contract, f, indent=2, sort_keys=True)
    if reward_stats is not None:
        path = os.path.join(directory, "config.json")
        with open(path) as f:
            config = json.load(f)
        config.update({"mean": reward_stats["mean"], "std": reward_stats["std"], "normalize_reward": False})
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)


def contract_for(*, data, loss, family: str, reward_stats: dict | None) -> dict:
    """What ``rmrun.json`` holds for a model trained with these ``[data]`` and ``[loss]`` sections."""
    from rmrun.data import load_chat_template

    template = load_chat_template(data.chat_template)
    return {
        "version": CONTRACT_VERSION,
        "data": {"format": data.format, "max_length": data.max_length, "overflow": data.overflow},
        "family": family,
        "chat_template": dataclasses.asdict(template) if template is not None else None,
        "loss": {"name": loss.name, "margin": loss.margin},
        "reward_stats": reward_stats,
    }


def write_model_card(directory: str, *, run_name: str, model, data, evaluation: dict | None,
                     reward_stats: dict | None) -> None:
    """``README.md``: a Hugging Face model card (metadata, data, result, how to load and score)."""
    base = os.path.basename(model.pretrain.rstrip("/")) if model.init == "pretrained" else None
    meta = ["---", "library_name: transformers", "pipeline_tag: text-classification",
            "tags:", "- reward-model", "- rlhf", "- rmrun"]
    if base and "/" in model.pretrain and not os.path.isabs(model.pretrain) and not os.path.exists(model.pretrain):
        meta.append(f"base_model: {model.pretrain}")  # a hub id
    meta.append("---")
    init = f"fine-tuned from `{base}`" if base else f"trained from the config of `{os.path.basename(model.pretrain)}`"
    lines = meta + ["", f"# {run_name}: a reward model", "",
                    f"A sequence-classification reward model (one score per sequence), {init}"
                    f"{' with LoRA (merged)' if model.lora else ''}, by rmrun. The recipe it was trained with is "
                    "`recipe.toml`, the resolved plan `plan.json`, every step's metrics `metrics.jsonl`.", "",
                    "Training data: " + ", ".join(f"`{os.path.basename(u)}`" for u in data.train)
                    + (f"; evaluation data: " + ", ".join(f"`{os.path.basename(u)}`" for u in data.eval)
                       if data.eval else "") + f" (max_length {data.max_length}, overflow `{data.overflow}`).", ""]
    if evaluation:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---:|"]
        for key in ("pairs", "accuracy", "loss", "margin", "longer_wins_accuracy"):
            if evaluation.get(key) is not None:
                value = evaluation[key]
                lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
        lines.append("")
    if reward_stats:
        lines += [f"Rewards over the {reward_stats['pairs']} training pairs (both responses): mean "
                  f"{reward_stats['mean']:.4f}, std {reward_stats['std']:.4f}; stored in `config.json` as "
                  "`mean` / `std` (`normalize_reward: false`).", ""]
    lines += ["## Use", "", "```python",
              "from transformers import pipeline",
              "score = pipeline(\"text-classification\", model=\"PATH\", function_to_apply=\"none\")",
              "```", "",
              "Text must be rendered with the chat template the model was trained with; `rmrun score PATH "
              "FILE.jsonl` and `rmrun eval PATH FILE.jsonl` do that from `rmrun.json`.", ""]
    with open(os.path.join(directory, "README.md"), "w") as f:
        f.write("\n".join(lines))


@dataclass
class Export:
    directory: str
    contract: dict
    tokenizer: object
    net: object
    device: object

    @property
    def family(self) -> str:
        return self.contract.get("family", "decoder")

    @property
    def template(self):
        from rmrun.data import ChatTemplate

        saved = self.contract.get("chat_template")
        return ChatTemplate(**saved) if saved else None


def _local_copy(url: str) -> str:
    """A local directory holding the export at ``url`` (downloaded once per process)."""
    import tempfile

    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if not fs.isdir(path):
        raise ScoreError(f"{url}: no such export directory")
    local = tempfile.mkdtemp(prefix="rmrun-export-")
    fs.get(path.rstrip("/") + "/", local + "/", recursive=True)
    return local


def _export_of_state(model: str) -> str | None:
    """The export URL a state root (``run.state``) published, if ``model`` is one."""
    from rmrun.store import StateStore
    from rmrun.store.keys import EXPORT_KEY

    try:
        record = StateStore(model).open_unverified(EXPORT_KEY)
    except Exception:  # not a state root at all: the caller reports the path as it was given
        return None
    return record.manifest["meta"].get("url") if record is not None else None


def open_export(model: str, *, device=None) -> Export:
    """Load an export directory (local path or fsspec URL) made by ``rmrun run``, or the export
    a state root published."""
    local_export = "://" not in model and os.path.exists(os.path.join(model, "config.json"))
    if not local_export:
        published = _export_of_state(model)
        if published is not None:
            model = published
        else:  # a state whose run has not exported yet: its newest committed checkpoint
            from rmrun.snapshot import open_newest_checkpoint

            snapshot = open_newest_checkpoint(model, device=device)
            if snapshot is not None:
                return snapshot
    directory = model if "://" not in model else _local_copy(model)
    if not os.path.isdir(directory):
        raise ScoreError(f"{model}: no such export directory")
    contract_path = os.path.join(directory, CONTRACT_FILE)
    if not os.path.exists(os.path.join(directory, "config.json")):
        raise ScoreError(f"{model}: not a model directory (no config.json)")
    if not os.path.exists(contract_path):
        raise ScoreError(f"{model}: no {CONTRACT_FILE}; it was not exported by this version of rmrun "
                         "(run `rmrun run` on its recipe again to re-export it)")
    try:
        with open(contract_path) as f:
            contract = json.load(f)
    except (OSError, ValueError) as e:
        raise ScoreError(f"{contract_path}: unreadable: {e}") from None
    if contract.get("version") != CONTRACT_VERSION:
        raise ScoreError(f"{contract_path}: version {contract.get('version')!r}; this rmrun reads {CONTRACT_VERSION}")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    device = device or torch.device("cpu")
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    net = AutoModelForSequenceClassification.from_pretrained(directory, torch_dtype=torch.float32,
                                                             trust_remote_code=False)
    net.to(device).eval()
    return Export(directory=directory, contract=contract, tokenizer=tokenizer, net=net, device=device)


# ------------------------------------------------------------------ rows


@dataclass(frozen=True)
class Row:
    """One input row: a preference pair, or a single response (``single``: chosen is that response)."""

    pair: object  # PreferencePair
    single: bool
    source: str
    subset: str | None
    row_id: object


def read_rows(urls, *, format: str) -> list[Row]:
    """Pairs in any format ``[data]`` accepts (``context`` rows are ColossalChat's, others
    pairwise), and single responses: ``{"prompt": ..., "response": "..."}``."""
    from rmrun.data.formats import (DataError, Message, PreferencePair, _BadRow, _iter_raw_rows,
                                    _check_prompt_roles, _parse_colossalchat_row, _parse_messages,
                                    _parse_pairwise_row)

    rows = []
    for url in urls:
        for source, raw in _iter_raw_rows(url):
            try:
                if isinstance(raw, _BadRow):
                    raise raw
                if not isinstance(raw, dict):
                    raise _BadRow("not an object", f"expected a JSON object, got {type(raw).__name__}")
                if "response" in raw and "chosen" not in raw:
                    prompt = raw.get("prompt", "")
                    response = raw["response"]
                    if not isinstance(response, str) or not response:
                        raise _BadRow("wrong type", '"response" must be a non-empty string')
                    if isinstance(prompt, str):
                        messages = (Message("user", prompt),) if prompt else ()
                    else:
                        messages = _parse_messages(prompt, field="prompt", role_key="role")
                    _check_prompt_roles(messages, field="prompt", allow_empty=True)
                    side = (Message("assistant", response),)
                    pair, single = PreferencePair(prompt=messages, chosen=side, rejected=side, source=source), True
                elif "context" in raw or (format == "colossalchat" and "prompt" not in raw):
                    pair, single = _parse_colossalchat_row(raw, source=source), False
                else:
                    pair, single = _parse_pairwise_row(raw, source=source), False
            except _BadRow as bad:
                raise DataError(f"{source}: {bad.detail}") from None
            subset = next((str(raw[k]) for k in SUBSET_KEYS if raw.get(k) is not None), None)
            rows.append(Row(pair=pair, single=single, source=source, subset=subset, row_id=raw.get("id")))
    if not rows:
        raise ScoreError(f"{', '.join(urls)}: no rows")
    return rows


# ------------------------------------------------------------------ scoring


def _shard(count: int, *, rank: int, world_size: int) -> np.ndarray:
    return np.arange(rank, count, world_size)


def score_rows(export: Export, rows: list[Row], *, batch_size: int = 16, rank: int = 0, world_size: int = 1,
               progress: bool = False) -> dict[int, tuple[float, float, int, int]]:
    """``{row index: (chosen reward, rejected reward, chosen tokens, rejected tokens)}`` for this
    rank's shard of the rows; rows the overflow rule drops are absent."""
    from rmrun.data import tokenize_pairs

    data = export.contract["data"]
    mine = _shard(len(rows), rank=rank, world_size=world_size)
    tokenized = tokenize_pairs([rows[i].pair for i in mine], export.tokenizer, max_length=data["max_length"],
                               overflow=data["overflow"], template=export.template, family=export.family)
    rewards = score_tokenized(export, tokenized, batch_size=batch_size, progress=progress)
    lengths = tokenized.lengths()
    return {int(mine[tokenized.pair_index[i]]): (float(rewards[i, 0]), float(rewards[i, 1]), int(lengths[i, 0]),
                                                 int(lengths[i, 1]))
            for i in range(len(rewards))}


def score_tokenized(export: Export, tokenized, *, batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """``(n, 2)`` float64 (chosen, rejected) rewards of tokenized pairs, batched longest first."""
    import torch

    from rmrun.data import collate
    from rmrun.model import RewardReader

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
    """One JSON-able record per input row, in input order."""
    lines = []
    for i, row in enumerate(rows):
        record = {"row": i, "source": row.source}
        if row.row_id is not None:
            record["id"] = row.row_id
        if row.subset is not None:
            record["subset"] = row.subset
        if i not in scores:
            record["dropped"] = "longer than max_length (overflow = \"drop\")"
        elif row.single:
            record["reward"] = scores[i][0]
        else:
            chosen, rejected = scores[i][0], scores[i][1]
            record.update({"chosen": chosen, "rejected": rejected, "margin": chosen - rejected})
        lines.append(record)
    return lines


# ------------------------------------------------------------------ evaluation


def evaluate_scores(rows: list[Row], scores: dict, *, loss: dict) -> dict:
    """The training-time evaluation's report on scored pairs, plus ties, calibration of
    sigmoid(r_chosen - r_rejected) (ECE, Brier), per-subset accuracy and reward statistics."""
    import torch

    from rmrun.loss import metrics_from_sums, pair_losses, pair_sums
    from rmrun.trainer import accuracy_by_length, length_bucket_counts, longer_wins_credit

    kept = [i for i, row in enumerate(rows) if i in scores and not row.single]
    if not kept:
        raise ScoreError("no preference pairs to evaluate (rows need chosen and rejected)")
    chosen = torch.tensor([scores[i][0] for i in kept], dtype=torch.float32)
    rejected = torch.tensor([scores[i][1] for i in kept], dtype=torch.float32)
    lengths = np.array([[scores[i][2], scores[i][3]] for i in kept], dtype=np.int64)
    losses = pair_losses(loss["name"], chosen, rejected, margin=loss["margin"])
    report = {"pairs": len(kept), "dropped": sum(1 for i, r in enumerate(rows) if i not in scores),
              **metrics_from_sums(pair_sums(chosen, rejected, losses))}
    report["ties"] = int((chosen == rejected).sum())
    report["longer_wins_accuracy"] = longer_wins_credit(lengths) / len(kept)
    correct = (chosen > rejected).numpy()
    report["accuracy_by_length"] = accuracy_by_length(length_bucket_counts(lengths, correct))
    report.update(calibration(chosen.numpy().astype(np.float64) - rejected.numpy().astype(np.float64)))
    subsets = {}
    for k, i in enumerate(kept):
        if rows[i].subset is not None:
            entry = subsets.setdefault(rows[i].subset, [0, 0.0])
            entry[0] += 1
            entry[1] += float(correct[k])
    if subsets:
        report["subsets"] = {name: {"pairs": n, "accuracy": c / n} for name, (n, c) in sorted(subsets.items())}
    both = np.concatenate([chosen.numpy(), rejected.numpy()]).astype(np.float64)
    report["reward_stats"] = {"mean": float(both.mean()), "std": float(both.std()), "pairs": len(kept)}
    return report


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
        table.append({"low": b / bins, "high": (b + 1) / bins, "count": int(inside.sum()),
                      "confidence": confidence, "accuracy": accuracy})
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
    return "\n".join(lines)


# ------------------------------------------------------------------ commands


def _world():
    """(rank, world size, device): standalone, or the process group under torchrun."""
    import torch

    from rmrun import dist

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

    parts = [None] * world_size if tdist.get_rank() == 0 else None
    tdist.gather_object(scores, parts, dst=0)
    if parts is None:
        return None
    merged = {}
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
        from rmrun import dist

        dist.stop()


def _score_everything(model: str, data: list[str], *, batch_size: int, then) -> int:
    """Open the export, score this rank's shard of the rows, and call ``then(export, rows,
    scores)`` on rank 0 with every rank's scores; the process group is closed on every path."""
    rank, world_size, device = _world()
    try:
        export = open_export(model, device=device)
        rows = read_rows(data, format=export.contract["data"]["format"])
        scores = score_rows(export, rows, batch_size=batch_size, rank=rank, world_size=world_size,
                            progress=rank == 0 and sys.stderr.isatty())
        merged = _gather(scores, world_size)
        if merged is not None:
            then(export, rows, merged)
    finally:
        _finish(world_size)
    return 0


def score(model: str, data: list[str], *, out: str | None, batch_size: int) -> int:
    def write_lines(export, rows, scores):
        _write("".join(json.dumps(line) + "\n" for line in score_lines(rows, scores)), out)
        if out not in (None, "-"):
            print(f"scored {len(scores)} of {len(rows)} rows; wrote {out}", file=sys.stderr)

    return _score_everything(model, data, batch_size=batch_size, then=write_lines)


def evaluate(model: str, data: list[str], *, out: str | None, batch_size: int) -> int:
    def write_report(export, rows, scores):
        report = evaluate_scores(rows, scores, loss=export.contract["loss"])
        report["model"], report["data"] = model, list(data)
        print(report_table(report))
        if out is not None:
            _write(json.dumps(report, indent=2, default=_json_default) + "\n", out)

    return _score_everything(model, data, batch_size=batch_size, then=write_report)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(type(value).__name__)
