"""The ``rmrun`` command: parse, load the recipe, plan, run, close on every path.

This is the only place that calls ``sys.exit``. Exit codes (defined in
``rmrun.run.commands``): 0 done; 2 recipe, data or usage error (never retry); 3 state
unusable, needs a human; 75 (``run.preempted_exit_code``) stopped by SIGTERM/SIGUSR1 or an
unreachable store with nothing committed lost (requeue me); 130 stopped by Ctrl-C; 1 a bug.
"""

from __future__ import annotations

import argparse
import sys

from rmrun.run.commands import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from rmrun.runtime.faults import FAULT_POINTS

COMMANDS = ("run", "check", "status", "explain", "verify-resume", "score", "eval", "report", "bench")


def _recipe_keys_help() -> str:
    from rmrun.recipe.explain import explain_text

    return "recipe keys:\n" + explain_text()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmrun",
        description="Train reward models for RLHF from a TOML recipe, resumable exactly after preemption.",
        epilog="Exit codes: 0 done, 2 recipe, data or usage error (never retry), 3 state unusable (needs a\n"
        "human), 75 stopped by SIGTERM or an unreachable store, nothing committed lost (requeue; run.preempted_exit_code),\n"
        "130 stopped by Ctrl-C, 1 a bug in rmrun. `rmrun explain` prints the recipe keys below.\n\n"
        + _recipe_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_recipe_commands(sub)
    _add_verify_resume(sub)
    _add_scoring_commands(sub)
    _add_report(sub)
    _add_bench(sub)
    return parser


def _add_recipe_commands(sub) -> None:
    """run, check, status and explain: what a recipe is and what its run has done."""
    for name, text in (
        ("run", "run the recipe's step graph (resumes from the state store if it has a checkpoint)"),
        ("check", "validate the recipe and print the resolved plan; no training, no torch import"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=_recipe_keys_help(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("recipe", help="recipe TOML file")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a recipe key, e.g. --set schedule.lr=1e-5 (repeatable)",
        )
    p = sub.add_parser("status", help="show the step graph and the state store of a run")
    p.add_argument("target", help="recipe TOML file or state URL")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("explain", help="document every recipe key")


def _add_verify_resume(sub) -> None:
    p = sub.add_parser("verify-resume", help="run a recipe uninterrupted and with SIGKILLs; compare bit for bit")
    p.add_argument("recipe")
    p.add_argument("--kills", type=int, default=2, help="number of SIGKILLs at random steps (default 2)")
    p.add_argument(
        "--points",
        default=None,
        metavar="all|POINT[:STEP],...",
        help="instead of random steps, one SIGKILL at each fault point, in turn: " + ", ".join(FAULT_POINTS),
    )
    p.add_argument(
        "--state-root",
        default=None,
        metavar="URL",
        help="where the two runs keep their state (any fsspec URL; default: the workdir)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed choosing the kill steps")
    p.add_argument("--workdir", default=None, help="where the two runs keep their state (default: a temp dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _add_scoring_commands(sub) -> None:
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


def _add_report(sub) -> None:
    text = (
        "write an HTML page about a run from its state alone (local or any fsspec URL): training, eval and "
        "throughput curves with epoch ends and resumes marked, reward histograms, accuracy by length against "
        "the longer-wins baseline, calibration, recipe and plan"
    )
    p = sub.add_parser("report", help=text, description=text)
    p.add_argument("target", help="a run's state root (run.state; or the recipe that names it), or an export directory")
    p.add_argument(
        "--out",
        default=None,
        help="directory (or fsspec URL) for index.html and its PNG figures (default ./rmrun-report-<run.name>)",
    )
    p.add_argument(
        "--rewards",
        choices=("auto", "yes", "no"),
        default="auto",
        help="score the eval pairs with the final model for the reward histograms and calibration: "
        "auto (default) does when the weights are under 2 GiB or a GPU is present",
    )


def _add_bench(sub) -> None:
    text = (
        "time short throw-away runs of a recipe for every combination of swept keys, side by side, on this "
        "machine; rank them and write bench.json, bench.md and bench.png"
    )
    p = sub.add_parser("bench", help=text, description=text)
    p.add_argument("recipe")
    p.add_argument(
        "--sweep",
        dest="sweeps",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a recipe key and the values to try, e.g. --sweep plugin.name=ddp,zero2 (repeatable; "
        "every combination runs)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key for every combination (repeatable)",
    )
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per combination per round (default 6)")
    p.add_argument(
        "--rounds", type=int, default=2, help="rounds; each runs every combination once, order rotating (default 2)"
    )
    p.add_argument("--pairs", type=int, default=512, help="training pairs in the seeded sample (default 512)")
    p.add_argument("--out", default=None, help="directory for the files (default ./rmrun-bench-<run.name>)")


def _bench(args) -> int:
    from rmrun.bench.bench import BenchError, bench
    from rmrun.data import DataError
    from rmrun.model.model import ModelError

    try:
        bench(
            args.recipe,
            sweeps=args.sweeps,
            sets=args.overrides,
            steps=args.steps,
            rounds=args.rounds,
            num_pairs=args.pairs,
            out=args.out,
        )
    except (BenchError, DataError, ModelError) as e:
        return _fail([str(e)], EXIT_USAGE)
    return EXIT_OK


def _argv(argv: list[str]) -> list[str]:
    # `rmrun RECIPE` is `rmrun run RECIPE`.
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        return ["run", *argv]
    return argv


def _fail(lines, code: int) -> int:
    for line in lines:
        print(f"rmrun: {line}", file=sys.stderr)
    return code


def _use(args) -> int:
    from rmrun.data import DataError
    from rmrun.serve import scoring

    if args.batch_size < 1:
        return _fail([f"--batch-size must be at least 1, got {args.batch_size}"], EXIT_USAGE)
    try:
        if args.command == "score":
            return scoring.score(
                args.model, args.data, out=args.out, batch_size=args.batch_size, bad_rows=args.bad_rows
            )
        return scoring.evaluate(args.model, args.data, out=args.out, batch_size=args.batch_size)
    except (scoring.ScoreError, DataError) as e:
        return _fail([str(e)], EXIT_USAGE)


def _report(args) -> int:
    from rmrun.data import DataError
    from rmrun.report.report import ReportError, report
    from rmrun.serve.exported import ScoreError

    try:
        return report(args.target, out=args.out, rewards=args.rewards)
    except (ReportError, ScoreError, DataError) as e:
        return _fail([str(e)], EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_argv(list(sys.argv[1:] if argv is None else argv)))
    from rmrun.recipe import RecipeError

    try:
        if args.command == "explain":
            from rmrun.recipe.explain import explain_text

            print(explain_text())
            return EXIT_OK
        if args.command == "check":
            from rmrun.run.commands import check

            return check(args.recipe, overrides=args.overrides)
        if args.command == "status":
            from rmrun.run.commands import status

            return status(args.target, overrides=args.overrides)
        if args.command in ("score", "eval"):
            return _use(args)
        if args.command == "report":
            return _report(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "verify-resume":
            from rmrun.run.verify import verify_resume

            return verify_resume(
                args.recipe,
                kills=args.kills,
                seed=args.seed,
                workdir=args.workdir,
                overrides=args.overrides,
                points=args.points,
                state_root=args.state_root,
            )
        from rmrun.run.commands import run

        return run(args.recipe, overrides=args.overrides)
    except RecipeError as e:
        return _fail(e.problems, EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(["interrupted"], EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (``rmrun status | head``): nothing more to say, and no error.
        from rmrun.runtime.process import discard_output

        discard_output(sys.stdout)
        return EXIT_OK


def entry() -> None:
    from rmrun.runtime.process import configure_process, discard_output

    configure_process()
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # what was still buffered has no reader any more
        discard_output(sys.stdout)
    # Skip interpreter teardown of ColossalAI/torch threads after a clean close.
    sys.exit(code)


if __name__ == "__main__":
    entry()
