"""Tokenizing in a pool of worker processes (rmrun/data/pieces.py ``tokenize_in_pool``) gives
exactly the arrays one pass gives; the unit layer checks the pieces in one process."""

from __future__ import annotations

import os

from rmrun.data import read_pairs, tokenize_pairs
from rmrun.data.pieces import assemble, tokenize_in_pool
from rmrun.data.tokenize import ARRAY_NAMES
from tests.helpers import REPO, TINY_LLAMA, TINY_TOKENIZER


def test_two_workers_give_the_arrays_of_one_pass_and_report_every_piece():
    from rmrun.model.model import load_tokenizer
    from rmrun.recipe.schema import ModelSection

    tokenizer = load_tokenizer(ModelSection(pretrain=TINY_LLAMA, tokenizer=TINY_TOKENIZER))
    train = os.path.join(REPO, "recipes", "data", "quickstart_train.jsonl")
    pairs = list(read_pairs([train], format="colossalchat", bad_rows="error"))[:300]
    options = {"max_length": 64, "overflow": "drop", "template": None}
    whole = tokenize_pairs(pairs, tokenizer, **options)
    finished: dict = {}
    tokenize_in_pool(
        pairs, tokenizer, pieces=[4, 0, 2, 1, 3], num_pieces=5, num_workers=2, on_piece=finished.__setitem__, **options
    )
    assert sorted(finished) == [0, 1, 2, 3, 4]
    pooled = assemble([finished[i] for i in range(5)])
    for name in ARRAY_NAMES:
        assert getattr(pooled, name).tobytes() == getattr(whole, name).tobytes(), name
    assert pooled.stats["dropped"] == whole.stats["dropped"] > 0
