"""The tokenize step: preference files → compact token arrays in the state store.

Written once per data fingerprint (file contents, tokenizer files, template,
max_length, overflow and bad-row policy), reused on resume and by later runs in the
same state root. Rank 0 tokenizes and commits; the other ranks load what it committed.

Every rank maps the token arrays of its node's copy (``rmrun.data.mapped``) rather than
loading them: resident memory per rank does not grow with the number of pairs. The mapping
outlives the copy's folder, which ``node_copy`` removes once every process has mapped it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rmrun.recipe.schema import DataSection, ModelSection

if TYPE_CHECKING:
    from rmrun.data import TokenizedPairs
    from rmrun.run.context import RunContext
    from rmrun.run.graph import Step

ARRAY_FILES = {"train": "train.safetensors", "eval": "eval.safetensors"}


def _tokenize_split(urls, *, data: DataSection, tokenizer, template, family, say):
    from rmrun.data import BadRowReport, read_pairs, tokenize_pairs

    report = BadRowReport()
    pairs = read_pairs(urls, format=data.format, bad_rows=data.bad_rows, report=report)
    tokenized = tokenize_pairs(
        pairs, tokenizer, max_length=data.max_length, overflow=data.overflow, template=template, family=family
    )
    if report.total:
        say(f"skipped {report.total} bad rows: {report.summary()}")
    stats = dict(tokenized.stats, bad_rows_skipped=report.total)
    return tokenized, stats


def _write(ctx: RunContext, step: Step, *, data: DataSection, model: ModelSection, tokenizer) -> None:
    from safetensors.numpy import save

    from rmrun.data import DataError, load_chat_template
    from rmrun.model.model import model_family
    from rmrun.runtime.faults import fault_point

    template = load_chat_template(data.chat_template)
    family = model_family(model)
    staged = ctx.stage(step.key, meta={"step": "tokenize"})
    stats = {}
    for split, urls in (("train", data.train), ("eval", data.eval)):
        if not urls:
            continue
        tokenized, stats[split] = _tokenize_split(
            urls, data=data, tokenizer=tokenizer, template=template, family=family, say=ctx.say
        )
        s = stats[split]
        if s["pairs"] == 0:
            raise DataError(
                f"[data].{split}: no preference pairs left in {', '.join(urls)} ({s['bad_rows_skipped']} bad "
                f"rows skipped, {s['dropped']} dropped as longer than max_length {data.max_length})"
            )
        staged.write_bytes(ARRAY_FILES[split], save(tokenized.to_arrays()))
        s = stats[split]
        ctx.say(
            f"tokenize {split}: {s['pairs']} pairs ({s['truncated']} truncated, {s['dropped']} dropped, "
            f"{s['bad_rows_skipped']} bad rows skipped), {s['pairs_per_second']:.0f} pairs/s"
        )
    staged.write_bytes("stats.json", json.dumps(stats, indent=2).encode())
    fault_point("tokenize_commit")
    staged.commit()


def _load(directory: str) -> dict[str, TokenizedPairs]:
    import os

    from rmrun.data import TokenizedPairs
    from rmrun.data.mapped import map_safetensors

    with open(os.path.join(directory, "stats.json")) as f:
        stats = json.load(f)
    out = {}
    for split, name in ARRAY_FILES.items():
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            out[split] = TokenizedPairs.from_arrays(map_safetensors(path), stats[split])
    return out


def _load_node_copy(ctx: RunContext, step: Step) -> dict[str, TokenizedPairs] | None:
    """Collective: the tokenized data, read from the store once per node and hashed as it
    streams; None (after rank 0 quarantined it) when a node found it corrupt."""
    from rmrun.runtime.nodecopy import node_copy

    with node_copy(ctx.store, step.key, rank=ctx.rank) as copy:
        if copy.corrupt is None:
            assert copy.directory is not None, "a copy no node found corrupt has its directory"
            return _load(copy.directory)
    if ctx.rank.is_main:
        ctx.store.quarantine(step.key, reason=copy.corrupt.reason, lease=ctx.held_lease)
    ctx.say(f"quarantined {step.key} ({copy.corrupt.attempt}): {copy.corrupt}; tokenizing again")
    return None


def tokenize_data(ctx: RunContext, step: Step, *, data: DataSection, model: ModelSection) -> None:
    from rmrun.model.model import load_tokenizer
    from rmrun.runtime.collective import barrier
    from rmrun.runtime.faults import fault_point
    from rmrun.store import StoreError

    tokenizer = load_tokenizer(model)
    loaded = None
    for _ in range(2):  # a copy found corrupt is written again, once
        # The runner's done-check has checked the manifest and sizes of a committed copy
        # (quarantining one that fails); its contents are hashed by the one read below.
        if ctx.rank.is_main and ctx.store.open_unverified(step.key) is None:
            _write(ctx, step, data=data, model=model, tokenizer=tokenizer)
        barrier()
        loaded = _load_node_copy(ctx, step)
        if loaded is not None:
            break
    if loaded is None:
        raise StoreError(
            f"tokenized data {step.key} in {ctx.store.root} is corrupt again right after "
            "it was written: the store does not keep what it is given"
        )
    ctx.tokenizer = tokenizer
    ctx.data = loaded
    fault_point("tokenized", rank=ctx.rank.rank)
