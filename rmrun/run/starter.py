"""What ``rmrun init`` reads before it writes a starting recipe: the model's folder and a
sample of the data, each choice with the reason it is written beside it.

The data format is the one whose row parser (``rmrun.data``, the parsers a run uses) reads
every sampled row; two formats that both read them are a question for the user
(``--format``), never a guess, except that HH-RLHF transcripts also read as implicit-prompt
pairwise rows: there ``hh`` wins, since the pairwise reading would keep each transcript as
one assistant turn. ``max_length`` covers the 99th percentile of the sampled pairs' token
lengths (the longer side, rendered with the chat template), rounded up to a multiple of 64
and capped by the model's context.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field

from rmrun.errors import UsageError

SAMPLE_ROWS = 1000  # rows read for the format, the bad-row count and the lengths
BAD_SHARE = 0.1  # a format fits rows it reads all but this share of
LENGTH_STEP = 64
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "*.pt")


@dataclass(frozen=True)
class ModelFacts:
    directory: str | None  # None: a hub id, read when the run loads it
    family: str | None
    context: int | None  # positions the model takes
    has_weights: bool
    tokenizer: str  # where the tokenizer is read from
    template: str | None  # the chat template the recipe must name (None: the tokenizer's own, or none needed)


@dataclass(frozen=True)
class DataFacts:
    format: str
    sampled: int
    bad_rows: int
    lengths: dict[str, int] = field(default_factory=dict)  # p50, p90, p99, max
    max_length: int = 512


def inspect_model(model: str, *, tokenizer: str | None, chat_template: str | None) -> ModelFacts:
    from rmrun.recipe.backbone import BackboneError, backbone_family, package_directory

    directory = package_directory(model) if model.startswith("package:") else model
    if directory is None or not os.path.isdir(directory):
        if os.path.sep in model or model.startswith("."):
            raise UsageError([f"{model}: no such model folder"])
        directory = None  # a hub id: read when the run loads it
    family = context = None
    has_weights = False
    if directory is not None:
        try:
            family = backbone_family(directory)
        except BackboneError as e:
            raise UsageError([str(e)]) from None
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        context = next(
            (
                config[k]
                for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                if isinstance(config.get(k), int)
            ),
            None,
        )
        has_weights = any(glob.glob(os.path.join(directory, pattern)) for pattern in WEIGHT_FILES)
    source = tokenizer or directory or model
    tokenizer_directory = tokenizer or directory
    if (
        tokenizer_directory is not None
        and os.path.isdir(tokenizer_directory)
        and not _has_tokenizer(tokenizer_directory)
    ):
        raise UsageError(
            [
                f"{tokenizer_directory}: no tokenizer files here (tokenizer.json, tokenizer_config.json); pass --tokenizer DIR"
            ]
        )
    if (
        family == "decoder"
        and chat_template is None
        and _tokenizer_template(directory if not tokenizer else tokenizer) is None
    ):
        raise UsageError(
            [
                f"{source}: the tokenizer has no chat_template and a decoder reward model needs one to render "
                "conversations; pass --chat-template FILE (a ColossalChat template .json or a .jinja file)"
            ]
        )
    return ModelFacts(directory, family, context, has_weights, source, chat_template)


def _has_tokenizer(directory: str) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
    return any(os.path.isfile(os.path.join(directory, name)) for name in names)


def _tokenizer_template(directory: str | None) -> str | None:
    """The chat template in a local tokenizer folder's tokenizer_config.json (or its own file)."""
    if directory is None or not os.path.isdir(directory):
        return "unknown"  # a hub tokenizer: its template is checked when the run loads it
    if os.path.isfile(os.path.join(directory, "chat_template.jinja")):
        return "chat_template.jinja"
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("chat_template")


def detect_format(urls: list[str], *, given: str | None) -> str:
    """The data format the sampled rows of ``urls`` read as (all but at most ``BAD_SHARE`` of
    them: a few malformed rows do not hide the format); ``given`` is checked, not trusted."""
    from rmrun.data.formats import FORMATS

    fits, why_not = [], {}
    for name in (given,) if given else FORMATS:
        pairs, report = _sample(urls, name)
        if pairs and report.total <= BAD_SHARE * (len(pairs) + report.total):
            fits.append(name)
        else:
            why_not[name] = report.examples[0] if report.examples else "no rows"
    if set(fits) == {"pairwise", "hh"}:
        fits = ["hh"]  # HH transcripts: the pairwise reading would keep each one as a single turn
    if len(fits) == 1:
        return fits[0]
    first = urls[0]
    if not fits:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in why_not.items())
        raise UsageError([f"{first}: its rows read as no data format ({reasons})"])
    choices = " or ".join(f"--format {name}" for name in fits)
    raise UsageError([f"{first}: its rows read as {' and as '.join(fits)}; say which they are: {choices}"])


class _Enough(Exception):
    """Raised by the report once a whole sample of rows has failed to read."""


def _sample(urls: list[str], data_format: str):
    """Up to ``SAMPLE_ROWS`` pairs of ``urls`` read as ``data_format``, and the bad rows met on
    the way (reading stops after ``SAMPLE_ROWS`` of them: a wrong format does not scan the file)."""
    from rmrun.data import BadRowReport, read_pairs

    class Capped(BadRowReport):
        def record(self, reason: str, *, message: str) -> None:
            super().record(reason, message=message)
            if self.total >= SAMPLE_ROWS:
                raise _Enough

    report = Capped()
    pairs: list = []
    try:
        for pair in read_pairs(urls, format=data_format, bad_rows="skip", report=report):
            pairs.append(pair)
            if len(pairs) + report.total >= SAMPLE_ROWS:
                break
    except _Enough:
        pass
    return pairs, report


def inspect_data(urls: list[str], *, model: ModelFacts, data_format: str) -> DataFacts:
    """The sample's bad rows and token lengths with the model's tokenizer and template."""
    import numpy as np

    from rmrun.data import load_chat_template, tokenize_pairs
    from rmrun.model.model import load_tokenizer
    from rmrun.recipe.schema import ModelSection

    pairs, report = _sample(urls, data_format)
    tokenizer = load_tokenizer(ModelSection(pretrain=model.directory or model.tokenizer, tokenizer=model.tokenizer))
    tokenized = tokenize_pairs(
        pairs,
        tokenizer,
        max_length=2**31 - 1,
        overflow="truncate",
        template=load_chat_template(model.template),
        family=model.family or "decoder",
    )
    longer = np.maximum(np.diff(tokenized.chosen_offsets), np.diff(tokenized.rejected_offsets))
    lengths = {f"p{q}": int(math.ceil(np.percentile(longer, q))) for q in (50, 90, 99)} | {"max": int(longer.max())}
    max_length = LENGTH_STEP * math.ceil(lengths["p99"] / LENGTH_STEP)
    if model.context:
        max_length = min(max_length, model.context)
    return DataFacts(data_format, len(pairs) + report.total, report.total, lengths, max_length)
