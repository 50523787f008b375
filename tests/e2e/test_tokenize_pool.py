"""Tokenizing in a pool of worker processes (rmrun/data/pieces.py ``tokenize_pieces``), from a
stream of pairs cut into pieces, and assembling on disk (``AssembledFile``) give exactly the
arrays one pass gives; the unit layer checks the pieces in one process."""

from __future__ import annotations

import os

from safetensors.numpy import load_file

from rmrun.data import read_pairs, tokenize_pairs
from rmrun.data.arrays import ARRAY_NAMES
from rmrun.data.pieces import AssembledFile, piece_bounds, pieces_from, tokenize_pieces
from tests.helpers import REPO, TINY_LLAMA, TINY_TOKENIZER


def test_two_workers_give_the_arrays_of_one_pass_and_report_every_piece(tmp_path):
    from rmrun.model.model import load_tokenizer
    from rmrun.recipe.schema import ModelSection

    tokenizer = load_tokenizer(ModelSection(pretrain=TINY_LLAMA, tokenizer=TINY_TOKENIZER))
    train = os.path.join(REPO, "recipes", "data", "quickstart_train.jsonl")
    pairs = list(read_pairs([train], format="colossalchat", bad_rows="error"))[:300]
    options = {"max_length": 64, "overflow": "drop", "template": None}
    whole = tokenize_pairs(pairs, tokenizer, **options)
    bounds = piece_bounds(len(pairs), 5)
    finished: dict = {}
    tokenize_pieces(
        pieces_from(iter(pairs), bounds, [4, 0, 2, 1, 3]),
        tokenizer,
        bounds=bounds,
        num_workers=2,
        on_piece=finished.__setitem__,
        **options,
    )
    assert sorted(finished) == [0, 1, 2, 3, 4]
    assembled = AssembledFile(str(tmp_path))
    for i in range(5):
        assembled.add(finished[i])
    stats = assembled.finish(str(tmp_path / "all.safetensors"))
    pooled = load_file(str(tmp_path / "all.safetensors"))
    for name in ARRAY_NAMES:
        assert pooled[name].dtype == getattr(whole, name).dtype, name
        assert pooled[name].tobytes() == getattr(whole, name).tobytes(), name
    assert stats["dropped"] == whole.stats["dropped"] > 0
    assert stats["pairs"] == len(whole)
