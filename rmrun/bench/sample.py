"""``rmrun bench``'s data: a fixed, seeded sample of the training pairs (uniform, so it keeps
the data's own length distribution), tokenized once per distinct ``[data]``/tokenizer."""

from __future__ import annotations

import json
import os
import random

from rmrun.recipe.schema import Recipe


def _sample_pairs(recipe: Recipe, *, num_pairs: int, seed: int) -> list:
    """A uniform reservoir sample, in file order: the lengths keep the data's distribution."""
    from rmrun.data import BadRowReport, read_sources
    from rmrun.data.rated import PairRule
    from rmrun.recipe.data_section import train_sources

    rng = random.Random(seed)
    reservoir: list[tuple[int, object]] = []
    pairs = read_sources(
        train_sources(recipe.data),
        bad_rows=recipe.data.bad_rows,
        report=BadRowReport(),
        margins=recipe.data.margins,
        rule=PairRule.of(recipe.data),
    )
    for i, pair in enumerate(pairs):
        if i < num_pairs:
            reservoir.append((i, pair))
        else:
            j = rng.randint(0, i)
            if j < num_pairs:
                reservoir[j] = (i, pair)
    return [pair for _, pair in sorted(reservoir, key=lambda item: item[0])]


def tokenize_sample(recipe: Recipe, *, num_pairs: int, seed: int, directory: str) -> dict:
    """Tokenize the sample once; returns the files the workers load and its statistics."""
    from safetensors.numpy import save_file

    from rmrun.data import load_chat_template, tokenize_pairs
    from rmrun.model.model import load_tokenizer

    pairs = _sample_pairs(recipe, num_pairs=num_pairs, seed=seed)
    tokenizer = load_tokenizer(recipe.model)
    tokenized = tokenize_pairs(
        pairs,
        tokenizer,
        max_length=recipe.data.max_length,
        overflow=recipe.data.overflow,
        template=load_chat_template(recipe.data.chat_template),
    )
    os.makedirs(directory, exist_ok=True)
    data, stats = os.path.join(directory, "train.safetensors"), os.path.join(directory, "stats.json")
    save_file(tokenized.to_arrays(), data)
    with open(stats, "w") as f:
        json.dump(tokenized.stats, f)
    lengths = tokenized.lengths()
    return {
        "data": data,
        "data_stats": stats,
        "pairs": len(tokenized),
        "mean_tokens_per_pair": float(lengths.sum() / max(1, len(tokenized))),
        "max_tokens": int(lengths.max()) if len(tokenized) else 0,
    }


def data_key(recipe: Recipe) -> str:
    from rmrun.recipe import recipe_to_dict

    return json.dumps([recipe_to_dict(recipe.data), recipe.model.tokenizer or recipe.model.pretrain], sort_keys=True)


def tokenize_samples(recipes: list[Recipe], *, num_pairs: int, scratch: str) -> dict[str, dict]:
    """One tokenized sample per distinct data key among ``recipes``, under ``scratch``; by key."""
    samples: dict[str, dict] = {}
    for recipe in recipes:
        if data_key(recipe) not in samples:
            directory = os.path.join(scratch, f"data-{len(samples)}")
            samples[data_key(recipe)] = tokenize_sample(
                recipe, num_pairs=num_pairs, seed=recipe.run.seed, directory=directory
            )
    return samples
