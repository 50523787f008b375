"""Tokenizing a split in contiguous pieces, in parallel, and assembling exactly one data set.

A split's pairs (as ``read_pairs`` yields them, bad rows already skipped) are cut into
``num_pieces`` contiguous pieces by :func:`piece_bounds`, a pure function of the pair count
and the piece count (never of the world size or the number of workers), so pieces made by
one start can be reused by a start with another world size. Each piece is tokenized on its
own (:func:`tokenize_piece`); pair ``i``'s ids do not depend on its neighbours (the
tokenizer encodes each text alone, nothing is padded), so :func:`assemble` (concatenate,
shift the offsets and the pair positions) gives exactly the arrays one ``tokenize_pairs``
call over every pair gives, bit for bit, whatever the number of pieces.

:func:`pieces_from` cuts a stream of pairs into the pieces a rank wants, holding one piece at
a time; :func:`tokenize_pieces` tokenizes them, in a pool of worker processes where a rank has
cores to spare; :class:`AssembledFile` writes the assembled arrays to disk piece by piece. The
tokenize step (``rmrun/run/steps/tokenize.py``) shares the pieces among the ranks and commits
each finished piece as a state of its own, so a killed start keeps them and the next one
tokenizes the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from rmrun.data.arrays import ARRAY_DTYPES, ARRAY_NAMES, DERIVED, TokenizedPairs, subset_names
from rmrun.data.pairs import PreferencePair
from rmrun.data.tokenize import tokenize_pairs

_SUMMED_STATS = ("pairs", "truncated", "dropped", "tokens")
PAIRS_PER_PIECE = 8192  # a kill loses at most this many pairs' tokenization
MIN_PIECES = 4  # even a small split is cut, so that its pieces can be tokenized side by side
# A split of more than one piece's worth is cut into a multiple of this many pieces, so that
# 1, 2, 4 or 8 ranks (or a rank's pool of workers) share them evenly: with 13 pieces, two
# ranks would take 7 and 6, and the one with 7 would set the pace.
PIECE_MULTIPLE = 8


def pieces_for(num_pairs: int) -> int:
    """How many pieces a split of ``num_pairs`` pairs is cut into: a pure function of the count."""
    if num_pairs <= PAIRS_PER_PIECE:
        return max(1, min(num_pairs, MIN_PIECES))
    return -(-num_pairs // (PAIRS_PER_PIECE * PIECE_MULTIPLE)) * PIECE_MULTIPLE


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
    for name in DERIVED:
        empty = np.zeros(0, dtype=ARRAY_DTYPES[name])
        arrays[name] = np.concatenate([empty, *(getattr(p, name) for p in pieces)])
    stats = summed_stats([p.stats for p in pieces], seconds=seconds)
    assert set(arrays) == set(ARRAY_NAMES), "assemble builds every array of a TokenizedPairs"
    return TokenizedPairs.from_arrays(arrays, stats)


# --------------------------------------------------------------------------- streaming the pieces


def pieces_from(
    pairs: Iterable[PreferencePair], bounds: Sequence[tuple[int, int]], wanted: Sequence[int]
) -> Iterator[tuple[int, list[PreferencePair]]]:
    """``(i, pairs of piece i)`` for each piece in ``wanted``, in order, from a stream of every
    pair; only one piece's pairs are held at a time, and the stream is left as soon as the last
    wanted piece is complete (a rank that tokenizes the first pieces does not read the rest)."""
    stream = enumerate(pairs)
    for i in sorted(set(wanted)):
        start, stop = bounds[i]
        collected: list[PreferencePair] = []
        if stop > start:
            for index, pair in stream:
                if index >= start:
                    collected.append(pair)
                if index == stop - 1:
                    break
        if len(collected) != stop - start:
            raise ValueError(f"the pairs ran out before piece {i} ({start}, {stop}) was complete")
        yield i, collected


# --------------------------------------------------------------------------- a pool of processes

_worker_tokenizer = None


def _load_worker(tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _tokenize_in_worker(pairs: Sequence[PreferencePair], start: int, options: dict) -> dict:
    tokenized = _shifted(tokenize_pairs(pairs, _worker_tokenizer, **options), start)
    return {"arrays": tokenized.to_arrays(), "stats": tokenized.stats}


def tokenize_pieces(
    pieces: Iterable[tuple[int, list[PreferencePair]]],
    tokenizer,
    *,
    bounds: Sequence[tuple[int, int]],
    num_workers: int,
    on_piece: Callable[[int, TokenizedPairs], None],
    **options: Any,
) -> None:
    """Tokenize each ``(i, pairs)`` of ``pieces`` (``pieces_from``); ``on_piece(i, piece)`` is
    called in this process as each finishes (to keep it, and log progress). With
    ``num_workers > 1`` a pool of that many processes (``spawn``: nothing of this process's
    threads or CUDA state is inherited), each with its own copy of the tokenizer, tokenizes
    them side by side, with at most two pieces per worker in flight so memory stays bounded.
    An exception here (a stop signal) terminates the workers at once: their pieces are lost,
    every piece ``on_piece`` was given is kept."""
    if num_workers <= 1:
        for i, piece_pairs in pieces:
            on_piece(i, _shifted(tokenize_pairs(piece_pairs, tokenizer, **options), bounds[i][0]))
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    pool = context.Pool(num_workers, initializer=_load_worker, initargs=(tokenizer,))
    in_flight: dict[int, Any] = {}

    def finish_one() -> None:
        while True:
            for i, result in list(in_flight.items()):
                if result.ready():
                    del in_flight[i]
                    got = result.get()
                    on_piece(i, TokenizedPairs.from_arrays(got["arrays"], got["stats"]))
                    return
            next(iter(in_flight.values())).wait(0.05)

    try:
        for i, piece_pairs in pieces:
            while len(in_flight) >= 2 * num_workers:
                finish_one()
            in_flight[i] = pool.apply_async(_tokenize_in_worker, (piece_pairs, bounds[i][0], options))
        while in_flight:
            finish_one()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# --------------------------------------------------------------------------- assembling on disk

_ASSEMBLED_ORDER = (
    "chosen_offsets",
    "group",
    "pair_index",
    "rejected_offsets",
    "chosen_ids",
    "margin",
    "rejected_ids",
    "shared_prefix",
    "source_id",
    "subset_id",
)
_SAFETENSORS_DTYPES = {np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.float32): "F32"}


class AssembledFile:
    """The pieces, in order, written as one safetensors file of a ``TokenizedPairs`` without
    holding more than one piece: each array is appended to a scratch file of its own (offsets
    and pair positions shifted), and :meth:`finish` writes the header and the arrays one after
    the other. ``map_safetensors`` and ``safetensors.numpy.load_file`` read it; its arrays are
    the ones :func:`assemble` gives, bit for bit."""

    def __init__(self, directory: str):
        import os

        self.directory = directory
        self._files = {name: open(os.path.join(directory, f"{name}.raw"), "wb") for name in ARRAY_NAMES}
        self._pairs = 0
        self._ids = {"chosen": 0, "rejected": 0}
        self._stats: list[dict] = []
        for side in ("chosen", "rejected"):
            self._files[f"{side}_offsets"].write(np.zeros(1, dtype=np.int64).tobytes())

    def add(self, piece: TokenizedPairs) -> None:
        for side in ("chosen", "rejected"):
            ids, offsets = getattr(piece, f"{side}_ids"), getattr(piece, f"{side}_offsets")
            self._files[f"{side}_ids"].write(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
            shifted = np.asarray(offsets[1:], dtype=np.int64) + np.int64(self._ids[side])
            self._files[f"{side}_offsets"].write(shifted.tobytes())
            self._ids[side] += len(ids)
        self._files["pair_index"].write(np.ascontiguousarray(piece.pair_index, dtype=np.int64).tobytes())
        for name in DERIVED:
            self._files[name].write(np.ascontiguousarray(getattr(piece, name), dtype=ARRAY_DTYPES[name]).tobytes())
        self._pairs += len(piece)
        self._stats.append(dict(piece.stats))

    def finish(self, path: str, *, seconds: float | None = None) -> dict:
        """Write the safetensors file at ``path``; returns the summed stats (as :func:`assemble`)."""
        import json
        import os
        import shutil
        import struct

        for scratch in self._files.values():
            scratch.close()
        header, begin = {}, 0
        for name in _ASSEMBLED_ORDER:
            size = os.path.getsize(os.path.join(self.directory, f"{name}.raw"))
            dtype = np.dtype(ARRAY_DTYPES[name])
            header[name] = {
                "dtype": _SAFETENSORS_DTYPES[dtype],
                "shape": [size // dtype.itemsize],
                "data_offsets": [begin, begin + size],
            }
            begin += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(text)))
            out.write(text)
            for name in _ASSEMBLED_ORDER:
                raw = os.path.join(self.directory, f"{name}.raw")
                with open(raw, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
                os.unlink(raw)
        return summed_stats(self._stats, seconds=seconds)


def summed_stats(stats: Sequence[dict], *, seconds: float | None = None) -> dict:
    """The pieces' stats summed; the rate is over ``seconds`` (the pieces' sum when None)."""
    out: dict[str, Any] = {name: sum(int(s.get(name, 0)) for s in stats) for name in _SUMMED_STATS}
    out["seconds"] = seconds if seconds is not None else sum(float(s.get("seconds", 0.0)) for s in stats)
    input_pairs = out["pairs"] + out["dropped"]
    out["pairs_per_second"] = input_pairs / out["seconds"] if out["seconds"] > 0 else 0.0
    subsets = subset_names(s.get("subsets") for s in stats)
    if subsets:
        out["subsets"] = subsets
    return out
