"""``rmrun init MODEL DATA...``: write a commented starting recipe, each value with its reason,
that ``rmrun check`` accepts as written (``rmrun.run.starter`` reads the model and the data)."""

from __future__ import annotations

import json
import os
import sys

from rmrun.cli.args import add_set
from rmrun.errors import EXIT_OK, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# table -> [(key, TOML value, why)]; rendered in this order
Rows = list[tuple[str, list[tuple[str, str, str]]]]


def add(sub) -> None:
    p = sub.add_parser("init", help="write a commented starting recipe for a model and preference data")
    p.add_argument("model", help="model folder, hub id or package:NAME/dir (model.pretrain)")
    p.add_argument("data", nargs="+", help="training preference files (data.train)")
    p.add_argument("--eval", nargs="+", default=[], metavar="DATA", help="held-out preference files (data.eval)")
    p.add_argument("--format", default=None, help="the data's row format, where its rows fit more than one")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder, where the model's has none (model.tokenizer)")
    p.add_argument("--chat-template", default=None, help="ColossalChat template .json or .jinja (data.chat_template)")
    p.add_argument("--out", default="recipe.toml", help="the recipe to write (default recipe.toml); never overwritten")
    add_set(p, help="a recipe key to write with another value, as in `rmrun run --set`")
    p.set_defaults(func=command)


def command(args) -> int:
    from rmrun.data.formats import FORMATS
    from rmrun.run.starter import detect_format, inspect_data, inspect_model

    if os.path.exists(args.out):
        raise UsageError([f"{args.out}: exists; rmrun init never overwrites a recipe (choose another --out)"])
    if args.format is not None and args.format not in FORMATS:
        raise UsageError([f"--format {args.format}: not a data format; one of {', '.join(FORMATS)}"])
    for path in [*args.data, *args.eval, *filter(None, [args.chat_template])]:
        if "://" not in path and not os.path.exists(path):
            raise UsageError([f"{path}: no such file"])
    model = inspect_model(args.model, tokenizer=args.tokenizer, chat_template=args.chat_template)
    data_format = detect_format(args.data, given=args.format)
    data = inspect_data(args.data, model=model, data_format=data_format)
    base = os.path.dirname(os.path.abspath(args.out))
    rows = starter_rows(
        name=os.path.splitext(os.path.basename(args.out))[0],
        model_arg=_from(args.model, base),
        tokenizer=_from(args.tokenizer, base) if args.tokenizer else None,
        chat_template=_from(args.chat_template, base) if args.chat_template else None,
        train=[_from(p, base) for p in args.data],
        evaluation=[_from(p, base) for p in args.eval],
        model=model,
        data=data,
        format_given=args.format is not None,
    )
    text = render(_overridden(rows, args.overrides))
    _write_checked(args.out, text)
    print(
        f"read {data.sampled} row(s) of {args.data[0]}: format {data.format}, {data.bad_rows} bad; longer side "
        f"p50 {data.lengths['p50']}, p99 {data.lengths['p99']}, max {data.lengths['max']} tokens"
    )
    print(f"wrote {args.out}; next: rmrun check {args.out}, then rmrun run {args.out}")
    return EXIT_OK


def _from(path: str, base: str) -> str:
    """A local path as the recipe resolves it (relative to the recipe's folder); URLs, hub ids
    and package: names as they are."""
    if not os.path.exists(path):
        return path
    relative = os.path.relpath(os.path.abspath(path), base)
    return os.path.abspath(path) if relative.startswith("..") else relative  # beside the recipe, or absolute


def _q(value) -> str:
    return json.dumps(value)


def _machine() -> tuple[str, str]:
    """(precision, why) for ddp on this machine."""
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", f"this machine has CUDA ({torch.cuda.get_device_name(0)}) with bf16"
        return "fp16", f"this machine has CUDA ({torch.cuda.get_device_name(0)}) without bf16"
    return "fp32", "no CUDA on this machine: ddp trains on the CPU; zero2, gemini and 3d need GPUs"


def starter_rows(
    *,
    name: str,
    model_arg: str,
    tokenizer: str | None,
    chat_template: str | None,
    train: list[str],
    evaluation: list[str],
    model,
    data,
    format_given: bool,
) -> Rows:
    precision, precision_why = _machine()
    random_init = model.directory is not None and not model.has_weights
    if random_init:
        lr, lr_why = "5e-4", "training from random weights (the folder has a config and no weights)"
    elif model.family == "encoder":
        lr, lr_why = "3e-5", "fine-tuning a pretrained encoder (BERT-style fine-tuning runs 2e-5 to 5e-5)"
    else:
        lr, lr_why = "1e-5", "fine-tuning a pretrained decoder (reward models from chat models run 5e-6 to 2e-5)"
    lengths = data.lengths
    length_why = (
        f"covers the 99th percentile of the sampled pairs' longer side ({lengths['p99']} tokens; p50 "
        f"{lengths['p50']}, max {lengths['max']})"
        + (
            f", capped by the model's {model.context} positions"
            if model.context and data.max_length == model.context
            else ""
        )
    )
    data_rows = [("train", "[" + ", ".join(_q(p) for p in train) + "]", "the training preference files")]
    if evaluation:
        data_rows.append(
            (
                "eval",
                "[" + ", ".join(_q(p) for p in evaluation) + "]",
                "held-out pairs: accuracy during and after training",
            )
        )
    data_rows += [
        (
            "format",
            _q(data.format),
            "as given" if format_given else f"the one format every one of the {data.sampled} sampled rows reads as",
        ),
        ("max_length", str(data.max_length), length_why),
        ("overflow", _q("truncate"), 'longer pairs lose the start of their prompt; "drop" skips them'),
        (
            "bad_rows",
            _q("skip" if data.bad_rows else "error"),
            f"{data.bad_rows} of the {data.sampled} sampled rows are malformed"
            + ("; they are skipped and counted" if data.bad_rows else "; any is reported with its file and line"),
        ),
    ]
    if chat_template:
        data_rows.append(("chat_template", _q(chat_template), "renders each conversation as the policy model sees it"))
    what = f"an {model.family} model" if model.family else "a hub model, read when the run loads it"
    model_rows = [("pretrain", _q(model_arg), what + (f" with {model.context} positions" if model.context else ""))]
    if tokenizer:
        model_rows.append(("tokenizer", _q(tokenizer), "the model's folder has none"))
    if random_init:
        model_rows.append(("init", _q("random"), "no weights in the folder: built from its config"))
    batch = min(8, max(1, data.sampled - data.bad_rows))
    batch_why = "pairs per process per step; rmrun bench times others on this machine" + (
        f" (the training data has {batch} pair(s))" if batch < 8 else ""
    )
    return [
        (
            "run",
            [
                ("name", _q(name), "names the state folder"),
                ("seed", "42", "the data order and the reward head's initialisation"),
            ],
        ),
        ("data", data_rows),
        ("model", model_rows),
        (
            "plugin",
            [("name", _q("ddp"), "one process per GPU, or the CPU"), ("mixed_precision", _q(precision), precision_why)],
        ),
        ("loss", [("name", _q("log_sig"), "Bradley-Terry: -logsigmoid(r_chosen - r_rejected)")]),
        (
            "schedule",
            [
                ("max_epochs", "1", "reward models overfit past one or two epochs"),
                ("batch_size", str(batch), batch_why),
                ("lr", lr, lr_why),
            ],
        ),
        ("checkpoint", [("interval_steps", "100", "a killed run resumes from the newest checkpoint, exactly")]),
    ]


def _overridden(rows: Rows, overrides: list[str]) -> Rows:
    """``--set table.key=value`` written into the rows (a new key goes at its table's end)."""
    tables = {table: list(keys) for table, keys in rows}
    order = [table for table, _ in rows]
    for text in overrides:
        key, sep, literal = text.partition("=")
        if not sep or "." not in key:
            raise UsageError([f"--set {text}: expected TABLE.KEY=VALUE, e.g. --set schedule.lr=1e-5"])
        table, _, leaf = key.strip().rpartition(".")
        try:
            tomllib.loads(f"v = {literal.strip()}")
            value = literal.strip()
        except tomllib.TOMLDecodeError:
            value = _q(literal.strip())  # bare strings need no quotes on the command line
        keys = tables.setdefault(table, [])
        if table not in order:
            order.append(table)
        keys[:] = [row for row in keys if row[0] != leaf] + [(leaf, value, "set on the command line")]
    return [(table, tables[table]) for table in order]


def render(rows: Rows) -> str:
    lines = [
        "# A starting recipe written by `rmrun init`; edit freely. `rmrun check` validates it and",
        "# prints the plan (steps, batch sizes, plugin call), `rmrun explain` documents every key.",
        "# Relative paths resolve against this file's folder.",
    ]
    for table, keys in rows:
        lines += ["", f"[{table}]"] + [f"{key} = {value}  # {why}" for key, value, why in keys]
    return "\n".join(lines) + "\n"


def _write_checked(out: str, text: str) -> None:
    """Write ``out`` only once its text loads and validates as a recipe (never over a file)."""
    import tempfile

    from rmrun.recipe import RecipeError, load_recipe

    folder = os.path.dirname(os.path.abspath(out))
    with tempfile.NamedTemporaryFile("w", suffix=".toml", dir=folder, delete=False, encoding="utf-8") as staged:
        staged.write(text)
    try:
        load_recipe(staged.name)
    except RecipeError as e:
        raise UsageError([p.replace(staged.name, out) for p in e.problems]) from None
    finally:
        os.unlink(staged.name)
    with open(out, "x", encoding="utf-8") as f:
        f.write(text)
