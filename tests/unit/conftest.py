"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest

# Emits bos itself, like Llama-style templates; every turn is closed by eos, where a reward is read.
BYTE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
)


@pytest.fixture(scope="session")
def byte_tokenizer():
    """A tokenizer with one token per UTF-8 byte (no merges) and a chat template: any text
    tokenizes without unknown tokens, and ids differ wherever texts differ, spaces included."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {token: index for index, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = BYTE_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def quickstart_pairs():
    """The quickstart's first 12 pairs, tokenized at a max_length that truncates some of them."""
    from rmrun.data import read_pairs, tokenize_pairs
    from rmrun.model.model import load_tokenizer
    from rmrun.recipe.schema import ModelSection
    from tests.helpers import REPO, TINY_LLAMA, TINY_TOKENIZER

    tokenizer = load_tokenizer(ModelSection(pretrain=TINY_LLAMA, tokenizer=TINY_TOKENIZER))
    train = os.path.join(REPO, "recipes", "data", "quickstart_train.jsonl")
    pairs = list(read_pairs([train], format="colossalchat", bad_rows="error"))[:12]
    tokenized = tokenize_pairs(pairs, tokenizer, max_length=48, overflow="truncate", template=None)
    assert 0 < tokenized.stats["truncated"] < len(tokenized), "the data should mix truncated and whole pairs"
    return tokenized, tokenizer
