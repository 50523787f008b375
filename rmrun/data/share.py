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

Padding rows attend to their own position only: a fully masked row would make the fused
attention kernels return NaN, which would reach the gradients through 0 * NaN.
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
    additive float mask (0 where a query attends to a key, the float32 minimum elsewhere);
    ``chosen_end`` and ``rejected_end`` are the positions of each pair's reward tokens;
    ``num_tokens`` counts the real (non-padding) tokens.
    """
    import torch  # here, not at the top, so reading and tokenizing data does not pay for importing torch

    if len(indices) == 0:
        raise ValueError("collate_shared needs at least one pair index")
    rows = [_pair_row(tokenized, int(i), int(prefix[i])) for i in indices]
    longest = max(len(ids) for ids, _, _ in rows)
    input_ids = np.full((len(rows), longest), pad_token_id, dtype=np.int64)
    position_ids = np.zeros((len(rows), longest), dtype=np.int64)
    allowed = np.zeros((len(rows), longest, longest), dtype=bool)
    chosen_end = np.zeros(len(rows), dtype=np.int64)
    rejected_end = np.zeros(len(rows), dtype=np.int64)
    for row, (ids, positions, blocks) in enumerate(rows):
        input_ids[row, : len(ids)] = ids
        position_ids[row, : len(ids)] = positions
        allowed[row] = _block_mask(blocks, longest)
        chosen_end[row] = blocks[1] - 1
        rejected_end[row] = len(ids) - 1
    mask = torch.zeros(allowed.shape, dtype=torch.float32)
    mask.masked_fill_(~torch.from_numpy(allowed), torch.finfo(torch.float32).min)
    pair_ids = tokenized.pair_index[np.asarray(indices, dtype=np.int64)]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": torch.from_numpy(position_ids),
        "attention_mask": mask.unsqueeze(1),
        "chosen_end": torch.from_numpy(chosen_end),
        "rejected_end": torch.from_numpy(rejected_end),
        "pair_ids": torch.from_numpy(pair_ids.astype(np.int64)),
        "num_tokens": int(sum(len(ids) for ids, _, _ in rows)),
    }


def _pair_row(tokenized: TokenizedPairs, i: int, p: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(ids, position ids, (prompt end, chosen end, rejected end)) of pair ``i``'s sequence."""
    chosen, rejected = tokenized.chosen(i), tokenized.rejected(i)
    ids = np.concatenate([chosen, rejected[p:]])
    positions = np.concatenate([np.arange(len(chosen)), np.arange(p, len(rejected))])
    return ids, positions, (p, len(chosen), len(ids))


def _block_mask(blocks: tuple[int, int, int], size: int) -> np.ndarray:
    """``(size, size)`` bool: which keys each query attends to (see the module docstring)."""
    prompt_end, chosen_end, end = blocks
    causal = np.tril(np.ones((size, size), dtype=bool))
    allowed = causal.copy()
    allowed[chosen_end:end, prompt_end:chosen_end] = False  # rejected never sees chosen
    allowed[end:, :] = False
    allowed[end:, end:] = np.eye(size - end, dtype=bool)  # padding: itself only
    return allowed
