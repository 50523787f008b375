"""Build the rated-response task of recipes/minilm-rated-docstrings.toml from the Python
standard library's own docstrings, offline: the functions and summaries of
scripts/make_docstring_pairs.py, each question answered three ways and rated by how
related the answer is to the function asked about.

Each row asks "What does the Python function X() do?" and rates three responses:

* 3: X's own docstring summary (the right answer);
* 2: the summary of a sibling of X: another method of the same class when X is a method
  and its class has another, else another function of the same module (a wrong answer on
  the right topic: ``json.dumps`` answered with what ``json.loads`` does);
* 1: the summary of a function of another module (an answer on another topic).

The grades are the standard library's own structure, not a judgement made up for the data:
a sibling shares X's object or module, its vocabulary and its domain, so it is a partly
relevant answer, and one from another module is not. Under ``data.pair_rule = "all_pairs"``
a row gives three pairs: own over sibling and sibling over the other module's (gap 1), own
over the other module's (gap 2). Functions without a sibling are not asked about. The
functions are split before anything is drawn: an eval function is never a training
question nor any training response, and every response of a row comes from its own split.

    python scripts/make_rated_docstrings.py   # rewrites recipes/data/rated_docstrings_{train,eval}.jsonl

The files are committed, built with Python 3.11 (``BUILT_WITH``); docstrings change a
little between Python versions, so a rerun on another version may differ in a few rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_docstring_pairs import functions  # noqa: E402  (the functions and summaries, shared)

SEED = 2025
BUILT_WITH = (3, 11)  # the Python version that built the committed files
NUM_EVAL_FUNCTIONS = 220  # the eval split's functions (those with a sibling become its prompts)
NUM_TRAIN_PROMPTS = 300  # training questions, drawn among the remaining functions with a sibling
OUT = os.path.join(os.path.dirname(__file__), "..", "recipes", "data")
OWN, SIBLING, OTHER_MODULE = 3, 2, 1


def owner(name: str, module: str) -> str:
    """The class a method belongs to (``pathlib.Path`` for ``pathlib.Path.exists``), else the module."""
    rest = name[len(module) + 1 :]
    return f"{module}.{rest.rsplit('.', 1)[0]}" if "." in rest else module


def sibling_of(asked, pool) -> tuple | None:
    """A function of the same class (for a method whose class has another), else of the same module."""
    module, name, _ = asked
    same_module = [f for f in pool if f[0] == module and f[1] != name]
    same_class = [f for f in same_module if owner(f[1], module) == owner(name, module) != module]
    return same_class or same_module or None


def rated_row(asked, pool, rng) -> dict | None:
    module, name, text = asked
    siblings = sibling_of(asked, pool)
    if siblings is None:
        return None
    sibling = rng.choice(siblings)
    other = rng.choice([f for f in pool if f[0] != module])
    responses = [
        {"text": text, "score": OWN},
        {"text": sibling[2], "score": SIBLING},
        {"text": other[2], "score": OTHER_MODULE},
    ]
    rng.shuffle(responses)
    return {"prompt": f"What does the Python function {name}() do?", "responses": responses}


def rows_of(pool, rng, limit: int | None = None) -> list[dict]:
    rows = []
    for asked in pool:
        row = rated_row(asked, pool, rng)
        if row is not None:
            rows.append(row)
        if limit is not None and len(rows) == limit:
            break
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=OUT, help="folder the two files are written to (default: recipes/data)")
    out_dir = parser.parse_args(argv).out
    rng = random.Random(SEED)
    everything = functions()
    rng.shuffle(everything)
    splits = {
        "eval": rows_of(everything[:NUM_EVAL_FUNCTIONS], rng),
        "train": rows_of(everything[NUM_EVAL_FUNCTIONS:], rng, limit=NUM_TRAIN_PROMPTS),
    }
    for split, rows in splits.items():
        path = os.path.normpath(os.path.join(out_dir, f"rated_docstrings_{split}.jsonl"))
        with open(path, "w") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
        print(f"{path}: {len(rows)} prompts, {3 * len(rows)} pairs under all_pairs")


if __name__ == "__main__":
    main()
