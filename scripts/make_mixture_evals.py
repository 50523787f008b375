"""Build the held-out files of recipes/minilm-mixture.toml: each source's eval file less the
questions the other source trains on.

The docstring pairs (scripts/make_docstring_pairs.py) and the rated docstring answers
(scripts/make_rated_docstrings.py) are drawn from the same standard-library functions, each
split on its own: 100 questions of docstrings_eval.jsonl are questions of
rated_docstrings_train.jsonl, and 140 of rated_docstrings_eval.jsonl are asked in
docstrings_train.jsonl. A mixture trained on both training files would be evaluated on
questions it trained on; these files keep only the questions neither training file asks.

    python scripts/make_mixture_evals.py   # writes recipes/data/mixture_{docstrings,rated}_eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import os

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "data")
TRAIN = ("docstrings_train.jsonl", "rated_docstrings_train.jsonl")
EVALS = {
    "docstrings_eval.jsonl": "mixture_docstrings_eval.jsonl",
    "rated_docstrings_eval.jsonl": "mixture_rated_eval.jsonl",
}


def prompts(path: str) -> set[str]:
    with open(path) as f:
        return {json.loads(line)["prompt"] for line in f if line.strip()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DATA, help="folder the two files are written to (default: recipes/data)")
    out_dir = parser.parse_args(argv).out
    trained = set().union(*(prompts(os.path.join(DATA, name)) for name in TRAIN))
    for source, target in EVALS.items():
        with open(os.path.join(DATA, source)) as f:
            rows = [line for line in f if line.strip() and json.loads(line)["prompt"] not in trained]
        path = os.path.normpath(os.path.join(out_dir, target))
        with open(path, "w") as out:
            out.writelines(rows)
        print(f"{path}: {len(rows)} questions")


if __name__ == "__main__":
    main()
