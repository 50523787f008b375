"""Build the real-text preference task of recipes/minilm-docstrings.toml from the Python
standard library's own docstrings, offline.

Each pair asks what a standard-library function (or a public method of a public class)
does. The chosen answer is the first
sentence of that function's docstring; the rejected answer is the first sentence of
another function's docstring: from the same module for half of the pairs (a plausible
but wrong answer: ``json.dumps`` answered with what ``json.loads`` does), from another
module for the rest (an irrelevant answer). Functions whose summary gives away its own
name verbatim are kept; summaries shorter than four words or shared by two functions
are dropped. Pairs are split by function, so no eval question is seen in training.

    python scripts/make_docstring_pairs.py   # rewrites recipes/data/docstrings_{train,eval}.jsonl

The files are committed; docstrings change a little between Python versions, so a rerun
on another version may differ in a few rows.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import random
import re

MODULES = (
    "abc argparse base64 bisect calendar collections colorsys copy csv datetime difflib enum filecmp fnmatch "
    "fractions functools glob gzip hashlib heapq hmac html inspect io ipaddress itertools json keyword linecache "
    "locale logging math mimetypes operator os os.path pathlib pickle platform pprint queue random re shlex "
    "shutil socket statistics string struct subprocess sys tarfile tempfile textwrap threading time timeit "
    "tokenize traceback types typing unicodedata urllib.parse uuid warnings weakref zipfile zlib"
).split()
SEED = 2024
NUM_EVAL_FUNCTIONS = 300
OUT = os.path.join(os.path.dirname(__file__), "..", "recipes", "data")


def summary(doc: str | None) -> str | None:
    """The first sentence of a docstring's first paragraph, on one line."""
    if not doc:
        return None
    paragraph = inspect.cleandoc(doc).split("\n\n")[0]
    text = " ".join(paragraph.split())
    if re.match(r"^[\w.]+\(.*\)", text):  # builtins start with their signature
        return None
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return sentence if len(sentence.split()) >= 4 and len(sentence) <= 300 else None


def functions() -> list[tuple[str, str, str]]:
    """(module, qualified name, summary) of every public documented function, once each."""
    found, seen_summaries = [], {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, value in _public_callables(module, module_name):
            text = summary(getattr(value, "__doc__", None))
            if text is None:
                continue
            seen_summaries.setdefault(text, []).append(name)
            found.append((module_name, name, text))
    return [f for f in found if len(seen_summaries[f[2]]) == 1]


def _public_callables(module, module_name: str):
    """(qualified name, function) of the module's public functions and its classes' public methods."""
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or getattr(value, "__module__", None) not in (module_name, module.__name__):
            continue  # private, or re-exported from elsewhere
        if inspect.isclass(value):
            for method_name, method in sorted(vars(value).items()):
                if not method_name.startswith("_") and inspect.isroutine(method):
                    yield f"{module_name}.{name}.{method_name}", method
        elif callable(value):
            yield f"{module_name}.{name}", value


def pairs_for(chosen, pool, by_module, rng) -> dict:
    module, name, text = chosen
    siblings = [f for f in by_module[module] if f[1] != name]
    if siblings and rng.random() < 0.5:
        rejected = rng.choice(siblings)
    else:
        rejected = rng.choice([f for f in pool if f[0] != module])
    return {"prompt": f"What does the Python function {name}() do?", "chosen": text, "rejected": rejected[2]}


def main() -> None:
    rng = random.Random(SEED)
    everything = functions()
    rng.shuffle(everything)
    splits = {"eval": everything[:NUM_EVAL_FUNCTIONS], "train": everything[NUM_EVAL_FUNCTIONS:]}
    for split, pool in splits.items():
        by_module = {}
        for f in pool:
            by_module.setdefault(f[0], []).append(f)
        rows = [pairs_for(f, pool, by_module, rng) for f in pool]
        path = os.path.normpath(os.path.join(OUT, f"docstrings_{split}.jsonl"))
        with open(path, "w") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
        print(f"{path}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
