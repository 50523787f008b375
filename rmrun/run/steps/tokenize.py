"""The tokenize step: preference files → compact token arrays in the state store.

Written once per data fingerprint (file contents, tokenizer files, template,
max_length, overflow and bad-row policy), reused on resume and by later runs in the
same state root. Rank 0 tokenizes and commits; the other ranks load what it committed.

Rank 0 cuts each split into pieces (``rmrun.data.pieces``: their bounds depend on the pair
count only), commits each finished piece as a state of its own (``piece-<data key>-<split>-
<i>-of-<n>``), so a kill or a stop keeps every finished piece and the next start (at any
world size) tokenizes only the missing ones; with many pairs a pool of worker processes, one
per core, tokenizes the pieces side by side. The pieces assembled give exactly the arrays one
pass gives; once those are committed the pieces are deleted.

Every rank maps the token arrays of its node's copy (``rmrun.data.mapped``) rather than
loading them: resident memory per rank does not grow with the number of pairs. The mapping
outlives the copy's folder, which ``node_copy`` removes once every process has mapped it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rmrun.recipe.schema import DataSection, ModelSection
from rmrun.store.keys import tokenize_piece_key

if TYPE_CHECKING:
    from rmrun.data import TokenizedPairs
    from rmrun.run.context import RunContext
    from rmrun.run.graph import Step

ARRAY_FILES = {"train": "train.safetensors", "eval": "eval.safetensors"}


POOL_MIN_PAIRS = 20_000  # below this, starting worker processes costs more than it saves
PIECE_FILE = "pairs.safetensors"


def _tokenize_split(ctx: RunContext, step: Step, split: str, urls, *, data: DataSection, tokenizer, template, family):
    """The split's pairs, tokenized piece by piece: pieces an earlier start committed are read
    back, the others tokenized (in a pool of processes when there are many pairs) and each
    committed as it finishes, so a kill keeps every finished piece."""
    import os
    import time

    from rmrun.data import BadRowReport, read_pairs
    from rmrun.data.pieces import piece_bounds, pieces_for, tokenize_in_pool, tokenize_piece

    started = time.perf_counter()
    report = BadRowReport()
    pairs = list(read_pairs(urls, format=data.format, bad_rows=data.bad_rows, report=report))
    if report.total:
        ctx.say(f"skipped {report.total} bad rows: {report.summary()}")
    num_pieces = pieces_for(len(pairs))
    keys = [tokenize_piece_key(step.key, split, i, num_pieces) for i in range(num_pieces)]
    done = {i: piece for i, key in enumerate(keys) if (piece := _read_piece(ctx, key)) is not None}
    missing = [i for i in range(num_pieces) if i not in done]
    ctx.say(f"tokenize {split}: {len(pairs)} pairs in {num_pieces} pieces, {len(done)} kept from an earlier start")
    options = {"max_length": data.max_length, "overflow": data.overflow, "template": template, "family": family}

    bounds = piece_bounds(len(pairs), num_pieces)
    kept_now: list[int] = []
    tokenizing = time.perf_counter()

    def keep(i: int, piece: TokenizedPairs) -> None:
        done[i] = piece
        _commit_piece(ctx, keys[i], piece, kept_before=len(kept_now))
        kept_now.append(i)
        pairs_now = sum(bounds[j][1] - bounds[j][0] for j in kept_now)
        ctx.say(
            f"tokenize {split}: piece {i + 1}/{num_pieces} kept ({len(kept_now)}/{len(missing)} this start), "
            f"{pairs_now / (time.perf_counter() - tokenizing):.0f} pairs/s"
        )

    missing_pairs = sum(bounds[i][1] - bounds[i][0] for i in missing)
    workers = min(len(missing), os.cpu_count() or 1)
    if workers > 1 and missing_pairs >= POOL_MIN_PAIRS:
        tokenize_in_pool(
            pairs,
            tokenizer,
            pieces=missing,
            num_pieces=num_pieces,
            num_workers=workers,
            on_piece=keep,
            **options,
        )
    else:
        for i in missing:
            keep(i, tokenize_piece(pairs, tokenizer, piece=i, num_pieces=num_pieces, **options))
    return [done[i] for i in range(num_pieces)], report, keys, time.perf_counter() - started


def _read_piece(ctx: RunContext, key: str) -> TokenizedPairs | None:
    from safetensors.numpy import load

    from rmrun.data import TokenizedPairs

    state = ctx.store.open_verified(key)
    if state is None:
        return None
    return TokenizedPairs.from_arrays(load(state.read_bytes(PIECE_FILE)), json.loads(state.read_bytes("stats.json")))


def _commit_piece(ctx: RunContext, key: str, piece: TokenizedPairs, *, kept_before: int) -> None:
    from safetensors.numpy import save

    from rmrun.runtime.faults import fault_point

    staged = ctx.stage(key, meta={"step": "tokenize", "piece": True})
    staged.write_bytes(PIECE_FILE, save(piece.to_arrays()))
    staged.write_bytes("stats.json", json.dumps(piece.stats).encode())
    fault_point("tokenize_piece", step=kept_before)
    staged.commit()


def _write(ctx: RunContext, step: Step, *, data: DataSection, model: ModelSection, tokenizer) -> None:
    from safetensors.numpy import save

    from rmrun.data import DataError, load_chat_template
    from rmrun.data.pieces import assemble
    from rmrun.model.model import model_family
    from rmrun.runtime.faults import fault_point

    template = load_chat_template(data.chat_template)
    family = model_family(model)
    stats = {}
    arrays = {}
    piece_keys = []
    for split, urls in (("train", data.train), ("eval", data.eval)):
        if not urls:
            continue
        pieces, report, keys, seconds = _tokenize_split(
            ctx, step, split, urls, data=data, tokenizer=tokenizer, template=template, family=family
        )
        piece_keys += keys
        tokenized = assemble(pieces, seconds=seconds)
        s = stats[split] = dict(tokenized.stats, bad_rows_skipped=report.total)
        if s["pairs"] == 0:
            raise DataError(
                f"[data].{split}: no preference pairs left in {', '.join(urls)} ({s['bad_rows_skipped']} bad "
                f"rows skipped, {s['dropped']} dropped as longer than max_length {data.max_length})"
            )
        arrays[split] = save(tokenized.to_arrays())
        ctx.say(
            f"tokenize {split}: {s['pairs']} pairs ({s['truncated']} truncated, {s['dropped']} dropped, "
            f"{s['bad_rows_skipped']} bad rows skipped), {s['pairs_per_second']:.0f} pairs/s"
        )
    staged = ctx.stage(step.key, meta={"step": "tokenize"})
    for split, blob in arrays.items():
        staged.write_bytes(ARRAY_FILES[split], blob)
    staged.write_bytes("stats.json", json.dumps(stats, indent=2).encode())
    fault_point("tokenize_commit")
    staged.commit()
    for key in piece_keys:  # whole now; a kill before this leaves pieces no later start reads
        ctx.store.delete(key, lease=ctx.held_lease)


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
