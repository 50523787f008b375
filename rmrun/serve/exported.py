"""The export directory rmrun writes and reads back: its contract, its model card, opening it.

``rmrun.json`` (the contract) holds what turns text into the tokens and rewards the model
was trained on: the chat template, ``max_length``, the overflow rule, the loss. ``rmrun
score`` and ``rmrun eval`` open an export (or a state root's published export, or its
newest checkpoint) as an :class:`Export` and score with exactly that.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

# An eval's headline numbers, as the model card and the report list them.
EVAL_KEYS = ("pairs", "accuracy", "loss", "margin", "longer_wins_accuracy", "groups", "best_of_n_accuracy")

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

CONTRACT_FILE = "rmrun.json"
CONTRACT_VERSION = 1


class ScoreError(ValueError):
    """A user error in ``rmrun score`` / ``rmrun eval``: one line, exit code 2."""


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
        "data": {
            "format": data.format,
            "max_length": data.max_length,
            "overflow": data.overflow,
            **_rated(data),
            **_mixture(data),
        },
        "family": family,
        "chat_template": dataclasses.asdict(template) if template is not None else None,
        "loss": {"name": loss.name, "margin": loss.margin, **objective_extras(data=data, loss=loss)},
        "reward_stats": reward_stats,
    }


def _mixture(data) -> dict:
    """A mixture's sources, for the record (``rmrun eval`` reads one file in one format)."""
    if not data.sources:
        return {}
    sources = [{"name": s.name, "format": s.format or data.format, "weight": s.weight} for s in data.sources]
    return {"sources": sources, "epoch_pairs": data.epoch_pairs}


def _rated(data) -> dict:
    """How the rated formats made pairs (``rmrun eval`` makes them the same way)."""
    from rmrun.recipe.data_section import data_formats
    from rmrun.recipe.schema import DEFAULT_RATING

    rated = [f for f in data_formats(data) if f in DEFAULT_RATING]  # data.format's, or a source's
    if not rated:
        return {}
    rating = data.rating or DEFAULT_RATING[rated[0]]
    return {"pair_rule": data.pair_rule, "rating": rating, "pair_seed": data.pair_seed, "margins": data.margins}


def objective_extras(*, data, loss) -> dict:
    """The objective's options beyond the loss and its constant margin, where they are on."""
    extras: dict = {}
    if data.margins != "none":
        extras.update(margins=data.margins, margin_scale=data.margin_scale)
    if loss.center_coef > 0:
        extras["center_coef"] = loss.center_coef
    return extras


def _split_text(split: float) -> str:
    """``data.eval_split`` in words."""
    held = f"{split:.0%} of the prompts" if split < 1 else f"{int(split)} pairs, whole prompts"
    return f"{held}, held out of the training files (`data.eval_split`), disjoint by prompt"


def objective_text(*, data, loss) -> str:
    """The objective in words, for the model card and the plan."""
    text = f"`{loss.name}` pairwise loss, margin {loss.margin:g}"
    if data.margins == "margin":
        text += f" plus {data.margin_scale:g} x each row's `margin`"
    elif data.margins == "scores" and _rated(data):
        text += f" plus {data.margin_scale:g} x the gap of the two responses' `{_rated(data)['rating']}` ratings"
    elif data.margins == "scores":
        text += f" plus {data.margin_scale:g} x (`score_chosen` - `score_rejected`) of each row"
    if _rated(data):
        text += f"; pairs from rated responses, `{data.pair_rule}` by `{_rated(data)['rating']}`"
    if loss.center_coef > 0:
        text += f"; reward centering, {loss.center_coef:g} x mean((r_c + r_r)^2)"
    return text


def _files_text(urls) -> str:
    return ", ".join(f"`{os.path.basename(u)}`" for u in urls)


def _data_text(data) -> str:
    """The training files, or each source of a mixture with its weight (and its own eval files)."""
    if not data.sources:
        return _files_text(data.train)
    total = sum(s.weight for s in data.sources)
    parts = [
        f"{s.name} ({_files_text(s.files)}, weight {s.weight:g} = {s.weight / total:.0%} of each epoch"
        + (f"; evaluation data {_files_text(s.eval)}" if s.eval else "")
        + ")"
        for s in data.sources
    ]
    epoch = f"{data.epoch_pairs} pairs per epoch" if data.epoch_pairs else "as many pairs per epoch as they hold"
    return f"a mixture of {len(data.sources)} sources, {epoch}: " + ", ".join(parts)


def _reward_stats_pairs(reward_stats: dict) -> str:
    """Which training pairs the statistics are over, for the model card."""
    pairs, total = reward_stats["pairs"], reward_stats["of"]
    if pairs == total:
        return f"the {total} training pairs"
    return f"{pairs} of the {total} training pairs (a uniform sample drawn from `run.seed`)"


def write_model_card(
    directory: str, *, run_name: str, model, data, evaluation: dict | None, reward_stats: dict | None, loss=None
) -> None:
    """``README.md``: a Hugging Face model card (metadata, data, result, how to load and score)."""
    base = os.path.basename(model.pretrain.rstrip("/")) if model.init == "pretrained" else None
    meta = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags:",
        "- reward-model",
        "- rlhf",
        "- rmrun",
    ]
    if base and "/" in model.pretrain and not os.path.isabs(model.pretrain) and not os.path.exists(model.pretrain):
        meta.append(f"base_model: {model.pretrain}")  # a hub id
    meta.append("---")
    init = f"fine-tuned from `{base}`" if base else f"trained from the config of `{os.path.basename(model.pretrain)}`"
    lines = meta + [
        "",
        f"# {run_name}: a reward model",
        "",
        f"A sequence-classification reward model (one score per sequence), {init}"
        f"{' with LoRA (merged)' if model.lora else ''}, by rmrun. The recipe it was trained with is "
        "`recipe.toml`, the resolved plan `plan.json`, every step's metrics `metrics.jsonl`.",
        "",
        "Training data: "
        + _data_text(data)
        + ("; evaluation data: " + _files_text(data.eval) if data.eval else "")
        + (f"; evaluation data: {_split_text(data.eval_split)}" if data.eval_split is not None else "")
        + f" (max_length {data.max_length}, overflow `{data.overflow}`).",
        "",
    ]
    if loss is not None:
        lines += [f"Objective: {objective_text(data=data, loss=loss)}.", ""]
    if evaluation:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---:|"]
        for key in EVAL_KEYS:
            if evaluation.get(key) is not None:
                value = evaluation[key]
                lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
        for table, what in (("sources", "source "), ("subsets", "")):
            for name, entry in evaluation.get(table, {}).items():
                for key in ("accuracy", "best_of_n_accuracy"):
                    if entry.get(key) is not None:
                        lines.append(f"| {what}{name}: {key} ({entry['pairs']} pairs) | {entry[key]:.4f} |")
        lines.append("")
    if reward_stats:
        lines += [
            f"Rewards over {_reward_stats_pairs(reward_stats)} (both responses): mean "
            f"{reward_stats['mean']:.4f}, std {reward_stats['std']:.4f}; stored in `config.json` as "
            "`mean` / `std` (`normalize_reward: false`).",
            "",
        ]
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        'score = pipeline("text-classification", model="PATH", function_to_apply="none")',
        "```",
        "",
        "Text must be rendered with the chat template the model was trained with; `rmrun score PATH "
        "FILE.jsonl` and `rmrun eval PATH FILE.jsonl` do that from `rmrun.json`.",
        "",
    ]
    with open(os.path.join(directory, "README.md"), "w") as f:
        f.write("\n".join(lines))


@dataclass
class Export:
    directory: str
    contract: dict
    tokenizer: PreTrainedTokenizerBase
    net: torch.nn.Module
    device: torch.device

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


def load_export(model: str, *, device=None) -> Export:
    """Load an export directory (local path or fsspec URL) made by ``rmrun run``."""
    directory = model if "://" not in model else _local_copy(model)
    if not os.path.isdir(directory):
        raise ScoreError(f"{model}: no such export directory")
    contract_path = os.path.join(directory, CONTRACT_FILE)
    if not os.path.exists(os.path.join(directory, "config.json")):
        raise ScoreError(f"{model}: not a model directory (no config.json)")
    if not os.path.exists(contract_path):
        raise ScoreError(
            f"{model}: no {CONTRACT_FILE}; it was not exported by this version of rmrun "
            "(run `rmrun run` on its recipe again to re-export it)"
        )
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
    net = AutoModelForSequenceClassification.from_pretrained(
        directory, torch_dtype=torch.float32, trust_remote_code=False
    )
    net.to(device).eval()
    return Export(directory=directory, contract=contract, tokenizer=tokenizer, net=net, device=device)
