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

Padding attends causally like any other position (its output is never read): a fully
masked row would make the fused attention kernels return NaN, which would reach the
gradients through 0 * NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from rmrun.data.tokenize import TokenizedPairs

if TYPE_CHECKING:
    import torch


def shared_prefix_lengths(tokenized: TokenizedPairs) -> np.ndarray:
    """Per pair, the number of leading tokens both sides share, capped at ``min(c, r) - 1``."""
    lengths = tokenized.lengths()
    out = np.zeros(len(tokenized), dtype=np.int64)
    for i in range(len(tokenized)):
        chosen, rejected = tokenized.chosen(i), tokenized.rejected(i)
        n = int(min(lengths[i]))
        differ = np.flatnonzero(chosen[:n] != rejected[:n])
        common = int(differ[0]) if len(differ) else n
        out[i] = min(common, n - 1)
    return out


def shared_lengths(tokenized: TokenizedPairs, prefix: np.ndarray) -> np.ndarray:
    """Per pair, the length of its shared-prompt sequence: ``c + r - p``."""
    return tokenized.lengths().sum(axis=1) - prefix


def collate_shared(
    tokenized: TokenizedPairs, indices: Sequence[int], *, prefix: np.ndarray, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """One shared-prompt batch of ``B`` rows for pairs ``indices``.

    ``input_ids`` and ``position_ids`` are ``(B, L)``; ``attention_mask`` is the ``(B, 1, L, L)``
    bool mask, True where a query attends to a key (:func:`additive_mask` turns it into the
    float form eager attention adds); ``chosen_end`` and ``rejected_end`` are the positions of
    each pair's reward tokens; ``num_tokens`` counts the real (non-padding) positions.
    """
    import torch  # here, not at the top, so reading and tokenizing data does not pay for importing torch

    if len(indices) == 0:
        raise ValueError("collate_shared needs at least one pair index")
    rows = [_pair_row(tokenized, int(i), int(prefix[i])) for i in indices]
    longest = max(len(ids) for ids, _, _ in rows)
    input_ids = np.full((len(rows), longest), pad_token_id, dtype=np.int64)
    position_ids = np.zeros((len(rows), longest), dtype=np.int64)
    for row, (ids, positions, _) in enumerate(rows):
        input_ids[row, : len(ids)] = ids
        position_ids[row, : len(ids)] = positions
    blocks = np.array([b for _, _, b in rows], dtype=np.int64).reshape(len(rows), 3)
    pair_ids = tokenized.pair_index[np.asarray(indices, dtype=np.int64)]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": torch.from_numpy(position_ids),
        "attention_mask": _block_mask(blocks, longest),
        "chosen_end": torch.from_numpy(blocks[:, 1] - 1),
        "rejected_end": torch.from_numpy(blocks[:, 2] - 1),
        "pair_ids": torch.from_numpy(pair_ids.astype(np.int64)),
        "num_tokens": int(blocks[:, 2].sum()),
    }


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


def _block_mask(blocks: np.ndarray, size: int) -> torch.Tensor:
    """``(B, 1, size, size)`` bool: causal, less each rejected response's view of its chosen one.

    Padding (after a row's end) attends causally like any position: its output is never read,
    and no row is fully masked (which would make the fused kernels return NaN)."""
    import torch

    mask = torch.ones(size, size, dtype=torch.bool).tril_().expand(len(blocks), 1, size, size).clone()
    for row, (prompt_end, chosen_end, end) in enumerate(blocks.tolist()):
        mask[row, 0, chosen_end:end, prompt_end:chosen_end] = False
    return mask
