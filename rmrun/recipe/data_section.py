"""The recipe's [data] table and its [[data.sources]]: which preference data a run reads and
how it becomes token ids. Part of the schema (:mod:`rmrun.recipe.schema` re-exports it); it
imports only the standard library."""

# Optional[X] stays, as in the schema (typing.get_type_hints gives typing.Union for it).
# ruff: noqa: UP045

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

from rmrun.recipe.fields import doc

DataFormat = Literal["colossalchat", "pairwise", "hh", "rated", "ultrafeedback", "helpsteer2"]


@dataclass(frozen=True)
class SourceSection:
    """[[data.sources]]: one source of a weighted mixture of training data (one table per source)."""

    name: str = doc(
        "The source's name, unique in the recipe: its counts in the plan, its accuracy in eval.json, the "
        "report and the trackers (eval/source/<name>/...).",
        "",
        required=True,
    )
    files: tuple[str, ...] = doc(
        "The source's training files (directories and globs as for data.train).",
        factory=tuple,
        path="files",
        required=True,
    )
    format: Optional[DataFormat] = doc("The row format of its files (as data.format). Default: data.format.", None)
    weight: float = doc(
        "The source's share of each epoch: of data.epoch_pairs pairs, weight / (sum of the weights) are drawn "
        "from it (a largest-remainder rounding), without repeats until every pair of it was drawn.",
        1.0,
    )
    eval: tuple[str, ...] = doc(
        "Held-out files of this source (its format), evaluated with data.eval at each epoch end; its accuracy "
        "is reported as the source's.",
        factory=tuple,
        path="files",
    )


@dataclass(frozen=True)
class DataSection:
    """[data]: preference pairs and how they become token ids."""

    train: tuple[str, ...] = doc(
        "Training files (.jsonl, .json, .parquet), local paths or fsspec URLs. A local directory or glob "
        "(data/*.jsonl, data/**/*.parquet) stands for the data files it holds, sorted by name. Required "
        "unless data.sources names the training data instead.",
        factory=tuple,
        path="files",
    )
    sources: tuple[SourceSection, ...] = doc(
        "A weighted mixture instead of data.train: one [[data.sources]] table per source (name, files, "
        "format, weight, eval). Each epoch draws data.epoch_pairs pairs, each source's share by its weight "
        "(a source smaller than its share repeats, a larger one is subsampled, a new draw every epoch); the "
        "draw and the order are a pure function of (seed, epoch), so a resume at any world size is exact.",
        factory=tuple,
    )
    epoch_pairs: Optional[int] = doc(
        "With data.sources: the pairs an epoch draws from them. Default: as many as the sources hold.", None
    )
    eval: tuple[str, ...] = doc(
        "Held-out files evaluated at each epoch end (directories and globs as for train); none of them "
        "may be a training file.",
        factory=tuple,
        path="files",
    )
    format: DataFormat = doc(
        '"colossalchat": {context, chosen, rejected} message lists with "from"/"content"; '
        '"pairwise": {prompt, chosen, rejected} as strings or {"role","content"} message lists (with a '
        "prompt, each side may hold several responses: a pair for each, scored best-of-N in evals); "
        '"hh": Anthropic HH-RLHF {chosen, rejected} transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") '
        "sharing every turn before the last Assistant turn, which is each side's response; rated responses, "
        "made into pairs by data.pair_rule: "
        '"rated": {prompt, responses: [{text or messages, score or scores: {attribute: n}}]}; '
        '"ultrafeedback": UltraFeedback\'s {instruction, completions: [{response, overall_score, ...}]}; '
        '"helpsteer2": HelpSteer2\'s one-response rows {prompt, response, helpfulness, correctness, '
        "coherence, complexity, verbosity}, consecutive rows of one prompt being its responses.",
        "colossalchat",
    )
    max_length: int = doc("Longest sequence (prompt + response) in tokens.", 512)
    overflow: Literal["truncate", "drop", "error"] = doc(
        "A pair longer than max_length: truncate (drop prompt tokens from the start, keep the end of "
        "each response where the reward is read), drop it, or stop with an error.",
        "truncate",
    )
    chat_template: Optional[str] = doc(
        "Chat template: a ColossalChat template JSON file, a .jinja file, or the Jinja template text "
        "itself (any value with {{ or {%). Default: the tokenizer's own chat_template; for an encoder "
        'backbone whose tokenizer has none, one "role: content" line per message. Decoders read the '
        "reward at the end-of-assistant token (the template's end_of_assistant, else the tokenizer's eos; "
        "with neither, the last token of the rendered conversation); encoders pool with their own head.",
        None,
        path="or-template",
    )
    bad_rows: Literal["error", "skip"] = doc(
        "A malformed row: stop with an error naming file and line, or skip it and report the count.",
        "error",
    )
    tokenize_workers: int = doc("Processes per rank that tokenize; 0: the node's cores / its ranks.", 0)
    margins: Literal["none", "margin", "scores"] = doc(
        "Per-pair margins from the data, added to loss.margin (Llama 2's margin loss): "
        '"margin": each row\'s numeric "margin" field; "scores": each row\'s '
        '"score_chosen" - "score_rejected" (UltraFeedback\'s binarized rows carry both; in the rated '
        "formats, the chosen response's rating minus the rejected one's); \"none\": "
        "loss.margin alone. A row without them is a bad row (data.bad_rows). Applies to the eval "
        "files too.",
        "none",
    )
    margin_scale: float = doc("What the per-pair margins from the data are multiplied by.", 1.0)
    eval_split: Optional[float] = doc(
        "Carve the eval set out of data.train when there are no held-out files: a fraction of the prompts "
        "(between 0 and 1) or a number of pairs (a whole number, reached with whole prompts). Every pair of "
        "a prompt lands on the same side, drawn from data.eval_split_seed and the prompt alone (not the row "
        "order, the world size or the number of pieces). Leave data.eval out with it.",
        None,
    )
    eval_split_seed: int = doc("The seed of the prompts' draw for data.eval_split.", 0)
    pair_rule: Literal["best_vs_worst", "best_vs_random", "all_pairs"] = doc(
        "The rated formats: which pairs a prompt's rated responses give. best_vs_worst: the highest-rated "
        "against the lowest-rated; best_vs_random: the highest-rated against one rated lower, drawn from "
        "data.pair_seed and the row's text; all_pairs: every two rated differently. Ties never make a pair "
        '(a row rated all alike gives none, and is counted). data.margins = "scores" makes each pair\'s '
        "margin the gap of its two ratings.",
        "best_vs_worst",
    )
    rating: Optional[str] = doc(
        'The rated formats: the rating that ranks responses (an attribute of "scores", an UltraFeedback '
        'score or aspect). Default: "score" (rated), "overall_score" (ultrafeedback), "helpfulness" (helpsteer2).',
        None,
    )
    pair_seed: int = doc('The seed of data.pair_rule = "best_vs_random"\'s draw.', 0)
    group_by_length: bool = doc(
        "Group pairs of similar length into the same batch (less padding); the order stays a pure "
        "function of (seed, epoch).",
        True,
    )
    share_prompt: Literal["auto", "on", "off"] = doc(
        "Run each pair's prompt through the model once: prompt + chosen + rejected in one sequence, the "
        "rejected response masked from the chosen one, rewards read at the end of each (the same rewards as "
        'two sequences, up to float rounding, for a fraction of the compute). "auto": wherever it is '
        "supported (decoders checked with a block mask, Llama and Qwen2, with sdpa or eager attention, on the "
        'ddp plugin in fp32, and in bf16 on a CPU), the standard forward elsewhere; "on": refuse to run where it is not supported; '
        '"off": always two sequences per pair. `rmrun check` prints which forward runs and why.',
        "auto",
    )
    pack_pairs: bool = doc(
        "With the shared-prompt forward, put as many pairs in a row as fit in the batch's longest pair "
        "sequence (each in its own block of the attention mask, positions from 0), so short pairs fill the "
        "padding of long ones: fewer rows, same rewards. The packing is a pure function of the batch.",
        True,
    )


class Source(NamedTuple):
    """Files of one format whose pairs carry one source id: a table of data.sources (its place
    there), data.train without sources (0), data.eval beside sources (-1, no source)."""

    id: int
    name: str
    urls: tuple[str, ...]
    format: str
    weight: float = 1.0


def train_sources(data: DataSection) -> tuple[Source, ...]:
    """The training data: each of data.sources, or data.train as one source."""
    if not data.sources:
        return (Source(0, "", data.train, data.format),)
    return tuple(Source(i, s.name, s.files, s.format or data.format, s.weight) for i, s in enumerate(data.sources))


def eval_sources(data: DataSection) -> tuple[Source, ...]:
    """The held-out files: each source's own eval files, then data.eval's."""
    own = tuple(
        Source(i, s.name, s.eval, s.format or data.format, s.weight) for i, s in enumerate(data.sources) if s.eval
    )
    return own + ((Source(-1 if data.sources else 0, "", data.eval, data.format),) if data.eval else ())


def data_formats(data: DataSection) -> tuple[str, ...]:
    """Every row format the recipe's files are read in, in order, once each."""
    formats = [s.format for s in (*train_sources(data), *eval_sources(data))] or [data.format]
    return tuple(dict.fromkeys(formats))


def all_files(sources) -> tuple[str, ...]:
    return tuple(url for source in sources for url in source.urls)


def source_quotas(weights, epoch_pairs: int) -> list[int]:
    """Each source's pairs of an epoch of ``epoch_pairs``: ``epoch_pairs * w / sum(weights)``,
    rounded down, and the pairs left over to the largest remainders (ties to the earlier source)."""
    total = sum(weights)
    exact = [epoch_pairs * w / total for w in weights]
    quotas = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: -(exact[i] - quotas[i]))  # stable
    for i in by_remainder[: epoch_pairs - sum(quotas)]:
        quotas[i] += 1
    return quotas


def epoch_pairs_of(data: DataSection, num_pairs: int) -> int:
    """The pairs an epoch trains on: data.epoch_pairs with sources (default all of them), else all."""
    return (data.epoch_pairs or num_pairs) if data.sources else num_pairs


def has_eval(data: DataSection) -> bool:
    """Whether the run has an eval set: held-out files (data.eval, a source's eval) or a carved one."""
    return bool(eval_sources(data)) or data.eval_split is not None
