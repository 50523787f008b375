"""Tokenizing preference pairs into flat numpy arrays, and collating them into training batches.

Each side of a pair (prompt + chosen, prompt + rejected) is rendered with the chat template
into the text a scorer sees (``scored_texts``) and tokenized exactly as the exported tokenizer
tokenizes it, ``tokenizer(text)``, so any transformers code that scores the text gets the same
ids. For a decoder the text ends at the end-of-assistant token, where the reward is read, and
special tokens the tokenizer adds by itself (a leading bos) are not repeated from the
template; an encoder gets its own [CLS] ... [SEP]. Over-long sequences lose tokens from the start.

The ids are kept as ``TokenizedPairs`` (``arrays.py``: CSR arrays, stored as they are).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rmrun.data.arrays import TokenizedPairs, subset_id_of, subset_names
from rmrun.data.pairs import DataError, PreferencePair
from rmrun.data.template import ChatTemplate, end_of_assistant_token, render_conversations, resolve_chat_template

if TYPE_CHECKING:
    import torch

OVERFLOW_POLICIES = ("truncate", "drop", "error")
# --------------------------------------------------------------------------- tokenizing


def tokenize_pairs(
    pairs: Iterable[PreferencePair],
    tokenizer,
    *,
    max_length: int,
    overflow: str,
    template: ChatTemplate | None,
    family: str = "decoder",
    batch_size: int = 512,
) -> TokenizedPairs:
    """Render and tokenize every pair; apply the ``overflow`` policy to pairs over ``max_length``.

    ``overflow``: ``"truncate"`` drops tokens from the start of a too-long side (keeping a
    leading bos or [CLS]), ``"drop"`` skips the pair, ``"error"`` raises DataError naming the pair.
    ``family`` is the backbone's (``rmrun.recipe.backbone``): "decoder" or "encoder".
    """
    _check_arguments(tokenizer, max_length=max_length, overflow=overflow, batch_size=batch_size)
    rule = ScoringRule.of(tokenizer, template, family=family)
    builder = _PairArraysBuilder()
    counts = {"truncated": 0, "dropped": 0}
    subsets: dict[str, str] = {}
    started = time.perf_counter()
    for first_index, batch in _batches(pairs, batch_size):
        chosen_batch = _tokenize_side(batch, "chosen", tokenizer, rule=rule)
        rejected_batch = _tokenize_side(batch, "rejected", tokenizer, rule=rule)
        kept_chosen, kept_rejected, kept_indices, kept = [], [], [], []
        for offset, (pair, chosen, rejected) in enumerate(zip(batch, chosen_batch, rejected_batch)):
            if max(len(chosen), len(rejected)) > max_length:
                if overflow == "error":
                    raise DataError(_overflow_message(pair, chosen=chosen, rejected=rejected, max_length=max_length))
                if overflow == "drop":
                    counts["dropped"] += 1
                    continue
                chosen = _truncate_from_start(chosen, max_length=max_length, keep_first=rule.keep_first)
                rejected = _truncate_from_start(rejected, max_length=max_length, keep_first=rule.keep_first)
                counts["truncated"] += 1
            kept_chosen.append(chosen)
            kept_rejected.append(rejected)
            kept_indices.append(first_index + offset)
            kept.append(pair)
            if pair.subset:
                subsets[str(subset_id_of(pair.subset))] = pair.subset
        builder.add_batch(kept_chosen, kept_rejected, pair_indices=kept_indices, pairs=kept)
    tokenized = builder.build()
    seconds = time.perf_counter() - started
    input_pairs = len(tokenized) + counts["dropped"]
    stats: dict[str, Any] = {
        "pairs": len(tokenized),
        "truncated": counts["truncated"],
        "dropped": counts["dropped"],
        "tokens": int(len(tokenized.chosen_ids) + len(tokenized.rejected_ids)),
        "seconds": seconds,
        "pairs_per_second": input_pairs / seconds if seconds > 0 else 0.0,
    }
    if subsets:
        stats["subsets"] = subset_names([subsets])
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


@dataclass(frozen=True)
class ScoringRule:
    """How a rendered conversation becomes the text that is scored.

    ``end`` is the end-of-assistant token a decoder's text is cut after (None: encoders, and
    decoders whose tokenizer has no eos and whose template sets none, keep the whole
    rendering). ``prefix``/``suffix`` are the special tokens the tokenizer adds by itself;
    a decoder's template that renders them too is not doubled.
    """

    template: ChatTemplate
    family: str
    end: str | None
    end_id: int | None
    prefix: tuple[str, ...]
    suffix: tuple[str, ...]
    keep_first: frozenset

    @classmethod
    def of(cls, tokenizer, template: ChatTemplate | None, *, family: str) -> ScoringRule:
        template = resolve_chat_template(tokenizer, template, family=family)
        end = end_of_assistant_token(tokenizer, template) if family == "decoder" else None
        end_id = _single_token_id(tokenizer, end) if end is not None else None
        prefix_ids, suffix_ids = _added_special_ids(tokenizer)
        keep_first = {i for i in (tokenizer.bos_token_id, *prefix_ids[:1]) if i is not None}
        return cls(
            template=template,
            family=family,
            end=end,
            end_id=end_id,
            prefix=tuple(tokenizer.convert_ids_to_tokens(prefix_ids)),
            suffix=tuple(tokenizer.convert_ids_to_tokens(suffix_ids)),
            keep_first=frozenset(keep_first),
        )

    def text(self, rendered: str, *, source: str) -> str:
        """The scored text of one rendered conversation."""
        if self.end is None:
            return rendered.rstrip()
        cut = rendered.rfind(self.end)
        if cut < 0:
            raise DataError(
                f"{source}: the chat template's rendering contains no end-of-assistant token {self.end!r}; "
                "use a template whose assistant turns end with it, or set end_of_assistant in a ColossalChat "
                "template .json"
            )
        text = rendered[: cut + len(self.end)]
        # The tokenizer adds these itself; rendered by the template as well they would be doubled.
        for token in self.prefix:
            if text.startswith(token):
                text = text[len(token) :]
        for token in reversed(self.suffix):
            if text.endswith(token):
                text = text[: -len(token)]
        return text


def _single_token_id(tokenizer, token: str) -> int:
    """Id of the end-of-assistant token; it must encode to exactly one token to be findable."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise DataError(
            f"{tokenizer.name_or_path or 'tokenizer'}: end-of-assistant {token!r} is {len(ids)} tokens, "
            "not one; the reward is read at this token, so it must be a single (special) token"
        )
    return ids[0]


def _added_special_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The ids ``tokenizer(text)`` puts before and after the text's own ids."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


def scored_texts(
    tokenizer, conversations: Sequence[Sequence], *, rule: ScoringRule, sources: Sequence[str] | None = None
) -> list[str]:
    """The texts rmrun scores for these conversations; ``tokenizer(text)`` gives the ids it trains
    and evaluates on, so the export scores the same text to the same reward."""
    sources = sources if sources is not None else [f"conversation {i}" for i in range(len(conversations))]
    rendered = render_conversations(tokenizer, conversations, template=rule.template, sources=sources)
    return [rule.text(text, source=source) for text, source in zip(rendered, sources)]


def _batches(pairs: Iterable[PreferencePair], size: int) -> Iterator[tuple[int, list[PreferencePair]]]:
    """``(index of the batch's first pair, batch)`` for consecutive batches of ``size`` pairs."""
    iterator = iter(pairs)
    first_index = 0
    while batch := list(itertools.islice(iterator, size)):
        yield first_index, batch
        first_index += len(batch)


def _tokenize_side(batch: Sequence[PreferencePair], side: str, tokenizer, *, rule: ScoringRule) -> list[list[int]]:
    """The scored texts of one side of every pair, tokenized in one call as ``tokenizer(text)``."""
    conversations = [pair.prompt + getattr(pair, side) for pair in batch]
    texts = scored_texts(tokenizer, conversations, rule=rule, sources=[pair.source for pair in batch])
    # verbose=False: the "longer than model_max_length" warning is moot, the overflow policy handles length.
    encoded = tokenizer(texts, return_attention_mask=False, return_token_type_ids=False, verbose=False)
    if rule.end_id is None:
        return list(encoded["input_ids"])
    return [
        _end_at_last_end_of_assistant(ids, end_id=rule.end_id, source=pair.source, tokenizer=tokenizer)
        for ids, pair in zip(encoded["input_ids"], batch)
    ]


def _end_at_last_end_of_assistant(ids: list[int], *, end_id: int, source: str, tokenizer) -> list[int]:
    """A tokenizer that appends something after the text would move the last token off the
    end-of-assistant token, where a decoder's reward is read; cut it there again."""
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


def _truncate_from_start(ids: list[int], *, max_length: int, keep_first: frozenset) -> list[int]:
    """Keep the last tokens (the end of the response, where the reward is read) and a leading bos/[CLS]."""
    if len(ids) <= max_length:
        return ids
    if ids[0] in keep_first:
        return [ids[0], *ids[len(ids) - (max_length - 1) :]]
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
            "margin": [],
            "group": [],
            "subset_id": [],
            "source_id": [],
        }

    def add_batch(
        self,
        chosen: list[list[int]],
        rejected: list[list[int]],
        *,
        pair_indices: list[int],
        pairs: Sequence[PreferencePair],
    ) -> None:
        for side, sequences in (("chosen", chosen), ("rejected", rejected)):
            lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
            flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int32, count=int(lengths.sum()))
            self._chunks[f"{side}_ids"].append(flat)
            self._chunks[f"{side}_lengths"].append(lengths)
        self._chunks["pair_index"].append(np.asarray(pair_indices, dtype=np.int64))
        self._chunks["margin"].append(np.asarray([p.margin for p in pairs], dtype=np.float32))
        self._chunks["group"].append(np.asarray([p.group for p in pairs], dtype=np.int64))
        self._chunks["subset_id"].append(np.asarray([subset_id_of(p.subset) for p in pairs], dtype=np.int32))
        self._chunks["source_id"].append(np.asarray([p.source_id for p in pairs], dtype=np.int32))

    def build(self) -> TokenizedPairs:
        arrays = {}
        for side in ("chosen", "rejected"):
            arrays[f"{side}_ids"] = _concatenate(self._chunks[f"{side}_ids"], dtype=np.int32)
            lengths = _concatenate(self._chunks[f"{side}_lengths"], dtype=np.int64)
            arrays[f"{side}_offsets"] = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths)])
        arrays["pair_index"] = _concatenate(self._chunks["pair_index"], dtype=np.int64)
        return TokenizedPairs(
            chosen_ids=arrays["chosen_ids"],
            chosen_offsets=arrays["chosen_offsets"],
            rejected_ids=arrays["rejected_ids"],
            rejected_offsets=arrays["rejected_offsets"],
            pair_index=arrays["pair_index"],
            margin=_concatenate(self._chunks["margin"], dtype=np.float32),
            group=_concatenate(self._chunks["group"], dtype=np.int64),
            subset_id=_concatenate(self._chunks["subset_id"], dtype=np.int32),
            source_id=_concatenate(self._chunks["source_id"], dtype=np.int32),
        )


def _concatenate(chunks: list[np.ndarray], *, dtype) -> np.ndarray:
    """np.concatenate that also accepts no chunks (every pair dropped, or no input)."""
    return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype=dtype)


# --------------------------------------------------------------------------- batching


def collate(
    tokenized: TokenizedPairs, indices: Sequence[int] | np.ndarray, *, pad_token_id: int
) -> dict[str, torch.Tensor]:
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
