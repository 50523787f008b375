"""Attention for the shared-prompt forward that runs only what its block mask lets through.

A shared-prompt row (``rmrun.data.share``) holds ``[prompt | chosen | rejected]`` per pair.
Its block mask is dense to a kernel: every query still scores every key of the row, the
hidden ones too. Yet each pair is two causal attentions:

- the head, prompt + chosen response: causal self-attention over its own positions;
- the tail, the rejected response: each token attends to the whole prompt and causally to
  the rejected tokens before it, in ``[prompt | rejected]`` key order.

This module gathers every pair's head into a batch of its own and runs it with
``is_causal=True``, so the fused kernel (flash attention on CUDA and on CPU) skips the
blocks above the diagonal; and gathers every pair's tail queries with their prompt +
rejected keys into a second, small batch with its own mask. The outputs are scattered
back to the row positions; padding positions get zeros (they are never read). Packed rows
(several pairs per row) need nothing more: each pair is gathered by its own positions.

The layout (:class:`PairLayout`) is built with the batch and travels on the attention mask
the model receives (:func:`attach`); a mask without one (the standard forward, evaluation)
runs plain SDPA with that mask, so a model built with this attention is a standard model
everywhere else. Registered with Hugging Face's ``AttentionInterface`` as :data:`ATTENTION`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from rmrun.recipe.backbone import PAIR_ATTENTION as ATTENTION  # the attn_implementation name

_LAYOUT = "rmrun_pair_layout"  # the attention-mask attribute the layout travels as


@dataclass(frozen=True)
class PairLayout:
    """Where each pair's head and tail sit in a ``(rows × length)`` batch, as flat positions
    ``row * length + column``. Rows of each gathered batch are pairs, padded to the longest
    with the pair's first position (a real token; what it computes there is never kept)."""

    head: torch.Tensor  # (P, H) prompt + chosen positions
    head_keep: torch.Tensor  # indices into the flattened (P·H) head batch of its real queries
    head_to: torch.Tensor  # the flat positions those queries' outputs go to
    tail_query: torch.Tensor  # (P, Q) rejected-response positions
    tail_key: torch.Tensor  # (P, K) prompt positions, then rejected-response positions
    tail_mask: torch.Tensor  # (P, 1, Q, K) bool: key k visible to tail query j
    tail_keep: torch.Tensor
    tail_to: torch.Tensor

    def to(self, device) -> PairLayout:
        return PairLayout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def attach(mask: torch.Tensor, layout: PairLayout) -> torch.Tensor:
    """``mask`` carrying ``layout`` to :func:`pair_attention_forward` (the dense mask stays
    the truth: any attention that ignores the layout computes the same thing from it)."""
    setattr(mask, _LAYOUT, layout)
    return mask


def skips_masked_blocks(device: torch.device) -> bool:
    """Whether the pair attention is worth running on ``device``: on CUDA the causal kernels
    skip the blocks above the diagonal; torch's CPU kernel scores them all the same at these
    lengths (in rmrun's benchmark the pair attention ran at 0.90-0.93x of the dense mask on
    long-tailed data and level on prompt-heavy data), so the dense mask runs there."""
    return device.type == "cuda"


def register() -> None:
    """Make :data:`ATTENTION` a valid ``attn_implementation`` in this process."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, pair_attention_forward)


def pair_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Hugging Face attention-interface function: ``(output (B, L, heads, D), None)``."""
    layout = getattr(attention_mask, _LAYOUT, None)
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    batch, heads, length, dim = query.shape
    # (B, heads, L, D) -> (B·L, heads, D): one row per position, gathered by flat position.
    q, k, v = (t.transpose(1, 2).reshape(batch * length, heads, dim) for t in (query, key, value))
    head = _attend(q, k, v, layout.head, layout.head, dropout=dropout, scaling=scaling, is_causal=True)
    tail = _attend(q, k, v, layout.tail_query, layout.tail_key, dropout=dropout, scaling=scaling, mask=layout.tail_mask)
    out = head.new_zeros(batch * length, heads, dim)
    out = out.index_copy(0, layout.head_to, head.index_select(0, layout.head_keep))
    out = out.index_copy(0, layout.tail_to, tail.index_select(0, layout.tail_keep))
    return out.view(batch, length, heads, dim), None


def _attend(q, k, v, queries, keys, dropout=0.0, scaling=None, *, is_causal=False, mask=None) -> torch.Tensor:
    """SDPA over the positions gathered per pair: ``(P·Q, heads, D)``, one row per query slot."""
    pairs, num_queries = queries.shape

    def gather(t, index):  # (P, n) positions -> (P, heads, n, D)
        return t.index_select(0, index.reshape(-1)).view(pairs, index.shape[1], *t.shape[1:]).transpose(1, 2)

    with kernels_without_per_shape_plans(q.device):
        out = torch.nn.functional.scaled_dot_product_attention(
            gather(q, queries),
            gather(k, keys),
            gather(v, keys),
            attn_mask=mask,
            dropout_p=dropout,
            scale=scaling,
            is_causal=is_causal,
        )
    return out.transpose(1, 2).reshape(pairs * num_queries, *q.shape[1:])


def kernels_without_per_shape_plans(device: torch.device):
    """On CUDA, SDPA limited to the flash, memory-efficient and math kernels: cuDNN's attention
    builds an execution plan for every new shape, and the gathered batches change shape with
    every batch of pairs (the longest head, reply and key span). Elsewhere, no limit."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
