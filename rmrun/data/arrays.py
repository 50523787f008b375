"""Tokenized pairs as flat numpy arrays (CSR layout), the form every later step reads.

Token ids are one flat int32 array per side plus int64 offsets: 100k pairs fit in a few
hundred MB at most, are stored with ``safetensors.numpy.save`` as they are, and are read
memory-mapped (``mapped.py``). Each pair's shared token prefix (the shared-prompt forward's
prompt, ``share.py``) is computed once, when the pairs are tokenized, and stored with them,
so a run over mapped arrays never reads every token to find it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rmrun.data.mapped import release_pages

ARRAY_NAMES = (
    "chosen_ids",
    "chosen_offsets",
    "rejected_ids",
    "rejected_offsets",
    "pair_index",
    "shared_prefix",
    "margin",
    "group",
    "subset_id",
    "source_id",
)
ARRAY_DTYPES = {
    "chosen_ids": np.int32,
    "chosen_offsets": np.int64,
    "rejected_ids": np.int32,
    "rejected_offsets": np.int64,
    "pair_index": np.int64,
    "shared_prefix": np.int32,
    "margin": np.float32,
    "group": np.int64,
    "subset_id": np.int32,
    "source_id": np.int32,
}
# Arrays data tokenized before they were stored may lack; made from the others when absent.
DERIVED = ("shared_prefix", "margin", "group", "subset_id", "source_id")


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays do not compare to a single bool
class TokenizedPairs:
    """Tokenized pairs in CSR layout: pair ``i``'s chosen ids are ``chosen_ids[chosen_offsets[i]:chosen_offsets[i+1]]``.

    ``pair_index[i]`` is the position of pair ``i`` in the input, so dropped pairs show as gaps.
    ``shared_prefix[i]`` is the number of leading tokens both sides of pair ``i`` share, capped
    at ``min(c, r) - 1`` (the shared-prompt forward's prompt, ``share.py``): computed when the
    pairs are tokenized and stored with them, so a run over mapped arrays never reads every
    token to find it; computed here when not given (data tokenized before it was stored).
    ``margin[i]`` is pair ``i``'s margin from its row (``data.margins``), 0 when not asked for.
    ``group[i]`` numbers pair ``i``'s row (pairs of a row with several responses share it; -1:
    not numbered) and ``subset_id[i]`` is its row's subset name as :func:`subset_id_of` (the names are
    ``stats["subsets"]``, ``{id: name}``; 0 is no subset). ``source_id[i]`` is the place of pair
    ``i``'s source in ``data.sources`` (names: ``stats["sources"]``, ``{id: name}``; 0 without
    sources, -1 for data.eval's pairs beside them).
    """

    chosen_ids: np.ndarray
    chosen_offsets: np.ndarray
    rejected_ids: np.ndarray
    rejected_offsets: np.ndarray
    pair_index: np.ndarray
    shared_prefix: np.ndarray | None = None
    margin: np.ndarray | None = None  # each pair's margin from the data (data.margins); 0 without
    group: np.ndarray | None = None  # the row each pair came from; -1 without
    subset_id: np.ndarray | None = None  # each pair's subset, as subset_id_of its name; 0 without
    source_id: np.ndarray | None = None  # each pair's place in data.sources; 0 without
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = len(self.pair_index)
        for name, fill in (("margin", 0), ("group", -1), ("subset_id", 0), ("source_id", 0)):
            if getattr(self, name) is None:  # frozen: set once, here
                object.__setattr__(self, name, np.full(count, fill, dtype=ARRAY_DTYPES[name]))
        if self.shared_prefix is None:
            if len(self.chosen_offsets) != len(self.pair_index) + 1:
                raise ValueError(f"chosen_offsets must have {len(self.pair_index) + 1} entries")
            prefix = common_prefix_lengths(
                self.chosen_ids, self.chosen_offsets, self.rejected_ids, self.rejected_offsets
            )
            object.__setattr__(self, "shared_prefix", prefix)  # frozen: set once, here
        for name in ARRAY_NAMES:
            array = getattr(self, name)
            if array.dtype != ARRAY_DTYPES[name] or array.ndim != 1:
                raise ValueError(
                    f"{name} must be a 1-d {np.dtype(ARRAY_DTYPES[name])} array, got {array.dtype} {array.shape}"
                )
        for name in DERIVED:
            if len(getattr(self, name)) != count:
                raise ValueError(f"{name} must have {count} entries, one per pair")
        for side in ("chosen", "rejected"):
            ids, offsets = getattr(self, f"{side}_ids"), getattr(self, f"{side}_offsets")
            if len(offsets) != count + 1 or offsets[0] != 0 or offsets[-1] != len(ids):
                raise ValueError(f"{side}_offsets must have {count + 1} entries from 0 to len({side}_ids)")

    def __len__(self) -> int:
        return len(self.pair_index)

    def chosen(self, i: int) -> np.ndarray:
        """Token ids of pair ``i``'s chosen sequence (a view, not a copy)."""
        return self.chosen_ids[self.chosen_offsets[i] : self.chosen_offsets[i + 1]]

    def rejected(self, i: int) -> np.ndarray:
        """Token ids of pair ``i``'s rejected sequence (a view, not a copy)."""
        return self.rejected_ids[self.rejected_offsets[i] : self.rejected_offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        """``(n, 2)`` int64 array of (chosen, rejected) lengths, e.g. for length-grouped batching."""
        return np.stack([np.diff(self.chosen_offsets), np.diff(self.rejected_offsets)], axis=1)

    def subset(self, indices: np.ndarray) -> TokenizedPairs:
        """Pairs ``indices``, in that order, as a data set of their own (copies of their ids);
        ``pair_index`` keeps each pair's position in the input."""
        indices = np.asarray(indices, dtype=np.int64)
        arrays = {name: getattr(self, name)[indices] for name in ("pair_index", *DERIVED)}
        for side in ("chosen", "rejected"):
            ids, offsets = getattr(self, f"{side}_ids"), getattr(self, f"{side}_offsets")
            starts = offsets[indices]
            lengths = offsets[indices + 1] - starts
            new_offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths, dtype=np.int64)])
            out = np.empty(int(new_offsets[-1]), dtype=ids.dtype)
            for begin in range(0, len(indices), GATHER_CHUNK):  # a chunk of pairs, then its pages let go
                end = min(begin + GATHER_CHUNK, len(indices))
                lo, hi = int(new_offsets[begin]), int(new_offsets[end])
                # Token t of the new flat array comes from its pair's start, shifted by its place in the pair.
                shift = np.repeat(starts[begin:end] - new_offsets[begin:end], lengths[begin:end])
                out[lo:hi] = ids[shift + np.arange(lo, hi, dtype=np.int64)]
                release_pages(ids)
            arrays[f"{side}_ids"] = out
            arrays[f"{side}_offsets"] = new_offsets
        return TokenizedPairs(**arrays)

    def release_pages(self) -> None:
        """Unmap from this process the pages of its mapped arrays read so far (``mapped.py``):
        the resident memory of a pass over random pairs stays that of one step."""
        for name in ARRAY_NAMES:
            release_pages(getattr(self, name))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays by name, contiguous, as ``safetensors.numpy.save`` wants them."""
        return {name: np.ascontiguousarray(getattr(self, name)) for name in ARRAY_NAMES}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], stats: dict) -> TokenizedPairs:
        """Inverse of ``to_arrays``; dtypes must match exactly so a round trip is lossless."""
        missing = [name for name in ARRAY_NAMES if name not in arrays and name not in DERIVED]
        if missing:
            raise ValueError(f"tokenized arrays are missing {', '.join(missing)}")
        return cls(**{name: arrays[name] for name in ARRAY_NAMES if name in arrays}, stats=dict(stats))


def subset_id_of(name: str) -> int:
    """A subset name's id in the ``subset_id`` array: a hash, so pieces tokenized apart agree on it
    without a shared table (a clash of two names is refused by ``subset_names``); "" is 0."""
    import zlib

    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF if name else 0


def subset_names(tables) -> dict[str, str]:
    """The union of pieces' ``stats["subsets"]`` tables (``{str(id): name}``)."""
    from rmrun.data.pairs import DataError

    out: dict[str, str] = {}
    for table in tables:
        for key, name in (table or {}).items():
            if out.setdefault(key, name) != name:
                raise DataError(f"the subset names {out[key]!r} and {name!r} hash alike; rename one of them")
    return dict(sorted(out.items(), key=lambda item: item[1]))


PREFIX_CHUNK = 8192  # pairs compared at a time
GATHER_CHUNK = 512  # pairs a subset gathers before it lets their pages go (64 KB of mapping each, at most)


def common_prefix_lengths(
    chosen_ids: np.ndarray, chosen_offsets: np.ndarray, rejected_ids: np.ndarray, rejected_offsets: np.ndarray
) -> np.ndarray:
    """Per pair, the number of leading tokens its two sides share, capped at ``min(c, r) - 1``
    so each side keeps a token of its own; vectorized over chunks of pairs."""
    count = len(chosen_offsets) - 1
    out = np.zeros(count, dtype=np.int32)
    for begin in range(0, count, PREFIX_CHUNK):
        end = min(begin + PREFIX_CHUNK, count)
        chosen_starts, rejected_starts = chosen_offsets[begin:end], rejected_offsets[begin:end]
        n = np.minimum(
            chosen_offsets[begin + 1 : end + 1] - chosen_starts, rejected_offsets[begin + 1 : end + 1] - rejected_starts
        )
        common = n.copy()
        total = int(n.sum())
        if total:
            starts = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(n)[:-1]])
            local = np.arange(total, dtype=np.int64) - np.repeat(starts, n)
            differ = (
                chosen_ids[np.repeat(chosen_starts, n) + local] != rejected_ids[np.repeat(rejected_starts, n) + local]
            )
            first = np.minimum.reduceat(np.where(differ, local, np.iinfo(np.int64).max), starts[n > 0])
            common[n > 0] = np.minimum(first, n[n > 0])
        out[begin:end] = np.minimum(common, n - 1)
    return out
