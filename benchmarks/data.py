"""Synthetic preference pairs with a long-tailed length distribution, for the benchmarks.

Texts are built from the sentences of the shipped quickstart data, so the shipped tiny
tokenizer encodes them compactly (no byte fallback soup). Lengths, in tokens of the whole
rendered conversation, are drawn from log-normal distributions:

- prompt: median ``PROMPT_MEDIAN`` tokens, sigma ``PROMPT_SIGMA``;
- each response, independently: median ``RESPONSE_MEDIAN`` tokens, sigma ``RESPONSE_SIGMA``.

So most sequences are short and a few are very long; everything over ``max_length`` (512
in the benchmarks) is cut by rmrun's ``overflow = "truncate"``, as in a real run.
The generator is deterministic for a given seed.

That is the "long-tailed" profile. The "prompt-heavy" one is a multi-turn conversation
(user, assistant, user) of about 280 tokens with the template (260 of text, sigma 0.15,
over the three turns) before two responses of about 80 each (sigma 0.3): the shape of
chat preference data, where the prompt is most of each sequence.
"""

from __future__ import annotations

import json
import math
import random
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART_DATA = ROOT / "recipes" / "data" / "quickstart_train.jsonl"
TOKENIZER_DIR = ROOT / "recipes" / "assets" / "tiny-tokenizer"
TINY_MODEL_DIR = ROOT / "recipes" / "assets" / "tiny-llama"

PROMPT_MEDIAN, PROMPT_SIGMA = 40.0, 0.8
RESPONSE_MEDIAN, RESPONSE_SIGMA = 70.0, 0.9
# name -> (prompt median, prompt sigma, response median, response sigma, prompt turns)
PROFILES = {
    "long-tailed": (PROMPT_MEDIAN, PROMPT_SIGMA, RESPONSE_MEDIAN, RESPONSE_SIGMA, 1),
    "prompt-heavy": (260.0, 0.15, 80.0, 0.3, 3),
}
MAX_LENGTH = 512


@cache
def _sentences() -> tuple[str, ...]:
    """Distinct sentences of the quickstart data (the tokenizer was trained on them)."""
    seen = {}
    with open(QUICKSTART_DATA, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for key in ("context", "chosen", "rejected"):
                for message in row[key]:
                    for sentence in re.split(r"(?<=[.?!])\s+", message["content"]):
                        if sentence:
                            seen.setdefault(sentence, None)
    return tuple(seen)


@cache
def _sentence_tokens() -> tuple[int, ...]:
    """Approximate token count of each sentence (with its leading space), from the tiny tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    encoded = tok.encode_batch([" " + s for s in _sentences()], add_special_tokens=False)
    return tuple(max(1, len(e.ids)) for e in encoded)


def _lognormal_tokens(rng: random.Random, median: float, sigma: float) -> int:
    return max(3, int(round(math.exp(rng.gauss(math.log(median), sigma)))))


def _text_of(rng: random.Random, tokens: int) -> str:
    """Sentences drawn at random until about ``tokens`` tokens."""
    sentences, counts = _sentences(), _sentence_tokens()
    parts, total = [], 0
    while total < tokens:
        i = rng.randrange(len(sentences))
        parts.append(sentences[i])
        total += counts[i]
    return " ".join(parts)


def make_rows(n: int, *, seed: int = 0, profile: str = "long-tailed") -> list[dict]:
    """``n`` rows in ColossalChat's preference format ({context, chosen, rejected})."""
    prompt_median, prompt_sigma, response_median, response_sigma, turns = PROFILES[profile]
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt_tokens = _lognormal_tokens(rng, prompt_median, prompt_sigma)
        context = [
            {"from": "user" if turn % 2 == 0 else "assistant", "content": _text_of(rng, max(3, prompt_tokens // turns))}
            for turn in range(turns)
        ]
        chosen = _text_of(rng, _lognormal_tokens(rng, response_median, response_sigma))
        rejected = _text_of(rng, _lognormal_tokens(rng, response_median, response_sigma))
        if rejected == chosen:
            rejected += " " + _text_of(rng, 5)
        rows.append(
            {
                "context": context,
                "chosen": [{"from": "assistant", "content": chosen}],
                "rejected": [{"from": "assistant", "content": rejected}],
            }
        )
    return rows


def make_pairs(n: int, *, seed: int = 0, profile: str = "long-tailed") -> list:
    """The same rows as :func:`make_rows`, as rmrun ``PreferencePair`` objects."""
    from rmrun.data.formats import Message, PreferencePair

    def messages(items):
        return tuple(Message("user" if m["from"] == "user" else "assistant", m["content"]) for m in items)

    return [
        PreferencePair(
            prompt=messages(r["context"]),
            chosen=messages(r["chosen"]),
            rejected=messages(r["rejected"]),
            source=f"synthetic:{i}",
        )
        for i, r in enumerate(make_rows(n, seed=seed, profile=profile))
    ]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def load_tokenizer():
    """The shipped tiny tokenizer, loaded the way rmrun loads it."""
    from rmrun.model.model import load_tokenizer as rmrun_load_tokenizer
    from rmrun.recipe.schema import ModelSection

    return rmrun_load_tokenizer(ModelSection(pretrain=str(TINY_MODEL_DIR), tokenizer=str(TOKENIZER_DIR)))


def tokenize(pairs: list, tokenizer, *, max_length: int = MAX_LENGTH):
    from rmrun.data import tokenize_pairs

    return tokenize_pairs(pairs, tokenizer, max_length=max_length, overflow="truncate", template=None)


if __name__ == "__main__":  # a quick look at the distribution
    import numpy as np

    from rmrun.data.share import shared_prefix_lengths

    tok = load_tokenizer()
    for name in PROFILES:
        data = tokenize(make_pairs(2000, profile=name), tok)
        lengths = data.lengths().ravel()
        prompt = shared_prefix_lengths(data)
        print(
            f"{name}: {len(data)} pairs; tokens per sequence: mean {lengths.mean():.0f}, "
            f"p50 {np.percentile(lengths, 50):.0f}, p90 {np.percentile(lengths, 90):.0f}, "
            f"p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()}; shared prompt mean {prompt.mean():.0f}; "
            f"truncated {data.stats['truncated']}; tokenize {data.stats['pairs_per_second']:.0f} pairs/s"
        )
