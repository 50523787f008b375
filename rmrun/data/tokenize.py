"""Tokenizing preference pairs into flat numpy arrays, and collating them into training batches.

Each side of a pair (prompt + chosen, prompt + rejected) is rendered with the chat template and
tokenized with a fast tokenizer. The reward is read at the last token, so every sequence is cut
to end at the end-of-assistant token, and over-long sequences lose tokens from the start.

Token ids are kept as one flat int32 array per side plus int64 offsets (CSR layout): 100k pairs
fit in a few hundred MB at most and can be stored with ``safetensors.numpy.save`` as they are.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from rmrun.data.formats import DataError, PreferencePair
from rmrun.data.template import ChatTemplate, end_of_assistant_token, render_conversations, resolve_chat_template

if TYPE_CHECKING:
    import torch

OVERFLOW_POLICIES = ("truncate", "drop", "error")
ARRAY_NAMES = ("chosen_ids", "chosen_offsets", "rejected_ids", "rejected_offsets", "pair_index")
_ARRAY_DTYPES = {
    "chosen_ids": np.int32,
    "chosen_offsets": np.int64,
    "rejected_ids": np.int32,
    "rejected_offsets": np.int64,
    "pair_index": np.int64,
}


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays do not compare to a single bool
class TokenizedPairs:
    """Tokenized pairs in CSR layout: pair ``i``'s chosen ids are ``chosen_ids[chosen_offsets[i]:chosen_offsets[i+1]]``.

    ``pair_index[i]`` is the position of pair ``i`` in the input, so dropped pairs show as gaps.
    """

    chosen_ids: np.ndarray
    chosen_offsets: np.ndarray
    rejected_ids: np.ndarray
    rejected_offsets: np.ndarray
    pair_index: np.ndarray
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ARRAY_NAMES:
            array = getattr(self, name)
            if array.dtype != _ARRAY_DTYPES[name] or array.ndim != 1:
                raise ValueError(f"{name} must be a 1-d {np.dtype(_ARRAY_DTYPES[name])} array, got {array.dtype} {array.shape}")
        count = len(self.pair_index)
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

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays by name, contiguous, as ``safetensors.numpy.save`` wants them."""
        return {name: np.ascontiguousarray(getattr(self, name)) for name in ARRAY_NAMES}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], stats: dict) -> TokenizedPairs:
        """Inverse of ``to_arrays``; dtypes must match exactly so a round trip is lossless."""
        missing = [name for name in ARRAY_NAMES if name not in arrays]
        if missing:
            raise ValueError(f"tokenized arrays are missing {', '.join(missing)}")
        return cls(**{name: arrays[name] for name in ARRAY_NAMES}, stats=dict(stats))


# --------------------------------------------------------------------------- tokenizing


def tokenize_pairs(
    pairs: Iterable[PreferencePair],
    tokenizer,
    *,
    max_length: int,
    overflow: str,
    template: ChatTemplate | None,
    batch_size: int = 512,
) -> TokenizedPairs:
    """Render and tokenize every pair; apply the ``overflow`` policy to pairs over ``max_length``.

    ``overflow``: ``"truncate"`` drops tokens from the start of a too-long side (keeping a
    leading bos), ``"drop"`` skips the pair, ``"error"`` raises DataError naming the pair.
    """
    _check_arguments(tokenizer, max_length=max_length, overflow=overflow, batch_size=batch_size)
    template = resolve_chat_template(tokenizer, template)
    end_id = _end_of_assistant_id(tokenizer, template)
    bos_id = tokenizer.bos_token_id
    builder = _PairArraysBuilder()
    counts = {"truncated": 0, "dropped": 0}
    started = time.perf_counter()
    for first_index, batch in _batches(pairs, batch_size):
        chosen_batch = _tokenize_side(batch, "chosen", tokenizer, template=template, end_id=end_id)
        rejected_batch = _tokenize_side(batch, "rejected", tokenizer, template=template, end_id=end_id)
        kept_chosen, kept_rejected, kept_indices = [], [], []
        for offset, (pair, chosen, rejected) in enumerate(zip(batch, chosen_batch, rejected_batch)):
            if max(len(chosen), len(rejected)) > max_length:
                if overflow == "error":
                    raise DataError(_overflow_message(pair, chosen=chosen, rejected=rejected, max_length=max_length))
                if overflow == "drop":
                    counts["dropped"] += 1
                    continue
                chosen = _truncate_from_start(chosen, max_length=max_length, bos_id=bos_id)
                rejected = _truncate_from_start(rejected, max_length=max_length, bos_id=bos_id)
                counts["truncated"] += 1
            kept_chosen.append(chosen)
            kept_rejected.append(rejected)
            kept_indices.append(first_index + offset)
        builder.add_batch(kept_chosen, kept_rejected, pair_indices=kept_indices)
    tokenized = builder.build()
    seconds = time.perf_counter() - started
    input_pairs = len(tokenized) + counts["dropped"]
    stats = {
        "pairs": len(tokenized),
        "truncated": counts["truncated"],
        "dropped": counts["dropped"],
        "tokens": int(len(tokenized.chosen_ids) + len(tokenized.rejected_ids)),
        "seconds": seconds,
        "pairs_per_second": input_pairs / seconds if seconds > 0 else 0.0,
    }
    return dataclasses.replace(tokenized, stats=stats)


def _check_arguments(tokenizer, *, max_length: int, overflow: str, batch_size: int) -> None:
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"unknown overflow policy {overflow!r}; expected one of {', '.join(OVERFLOW_POLICIES)}")
    # Room for a leading bos plus the end-of-assistant token the reward is read at.
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"{tokenizer.name_or_path or 'tokenizer'}: a fast tokenizer (tokenizer.json) is required for batch tokenization"
        )


def _end_of_assistant_id(tokenizer, template: ChatTemplate) -> int:
    """Id of the end-of-assistant token; it must encode to exactly one token to be findable."""
    token = end_of_assistant_token(tokenizer, template)
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise DataError(
            f"{tokenizer.name_or_path or 'tokenizer'}: end-of-assistant {token!r} is {len(ids)} tokens, "
            "not one; the reward is read at this token, so it must be a single (special) token"
        )
    return ids[0]


def _batches(pairs: Iterable[PreferencePair], size: int) -> Iterator[tuple[int, list[PreferencePair]]]:
    """``(index of the batch's first pair, batch)`` for consecutive batches of ``size`` pairs."""
    iterator = iter(pairs)
    first_index = 0
    while batch := list(itertools.islice(iterator, size)):
        yield first_index, batch
        first_index += len(batch)


def _tokenize_side(
    batch: Sequence[PreferencePair], side: str, tokenizer, *, template: ChatTemplate, end_id: int
) -> list[list[int]]:
    """Render prompt + response for one side of every pair and tokenize the texts in one call."""
    conversations = [pair.prompt + getattr(pair, side) for pair in batch]
    sources = [pair.source for pair in batch]
    texts = render_conversations(tokenizer, conversations, template=template, sources=sources)
    # The template already emits bos where it wants one; letting the tokenizer add
    # special tokens as well would double it.
    # verbose=False: the "longer than model_max_length" warning is moot, the overflow policy handles length.
    encoded = tokenizer(
        texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
    )
    return [
        _end_at_last_end_of_assistant(ids, end_id=end_id, source=pair.source, tokenizer=tokenizer)
        for ids, pair in zip(encoded["input_ids"], batch)
    ]


def _end_at_last_end_of_assistant(ids: list[int], *, end_id: int, source: str, tokenizer) -> list[int]:
    """Cut off whatever the template renders after the final end-of-assistant (newlines, a
    generation prompt), so the last token, where the reward is read, closes the response."""
    if ids and ids[-1] == end_id:
        return ids
    try:
        last = len(ids) - 1 - ids[::-1].index(end_id)
    except ValueError:
        token = tokenizer.convert_ids_to_tokens(end_id)
        raise DataError(
            f"{source}: the chat template's rendering contains no end-of-assistant token {token!r}; "
            "use a template whose assistant turns end with it, or set end_of_assistant in a ColossalChat template .json"
        ) from None
    return ids[: last + 1]


def _truncate_from_start(ids: list[int], *, max_length: int, bos_id: int | None) -> list[int]:
    """Keep the last tokens (the end of the response, where the reward is read) and a leading bos."""
    if len(ids) <= max_length:
        return ids
    if bos_id is not None and ids[0] == bos_id:
        return [bos_id, *ids[len(ids) - (max_length - 1) :]]
    return ids[len(ids) - max_length :]


def _overflow_message(pair: PreferencePair, *, chosen: list[int], rejected: list[int], max_length: int) -> str:
    return (
        f"{pair.source}: pair is {max(len(chosen), len(rejected))} tokens long "
        f"(chosen {len(chosen)}, rejected {len(rejected)}), over data.max_length={max_length}; "
        'raise max_length or set data.overflow to "truncate" or "drop"'
    )


class _PairArraysBuilder:
    """Collects per-batch numpy chunks so no Python list ever holds every token."""

    def __init__(self) -> None:
        self._chunks: dict[str, list[np.ndarray]] = {
            "chosen_ids": [],
            "chosen_lengths": [],
            "rejected_ids": [],
            "rejected_lengths": [],
            "pair_index": [],
        }

    def add_batch(self, chosen: list[list[int]], rejected: list[list[int]], *, pair_indices: list[int]) -> None:
        for side, sequences in (("chosen", chosen), ("rejected", rejected)):
            lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
            flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int32, count=int(lengths.sum()))
            self._chunks[f"{side}_ids"].append(flat)
            self._chunks[f"{side}_lengths"].append(lengths)
        self._chunks["pair_index"].append(np.asarray(pair_indices, dtype=np.int64))

    def build(self) -> TokenizedPairs:
        arrays = {}
        for side in ("chosen", "rejected"):
            arrays[f"{side}_ids"] = _concatenate(self._chunks[f"{side}_ids"], dtype=np.int32)
            lengths = _concatenate(self._chunks[f"{side}_lengths"], dtype=np.int64)
            arrays[f"{side}_offsets"] = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths)])
        arrays["pair_index"] = _concatenate(self._chunks["pair_index"], dtype=np.int64)
        return TokenizedPairs(**arrays)


def _concatenate(chunks: list[np.ndarray], *, dtype) -> np.ndarray:
    """np.concatenate that also accepts no chunks (every pair dropped, or no input)."""
    return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype=dtype)


# --------------------------------------------------------------------------- batching


def collate(tokenized: TokenizedPairs, indices: Sequence[int], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch for a single forward pass over both sides.

    ``input_ids`` is ``(2B, L)``: rows ``0..B-1`` are the chosen and ``B..2B-1`` the rejected
    sequences, right-padded with ``pad_token_id`` to the longest sequence in this batch.
    ``attention_mask`` marks real tokens, so the last real token of row ``r`` is at
    ``attention_mask[r].sum() - 1`` even when the pad id equals some real token's id.
    """
    import torch  # here, not at the top, so reading and tokenizing data does not pay for importing torch

    if len(indices) == 0:
        raise ValueError("collate needs at least one pair index")
    sequences = [tokenized.chosen(i) for i in indices] + [tokenized.rejected(i) for i in indices]
    longest = max(len(sequence) for sequence in sequences)
    input_ids = np.full((len(sequences), longest), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = sequence
        attention_mask[row, : len(sequence)] = 1
    pair_ids = tokenized.pair_index[np.asarray(indices, dtype=np.int64)]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "pair_ids": torch.from_numpy(pair_ids.astype(np.int64)),
    }
