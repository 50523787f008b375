"""The tokenize step: preference files → compact token arrays in the state store.

Written once per data fingerprint (file contents, tokenizer files, template,
max_length, overflow and bad-row policy), reused on resume and by later runs in the
same state root.

Each split is cut into pieces (``rmrun.data.pieces``: their bounds depend on the pair count
only, counted once per version of the files and recorded in ``records/pair-counts``). Every
rank tokenizes a contiguous share of the missing pieces, reading the rows as a stream and
holding one piece at a time, with a pool of worker processes where it has cores to spare
(``data.tokenize_workers``). Rank 0 commits each finished piece as a state of its own
(``piece-<data key>-<split>-<i>-of-<n>``): its own directly, another rank's once that rank has
uploaded the files into the attempt rank 0 staged for it and posted them on the board
(``rmrun.runtime.board``). A kill or a stop keeps every committed piece, and the next start (at
any world size) tokenizes only the missing ones. Rank 0 then assembles the pieces on disk,
one at a time, into exactly the arrays one pass gives, commits them and deletes the pieces.
No rank waits for another in a collective: each waits on the board, where every rank beats
while it works, and gives up only when the ranks it waits for have been silent for
``run.collective_timeout_minutes``.

Every rank maps the token arrays of its node's copy (``rmrun.data.mapped``) rather than
loading them: resident memory per rank does not grow with the number of pairs. The mapping
outlives the copy's folder, which ``node_copy`` removes once every process has mapped it.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from rmrun.recipe.schema import DataSection, ModelSection, RunSection
from rmrun.store.keys import tokenize_piece_key

if TYPE_CHECKING:
    from rmrun.data import TokenizedPairs
    from rmrun.run.context import RunContext
    from rmrun.run.graph import Step

ARRAY_FILES = {"train": "train.safetensors", "eval": "eval.safetensors"}


POOL_MIN_PAIRS = 20_000  # below this, starting worker processes costs more than it saves
PIECE_FILE = "pairs.safetensors"
SPLITS = ("train", "eval")


def share(missing: list[int], *, rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous share of the missing pieces (the first ranks take one more):
    contiguous, so a rank reads the rows only up to the end of its share."""
    size, extra = divmod(len(missing), world_size)
    start = rank * size + min(rank, extra)
    return missing[start : start + size + (1 if rank < extra else 0)]


class _Split:
    """One split's pieces in this start: what is missing, who tokenizes what, what is committed."""

    def __init__(self, ctx: RunContext, step: Step, split: str, sources, *, data: DataSection, prompts, stored: dict):
        from rmrun.data.pieces import piece_bounds, pieces_for
        from rmrun.recipe.data_section import all_files
        from rmrun.run.counts import count_pairs
        from rmrun.runtime.collective import broadcast

        self.ctx, self.split, self.sources, self.data, self.prompts = ctx, split, sources, data, prompts
        self.urls = all_files(sources)
        # every rank, side by side, if not known
        self.counted = count_pairs(sources, data=data, stored=stored, split=prompts)
        self.num_pairs = self.counted["pairs"]
        self.num_pieces = pieces_for(self.num_pairs)
        self.bounds = piece_bounds(self.num_pairs, self.num_pieces)
        self.keys = [tokenize_piece_key(step.key, split, i, self.num_pieces) for i in range(self.num_pieces)]
        self.staged: dict = {}
        if ctx.rank.is_main:
            missing = [i for i, key in enumerate(self.keys) if ctx.store.open_verified(key) is None]
            self.staged = {i: ctx.stage(self.keys[i], meta={"step": "tokenize", "piece": True}) for i in missing}
        self.attempts: dict[int, str] = {
            int(i): a for i, a in broadcast({i: st.attempt for i, st in self.staged.items()}).items()
        }
        self.missing = sorted(self.attempts)
        self.mine = share(self.missing, rank=ctx.rank.rank, world_size=ctx.rank.world_size)
        self.committed: set[int] = set()

    def pairs_in(self, pieces) -> int:
        return sum(self.bounds[i][1] - self.bounds[i][0] for i in pieces)


def _record_counts(ctx: RunContext, stored: dict) -> None:
    """Rank 0: the pair counts (and split thresholds) this process knows, kept in the state for
    the next start (a cache, by the files' version stamps)."""
    from rmrun.run.counts import COUNTED
    from rmrun.store.keys import PAIR_COUNTS_RECORD

    merged = {**stored, **COUNTED}
    if merged != stored:
        ctx.store.write_record(PAIR_COUNTS_RECORD, merged, lease=ctx.held_lease)


def _tokenize_split(ctx: RunContext, part: _Split, board, *, tokenizer, template, family, workers: int) -> None:
    """This rank's share of the split's missing pieces, tokenized (in a pool of processes when
    it has the cores and many pairs) and each kept as it finishes: rank 0 commits its own and
    the ones the other ranks posted; a kill keeps every committed piece."""
    import tempfile
    import time

    from safetensors.numpy import save

    from rmrun.data import read_sources
    from rmrun.data.pieces import pieces_from, tokenize_pieces
    from rmrun.data.rated import PairRule
    from rmrun.runtime.faults import fault_point

    split, rank = part.split, ctx.rank
    kept_before = len(part.keys) - len(part.missing)
    ctx.say(
        f"tokenize {split}: {part.num_pairs} pairs in {part.num_pieces} pieces, {kept_before} kept from an earlier "
        f"start" + (f"; {rank.world_size} ranks share the {len(part.missing)} missing" if rank.world_size > 1 else "")
    )
    started = time.perf_counter()
    kept_here: list[int] = []

    def report(i: int) -> None:
        part.committed.add(i)
        done = sorted(part.committed)
        rate = part.pairs_in(done) / max(time.perf_counter() - started, 1e-9)
        left = part.pairs_in(set(part.missing) - part.committed)
        ctx.say(
            f"tokenize {split}: piece {i + 1}/{part.num_pieces} kept ({len(done)}/{len(part.missing)} this start), "
            f"{rate:.0f} pairs/s, {left / rate if rate > 0 else 0:.0f} s to go"
        )

    def commit_posted() -> None:
        for i in part.missing:
            if i in part.committed or i in part.mine:
                continue
            entries = board.read(f"{split}/piece-{i}")
            if entries is not None:
                part.staged[i].add_files(entries)
                part.staged[i].commit()
                report(i)

    def keep(i: int, piece: TokenizedPairs) -> None:
        blobs = {PIECE_FILE: save(piece.to_arrays()), "stats.json": json.dumps(piece.stats).encode()}
        if rank.is_main:
            for name, blob in blobs.items():
                part.staged[i].write_bytes(name, blob)
            fault_point("tokenize_piece", step=len(kept_here), rank=rank.rank)
            part.staged[i].commit()
            report(i)
            commit_posted()
        else:
            with tempfile.TemporaryDirectory(prefix="rmrun-piece-") as scratch:
                paths = {}
                for name, blob in blobs.items():
                    paths[name] = f"{scratch}/{name}"
                    with open(paths[name], "wb") as f:
                        f.write(blob)
                entries = ctx.store.attempt_writer(part.keys[i], part.attempts[i]).put_files(paths)
            fault_point("tokenize_piece", step=len(kept_here), rank=rank.rank)
            board.post(f"{split}/piece-{i}", entries)
        kept_here.append(i)
        board.advance(f"{split}/done")

    options = {"max_length": part.data.max_length, "overflow": part.data.overflow, "template": template}
    d = part.data
    pairs = read_sources(part.sources, bad_rows=d.bad_rows, margins=d.margins, split=part.prompts, rule=PairRule.of(d))
    tokenize_pieces(
        pieces_from(pairs, part.bounds, part.mine),
        tokenizer,
        bounds=part.bounds,
        num_workers=min(workers, len(part.mine)) if part.pairs_in(part.mine) >= POOL_MIN_PAIRS else 1,
        on_piece=keep,
        family=family,
        **options,
    )
    board.wait(
        lambda: board.count(f"{split}/done") == len(part.missing),
        what=f"the other ranks' pieces of {split}",
        between=commit_posted if rank.is_main else None,
    )
    if rank.is_main:
        commit_posted()
        assert part.committed == set(part.missing), "every missing piece was posted before the count reached it"


def _assemble(ctx: RunContext, step: Step, parts: list[_Split], board, *, seconds: float) -> None:
    """Rank 0: the committed pieces of each split, read back one at a time into one file each,
    committed as the tokenized data; then the pieces are deleted."""
    import tempfile

    from safetensors.numpy import load

    from rmrun.data import DataError, TokenizedPairs
    from rmrun.data.pieces import AssembledFile
    from rmrun.runtime.faults import fault_point

    stats = {}
    with tempfile.TemporaryDirectory(prefix="rmrun-tokenized-") as scratch:
        staged = ctx.stage(step.key, meta={"step": "tokenize"})
        for part in parts:
            assembled = AssembledFile(scratch)
            for key in part.keys:
                state = ctx.store.open_unverified(key)
                assert state is not None, f"piece {key} was committed"
                piece_stats = json.loads(state.read_bytes("stats.json"))
                assembled.add(TokenizedPairs.from_arrays(load(state.read_bytes(PIECE_FILE)), piece_stats))
            path = f"{scratch}/{ARRAY_FILES[part.split]}"
            s = stats[part.split] = dict(
                assembled.finish(path, seconds=seconds), bad_rows_skipped=part.counted["skipped"]
            )
            if part.data.sources:  # the names of the pairs' source ids
                s["sources"] = {str(source.id): source.name for source in part.sources if source.id >= 0}
            if s["pairs"] == 0:
                raise DataError(
                    f"[data].{part.split}: no preference pairs left in {', '.join(part.urls)} ({s['bad_rows_skipped']} "
                    f"bad rows skipped, {s['dropped']} dropped as longer than max_length {part.data.max_length})"
                )
            ctx.say(
                f"tokenize {part.split}: {s['pairs']} pairs ({s['truncated']} truncated, {s['dropped']} dropped, "
                f"{s['bad_rows_skipped']} bad rows skipped), {s['pairs_per_second']:.0f} pairs/s"
            )
            staged.put_file(ARRAY_FILES[part.split], path)
            os.unlink(path)
        staged.write_bytes("stats.json", json.dumps(stats, indent=2).encode())
        fault_point("tokenize_commit")
        staged.commit()
    for part in parts:  # whole now; a kill before this leaves pieces no later start reads
        for key in part.keys:
            ctx.store.delete(key, lease=ctx.held_lease)


def _write(
    ctx: RunContext, step: Step, *, data: DataSection, model: ModelSection, run: RunSection, tokenizer, attempt: int
) -> None:
    """Every rank: tokenize its share of each split's missing pieces; rank 0 commits them and
    assembles the data set. Ranks wait for each other on a board (``rmrun.runtime.board``),
    giving up only when the ranks waited for have been silent for the collective timeout;
    ``attempt`` (the how-many-th write of this start) keeps each write's board apart."""

    from rmrun.data import load_chat_template
    from rmrun.model.model import model_family
    from rmrun.runtime.board import Board

    template = load_chat_template(data.chat_template)
    family = model_family(model)
    board = Board(
        f"{step.key}/{attempt}",
        timeout_seconds=run.collective_timeout_minutes * 60,
        rank=ctx.rank.rank,
        world_size=ctx.rank.world_size,
    )
    workers = data.tokenize_workers or ctx.rank.cores()
    with board:
        _tokenize_and_assemble(
            ctx, step, board, data=data, tokenizer=tokenizer, template=template, family=family, workers=workers
        )


def _tokenize_and_assemble(
    ctx: RunContext, step: Step, board, *, data: DataSection, tokenizer, template, family, workers
) -> None:
    import time

    from rmrun.run.counts import split_sources
    from rmrun.runtime.collective import broadcast
    from rmrun.store.keys import PAIR_COUNTS_RECORD

    started = time.perf_counter()
    stored = broadcast(ctx.store.read_record(PAIR_COUNTS_RECORD) or {} if ctx.rank.is_main else None)
    parts = [
        _Split(ctx, step, split, sources, data=data, prompts=prompts, stored=stored)
        for split, sources, prompts in split_sources(data, stored=stored)
        if sources
    ]
    if ctx.rank.is_main:
        _record_counts(ctx, stored)  # before tokenizing: a kill keeps the counts
    for part in parts:
        if part.counted["skipped"] and not (part.prompts is not None and part.split == "eval"):  # said once
            ctx.say(f"skipped {part.counted['skipped']} bad rows: {part.counted['summary']}")
        _tokenize_split(ctx, part, board, tokenizer=tokenizer, template=template, family=family, workers=workers)
    if ctx.rank.is_main:
        _assemble(ctx, step, parts, board, seconds=time.perf_counter() - started)
        board.post("assembled-done", True)
    else:
        board.wait(lambda: board.read("assembled-done") is not None, what="rank 0 to assemble the tokenized data")


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

    with node_copy(ctx.store, step.key, rank=ctx.rank, keep=True) as copy:
        if copy.corrupt is None:
            assert copy.directory is not None, "a copy no node found corrupt has its directory"
            return _load(copy.directory)
    if ctx.rank.is_main:
        ctx.store.quarantine(step.key, reason=copy.corrupt.reason, lease=ctx.held_lease)
    ctx.say(f"quarantined {step.key} ({copy.corrupt.attempt}): {copy.corrupt}; tokenizing again")
    return None


def tokenize_data(ctx: RunContext, step: Step, *, data: DataSection, model: ModelSection, run: RunSection) -> None:
    from rmrun.model.model import load_tokenizer
    from rmrun.runtime.collective import broadcast
    from rmrun.runtime.faults import fault_point
    from rmrun.store import StoreError

    tokenizer = load_tokenizer(model)
    loaded = None
    for attempt in range(2):  # a copy found corrupt is written again, once
        # The runner's done-check has checked the manifest and sizes of a committed copy
        # (quarantining one that fails); its contents are hashed by the one read below.
        if not broadcast(ctx.store.open_unverified(step.key) is not None if ctx.rank.is_main else None):
            _write(ctx, step, data=data, model=model, run=run, tokenizer=tokenizer, attempt=attempt)
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
