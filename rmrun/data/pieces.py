"""Tokenizing a split in contiguous pieces, in parallel, and assembling exactly one data set.

A split's pairs (as ``read_pairs`` yields them, bad rows already skipped) are cut into
``num_pieces`` contiguous pieces by :func:`piece_bounds`, a pure function of the pair count
and the piece count (never of the world size or the number of workers), so pieces made by
one start can be reused by a start with another world size. Each piece is tokenized on its
own (:func:`tokenize_piece`); pair ``i``'s ids do not depend on its neighbours (the
tokenizer encodes each text alone, nothing is padded), so :func:`assemble` (concatenate,
shift the offsets and the pair positions) gives exactly the arrays one ``tokenize_pairs``
call over every pair gives, bit for bit, whatever the number of pieces.

:func:`tokenize_in_pool` tokenizes the pieces in a pool of worker processes (``spawn``:
nothing of the parent's threads or CUDA state is inherited), each holding its own copy of
the tokenizer. The tokenize step (``rmrun/run/steps/tokenize.py``) commits each finished piece
as a state of its own, so a killed start keeps them and the next one tokenizes the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rmrun.data.pairs import PreferencePair
from rmrun.data.tokenize import ARRAY_NAMES, TokenizedPairs, tokenize_pairs

_SUMMED_STATS = ("pairs", "truncated", "dropped", "tokens")
PAIRS_PER_PIECE = 8192  # a kill loses at most this many pairs' tokenization
MIN_PIECES = 4  # even a small split is cut, so that its pieces can be tokenized side by side


def pieces_for(num_pairs: int) -> int:
    """How many pieces a split of ``num_pairs`` pairs is cut into: a pure function of the count."""
    return max(1, min(num_pairs, MIN_PIECES), -(-num_pairs // PAIRS_PER_PIECE))


def piece_bounds(num_pairs: int, num_pieces: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each of ``num_pieces`` contiguous pieces of ``num_pairs`` pairs; the
    first ``num_pairs % num_pieces`` pieces hold one pair more than the others."""
    if num_pieces < 1:
        raise ValueError(f"num_pieces must be at least 1, got {num_pieces}")
    size, extra = divmod(num_pairs, num_pieces)
    bounds, start = [], 0
    for piece in range(num_pieces):
        stop = start + size + (1 if piece < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def tokenize_piece(
    pairs: Sequence[PreferencePair], tokenizer, *, piece: int, num_pieces: int, **options: Any
) -> TokenizedPairs:
    """Piece ``piece`` of ``num_pieces`` of ``pairs`` (all of them), tokenized with
    ``tokenize_pairs(..., **options)``; its ``pair_index`` counts from the first pair of ``pairs``."""
    start, stop = piece_bounds(len(pairs), num_pieces)[piece]
    tokenized = tokenize_pairs(pairs[start:stop], tokenizer, **options)
    return _shifted(tokenized, start)


def _shifted(tokenized: TokenizedPairs, start: int) -> TokenizedPairs:
    arrays = tokenized.to_arrays()
    arrays["pair_index"] = arrays["pair_index"] + np.int64(start)
    return TokenizedPairs.from_arrays(arrays, tokenized.stats)


def assemble(pieces: Sequence[TokenizedPairs], *, seconds: float | None = None) -> TokenizedPairs:
    """The pieces, in order, as one data set; its stats sum the pieces' counts, and its rate is
    over ``seconds`` (the wall time of the whole tokenization; the pieces' sum when None)."""
    arrays: dict[str, np.ndarray] = {}
    for side in ("chosen", "rejected"):
        ids = [getattr(p, f"{side}_ids") for p in pieces]
        lengths = [np.diff(getattr(p, f"{side}_offsets")) for p in pieces]
        arrays[f"{side}_ids"] = np.concatenate([np.zeros(0, dtype=np.int32), *ids])
        arrays[f"{side}_offsets"] = np.concatenate(
            [np.zeros(1, dtype=np.int64), np.cumsum(np.concatenate([np.zeros(0, dtype=np.int64), *lengths]))]
        )
    arrays["pair_index"] = np.concatenate([np.zeros(0, dtype=np.int64), *(p.pair_index for p in pieces)])
    stats: dict[str, Any] = {name: sum(int(p.stats.get(name, 0)) for p in pieces) for name in _SUMMED_STATS}
    stats["seconds"] = seconds if seconds is not None else sum(float(p.stats.get("seconds", 0.0)) for p in pieces)
    input_pairs = stats["pairs"] + stats["dropped"]
    stats["pairs_per_second"] = input_pairs / stats["seconds"] if stats["seconds"] > 0 else 0.0
    assert set(arrays) == set(ARRAY_NAMES), "assemble builds every array of a TokenizedPairs"
    return TokenizedPairs.from_arrays(arrays, stats)


# --------------------------------------------------------------------------- a pool of processes

_worker_tokenizer = None


def _load_worker(tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _tokenize_in_worker(pairs: Sequence[PreferencePair], start: int, options: dict) -> dict:
    tokenized = _shifted(tokenize_pairs(pairs, _worker_tokenizer, **options), start)
    return {"arrays": tokenized.to_arrays(), "stats": tokenized.stats}


def tokenize_in_pool(
    pairs: Sequence[PreferencePair],
    tokenizer,
    *,
    pieces: Sequence[int],
    num_pieces: int,
    num_workers: int,
    on_piece: Callable[[int, TokenizedPairs], None],
    **options: Any,
) -> None:
    """Pieces ``pieces`` (of ``num_pieces``) of ``pairs`` tokenized by ``num_workers`` processes;
    ``on_piece(i, piece)`` is called in this process as each finishes (to keep it, and log progress)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    bounds = piece_bounds(len(pairs), num_pieces)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(num_workers, mp_context=context, initializer=_load_worker, initargs=(tokenizer,)) as pool:
        futures = {
            pool.submit(_tokenize_in_worker, list(pairs[bounds[i][0] : bounds[i][1]]), bounds[i][0], options): i
            for i in pieces
        }
        for future in as_completed(futures):
            result = future.result()
            on_piece(futures[future], TokenizedPairs.from_arrays(result["arrays"], result["stats"]))
