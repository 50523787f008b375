"""``rmrun score`` and ``rmrun eval``: an exported reward model on files of rows."""

from __future__ import annotations

from rmrun.errors import UsageError


def add(sub) -> None:
    """score and eval: an exported reward model on files of rows."""
    for name, text in (
        (
            "score",
            "score rows with an exported reward model: one JSON line per row (rewards, and the margin of "
            "a pair), text rendered exactly as in training",
        ),
        (
            "eval",
            "evaluate an exported reward model on preference files: accuracy, loss, margin, accuracy per "
            "length and per subset, the longer-wins baseline, calibration (ECE, Brier), reward mean/std",
        ),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "model",
            help="export directory (local path or fsspec URL) written by `rmrun run`, or a "
            "run's state root: its export, or its newest checkpoint before there is one",
        )
        p.add_argument("data", nargs="+", help="files of pairs (any [data] format) or of {prompt, response} rows")
        p.add_argument(
            "--out",
            default=None,
            help="write the JSONL (score) or the JSON report (eval) here; score defaults to stdout",
        )
        p.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass (default 16)")
        if name == "score":
            p.add_argument(
                "--bad-rows",
                choices=("skip", "error"),
                default="skip",
                help="a malformed row: name it on stderr (file:line: why) and write an {error} line for it "
                "in its place (skip, the default), or stop with that line and exit 2 (error)",
            )
        p.set_defaults(func=command)


def command(args) -> int:
    from rmrun.serve import scoring

    if args.batch_size < 1:
        raise UsageError([f"--batch-size must be at least 1, got {args.batch_size}"])
    if args.command == "score":
        return scoring.score(args.model, args.data, out=args.out, batch_size=args.batch_size, bad_rows=args.bad_rows)
    return scoring.evaluate(args.model, args.data, out=args.out, batch_size=args.batch_size)
