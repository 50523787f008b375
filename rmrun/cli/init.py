"""``rmrun init MODEL DATA...``: write a commented starting recipe that ``rmrun check`` accepts."""

from __future__ import annotations

import json
import os

from rmrun.errors import EXIT_OK, UsageError

# The keys of a first row that tell the data formats apart (rmrun/data/formats.py reads them).
_FORMAT_KEYS = (
    ("colossalchat", {"context", "chosen", "rejected"}),
    ("pairwise", {"prompt", "chosen", "rejected"}),
    ("hh", {"chosen", "rejected"}),
)


def add(sub) -> None:
    p = sub.add_parser("init", help="write a commented starting recipe for a model and preference data")
    p.add_argument("model", help="model folder, hub id or package:NAME/dir (model.pretrain)")
    p.add_argument("data", nargs="+", help="training preference files (data.train)")
    p.add_argument("--eval", nargs="+", default=[], metavar="DATA", help="held-out preference files (data.eval)")
    p.add_argument("--out", default="recipe.toml", help="the recipe to write (default recipe.toml); never overwritten")
    p.set_defaults(func=command)


def command(args) -> int:
    if os.path.exists(args.out):
        raise UsageError([f"{args.out}: exists; rmrun init never overwrites a recipe (choose another --out)"])
    base = os.path.dirname(os.path.abspath(args.out))
    text = recipe_text(
        model=_from(args.model, base),
        train=[_from(p, base) for p in args.data],
        evaluation=[_from(p, base) for p in args.eval],
        data_format=detect_format(args.data[0]),
        name=os.path.splitext(os.path.basename(args.out))[0],
    )
    with open(args.out, "x", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out}; next: rmrun check {args.out}, then rmrun run {args.out}")
    return EXIT_OK


def _from(path: str, base: str) -> str:
    """A local path as the recipe resolves it (relative to the recipe's folder); URLs, hub ids
    and package: names as they are."""
    return os.path.relpath(os.path.abspath(path), base) if os.path.exists(path) else path


def detect_format(path: str) -> str | None:
    """The data format of a local .jsonl file from its first row's keys; None when not known."""
    if not (path.endswith(".jsonl") and os.path.isfile(path)):
        return None
    with open(path, encoding="utf-8") as f:
        line = f.readline()
    try:
        keys = set(json.loads(line))
    except (ValueError, TypeError):
        return None
    return next((name for name, needed in _FORMAT_KEYS if needed <= keys), None)


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def recipe_text(*, model: str, train: list[str], evaluation: list[str], data_format: str | None, name: str) -> str:
    fmt = (
        f'format = "{data_format}"  # read from the first row; also "colossalchat", "pairwise", "hh"'
        if data_format
        else 'format = "pairwise"  # not detected: "colossalchat", "pairwise" or "hh" (rmrun explain)'
    )
    held_out = (
        f"eval = {_toml_list(evaluation)}  # held-out pairs: accuracy during and after training"
        if evaluation
        else '# eval = ["held-out.jsonl"]  # held-out pairs: accuracy during and after training'
    )
    return f"""# A starting recipe written by `rmrun init`; edit freely. `rmrun check` validates it and
# prints the plan (steps, batch sizes, plugin call), `rmrun explain` documents every key.
# Relative paths resolve against this file's folder.

[run]
name = "{name}"
seed = 42  # the data order and the reward head's initialisation

[data]
train = {_toml_list(train)}
{held_out}
{fmt}
max_length = 512  # tokens per chosen or rejected conversation
overflow = "truncate"  # cut longer pairs from the start of the prompt ("drop", "error")

[model]
pretrain = {json.dumps(model)}
# tokenizer = "path/to/tokenizer"  # where the model's folder has none
# init = "random"  # train from the config alone (no weights needed)
# [model.lora]  # train LoRA adapters instead of every weight
# r = 8

[plugin]
name = "ddp"  # runs on CPU or one GPU per process; zero2, gemini, 3d need CUDA
mixed_precision = "fp32"  # "bf16" on a GPU that has it

[loss]
name = "log_sig"

[schedule]
max_epochs = 1
batch_size = 8  # pairs per process per step
lr = 1e-5  # fine-tuning a pretrained model; from random weights try 5e-4

[checkpoint]
interval_steps = 100  # a killed run resumes from the newest checkpoint, exactly
"""
