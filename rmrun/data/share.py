"""The shared-prompt batch: one sequence per pair, prompt + chosen response + rejected response.

The two sides of a pair are tokenized separately (``tokenize.py``); their longest common
token prefix is the prompt both sides read. It is exact whatever the chat template,
because it is taken from the very ids the standard forward runs on. Each pair becomes

    [ prompt (p) | chosen response (c - p) | rejected response (r - p) | padding ]

with a block attention mask: the chosen response attends to the prompt and to itself, the
rejected response to the prompt and to itself (never to the chosen response), causally
within each block. Position ids restart after the prompt for the rejected response, so
every real token sees exactly the keys and positions it has in the standard forward, and
the reward read at the last chosen and last rejected token is the standard forward's.

The prompt is capped so that each side keeps at least one token of its own (identical
sides, or one side a prefix of the other): the reward token is never shared.

Packed (``pack=True``), a row holds several pairs, each in its own segment with its own
position ids from 0, the mask block-diagonal over the segments: so padding nearly
vanishes, and the row is never longer than the batch's longest pair sequence, so packing
only removes rows. Padding attends causally to padding only (its output is never read):
a fully masked row would make the fused attention kernels return NaN, which would reach
the gradients through 0 * NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rmrun.data.arrays import TokenizedPairs

if TYPE_CHECKING:
    import torch


def shared_prefix_lengths(tokenized: TokenizedPairs) -> np.ndarray:
    """Per pair, the number of leading tokens both sides share, capped at ``min(c, r) - 1``
    (stored with the tokenized pairs: reading it touches no token)."""
    return np.asarray(tokenized.shared_prefix, dtype=np.int64)


def shared_lengths(tokenized: TokenizedPairs, prefix: np.ndarray) -> np.ndarray:
    """Per pair, the length of its shared-prompt sequence: ``c + r - p``."""
    return tokenized.lengths().sum(axis=1) - prefix


def collate_shared(
    tokenized: TokenizedPairs,
    indices: Sequence[int] | np.ndarray,
    *,
    prefix: np.ndarray,
    pad_token_id: int,
    pack: bool = False,
) -> dict[str, Any]:  # tensors, and the int num_tokens
    """One shared-prompt batch for pairs ``indices``: one pair per row, or with ``pack`` as
    many pairs per row as fit in the batch's longest pair sequence (:func:`pack_rows`).

    ``input_ids`` and ``position_ids`` are ``(R, L)``; ``attention_mask`` is the ``(R, 1, L, L)``
    bool mask, True where a query attends to a key (:func:`additive_mask` turns it into the
    float form eager attention adds); pair ``k``'s rewards are read in row ``reward_rows[k]``
    at ``chosen_end[k]`` and ``rejected_end[k]``; ``num_tokens`` counts the real positions.
    """
    import torch  # here, not at the top, so reading and tokenizing data does not pay for importing torch

    if len(indices) == 0:
        raise ValueError("collate_shared needs at least one pair index")
    pairs = [_pair_row(tokenized, int(i), int(prefix[i])) for i in indices]
    lengths = [len(ids) for ids, _, _ in pairs]
    longest = max(lengths)
    rows = pack_rows(lengths, capacity=longest) if pack else [[k] for k in range(len(pairs))]
    input_ids = np.full((len(rows), longest), pad_token_id, dtype=np.int64)
    position_ids = np.zeros((len(rows), longest), dtype=np.int64)
    # per row: (start, prompt end, chosen end, end), absolute
    segments: list[list[tuple[int, int, int, int]]] = [[] for _ in rows]
    reward_rows, chosen_end, rejected_end = (np.zeros(len(pairs), dtype=np.int64) for _ in range(3))
    for row, members in enumerate(rows):
        start = 0
        for k in members:
            ids, positions, (prompt_end, chosen_stop, stop) = pairs[k]
            input_ids[row, start : start + stop] = ids
            position_ids[row, start : start + stop] = positions
            segments[row].append((start, start + prompt_end, start + chosen_stop, start + stop))
            reward_rows[k], chosen_end[k], rejected_end[k] = row, start + chosen_stop - 1, start + stop - 1
            start += stop
    pair_ids = tokenized.pair_index[np.asarray(indices, dtype=np.int64)]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": torch.from_numpy(position_ids),
        "attention_mask": _block_mask(segments, longest),
        "pair_layout": pair_layout(segments, longest),
        "reward_rows": torch.from_numpy(reward_rows),
        "chosen_end": torch.from_numpy(chosen_end),
        "rejected_end": torch.from_numpy(rejected_end),
        "pair_ids": torch.from_numpy(pair_ids.astype(np.int64)),
        "num_tokens": int(sum(lengths)),
    }


def pack_rows(lengths: Sequence[int], *, capacity: int) -> list[list[int]]:
    """First-fit decreasing: the positions of ``lengths`` grouped into rows of at most
    ``capacity`` tokens, longest first (ties in input order). A pure function of its inputs,
    so a resumed run packs every batch exactly as the uninterrupted one."""
    rows: list[list[int]] = []
    room: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for row, free in enumerate(room):
            if lengths[k] <= free:
                rows[row].append(k)
                room[row] -= lengths[k]
                break
        else:
            rows.append([k])
            room.append(capacity - lengths[k])
    return rows


def pair_layout(segments: list[list[tuple[int, int, int, int]]], size: int):
    """The :class:`rmrun.model.pair_attention.PairLayout` of rows of ``size`` positions holding
    ``segments`` (per row, per pair: start, prompt end, chosen end, end; absolute)."""
    import torch

    from rmrun.model.pair_attention import PairLayout

    flat = [
        (row * size + start, prompt_end - start, chosen_end - start, end - start)
        for row, pairs in enumerate(segments)
        for start, prompt_end, chosen_end, end in pairs
    ]
    base = np.array([f[0] for f in flat], dtype=np.int64)[:, None]
    prompt, chosen, stop = (np.array([f[i] for f in flat], dtype=np.int64) for i in (1, 2, 3))
    replies = stop - chosen  # rejected-response lengths
    # head: columns 0..chosen-1 of each pair's segment
    head_cols = np.arange(chosen.max())[None, :]
    head_real = head_cols < chosen[:, None]
    head = base + np.where(head_real, head_cols, 0)
    # tail queries: the rejected response, columns chosen..stop-1
    query_cols = np.arange(replies.max())[None, :]
    query_real = query_cols < replies[:, None]
    tail_query = base + np.where(query_real, chosen[:, None] + query_cols, 0)
    # tail keys: the prompt (columns 0..prompt-1), then the rejected response
    key_cols = np.arange((prompt + replies).max())[None, :]
    in_prompt = key_cols < prompt[:, None]
    in_reply = ~in_prompt & (key_cols < (prompt + replies)[:, None])
    tail_key = base + np.where(in_prompt, key_cols, np.where(in_reply, key_cols - prompt[:, None] + chosen[:, None], 0))
    # tail query j sees key k when k <= prompt + j: the whole prompt and the reply up to itself
    tail_mask = key_cols[:, None, None, :] <= (prompt[:, None] + query_cols)[:, None, :, None]

    def kept(real, positions):
        return torch.from_numpy(np.flatnonzero(real.reshape(-1))), torch.from_numpy(positions[real])

    head_keep, head_to = kept(head_real, head)
    tail_keep, tail_to = kept(query_real, tail_query)
    return PairLayout(
        head=torch.from_numpy(head),
        head_keep=head_keep,
        head_to=head_to,
        tail_query=torch.from_numpy(tail_query),
        tail_key=torch.from_numpy(tail_key),
        tail_mask=torch.from_numpy(np.ascontiguousarray(tail_mask)),
        tail_keep=tail_keep,
        tail_to=tail_to,
    )


def additive_mask(allowed: torch.Tensor, dtype) -> torch.Tensor:
    """The float mask eager attention adds to its scores: 0 where allowed, the dtype's minimum elsewhere."""
    import torch

    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)


def _pair_row(tokenized: TokenizedPairs, i: int, p: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(ids, position ids, (prompt end, chosen end, rejected end)) of pair ``i``'s sequence."""
    chosen, rejected = tokenized.chosen(i), tokenized.rejected(i)
    ids = np.concatenate([chosen, rejected[p:]])
    positions = np.concatenate([np.arange(len(chosen)), np.arange(p, len(rejected))])
    return ids, positions, (p, len(chosen), len(ids))


def _block_mask(segments: list[list[tuple[int, int, int, int]]], size: int) -> torch.Tensor:
    """``(R, 1, size, size)`` bool: causal within each pair's segment of its row, less the
    rejected response's view of its chosen one; nothing across segments.

    Padding (after a row's last segment) attends causally to itself: its output is never
    read, and no row is fully masked (which would make the fused kernels return NaN)."""
    import torch

    causal = torch.ones(size, size, dtype=torch.bool).tril_()
    if all(len(row) == 1 and row[0][0] == 0 for row in segments):  # one pair per row: cut from the causal mask
        mask = causal.expand(len(segments), 1, size, size).clone()
        for row, ((_, prompt_end, chosen_end, end),) in enumerate(segments):
            mask[row, 0, chosen_end:end, prompt_end:chosen_end] = False
            mask[row, 0, end:, :end] = False
        return mask
    mask = torch.zeros(len(segments), 1, size, size, dtype=torch.bool)
    for row, pairs in enumerate(segments):
        for start, prompt_end, chosen_end, end in pairs:
            mask[row, 0, start:end, start:end] = causal[: end - start, : end - start]
            mask[row, 0, chosen_end:end, prompt_end:chosen_end] = False
        last = pairs[-1][3]
        mask[row, 0, last:, last:] = causal[: size - last, : size - last]
    return mask
